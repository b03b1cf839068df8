"""What the opt-in bf16 backbone costs in quality: codes and scores of a trained ESC model in bf16 vs float32.

    python benchmarks/bench_bf16_quality.py --clips ../shared/data/speech/val [--model DIR] [--kbps 1.5 9]
        [--limit N] [--jobs N] [--csv FILE]

`EscModel.set_backbone_dtype(torch.bfloat16)` is the fast path `bench_codec.py` times; speed is measured there on
random weights, but only a trained model says what the approximation does to the sound. Each clip is encoded and
decoded by the float32 model (the exact path) and by a bf16 copy of it (its own codes, decoded in bf16), and both
are scored against the clip. Printed and written: per rate, the share of codes equal to float32's and the mean
PESQ-WB, STOI, mel distance and SI-SDR of each path. Default model: the packaged one (checkpoints/esc-base).
"""

import argparse
import copy
import functools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_codecs import load_clips  # noqa: E402

from esc_hf.eval.baselines import score  # noqa: E402
from esc_hf.eval.metrics import METRICS  # noqa: E402
from esc_hf.training.evaluation import write_csv  # noqa: E402
from esc_hf.utils.processes import forked_map  # noqa: E402


def measure(model, clips, rates, jobs: int = 1) -> list[dict]:
    """One row per rate: `codes_equal` (share of code entries equal to float32's) and each metric's mean for the
    float32 (`<metric>_fp32`) and the bf16 path (`<metric>_bf16`). With `jobs` > 1 the clips are coded and scored in
    that many forked processes of one thread each."""
    import torch

    fast = copy.deepcopy(model).set_backbone_dtype(torch.bfloat16)
    rows = []
    with forked_map(functools.partial(_both_paths, model, fast, clips), jobs) as map_:
        for kbps in rates:
            per_clip = list(map_([(model.config.num_streams_for_bandwidth(kbps), i) for i in range(len(clips))]))
            equal, total = (sum(c[key] for c in per_clip) for key in ("equal", "total"))
            row = {"kbps": kbps, "clips": len(clips), "codes_equal": equal / total}
            for metric in METRICS:
                for name in ("fp32", "bf16"):
                    row[f"{metric}_{name}"] = float(np.nanmean([c[name][metric] for c in per_clip]))
            rows.append(row)
    return rows


def _both_paths(model, fast, clips, task: tuple[int, int]) -> dict:
    """One clip through each path: the scores, and how many code entries bf16 got equal to float32."""
    import torch

    num_streams, clip = task
    audio = clips[clip][1]
    waveform = torch.from_numpy(audio)[None, None]
    codes, result = {}, {}
    with torch.inference_mode():
        for name, m in (("fp32", model), ("bf16", fast)):
            codes[name] = m.encode(waveform, num_streams=num_streams).audio_codes
            decoded = m.decode(codes[name]).audio_values[0, 0, : audio.size].float().numpy()
            result[name] = score(audio, decoded)
    return {**result, "equal": int((codes["bf16"] == codes["fp32"]).sum()), "total": codes["fp32"].numel()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, required=True, help="folder of speech clips (any rate; resampled)")
    parser.add_argument("--model", help="trained ESC folder (default: the packaged checkpoints/esc-base)")
    parser.add_argument("--kbps", type=float, nargs="+", default=[1.5, 9.0])
    parser.add_argument("--limit", type=int, help="first N clips only")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="cut each clip to this (default 10 s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="processes that code and score the clips, one thread each")
    parser.add_argument("--csv", help="also write the table here")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    import torch

    from esc_hf import DEFAULT_MODEL, EscModel

    torch.set_num_threads(args.threads)
    model = EscModel.from_pretrained(args.model or DEFAULT_MODEL).eval()
    for kbps in args.kbps:
        if kbps not in model.config.target_bandwidths:
            parser.error(f"--kbps {kbps:g}: this model codes at {', '.join(f'{b:g}' for b in model.config.target_bandwidths)}")
    clips = load_clips(args.clips, args.limit, args.max_seconds)
    rows = measure(model, clips, args.kbps, args.jobs)
    print(f"bf16 backbone vs float32, {args.model or 'checkpoints/esc-base'}, {len(clips)} clips:")
    print("| kbps | codes = fp32 | " + " | ".join(f"{m} fp32 → bf16" for m in METRICS) + " |")
    for r in rows:
        cells = " | ".join(f"{r[f'{m}_fp32']:.3f} → {r[f'{m}_bf16']:.3f}" for m in METRICS)
        print(f"| {r['kbps']:g} | {r['codes_equal']:.3f} | {cells} |")
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

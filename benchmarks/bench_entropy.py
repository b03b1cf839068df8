"""Bytes of `.esc` v2 (entropy coded, and raw layers) against v1 and the nominal rate on real clips at every
bitrate, and the entropy stage's time as a share of the model's.

    python benchmarks/bench_entropy.py --clips data/speech/val [--model DIR] [--output bench_entropy.csv]

Each clip is encoded once at the highest rate (the lower rates are its leading streams) and packed as a file at
every rate in each format (packets of `DEFAULT_FRAMES_PER_PACKET` frames); the round trip of every file is checked
to give back the codes exactly. Times are of the same run, one clip after another: the model's encode and decode,
and the extra time that entropy coding adds to packing and unpacking over raw layers.
"""

import argparse
import csv
import time
from pathlib import Path

import torch

from esc_hf.codec.audio_io import list_audio_files, load_audio
from esc_hf.codec.bitstream import EscHeader, pack, unpack
from esc_hf.codec.entropy import load_entropy_model
from esc_hf.codec.loading import load_model


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run(clips: Path, model_name=None, max_clips: int | None = None) -> tuple[list[dict], dict]:
    model = load_model(model_name)
    entropy_model = load_entropy_model(model)
    if entropy_model is None:
        raise SystemExit("the model's folder has no entropy model: run examples/fit_entropy_model.py first")
    files = list_audio_files(clips)[:max_clips]
    streams = model.config.num_streams
    sizes = {(n, f): 0 for n in range(1, streams + 1) for f in ("v1", "v2 raw", "v2")}
    seconds = 0.0
    times = dict.fromkeys(("model encode", "model decode", "entropy encode", "entropy decode"), 0.0)
    for path in files:
        audio, _ = load_audio(path, model.config.sampling_rate)
        x = torch.from_numpy(audio)[None, None]
        with torch.inference_mode():
            codes, t = _timed(lambda: model.encode(x).audio_codes)
            times["model encode"] += t
            _, t = _timed(model.decode, codes)
            times["model decode"] += t
        seconds += audio.size / model.config.sampling_rate
        for n in range(1, streams + 1):
            part = codes[:, :n]
            for name, version, tables in (("v1", 1, None), ("v2 raw", 2, None), ("v2", 2, entropy_model)):
                header = EscHeader.for_model(model, n, audio.size, version=version, entropy_model=tables)
                data, t_pack = _timed(pack, part, header, tables)
                (back, _), t_unpack = _timed(unpack, data, model, tables)
                if not torch.equal(back, part):
                    raise AssertionError(f"{path}: {name} at {n} streams did not give the codes back")
                sizes[n, name] += len(data)
                if n == streams and name == "v2 raw":
                    raw_times = (t_pack, t_unpack)
                if n == streams and name == "v2":
                    times["entropy encode"] += t_pack - raw_times[0]
                    times["entropy decode"] += t_unpack - raw_times[1]
    rows = []
    for n in range(1, streams + 1):
        kbps = model.config.bandwidth_for_num_streams(n)
        nominal = kbps * 1000 * seconds / 8
        v1, raw, v2 = sizes[n, "v1"], sizes[n, "v2 raw"], sizes[n, "v2"]
        rows.append({
            "kbps": kbps, "clips": len(files), "seconds": round(seconds, 1), "nominal_bytes": round(nominal),
            "v1_bytes": v1, "v2_raw_bytes": raw, "v2_bytes": v2, "v2_kbps": round(v2 * 8 / seconds / 1000, 3),
            "v2_vs_v1": round(v2 / v1 - 1, 4), "v2_vs_nominal": round(v2 / nominal - 1, 4),
        })  # fmt: skip
    shares = {
        "entropy encode / model encode": times["entropy encode"] / times["model encode"],
        "entropy decode / model decode": times["entropy decode"] / times["model decode"],
    }
    return rows, {**times, **shares, "contexts": entropy_model.contexts}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, required=True)
    parser.add_argument("--model", help="model folder or Hub id (default: the packaged model)")
    parser.add_argument("--max-clips", type=int)
    parser.add_argument("--output", type=Path, default=Path("bench_entropy.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the entropy coder is single-threaded: compare like with like
    rows, timing = run(args.clips, args.model, args.max_clips)
    with args.output.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| kbps | nominal | v1 | v2 raw layers | v2 entropy coded | v2 vs v1 | v2 vs nominal |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kbps']:g} | {r['nominal_bytes']:,} | {r['v1_bytes']:,} | {r['v2_raw_bytes']:,} | "
              f"{r['v2_bytes']:,} ({r['v2_kbps']:.2f} kbps) | {r['v2_vs_v1']:+.1%} | {r['v2_vs_nominal']:+.1%} |")  # fmt: skip
    for name, value in timing.items():
        print(
            f"{name}: {value:.2%}"
            if "/" in name
            else f"{name}: {value}"
            if name == "contexts"
            else f"{name}: {value:.2f} s"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

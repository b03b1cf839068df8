"""Throughput of `examples/tokenize_dataset.py` on this machine: audio hours per hour per process and peak memory,
by batch size, precision and number of processes, side by side in one run.

    python benchmarks/bench_tokenize.py --clips DIR [--model DIR] [--kbps 9] [--batch-sizes 1 8 32]
        [--processes 1 2] [--precisions fp32 bf16] [--segment-seconds 4] [--max-clips 20]

Two sources are built from the clips in DIR: the clips as they are (mixed lengths, so items of equal padded
length, the only ones batched together, are rare) and the clips cut into `--segment-seconds` segments (all of one
length, as speech-LM corpora often are). Every setting is a fresh `accelerate launch` of the script on the CPU,
each process with one thread.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def build_sources(clips_dir: Path, root: Path, segment_seconds: float, max_clips: int) -> dict[str, Path]:
    from esc_hf.codec.audio_io import list_audio_files, load_audio

    clips = [load_audio(p)[0] for p in list_audio_files(clips_dir)[:max_clips]]
    sources = {}
    for name, pieces in (
        ("clips", clips),
        (f"{segment_seconds:g} s segments", [c[i : i + int(segment_seconds * 16000)] for c in clips
                                            for i in range(0, c.size - int(segment_seconds * 16000) + 1,
                                                           int(segment_seconds * 16000))]),
    ):  # fmt: skip
        folder = root / re.sub(r"\W+", "_", name)
        folder.mkdir()
        paths = []
        for index, piece in enumerate(pieces):
            paths.append(str(folder / f"{index:05d}.wav"))
            sf.write(paths[-1], piece, 16000, subtype="FLOAT")
        data = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio())
        data.save_to_disk(str(folder / "dataset"))
        sources[name] = (folder / "dataset", sum(p.size for p in pieces) / 16000 / 3600, len(pieces))
    return sources


def run(dataset: Path, items: int, out: Path, processes: int, batch: int, precision: str, model, kbps):
    """Per process: (audio hours per hour over its own shards, peak MB). Shards are sized so that every process gets
    several."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    if processes > 1:
        command.append("--multi_gpu")  # without a GPU: CPU processes with gloo
    command += [str(ROOT / "examples" / "tokenize_dataset.py"), "--dataset", str(dataset), "--output", str(out),
                "--batch-size", str(batch), "--shard-size", str(max(1, items // (3 * processes))),
                "--kbps", str(kbps)]  # fmt: skip
    if model:
        command += ["--model", model]
    if precision == "bf16":
        command.append("--bf16")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    found = re.findall(r"process \d+: (\d+) shards written.*\(([\d.]+) audio hours per hour\), peak memory (\d+) MB",
                       result.stdout)  # fmt: skip
    if len(found) != processes or any(int(shards) == 0 for shards, _, _ in found):
        raise RuntimeError(f"expected {processes} processes with work, got:\n{result.stdout[-2000:]}")
    return [(float(rate), float(mb)) for _, rate, mb in found]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", required=True, help="folder of speech clips")
    parser.add_argument("--model", help="ESC folder (default: the packaged model)")
    parser.add_argument("--kbps", type=float, default=9.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--max-clips", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = build_sources(Path(args.clips), Path(tmp), args.segment_seconds, args.max_clips)
        print(f"{'source':<16} {'items':>5} {'hours':>6} {'prec':>5} {'procs':>5} {'batch':>5} "
              f"{'audio h/h per process':>22} {'peak MB':>8}")  # fmt: skip
        for name, (dataset, hours, items) in sources.items():
            for precision in args.precisions:
                for processes in args.processes:
                    for batch in args.batch_sizes:
                        out = Path(tmp) / f"out-{len(os.listdir(tmp))}"
                        per_process = run(dataset, items, out, processes, batch, precision, args.model, args.kbps)
                        rate = np.mean([r for r, _ in per_process])
                        peak = max(mb for _, mb in per_process)
                        print(f"{name:<16} {items:>5} {hours:>6.3f} {precision:>5} {processes:>5} {batch:>5} "
                              f"{rate:>22.1f} {peak:>8.0f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory and speed of `esc encode` / `esc decode` on long files: 1 min against 30 min of speech.

    python benchmarks/bench_long_files.py [--model DIR_OR_HUB_ID] [--minutes 1 30] [--kbps 6] [--csv out.csv]
                                         [--sweep-chunk-seconds 2 5 10 20]

The audio is real speech (the test clips, tiled) written to a temporary folder. Each command runs in its own
process, whose peak RSS comes from the kernel (wait4), so the numbers are what a user of the command line sees.
Without `--model` it uses ESC-Base with random weights (the size that matters for memory and speed). The goal: the
peak RSS of the 30 min file within 10 % of the 1 min file's. `--sweep-chunk-seconds` instead times the first file
at several chunk lengths (`esc --chunk-seconds`): how the default chunk was chosen.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def make_speech(path: Path, minutes: float, rate: int = 16000) -> int:
    clips = [sf.read(str(p), dtype="float32")[0] for p in sorted((ROOT / "tests" / "data").glob("*.flac"))]
    tile = np.concatenate(clips)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        for start in range(0, total, tile.size):
            handle.write(tile[: min(tile.size, total - start)])
    return total


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `python -m esc_hf ARGS` process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "esc_hf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    _, stderr = process.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"esc {' '.join(args)} failed: {stderr.decode().strip()}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or Hub id (default: ESC-Base with random weights)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 30.0])
    parser.add_argument("--kbps", type=float, default=6.0)
    parser.add_argument("--csv", help="also write the results here")
    parser.add_argument("--sweep-chunk-seconds", type=float, nargs="+", help="chunk lengths to compare")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            import torch
            from transformers.utils import logging as hf_logging

            from esc_hf import EscConfig, EscModel

            hf_logging.disable_progress_bar()
            torch.manual_seed(0)
            model = str(tmp / "esc-base-random")
            EscModel(EscConfig()).save_pretrained(model)
        import torch

        print(
            f"model: {args.model or 'ESC-Base, random weights'}; {args.kbps:g} kbps; torch threads: "
            f"{torch.get_num_threads()}; CPU: {os.cpu_count()} cores"
        )
        rows = []
        runs = [(minutes, None) for minutes in args.minutes]
        if args.sweep_chunk_seconds:
            runs = [(args.minutes[0], chunk) for chunk in args.sweep_chunk_seconds]
        for minutes, chunk in runs:
            wav, esc, out = tmp / f"in_{minutes:g}.wav", tmp / f"in_{minutes:g}.esc", tmp / f"out_{minutes:g}.wav"
            samples = make_speech(wav, minutes)
            extra = ["--model", model] + ([] if chunk is None else ["--chunk-seconds", str(chunk)])
            enc_s, enc_rss = run(["encode", str(wav), str(esc), "--kbps", str(args.kbps), *extra])
            dec_s, dec_rss = run(["decode", str(esc), str(out), *extra])
            if sf.info(str(out)).frames != samples:
                raise SystemExit(f"decoded {sf.info(str(out)).frames} samples of {samples}")
            seconds = samples / 16000
            rows.append(
                {
                    "minutes": minutes,
                    "chunk_seconds": chunk or 10.0,
                    "encode_x_realtime": seconds / enc_s,
                    "encode_peak_rss_mib": enc_rss,
                    "decode_x_realtime": seconds / dec_s,
                    "decode_peak_rss_mib": dec_rss,
                    "esc_bytes": esc.stat().st_size,
                    "kbps_with_framing": esc.stat().st_size * 8 / seconds / 1000,
                }
            )
            for path in (wav, esc, out):
                path.unlink()

    print(
        f"{'minutes':>8} {'chunk s':>8} {'encode ×RT':>11} {'encode RSS':>11} {'decode ×RT':>11} {'decode RSS':>11} "
        f"{'kbps all-in':>12}"
    )
    for row in rows:
        print(
            f"{row['minutes']:>8g} {row['chunk_seconds']:>8g} {row['encode_x_realtime']:>11.1f} "
            f"{row['encode_peak_rss_mib']:>8.0f} MiB {row['decode_x_realtime']:>11.1f} "
            f"{row['decode_peak_rss_mib']:>8.0f} MiB {row['kbps_with_framing']:>12.3f}"
        )
    if len(rows) > 1 and not args.sweep_chunk_seconds:
        for kind in ("encode", "decode"):
            ratio = rows[-1][f"{kind}_peak_rss_mib"] / rows[0][f"{kind}_peak_rss_mib"]
            verdict = "within" if abs(ratio - 1) <= 0.10 else "NOT within"
            print(
                f"{kind}: peak RSS {rows[-1]['minutes']:g} min / {rows[0]['minutes']:g} min = {ratio:.3f} "
                f"({verdict} the 10 % goal)"
            )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()

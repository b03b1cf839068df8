"""Evaluate an ESC model at every bitrate on a folder of speech: PESQ-WB, STOI, mel distance, SI-SDR, code
utilization and each codebook's health (codes used, entropy); prints the tables, writes a CSV and a rate–distortion
plot.

    python examples/evaluate.py --model DIR --data DIR --out eval.csv [--plot rd.png] [--max-clips 32]
        [--max-seconds 10] [--unquantized]

`--unquantized` also scores the autoencoder's ceiling: the clips through encoder and decoder with the quantizers
bypassed (what no bitrate can beat; a CSV row of 0 streams and no bitrate, as in a training run's history).
"""

import argparse
import sys

from esc_hf import load_model
from esc_hf.codec.audio_io import AudioFileError, list_audio_files
from esc_hf.eval.plotting import plot_rate_distortion
from esc_hf.training.data import decode_files
from esc_hf.training.evaluation import (
    evaluate_codec,
    evaluate_unquantized,
    format_codebook_health,
    format_table,
    write_csv,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or Hub id (default: the packaged model)")
    parser.add_argument("--data", required=True, help="folder of audio files")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--plot", help="rate-distortion PNG to write")
    parser.add_argument("--max-clips", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--unquantized", action="store_true", help="also score the quantizers bypassed (the ceiling)")
    args = parser.parse_args()
    try:
        model = load_model(args.model)
        limit = int(args.max_seconds * model.config.sampling_rate)
        clips = [c[:limit] for c in decode_files(list_audio_files(args.data)[: args.max_clips])]
        rows = evaluate_codec(model, clips)
        ceiling = [evaluate_unquantized(model, clips)] if args.unquantized else []
    except (ValueError, AudioFileError, OSError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(format_codebook_health(rows[-1], model.config.codebook_size))
    for row in ceiling:
        print(f"unquantized (the quantizers bypassed): PESQ {row['pesq']:.3f}, STOI {row['stoi']:.3f}, "
              f"mel distance {row['mel_distance']:.3f}, SI-SDR {row['si_sdr']:.2f} dB")  # fmt: skip
    write_csv(rows + ceiling, args.out, {"model": args.model or "packaged default"})
    if args.plot:
        plot_rate_distortion({args.model or "ESC": rows}, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

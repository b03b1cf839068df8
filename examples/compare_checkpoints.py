"""Compare two checkpoints clip by clip: for every rate, the candidate's mean difference from the baseline on the
same clips, its bootstrap interval, the share of clips it improves and the change in the files' real rate.

    python examples/compare_checkpoints.py BASELINE CANDIDATE [--metrics pesq stoi] [--codec esc]

BASELINE and CANDIDATE are packaged checkpoint folders (their `eval_per_clip.csv`, which
`examples/package_checkpoint.py` writes) or per-clip CSVs (`benchmarks/compare_codecs.py`'s `compare.csv`). An
interval that holds 0 says the gain at that rate is within what another draw of clips could give.
"""

import argparse
import sys
from pathlib import Path

from esc_hf.eval.metrics import METRICS
from esc_hf.eval.paired import paired_differences


def per_clip_csv(text: str) -> Path:
    path = Path(text)
    return path / "eval_per_clip.csv" if path.is_dir() else path


def table(baseline: Path, candidate: Path, metrics: list[str], codec: str, confidence: float) -> str:
    lines = [
        f"| metric | kbps | clips | mean difference | {confidence:.0%} interval | clips better | real rate |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for metric in metrics:
        for d in paired_differences(baseline, candidate, metric, codec, confidence=confidence):
            lines.append(
                f"| {metric} | {d.kbps:g} | {d.clips} | {d.mean:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | "
                f"{d.share_better:.0%} | {d.rate_change:+.2%} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="checkpoint folder or per-clip CSV")
    parser.add_argument("candidate", help="checkpoint folder or per-clip CSV")
    parser.add_argument("--metrics", nargs="+", default=["pesq"], choices=METRICS)
    parser.add_argument("--codec", default="esc", help="the codec's rows to compare (default: esc)")
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args(argv)
    try:
        print(
            table(per_clip_csv(args.baseline), per_clip_csv(args.candidate), args.metrics, args.codec, args.confidence)
        )
    except ValueError as error:
        print(f"compare_checkpoints.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

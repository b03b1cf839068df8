"""Compare training runs at equal steps: reads each run's `eval_history.csv`, prints a Markdown table of the steps
that every run has evaluated, and draws the curves on shared axes.

    python examples/compare_runs.py control=RUN/study-control revival=RUN/study-revival [--plot runs.png]
        [--from-step 10000]

A run is `NAME=FOLDER` or a `FOLDER` (named after it); the folder is a training run's output folder or the
`eval_history.csv` itself. Runs compared this way should share their evaluation clips and bitrate (the trainer's
`--max_val_clips`, `--max_val_seconds` and validation folder).
"""

import argparse
import sys
from pathlib import Path

from esc_hf.eval.plotting import RUN_METRICS, plot_runs
from esc_hf.training.evaluation import read_history


def parse_run(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    path = Path(folder if sep else text)
    if path.is_dir():
        path = path / "eval_history.csv"
    default = path.parent.name if path.name == "eval_history.csv" else path.stem
    return (name if sep else default), path


def equal_step_table(histories: dict[str, list[dict]], metrics: tuple[str, ...]) -> str:
    """One line per run at each step that every run has evaluated (quantized rows only)."""
    by_run = {name: {r["step"]: r for r in rows if r["streams"] != 0} for name, rows in histories.items()}
    steps = sorted(set.intersection(*(set(rows) for rows in by_run.values())))
    lines = ["| step | run | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for step in steps:
        for name, rows in by_run.items():
            values = " | ".join(f"{rows[step].get(m, float('nan')):.3f}" for m in metrics)
            lines.append(f"| {step} | {name} | {values} |")
    return "\n".join(lines) if steps else "no step was evaluated by every run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER or FOLDER (a run's output folder or eval_history.csv)")
    parser.add_argument("--plot", help="PNG to write the curves to")
    parser.add_argument("--from-step", type=int, default=0, help="leave out evaluations before this step")
    parser.add_argument("--metrics", nargs="+", default=list(RUN_METRICS),
                        help=f"columns to compare (default: {' '.join(RUN_METRICS)})")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        runs = [parse_run(text) for text in args.runs]
        names = [name for name, _ in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"two runs have the same name: {names}; name them (NAME=FOLDER)")
        histories = {name: [r for r in read_history(path) if r["step"] >= args.from_step] for name, path in runs}
        for name, rows in histories.items():
            missing = [m for m in args.metrics if rows and m not in rows[0]]
            if missing:
                raise ValueError(f"run {name!r} has no column {missing[0]!r}")
        print(equal_step_table(histories, tuple(args.metrics)))
        if args.plot:
            plot_runs(histories, args.plot, tuple(args.metrics))
    except ValueError as error:
        print(f"compare_runs.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

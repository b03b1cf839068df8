"""Is one checkpoint better than another on the same clips? Paired differences with bootstrap intervals.

The val clips differ from each other far more than two nearby checkpoints do, so comparing two means hides whether a
gain is a gain: the same 78 clips, scored by both, give one difference per clip, and resampling those clips says how
far the mean difference could move on another draw of clips like them. Reads the per-clip CSVs that
`benchmarks/compare_codecs.py` and `examples/package_checkpoint.py` write (`eval_per_clip.csv`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import METRICS

LOWER_IS_BETTER = frozenset({"mel_distance"})
_NEEDED = ("file", "codec", "kbps", "file_kbps")


@dataclass(frozen=True)
class PairedDifference:
    """The candidate minus the baseline at one rate, over the clips both scored.

    `mean`, `low` and `high` are in the metric's units (`low`/`high`: the bootstrap interval of the mean);
    `share_better` is the fraction of clips where the candidate is better (higher, or lower for mel distance);
    `rate_change` is the relative change of the files' mean real rate (0.01 = 1 % more bits)."""

    kbps: float
    clips: int
    mean: float
    low: float
    high: float
    share_better: float
    rate_change: float


def read_per_clip(path: str | Path, codec: str, metric: str) -> dict[float, dict[str, tuple[float, float]]]:
    """{nominal kbps: {file: (metric, real kbps)}} for one codec's rows of a per-clip CSV."""
    path = Path(path)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in (*_NEEDED, metric) if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(
                    f"{path}: no column {', '.join(missing)} (a per-clip CSV has {', '.join(_NEEDED)}, "
                    f"{', '.join(METRICS)})"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from e
    by_rate: dict[float, dict[str, tuple[float, float]]] = {}
    for line, row in enumerate(rows, start=2):
        if row["codec"] != codec:
            continue
        try:
            kbps, value, real = float(row["kbps"]), float(row[metric]), float(row["file_kbps"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {line}: kbps, file_kbps and {metric} must be numbers") from None
        if not all(map(math.isfinite, (kbps, value, real))) or kbps <= 0 or real < 0:
            raise ValueError(f"{path}, line {line}: kbps, file_kbps or {metric} out of range")
        clips = by_rate.setdefault(kbps, {})
        if row["file"] in clips:
            raise ValueError(f"{path}, line {line}: {row['file']} at {kbps:g} kbps appears twice")
        clips[row["file"]] = (value, real)
    if not by_rate:
        raise ValueError(f"{path}: no rows for codec {codec!r}")
    return by_rate


def paired_differences(
    baseline: str | Path,
    candidate: str | Path,
    metric: str = "pesq",
    codec: str = "esc",
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[PairedDifference]:
    """Candidate minus baseline at every rate both CSVs have, on the same clips.

    Both must hold the same clips at a rate: a difference over different clips would measure the clips. The
    interval is the percentile bootstrap of the mean difference (clips resampled with replacement)."""
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    old, new = read_per_clip(baseline, codec, metric), read_per_clip(candidate, codec, metric)
    rates = sorted(old.keys() & new.keys())
    if not rates:
        raise ValueError(f"{baseline} and {candidate} share no rate for codec {codec!r}")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rng = np.random.default_rng(seed)
    results = []
    for kbps in rates:
        if old[kbps].keys() != new[kbps].keys():
            only = sorted(old[kbps].keys() ^ new[kbps].keys())
            raise ValueError(
                f"at {kbps:g} kbps the two CSVs score different clips (in one only: {', '.join(only[:3])}"
                f"{', ...' if len(only) > 3 else ''})"
            )
        files = sorted(old[kbps])
        before = np.array([old[kbps][f] for f in files])
        after = np.array([new[kbps][f] for f in files])
        diff = after[:, 0] - before[:, 0]
        means = diff[rng.integers(0, diff.size, (resamples, diff.size))].mean(axis=1)
        tail = (1 - confidence) / 2
        rate_before = before[:, 1].mean()
        results.append(
            PairedDifference(
                kbps=kbps,
                clips=diff.size,
                mean=float(diff.mean()),
                low=float(np.quantile(means, tail)),
                high=float(np.quantile(means, 1 - tail)),
                share_better=float(np.mean(sign * diff > 0)),
                rate_change=float(after[:, 1].mean() / rate_before - 1) if rate_before > 0 else math.nan,
            )
        )
    return results

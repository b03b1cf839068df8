"""esc_hf.eval.paired and examples/compare_checkpoints.py, on the shipped model's own per-clip scores."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from esc_hf import DEFAULT_MODEL
from esc_hf.eval.paired import paired_differences, read_per_clip

ROOT = Path(__file__).parent.parent
PER_CLIP = Path(DEFAULT_MODEL) / "eval_per_clip.csv"
spec = importlib.util.spec_from_file_location("compare_checkpoints", ROOT / "examples" / "compare_checkpoints.py")
compare_checkpoints = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_checkpoints)


def rows():
    with PER_CLIP.open(newline="") as f:
        return list(csv.DictReader(f))


def write(path, table):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return path


def shifted(path, metric, by, only_rate=None):
    """The shipped scores with `metric` moved by `by` on every ESC clip (at one rate, or all)."""
    table = rows()
    for row in table:
        if row["codec"] == "esc" and (only_rate is None or float(row["kbps"]) == only_rate):
            row[metric] = str(float(row[metric]) + by)
    return write(path, table)


def test_a_checkpoint_against_itself_differs_by_nothing():
    results = paired_differences(PER_CLIP, PER_CLIP)
    assert [d.kbps for d in results] == [1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    for d in results:
        assert d.clips == 78
        assert d.mean == d.low == d.high == 0.0
        assert d.share_better == 0.0 and d.rate_change == 0.0


def test_a_uniform_gain_is_found_at_its_rate_only(tmp_path):
    better = shifted(tmp_path / "better.csv", "pesq", 0.1, only_rate=9.0)
    by_rate = {d.kbps: d for d in paired_differences(PER_CLIP, better)}
    assert by_rate[9.0].mean == pytest.approx(0.1)
    assert by_rate[9.0].low == pytest.approx(0.1) and by_rate[9.0].high == pytest.approx(0.1)
    assert by_rate[9.0].share_better == 1.0
    assert by_rate[1.5].mean == 0.0 and by_rate[1.5].share_better == 0.0


def test_the_interval_covers_the_mean_and_is_as_wide_as_the_noise(tmp_path):
    table = rows()
    noise = np.random.default_rng(1).normal(0.02, 0.1, len(table))
    for row, n in zip(table, noise):
        row["pesq"] = str(float(row["pesq"]) + n)
    noisy = write(tmp_path / "noisy.csv", table)
    for d in paired_differences(PER_CLIP, noisy):
        assert d.low < d.mean < d.high
        # the bootstrap's standard error of a mean of 78 differences with sd 0.1 is about 0.011
        assert 0.02 < d.high - d.low < 0.08


def test_lower_mel_distance_counts_as_better(tmp_path):
    lower = shifted(tmp_path / "lower.csv", "mel_distance", -0.05)
    for d in paired_differences(PER_CLIP, lower, metric="mel_distance"):
        assert d.mean == pytest.approx(-0.05) and d.share_better == 1.0


def test_real_rate_change(tmp_path):
    table = rows()
    for row in table:
        row["file_kbps"] = str(float(row["file_kbps"]) * 1.01)
    dearer = write(tmp_path / "dearer.csv", table)
    for d in paired_differences(PER_CLIP, dearer):
        assert d.rate_change == pytest.approx(0.01)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop(0), "different clips"),
    (lambda t: t.append(dict(t[0])), "appears twice"),
    (lambda t: t[0].update(pesq="nan"), "out of range"),
    (lambda t: t[0].update(kbps="-1.5"), "out of range"),
    (lambda t: t[0].update(pesq="good"), "must be numbers"),
])  # fmt: skip
def test_bad_per_clip_files_are_refused_by_name(tmp_path, edit, message):
    table = rows()
    edit(table)
    with pytest.raises(ValueError, match=message):
        paired_differences(PER_CLIP, write(tmp_path / "bad.csv", table))


def test_files_that_are_not_per_clip_scores(tmp_path):
    with pytest.raises(ValueError, match="no column file"):
        read_per_clip(DEFAULT_MODEL / "eval_history.csv", "esc", "pesq")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not a readable CSV|no column"):
        read_per_clip(tmp_path / "binary.csv", "esc", "pesq")
    with pytest.raises(ValueError, match="not a readable CSV"):
        read_per_clip(tmp_path / "missing.csv", "esc", "pesq")
    with pytest.raises(ValueError, match="no rows for codec 'flac'"):
        read_per_clip(PER_CLIP, "flac", "pesq")
    with pytest.raises(ValueError, match="unknown metric"):
        read_per_clip(PER_CLIP, "esc", "loudness")
    with pytest.raises(ValueError, match="resamples"):
        paired_differences(PER_CLIP, PER_CLIP, resamples=1)


def test_command_line(tmp_path, capsys):
    better = shifted(tmp_path / "better.csv", "pesq", 0.1)
    assert compare_checkpoints.main([str(DEFAULT_MODEL), str(better), "--metrics", "pesq", "stoi"]) == 0
    out = capsys.readouterr().out
    assert "| pesq | 9 | 78 | +0.1000 | [+0.1000, +0.1000] | 100% | +0.00% |" in out
    assert "| stoi | 1.5 | 78 | +0.0000 |" in out
    assert compare_checkpoints.main([str(DEFAULT_MODEL), str(tmp_path / "none.csv")]) == 1
    assert "compare_checkpoints.py: error:" in capsys.readouterr().err

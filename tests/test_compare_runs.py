"""examples/compare_runs.py and the history reader it shares with the trainer (esc_hf.training.evaluation)."""

import importlib.util
import math
from pathlib import Path

import pytest

from esc_hf.training.evaluation import read_history, write_csv


ROOT = Path(__file__).parent.parent
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "examples" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def history(steps, pesq, usage=True):
    rows = [{"step": 900, "kbps": float("nan"), "streams": 0, "clips": 2, "pesq": 1.0, "mel_distance": 5.0,
             "si_sdr": -30.0}]  # fmt: skip  (a warm-start row: unquantized, no utilization)
    for step, value in zip(steps, pesq):
        row = {"step": step, "kbps": 9.0, "streams": 6, "clips": 2, "pesq": value, "mel_distance": 3.0,
               "si_sdr": -20.0, "utilization": 0.5}  # fmt: skip
        if usage:
            row["usage_s0_c0"] = 0.25
        rows.append(row)
    return rows


def test_history_round_trip_and_missing_cells(tmp_path):
    write_csv(history([1000, 1250], [1.5, 1.6]), tmp_path / "eval_history.csv")
    rows = read_history(tmp_path / "eval_history.csv")
    assert [r["step"] for r in rows] == [900, 1000, 1250] and rows[2]["pesq"] == 1.6
    assert isinstance(rows[0]["step"], int) and rows[0]["streams"] == 0
    assert math.isnan(rows[0]["utilization"])  # the warm-start row has no such cell


@pytest.mark.parametrize("text, message", [
    ("step,streams,pesq\n1000,6,oops\n", "not an evaluation history"),
    ("pesq,mel\n1.5,3\n", "not an evaluation history"),
    ("step,streams\n1000.5,6\n", "not an evaluation history"),
    (b"\xff\xfe\x00garbage", "not an evaluation history"),
])  # fmt: skip
def test_bad_history_is_a_value_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "eval_history.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message) as error:
        read_history(path)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match="does not exist"):
        read_history(tmp_path / "none.csv")


def test_compares_at_the_steps_every_run_has(tmp_path, capsys):
    write_csv(history([1000, 1250, 1500], [1.5, 1.6, 1.7]), tmp_path / "a" / "eval_history.csv")
    write_csv(history([1250, 1500, 1750], [1.4, 1.45, 1.5], usage=False), tmp_path / "b.csv")
    plot = tmp_path / "runs.png"
    assert compare_runs.main([f"first={tmp_path / 'a'}", str(tmp_path / "b.csv"), "--plot", str(plot)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| step | run | pesq | mel_distance | si_sdr | utilization |",
        "|---|---|---|---|---|---|",
        "| 1250 | first | 1.600 | 3.000 | -20.000 | 0.500 |",
        "| 1250 | b | 1.400 | 3.000 | -20.000 | 0.500 |",
        "| 1500 | first | 1.700 | 3.000 | -20.000 | 0.500 |",
        "| 1500 | b | 1.450 | 3.000 | -20.000 | 0.500 |",
    ]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b.csv"), "--from-step", "1600"]) == 0
    assert capsys.readouterr().out.strip() == "no step was evaluated by every run"


def test_bad_runs_are_one_line_errors(tmp_path, capsys):
    write_csv(history([1000], [1.5], usage=False), tmp_path / "a" / "eval_history.csv")
    cases = [
        ([str(tmp_path / "a"), str(tmp_path / "a")], "two runs have the same name"),
        ([str(tmp_path / "a"), "--metrics", "usage_s0_c0"], "has no column 'usage_s0_c0'"),
        ([str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, message in cases:
        assert compare_runs.main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

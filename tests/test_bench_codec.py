"""The speed benchmark's batched path (the one the GPU runs use) on the CPU, and its argument checks."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_script

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_codec.py"


def test_batched_run_writes_every_measurement(tmp_path):
    # A process of its own: the benchmark measures in processes it spawns, which import it as `__main__`.
    result = subprocess.run([sys.executable, str(BENCH), "--impls", "esc_hf", "--seconds", "1", "--repeats", "1",
                             "--rounds", "1", "--threads", "1", "--batch-sizes", "2", "--precisions", "fp32", "--csv",
                             "bench.csv"], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (tmp_path / "bench.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["op"], float(r["kbps"])) for r in rows} == {(op, k) for op in ("encode", "decode") for k in (1.5, 9.0)}
    gflop = {}
    for row in rows:
        assert row["impl"] == "esc_hf" and row["batch"] == "2" and row["device"] == "cpu"
        # 2 items of 1 s each per call: the speed column is that audio over the measured time
        assert float(row["x_real_time"]) == pytest.approx(2.0 / float(row["seconds"]), rel=0.01)  # as rounded in the CSV
        assert float(row["peak_mb"]) > 100  # the process holds torch and the model
        gflop[row["op"], float(row["kbps"])] = float(row["gflop"])
    # At 9 kbps ESC's encoder also runs four decoder stages (the cross-scale residuals): more work than at 1.5 kbps.
    assert gflop["encode", 9.0] > 1.5 * gflop["encode", 1.5] > 0


def test_bad_settings_are_refused(tmp_path, capsys):
    for args, message in ((["--precisions", "tf32"], "tf32 is a CUDA setting"),
                          (["--batch-sizes", "0"], "must be positive")):  # fmt: skip
        code, _, err = run_script(BENCH, *args, cwd=tmp_path, capsys=capsys)
        assert code == 2 and message in err
    if not torch.cuda.is_available():
        code, _, err = run_script(BENCH, "--device", "cuda", cwd=tmp_path, capsys=capsys)
        assert code == 2 and "no CUDA device" in err

"""The speed benchmark's batched path (the one the GPU runs use) on the CPU, and its argument checks."""

import csv
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_codec.py"


def bench(*args, cwd):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=cwd)


def test_batched_run_writes_every_measurement(tmp_path):
    result = bench("--impls", "esc_hf", "--seconds", "1", "--repeats", "1", "--rounds", "1", "--threads", "1",
                   "--batch-sizes", "2", "--precisions", "fp32", "--csv", "bench.csv", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (tmp_path / "bench.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["op"], float(r["kbps"])) for r in rows} == {(op, k) for op in ("encode", "decode") for k in (1.5, 9.0)}
    for row in rows:
        assert row["impl"] == "esc_hf" and row["batch"] == "2" and row["device"] == "cpu"
        assert float(row["x_real_time"]) > 0 and float(row["peak_mb"]) > 0 and float(row["pct_roofline"]) > 0
    assert "esc_hf" in result.stdout and "x RT" in result.stdout and "malloc reuse" in result.stdout


def test_bad_settings_are_refused(tmp_path):
    for args, message in ((["--precisions", "tf32"], "tf32 is a CUDA setting"),
                          (["--batch-sizes", "0"], "must be positive")):  # fmt: skip
        result = bench(*args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr
    if not torch.cuda.is_available():
        result = bench("--device", "cuda", cwd=tmp_path)
        assert result.returncode == 2 and "no CUDA device" in result.stderr

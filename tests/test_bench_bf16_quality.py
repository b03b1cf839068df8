"""The bf16 quality benchmark on the packaged trained model and the two real test clips."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script

from esc_hf import DEFAULT_MODEL, EscModel
from esc_hf.codec.audio_io import load_audio
from esc_hf.eval.metrics import pesq_wb

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_bf16_quality.py"
CLIPS = Path(__file__).parent / "data"


def test_scores_both_paths_and_the_float32_one_matches_the_model(tmp_path, capsys):
    code, out, err = run_script(BENCH, "--clips", CLIPS, "--kbps", 9, "--max-seconds", 2, "--threads", 1, "--csv",
                                tmp_path / "q.csv", capsys=capsys)  # fmt: skip
    assert code == 0, err
    with (tmp_path / "q.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["kbps"]) == 9 and row["clips"] == "2"
    assert 0.5 < float(row["codes_equal"]) <= 1
    # The float32 column is the exact path's PESQ, recomputed here from the model itself.
    model = EscModel.from_pretrained(DEFAULT_MODEL).eval()
    pesq = []
    for path in sorted(CLIPS.glob("*.flac")):
        audio = load_audio(path, 16000)[0][:32000]
        with torch.inference_mode():
            codes = model.encode(torch.from_numpy(audio)[None, None], num_streams=6).audio_codes
            pesq.append(pesq_wb(audio, model.decode(codes).audio_values[0, 0, : audio.size].numpy()))
    assert abs(float(row["pesq_fp32"]) - np.mean(pesq)) < 1e-6
    assert abs(float(row["pesq_bf16"]) - float(row["pesq_fp32"])) < 0.5
    assert "codes = fp32" in out


def test_a_rate_the_model_lacks_is_refused(capsys):
    code, _, err = run_script(BENCH, "--clips", CLIPS, "--kbps", 7, capsys=capsys)
    assert code == 2 and "--kbps 7" in err


def test_two_processes_measure_what_one_does(monkeypatch):
    """The forked processes run on one thread, and so does the one-process measurement here: the same kernels, so
    the same codes, and the same scores up to float rounding."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import bench_bf16_quality
    from compare_codecs import load_clips

    model = EscModel.from_pretrained(DEFAULT_MODEL).eval()
    clips = load_clips(CLIPS, None, 2.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = bench_bf16_quality.measure(model, clips, [1.5, 9.0])
    finally:
        torch.set_num_threads(threads)
    forked = bench_bf16_quality.measure(model, clips, [1.5, 9.0], jobs=2)
    assert [row["codes_equal"] for row in forked] == [row["codes_equal"] for row in here]
    assert forked == [pytest.approx(row, rel=1e-6, abs=1e-6) for row in here]

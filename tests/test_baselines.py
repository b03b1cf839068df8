import numpy as np
import pytest
import soundfile as sf
from conftest import SPEECH

from esc_hf.eval import baselines


def test_alignment_finds_a_codec_delay():
    clip = sf.read(str(SPEECH[1]), dtype="float32")[0][:16000]
    delayed = np.concatenate([np.zeros(123, dtype=np.float32), clip * 0.5])
    aligned, lag = baselines.align(clip, delayed)
    assert lag == 123 and np.allclose(aligned, clip * 0.5)
    assert baselines.align(clip, delayed, max_lag=0)[1] == 0


def test_a_missing_tool_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(baselines.CodecUnavailable, match="opusenc, opusdec not found on PATH"):
        baselines.OpusCodec().check()


def test_code_and_score_of_a_classical_codec(tmp_path):
    opus = baselines.OpusCodec()
    try:
        opus.check()
    except baselines.CodecUnavailable as reason:
        pytest.skip(str(reason))
    clip = sf.read(str(SPEECH[0]), dtype="float32")[0][:32000]
    decoded, row = baselines.code_and_score(opus, clip, 12.0, tmp_path)
    assert decoded.shape == clip.shape and decoded.dtype == np.float32
    assert row["codec"] == "opus" and row["kbps"] == 12.0 and 0 <= row["lag_samples"] <= baselines.MAX_LAG
    assert row["pesq"] > 3.0 and row["si_sdr"] > 5


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_compare_refuses_bad_jobs(jobs):
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        baselines.compare([], [], jobs=jobs)

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SPEECH
from esc_hf.eval.metrics import code_utilization, mel_distance, pesq_wb, si_sdr, stoi


@pytest.fixture(scope="module")
def speech():
    return sf.read(str(SPEECH[0]), dtype="float32")[0]


def test_identical_audio_scores_perfectly(speech):
    assert pesq_wb(speech, speech) == pytest.approx(4.64, abs=0.01)
    assert stoi(speech, speech) == pytest.approx(1.0, abs=1e-6)
    assert si_sdr(speech, speech) > 100
    assert mel_distance(speech, speech) == 0.0


def test_noise_scores_badly(speech):
    noise = np.random.default_rng(0).standard_normal(speech.size).astype(np.float32) * 0.1
    assert pesq_wb(speech, noise) < 1.2
    assert stoi(speech, noise) < 0.6
    assert si_sdr(speech, noise) < -20
    assert mel_distance(speech, noise) > 5


def test_mild_degradation_is_in_between(speech):
    noisy = speech + np.random.default_rng(1).standard_normal(speech.size).astype(np.float32) * 0.01
    assert 1.2 < pesq_wb(speech, noisy) < 4.5
    assert 10 < si_sdr(speech, noisy) < 30
    assert si_sdr(speech, 0.5 * speech) > 100, "SI-SDR ignores scale"


def test_code_utilization():
    uniform = torch.arange(64).repeat(3, 2, 1)[None]  # (1, 3 streams, 2 groups, 64 frames): every code once
    assert code_utilization(uniform, 64) == pytest.approx(1.0)
    assert code_utilization(torch.zeros(1, 3, 2, 64, dtype=torch.long), 64) == 0.0


def test_bad_metric_input():
    with pytest.raises(ValueError, match="differ in length"):
        si_sdr(np.zeros(10), np.zeros(11))
    with pytest.raises(ValueError, match="finite"):
        stoi(np.full(100, np.nan), np.zeros(100))

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SPEECH
from esc_hf import load_model
from esc_hf.eval.metrics import (
    code_utilization,
    codebook_health,
    entropy_kbps,
    mel_distance,
    pesq_wb,
    si_sdr,
    stoi,
    stream_usage,
)


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


def test_codebook_health_per_stream_and_codebook():
    codes = torch.zeros(2, 2, 3, 64, dtype=torch.long)  # (items, 2 streams, 3 codebooks, 64 frames)
    codes[:, 0, 0] = torch.arange(64)  # stream 0, codebook 0: every code once per item
    codes[:, 0, 1] = torch.arange(64) % 16  # 16 codes, equally often: 4 bits
    codes[1, 1, 2, :32] = 5  # stream 1, codebook 2: 96 zeros and 32 fives over both items
    health = codebook_health(codes, 64)
    assert len(health) == 2 * 2 * 3
    assert health["usage_s0_c0"] == 1.0 and health["entropy_s0_c0"] == pytest.approx(6.0)
    assert health["usage_s0_c1"] == 0.25 and health["entropy_s0_c1"] == pytest.approx(4.0)
    assert health["usage_s0_c2"] == 1 / 64 and health["entropy_s0_c2"] == 0.0
    assert health["usage_s1_c2"] == 2 / 64
    assert health["entropy_s1_c2"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert stream_usage(health) == pytest.approx({0: (1 + 0.25 + 1 / 64) / 3, 1: (1 / 64 + 1 / 64 + 2 / 64) / 3})
    with pytest.raises(ValueError, match="lie in"):
        codebook_health(codes + 64, 64)
    # Coded by their own distribution, these codes cost the sum of their codebooks' entropies per frame.
    bits = sum(value for key, value in health.items() if key.startswith("entropy_"))
    assert bits == pytest.approx(6 + 4 + 0.811278, abs=1e-6)
    assert entropy_kbps(codes, 64, frame_rate=50) == pytest.approx(bits * 50 / 1000)


def test_entropy_rate_of_real_codes_is_below_the_nominal_rate_and_tracks_collapse(speech):
    model = load_model(None)  # the packaged model: its coarse codebooks are collapsed (see docs/training_study.md)
    config = model.config
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(speech)[None, None]).audio_codes
    rate = entropy_kbps(codes, config.codebook_size, config.frame_rate)
    assert 0 < rate < config.target_bandwidths[-1]
    collapsed = codes.clone()
    collapsed[:, 0] %= 4  # stream 0 down to 4 codes per codebook: at most 2 bits a code
    assert entropy_kbps(collapsed, config.codebook_size, config.frame_rate) < rate
    spread = codes.clone()
    spread[:, 0] = torch.randint(config.codebook_size, spread[:, 0].shape, generator=torch.Generator().manual_seed(0))
    assert entropy_kbps(spread, config.codebook_size, config.frame_rate) > rate


def test_bad_metric_input():
    with pytest.raises(ValueError, match="differ in length"):
        si_sdr(np.zeros(10), np.zeros(11))
    with pytest.raises(ValueError, match="finite"):
        stoi(np.full(100, np.nan), np.zeros(100))

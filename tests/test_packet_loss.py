"""Loss patterns and Opus under loss (esc_hf/eval/packet_loss.py); ESC under loss: test_concealment.py."""

import numpy as np
import pytest
import soundfile as sf
from conftest import SPEECH

from esc_hf.eval.baselines import CodecUnavailable
from esc_hf.eval.metrics import pesq_wb
from esc_hf.eval.packet_loss import OpusLibrary, bernoulli_losses, gilbert_elliott_losses, parse_loss


def _bursts(lost: np.ndarray) -> list[int]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], lost.astype(int), [0]])))
    return list(edges[1::2] - edges[::2])


def test_patterns_have_the_asked_rate_and_bursts():
    n = 200_000
    random = bernoulli_losses(n, 0.1, seed=1)
    assert abs(random.mean() - 0.1) < 0.005 and not random[-1]
    assert np.array_equal(random, bernoulli_losses(n, 0.1, seed=1)) and not np.array_equal(
        random, bernoulli_losses(n, 0.1)
    )
    bursty = gilbert_elliott_losses(n, 0.1, mean_burst=3, seed=1)
    assert abs(bursty.mean() - 0.1) < 0.01 and abs(np.mean(_bursts(bursty)) - 3) < 0.15
    assert np.mean(_bursts(random)) < 1.2  # independent losses rarely follow each other
    assert not bernoulli_losses(50, 0.0).any()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bernoulli_losses(0, 0.1), "positive integer"),
        (lambda: bernoulli_losses(10, 1.0), r"\[0, 1\)"),
        (lambda: gilbert_elliott_losses(10, 0.1, mean_burst=0.5), "at least 1"),
    ],
)
def test_bad_patterns(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_parse_loss():
    assert parse_loss("10%") == pytest.approx(0.1) and parse_loss("0.25") == 0.25 and parse_loss(" 5 % ") == 0.05
    for bad in ("100%", "1", "-5%", "ten", "", "5%%"):
        with pytest.raises(ValueError):
            parse_loss(bad)


def test_opus_conceals_its_lost_frames():
    try:
        opus = OpusLibrary()
    except CodecUnavailable as error:
        pytest.skip(str(error))
    audio = sf.read(str(SPEECH[0]), dtype="float32")[0][:48000]
    clean, packet_bytes = opus.code(audio, 12)
    assert clean.size == audio.size and 15 < packet_bytes < 45  # 12 kbps VBR: 30 bytes per 20 ms on average
    assert pesq_wb(audio, clean) > 3.0  # time-aligned: Opus's look-ahead is removed
    lost = bernoulli_losses(151, 0.2, seed=0)
    concealed, _ = opus.code(audio, 12, lost)
    assert concealed.size == audio.size and np.isfinite(concealed).all()
    assert 1.0 < pesq_wb(audio, concealed) < pesq_wb(audio, clean)

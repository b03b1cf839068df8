"""Packet-loss concealment (esc_hf/codec/concealment.py): what each method decides for lost frames, and the
decoders that use it on real speech with the packaged model."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH

from esc_hf.codec.bitstream import ABSENT, CorruptError, EscHeader, iter_packet_bytes, pack
from esc_hf.codec.concealment import LOST, Concealment, conceal, sample_gains
from esc_hf.codec.loading import load_model
from esc_hf.codec.network import network_packets
from esc_hf.codec.streaming import decode_file
from esc_hf.eval.packet_loss import bernoulli_losses, esc_under_loss, gap_peak_ratio

STREAMS, GROUPS = 3, 2


def _codes(frames: int, lost=()) -> np.ndarray:
    codes = np.arange(STREAMS * GROUPS * frames).reshape(STREAMS, GROUPS, frames) % 50
    codes[..., list(lost)] = LOST
    return codes


def test_received_frames_are_untouched():
    codes = _codes(8, lost=[3, 4])
    for method in ("silence", "repeat", "interpolate"):
        out = conceal(codes, Concealment(method))
        kept = [0, 1, 2, 5, 6, 7]
        assert np.array_equal(out.codes[..., kept], codes[..., kept])
        assert (out.blend[kept] == 0).all() and (out.gain[kept] == 1).all()


def test_what_each_method_fills_a_gap_with():
    codes = _codes(8, lost=[3, 4])
    silence = conceal(codes, Concealment("silence"))
    assert (silence.gain[[3, 4]] == 0).all()
    repeat = conceal(codes, Concealment("repeat", max_frames=4))
    assert np.array_equal(repeat.codes[..., 3], codes[..., 2]) and np.array_equal(repeat.codes[..., 4], codes[..., 2])
    assert repeat.gain[[3, 4]].tolist() == [1.0, 0.75] and (repeat.blend == 0).all()
    interpolate = conceal(codes, Concealment("interpolate"))
    assert np.array_equal(interpolate.codes[..., 3], codes[..., 2])
    assert np.array_equal(interpolate.blend_codes[..., 4], codes[..., 5])
    assert np.allclose(interpolate.blend[[3, 4]], [1 / 3, 2 / 3])
    assert (interpolate.gain[[3, 4]] > 0.85).all()


def test_long_bursts_fade_to_silence_and_back():
    codes = _codes(40, lost=range(5, 35))
    out = conceal(codes, Concealment("interpolate", max_frames=10))
    assert out.gain[5] == 1 and (out.gain[15:25] == 0).all() and out.gain[34] == 1
    assert np.all(np.diff(out.gain[5:16]) < 0) and np.all(np.diff(out.gain[24:35]) > 0)


def test_the_next_frame_is_used_only_within_the_lookahead():
    codes = _codes(20, lost=range(2, 12))
    near = conceal(codes, Concealment("interpolate", max_frames=20), lookahead=4)
    assert (near.blend[2:8] == 0).all() and (near.blend[8:12] > 0).all()
    unknown = conceal(codes[..., :10], Concealment("interpolate", max_frames=20))  # the burst runs past the end
    assert (unknown.blend == 0).all()


def test_a_stream_that_starts_lost_and_a_rate_change_across_a_gap():
    codes = _codes(6, lost=[0, 1])
    out = conceal(codes, Concealment("repeat"))
    assert np.array_equal(out.codes[..., 0], codes[..., 2]) and out.gain[0] == 0
    codes = _codes(6, lost=[2])
    codes[2:, :, 3:] = ABSENT  # a lower rate after the gap
    out = conceal(codes, Concealment("interpolate"))
    assert (out.codes[2:, :, 2] == ABSENT).all() and (out.blend_codes[2:, :, 2] == ABSENT).all()


def test_gains_change_linearly_between_frame_centres():
    gains = sample_gains(np.array([1.0, 0.0, 1.0]), 4, 0, 12)
    assert gains.tolist() == [1, 1, 1, 0.75, 0.5, 0.25, 0, 0.25, 0.5, 0.75, 1, 1]


def test_bad_options():
    with pytest.raises(ValueError, match="unknown concealment method"):
        Concealment("noise")
    with pytest.raises(ValueError, match="max_frames"):
        Concealment("repeat", max_frames=0)


# ----------------------------------------------------------------------------------------------------------------
# On real speech with the packaged model


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def speech():
    """3 s of real speech."""
    return sf.read(str(SPEECH[1]), dtype="float32")[0][:48000]


PEAK_BOUND = 1.4


def test_no_click_or_noise_burst_at_gaps(model, speech):
    """Around every gap, no method plays much louder than the loss-free decode nearby, nor jumps further from one
    sample to the next (`gap_peak_ratio`). A concealed syllable can be a little louder or brighter than its
    neighbours, and so can the received frames next to a gap, which the decoder's context makes react to it: on the
    val clips, with the models of steps 10,000 to 26,900, the worst gap of 90 % of the clips and conditions is
    within 1.27-1.31 (peak) and 1.40-1.51 (steps) with interpolation, and that of 7-11 % above 1.3
    (docs/packet_loss.md). On this clip, this pattern gave peaks of 1.15 to 1.26 (silence / repeat / interpolate)
    with the models of steps 14,400 to 17,200, 1.08 / 1.08 / 1.13 with the step-18,600 one, 1.29 / 1.32 / 1.31
    with the step-20,000 one, where muting the gap (`silence`, which plays nothing in it) is as loud as filling it
    (the rise is the received frames', not the fill's), 1.14 / 1.23 / 1.15 with the step-23,400 one, 1.11 /
    1.33 / 1.16 with the step-25,140 one and 1.02 / 1.18 / 1.13 with the step-26,900 one. The peak bound is therefore
    1.4, above what these models give on this clip (three patterns, up to 1.33) and on 90 % of the val clips, and far
    below what a fault gives: a burst of white noise of 0.2 RMS in one gap gives a peak of 2.15 to 2.27, and a click
    of 0.2 steps of 3.0 to 4.3; both are checked below, so that each bound can fail."""
    header = EscHeader.for_model(model, 6, frames_per_packet=1)
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(speech)[None, None]).audio_codes.numpy()
    packets = network_packets(header, codes, speech.size)
    lost = bernoulli_losses(len(packets), 0.2, seed=3)
    clean = esc_under_loss(model, header, packets, np.zeros_like(lost), None, 50)
    spf = header.samples_per_frame
    for method in ("silence", "repeat", "interpolate"):
        decoded = esc_under_loss(model, header, packets, lost, method, 50)
        assert decoded.size == speech.size
        assert gap_peak_ratio(decoded, clean, lost, spf) <= PEAK_BOUND, method
        assert gap_peak_ratio(decoded, clean, lost, spf, steps=True) <= 2.0, method
    gap = np.flatnonzero(lost)[3] * spf
    burst = decoded.copy()
    burst[gap : gap + spf] += 0.2 * np.random.default_rng(0).standard_normal(spf).astype(np.float32)
    assert gap_peak_ratio(burst, clean, lost, spf) > PEAK_BOUND
    clicked = decoded.copy()
    clicked[gap + 100] += 0.2
    assert gap_peak_ratio(clicked, clean, lost, spf, steps=True) > 2.0


def test_a_file_with_missing_packets_decodes_only_with_concealment(model, speech, tmp_path):
    codes = model.encode(torch.from_numpy(speech)[None, None], num_streams=2).audio_codes
    header = EscHeader.for_model(model, 2, speech.size, frames_per_packet=5)
    data = pack(codes, header)
    # Drop packets 3 and 4 (of 30) and the final one, which a file written by a capture tool might lack.
    parts = list(iter_packet_bytes(io.BytesIO(data)))
    kept = [header.to_bytes()] + [data for i, (_, data) in enumerate(parts[1:]) if i not in (3, 4)]
    damaged = tmp_path / "lossy.esc"
    damaged.write_bytes(b"".join(kept[:-1]))
    with pytest.raises(CorruptError, match="was expected"):
        list(decode_file(model, damaged))
    blocks = list(decode_file(model, damaged, conceal="interpolate"))
    assert sum(block.size for block in blocks[1:]) == speech.size  # the header gives the length

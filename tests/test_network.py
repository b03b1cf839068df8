"""Network packets (esc_hf/codec/network.py) and the streaming decoder that takes them: framing, order, loss."""

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH, get_fixture
from hypothesis import given, settings
from hypothesis import strategies as st

from esc_hf.codec.bitstream import ABSENT, BitstreamError, EscHeader, TruncatedError
from esc_hf.codec.network import (
    NETWORK_OVERHEAD,
    network_packet_size,
    network_packets,
    pack_network_packet,
    parse_network_packet,
    truncate_network_packet,
)
from esc_hf.codec.streaming import EscStreamingDecoder, EscStreamingEncoder

# The seams of chunked decoding round differently from the whole-signal decode (see test_streaming.py).
SEAM_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def tiny():
    return get_fixture("swin_csrvq").model().eval()


@pytest.fixture(scope="module")
def speech():
    """3 s of real speech: 150 code frames."""
    return sf.read(str(SPEECH[0]), dtype="float32")[0][8000:56000]


def _header(model, streams=None, frames=1):
    return EscHeader.for_model(model, streams or model.config.num_streams, frames_per_packet=frames)


def _codes(model, audio, streams=None):
    with torch.inference_mode():
        x = torch.from_numpy(audio)[None, None]
        return model.encode(x, num_streams=streams or model.config.num_streams).audio_codes[0].numpy()


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_packets_round_trip_at_the_stated_size(tiny, speech, frames):
    header = _header(tiny, frames=frames)
    codes = _codes(tiny, speech)[..., :frames]
    for layers in range(1, header.num_streams + 1):
        for final, drop in ((False, 0), (True, 7)):
            data = pack_network_packet(header, 65535, codes[:layers], final, drop)
            bits = layers * frames * header.group_size * header.bits_per_code
            assert len(data) == network_packet_size(header, frames, layers, final)
            assert len(data) == NETWORK_OVERHEAD + 2 * final + -(-bits // 8)
            packet = parse_network_packet(data, header)
            assert (packet.sequence, packet.final, packet.drop, packet.layers) == (65535, final, drop, layers)
            assert np.array_equal(packet.codes[:layers], codes[:layers]) and (packet.codes[layers:] == ABSENT).all()


def test_every_damaged_bit_and_cut_is_refused(tiny, speech):
    header = _header(tiny, frames=2)
    data = pack_network_packet(header, 3, _codes(tiny, speech)[..., :2], final=True, drop=5)
    for bit in range(8 * len(data)):  # CRC-16 detects every single-bit error
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << bit % 8
        with pytest.raises(BitstreamError):
            parse_network_packet(bytes(damaged), header)
    for size in range(len(data)):
        with pytest.raises(BitstreamError):
            parse_network_packet(data[:size], header)
    other = dataclasses.replace(header, sample_rate=header.sample_rate + 1)  # another stream's parameters
    with pytest.raises(BitstreamError, match="CRC"):
        parse_network_packet(data, other)


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_parse_or_say_why(tiny, data):
    header = _header(tiny, frames=5)
    try:
        packet = parse_network_packet(data, header)
    except BitstreamError as error:
        assert str(error)
        return
    assert 1 <= packet.frames <= 5 and 1 <= packet.layers <= header.num_streams
    assert packet.codes.min() >= ABSENT and packet.codes.max() < header.codebook_size


def test_headers_that_network_packets_cannot_carry(tiny):
    with pytest.raises(ValueError, match="version 2"):
        pack_network_packet(EscHeader.for_model(tiny, 2, version=1), 0, np.zeros((2, 3, 1), np.int64))
    with pytest.raises(ValueError, match="up to 8"):
        pack_network_packet(_header(tiny, frames=9), 0, np.zeros((2, 3, 1), np.int64))
    with pytest.raises(ValueError, match="1 to 2 code frames"):
        pack_network_packet(_header(tiny, frames=2), 0, np.zeros((2, 3, 3), np.int64))


def test_truncating_a_packet_is_packing_fewer_layers(tiny, speech):
    header = _header(tiny, frames=2)
    codes = _codes(tiny, speech)[..., :2]
    data = pack_network_packet(header, 9, codes)
    for keep in range(1, header.num_streams + 2):
        expected = pack_network_packet(header, 9, codes[: min(keep, header.num_streams)])
        assert truncate_network_packet(data, header, keep) == expected
    with pytest.raises(ValueError, match="positive"):
        truncate_network_packet(data, header, 0)


_streams = {}


def _stream(model, audio, frames):
    """The streaming encoder's network packets of `audio`, fed in 7 ms blocks (made once per packet size)."""
    if frames not in _streams:
        encoder = EscStreamingEncoder(model, num_streams=model.config.num_streams, framing="network",
                                      frames_per_packet=frames)  # fmt: skip
        packets = []
        for start in range(0, audio.size, 112):
            packets += encoder.push(audio[start : start + 112])
        _streams[frames] = encoder, packets + encoder.flush()
    return _streams[frames]


def _decode(model, header, packets, **options):
    decoder = EscStreamingDecoder(model, header, 10, framing="network", **options)
    out = [decoder.push(packet) for packet in packets]
    return np.concatenate([*out, decoder.flush()]), decoder


@pytest.mark.parametrize("frames", [1, 5])  # 2 frames run as 1 does: the same chunks of 2 frames
def test_network_stream_is_the_file_stream(tiny, speech, frames):
    encoder, packets = _stream(tiny, speech, frames)
    header = encoder.header_info
    codes = _codes(tiny, speech)
    assert packets == network_packets(header, codes, speech.size)  # the codes are exact
    assert all(len(p) == network_packet_size(header, frames, header.num_streams) for p in packets[:-1])
    audio, decoder = _decode(tiny, header, packets)
    with torch.inference_mode():
        whole = tiny.decode(torch.from_numpy(codes)[None]).audio_values[0, 0, : speech.size].numpy()
    assert audio.size == speech.size == decoder.num_samples
    assert np.abs(audio - whole).max() <= SEAM_TOLERANCE
    concealed, _ = _decode(tiny, header, packets, conceal="interpolate")
    assert np.array_equal(concealed, audio)  # without loss, concealment changes no sample


def test_packets_in_any_order_within_the_window(tiny, speech):
    encoder, packets = _stream(tiny, speech, 2)
    in_order, _ = _decode(tiny, encoder.header_info, packets)
    decoder = EscStreamingDecoder(tiny, encoder.header_info, 10, framing="network")
    window = decoder.reorder_window
    rng = np.random.default_rng(0)
    shuffled = []
    for start in range(0, len(packets), window):  # any order within each window of packets
        block = packets[start : start + window]
        shuffled += [block[i] for i in rng.permutation(len(block))]
    out = [decoder.push(packet) for packet in shuffled[:-window]]
    out += [decoder.push(packets[3]), decoder.push(packets[0])]  # late duplicates: ignored, counted
    out += [decoder.push(packet) for packet in shuffled[-window:]]
    # Exact: the decoder puts the packets back in order, so it runs the very same chunks on the same codes.
    assert np.array_equal(np.concatenate([*out, decoder.flush()]), in_order)
    assert (decoder.late_packets, decoder.lost_packets) == (2, 0)


def test_a_lost_packet_needs_concealment(tiny, speech):
    encoder, packets = _stream(tiny, speech, 1)
    decoder = EscStreamingDecoder(tiny, encoder.header_info, 10, framing="network")
    with pytest.raises(TruncatedError, match="conceal"):
        for packet in packets[:5] + packets[6:]:
            decoder.push(packet)
    for bad in (-1, 65536, 1.5, True):
        with pytest.raises(ValueError, match="sequence number"):
            EscStreamingDecoder(tiny, encoder.header_info, framing="network").push_lost(bad)
    with pytest.raises(ValueError, match="network packets"):
        EscStreamingDecoder(tiny, encoder.header_info, conceal="repeat").push_lost(0)


@pytest.mark.parametrize("method", ["silence", "repeat", "interpolate"])
def test_loss_is_concealed_and_far_from_a_gap_nothing_changes(tiny, speech, method):
    encoder, packets = _stream(tiny, speech, 1)
    header = encoder.header_info
    if "clean" not in _streams:
        _streams["clean"] = _decode(tiny, header, packets)[0]
    clean = _streams["clean"]
    decoder = EscStreamingDecoder(tiny, header, 10, framing="network", conceal=method)
    gap = range(70, 74)
    out = []
    for i, packet in enumerate(packets):
        if i == 70:
            out.append(decoder.push(None))  # the next one missing
        elif i in gap:
            out.append(decoder.push_lost(i))
        else:
            out.append(decoder.push(packet))
    audio = np.concatenate([*out, decoder.flush()])
    assert audio.size == speech.size and decoder.lost_packets == len(gap)
    spf = header.samples_per_frame
    plan = decoder._decoder.plan
    reach = (plan.chunk_frames + plan.decode_left + plan.decode_right) * spf  # a chunk that sees no lost frame
    far = np.ones(audio.size, dtype=bool)
    far[gap.start * spf - reach : gap.stop * spf + reach] = False
    assert np.array_equal(audio[far], clean[far])  # those chunks run the plain decode on the same codes
    assert not np.array_equal(audio, clean)
    if method == "silence":
        assert np.all(audio[(gap.start + 1) * spf : (gap.stop - 1) * spf] == 0)


def test_a_stream_that_loses_its_end(tiny, speech):
    encoder, packets = _stream(tiny, speech, 1)
    decoder = EscStreamingDecoder(tiny, encoder.header_info, 10, framing="network", conceal="repeat")
    out = [decoder.push(packet) for packet in packets[:-3]]
    audio = np.concatenate([*out, decoder.flush()])  # what came, up to the last packet received
    assert audio.size == tiny.config.samples_for_code_frames(len(packets) - 3)
    assert decoder.finished and decoder.num_samples is None  # the length was in the lost final packet
    strict = EscStreamingDecoder(tiny, encoder.header_info, 10, framing="network")
    for packet in packets[:-3]:
        strict.push(packet)
    with pytest.raises(TruncatedError):
        strict.flush()

import copy
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH

from esc_hf import EscConfig, EscModel
from esc_hf.bitstream import (
    HEADER_SIZE,
    BitstreamError,
    CorruptError,
    EscHeader,
    FormatError,
    ModelMismatchError,
    PacketReader,
    PacketWriter,
    TruncatedError,
    pack,
    unpack,
)
from esc_hf.cli import load_model


@pytest.fixture(scope="module")
def model():
    return load_model(None)


@pytest.fixture(scope="module")
def clip():
    return torch.from_numpy(sf.read(str(SPEECH[0]), dtype="float32")[0])


@pytest.fixture(scope="module")
def small_stream(model, clip):
    """A real clip's first 0.3 s at 2 streams in packets of 4 frames: small enough to flip every bit."""
    audio = clip[:4800]
    codes = model.encode(audio[None, None], num_streams=2).audio_codes
    header = EscHeader.for_model(model, 2, audio.numel(), frames_per_packet=4)
    return pack(codes, header), codes, header


def test_round_trip_is_exact_on_real_codes(model, clip):
    for num_streams in (1, 3, 6):
        codes = model.encode(clip[None, None], num_streams=num_streams).audio_codes
        header = EscHeader.for_model(model, num_streams, clip.numel())
        decoded, meta = unpack(pack(codes, header), model)
        assert torch.equal(decoded, codes) and meta == header
        assert meta.kbps == pytest.approx(model.config.bandwidth_for_num_streams(num_streams)) and meta.num_samples == clip.numel()


@pytest.mark.parametrize("bits", [1, 3, 6, 10, 13, 16])
def test_round_trip_any_power_of_two_codebook(bits):
    header = EscHeader(16000, 320, 4, 3, bits, 7, b"c" * 8, b"b" * 8, 320 * 23 - 80, 23)
    codes = torch.from_numpy(np.random.default_rng(bits).integers(0, 2**bits, (1, 4, 3, 23)))
    codes[0, 0, 0, :2] = torch.tensor([0, 2**bits - 1])  # both extremes
    data = pack(codes, header)
    assert len(data) == HEADER_SIZE + sum(8 + -(-n * 12 * bits // 8) for n in (7, 7, 7, 2)) + 2
    decoded, meta = unpack(data)
    assert torch.equal(decoded, codes) and meta == header


def test_payload_is_the_nominal_bitrate():
    """ESC-Base, 10 s at 6 kbps: 7,500 bytes of codes (7,515: the model codes 160,000 samples as 501 frames), and
    header plus framing under 3 %."""
    model = EscModel(EscConfig())
    header = EscHeader.for_model(model, 4, 160000)
    codes = torch.randint(0, 1024, (1, 4, 3, header.num_frames))
    data = pack(codes, header)
    code_bytes = sum(header.payload_size(min(50, 501 - s)) for s in range(0, 501, 50))
    assert header.kbps == 6.0 and code_bytes == 7515
    assert (len(data) - 7500) / 7500 < 0.03, len(data)


def test_every_truncation_is_reported(small_stream):
    data, _, _ = small_stream
    for size in range(len(data)):
        with pytest.raises(TruncatedError, match="cut off|ends before"):
            unpack(data[:size])


def test_every_bit_flip_in_the_header_is_reported(small_stream):
    data, _, _ = small_stream
    for bit in range(HEADER_SIZE * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        expected = FormatError if bit < 5 * 8 else CorruptError  # magic and version; then the CRC
        with pytest.raises(expected, match="magic|version|header is corrupt"):
            unpack(bytes(flipped))


def test_every_bit_flip_in_every_packet_is_reported(small_stream):
    data, codes, _ = small_stream
    assert codes.shape[-1] == 16 and len(data) > HEADER_SIZE + 4 * 8  # four packets
    for bit in range(HEADER_SIZE * 8, len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((CorruptError, TruncatedError), match=r"packet \d+|after the final"):
            unpack(bytes(flipped))


def test_foreign_data_and_other_versions(small_stream):
    data, _, _ = small_stream
    with pytest.raises(FormatError, match="not an ESC bitstream"):
        unpack(b"RIFF" + data[4:])
    with pytest.raises(FormatError, match="not an ESC bitstream"):
        unpack(b"\x00")
    body = bytearray(data[: HEADER_SIZE - 4])
    body[4] = 2  # a future version, with a valid CRC
    future = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))) + data[HEADER_SIZE:]
    with pytest.raises(FormatError, match="unsupported ESC bitstream version 2"):
        unpack(future)


def test_forged_header_with_a_valid_crc(small_stream):
    data, _, header = small_stream
    forged = EscHeader(**{**header.__dict__, "num_samples": 10**9})
    with pytest.raises(CorruptError, match="do not fit"):
        unpack(forged.to_bytes() + data[HEADER_SIZE:])


def test_packets_out_of_order_trailing_data_and_foreign_packets(model, small_stream):
    data, codes, header = small_stream
    writer = PacketWriter(header)
    packets = [
        writer.packet(codes[0, ..., s : s + 4], final=s == 12, drop=16 * 320 - 4800 if s == 12 else 0)
        for s in range(0, 16, 4)
    ]
    assert header.to_bytes() + b"".join(packets) == data
    with pytest.raises(CorruptError, match="packet 2 arrived where packet 1 was expected"):
        unpack(header.to_bytes() + packets[0] + packets[2] + packets[1] + packets[3])
    with pytest.raises(CorruptError, match="unexpected data after the final packet"):
        unpack(data + b"\x00")
    other = EscHeader.for_model(model, 3, 4800, frames_per_packet=4)  # another stream's packets fail their CRC
    reader = PacketReader(other)
    with pytest.raises(CorruptError, match="CRC mismatch"):
        reader.parse(packets[0])


def test_model_mismatch(model, small_stream):
    data, _, _ = small_stream
    with pytest.raises(ModelMismatchError, match="another configuration"):
        unpack(data, EscModel(EscConfig.from_variant("esc-large")))
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.quantizers[3].vqs[1].embedding.weight[5, 0] += 1e-3
    with pytest.raises(ModelMismatchError, match="other codebooks"):
        unpack(data, retrained)
    retrained.config.commitment_loss_weight = 0.5  # training-only settings do not matter
    unpack(data, copy.deepcopy(model))


def test_bad_codes_are_rejected(model, small_stream):
    _, codes, header = small_stream
    for bad, message in [
        (codes.repeat(2, 1, 1, 1), "batch of 2"),
        (codes.float(), "integers"),
        (codes[:, :1], r"shape \(2 streams"),
        (codes + 1024, r"\[0, 1024\)"),
        (codes[..., :5], "make 16 code frames"),
    ]:
        with pytest.raises(ValueError, match=message):
            pack(bad, header)
    with pytest.raises(ValueError, match="number of samples"):
        pack(codes, EscHeader.for_model(model, 2))
    assert not issubclass(BitstreamError, RuntimeError) and issubclass(BitstreamError, ValueError)

import copy
import dataclasses
import io
import math
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_hf import EscConfig, EscModel
from esc_hf.codec.bitstream import (
    HEADER_SIZE,
    MAX_BITS_PER_CODE,
    MAX_GROUPS,
    MAX_PACKET_PAYLOAD,
    MAX_STREAMS,
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
from esc_hf.cli import load_model, main
from esc_hf.codec.streaming import EscStreamingDecoder, EscStreamingEncoder, decode_file, encode_file


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
    with pytest.raises(ValueError, match="1 to 4 code frames .the header's frames per packet., got 5"):
        PacketWriter(header).packet(codes[0, ..., :5])  # a reader would refuse it


# ----------------------------------------------------------------------------------------------------------------
# Headers that pass their CRC but not the model, the format's bounds, or the other fields


def _live(header):
    """The same stream with a live stream's header: its packets (CRC-seeded with bytes 0 … 31) fit both."""
    return dataclasses.replace(header, num_samples=None, num_frames=None)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"samples_per_frame": 160, "num_samples": 2400}, "samples per code frame is 160, this model's is 320"),
        ({"sample_rate": 8000}, "sample rate is 8000, this model's is 16000"),
        ({"group_size": 2}, "codebooks per stream is 2, this model's is 3"),
        ({"bits_per_code": 6}, "bits per code is 6, this model's is 10"),
        ({"num_streams": 7}, "7 streams, this model at most 6"),
    ],
)
def test_every_field_is_checked_against_the_model(model, small_stream, tmp_path, change, message):
    """A forger (or a buggy encoder) keeps the fingerprints: the fields themselves must match the model."""
    _, _, header = small_stream
    forged = dataclasses.replace(header, **change)
    shaped = torch.randint(0, forged.codebook_size, (1, forged.num_streams, forged.group_size, forged.num_frames))
    data = pack(shaped, forged)
    assert unpack(data)[1] == forged  # well-formed: only the model can tell
    with pytest.raises(ModelMismatchError, match=message):
        unpack(data, model)
    (tmp_path / "forged.esc").write_bytes(data)
    with pytest.raises(ModelMismatchError, match=message):
        next(decode_file(model, tmp_path / "forged.esc"))  # `esc decode` gave half the audio at 160


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sample_rate": 1}, "sample rate 1 Hz"),
        ({"sample_rate": 2**32 - 1}, "sample rate 4294967295 Hz"),
        ({"samples_per_frame": 0}, "0 samples per code frame"),
        ({"bits_per_code": 31}, "31 bits per code"),
        ({"bits_per_code": 17}, "17 bits per code"),
        ({"num_streams": 65}, "65 streams"),
        ({"group_size": 255}, "255 codebooks per stream"),
        ({"num_streams": 255, "group_size": 255, "bits_per_code": 31, "frames_per_packet": 32767}, "255 streams"),
        (
            {"num_streams": MAX_STREAMS, "group_size": MAX_GROUPS, "bits_per_code": MAX_BITS_PER_CODE,
             "frames_per_packet": 129},
            "packets of 129 frames × 65536 bits = 1,056,768 bytes",
        ),  # fmt: skip
        ({"num_samples": 0, "num_frames": 1}, "0 samples"),
        ({"num_samples": 4800, "num_frames": None}, "must both be known or both unknown"),
    ],
)
def test_impossible_header_values_are_named(small_stream, change, message):
    data, _, header = small_stream
    forged = dataclasses.replace(header, **change)
    with pytest.raises(CorruptError, match="the header holds impossible values: .*" + message):
        unpack(forged.to_bytes() + data[HEADER_SIZE:])
    with pytest.raises(ValueError, match=message):  # and no writer makes one
        PacketWriter(forged)


def test_the_largest_packet_the_format_allows_is_1_mib(small_stream):
    _, _, header = small_stream
    largest = dataclasses.replace(
        _live(header), num_streams=MAX_STREAMS, group_size=MAX_GROUPS, bits_per_code=MAX_BITS_PER_CODE,
        frames_per_packet=128,
    )  # fmt: skip
    assert largest.payload_size(largest.frames_per_packet) == MAX_PACKET_PAYLOAD == 2**20
    assert EscHeader.from_bytes(largest.to_bytes()) == largest


class _LargestRead(io.BytesIO):
    """A file that records the largest read asked of it."""

    largest = 0

    def read(self, size=-1):
        self.largest = max(self.largest, len(self.getbuffer()) if size is None or size < 0 else size)
        return super().read(size)


def test_no_read_is_sized_by_an_unchecked_frame_count(small_stream):
    """`esc info` asked for 8.26 GB (255 × 255 × 31 bits × 32,767 frames): now the header's bounds cap a packet
    at 1 MiB, and a frame count beyond the header's frames per packet is refused before the packet is read."""
    _, _, header = small_stream
    big = dataclasses.replace(
        _live(header), num_streams=MAX_STREAMS, group_size=MAX_GROUPS, bits_per_code=MAX_BITS_PER_CODE,
        frames_per_packet=128,
    )  # fmt: skip
    for count in (0x7FFF, 0xFFFF, 129, 0x8000):  # 0x8000: a final packet of 0 frames
        handle = _LargestRead(struct.pack("<HH", 0, count) + bytes(4096))
        with pytest.raises(CorruptError, match=rf"packet 0 \(code frame 0\) claims {count & 0x7FFF} code frames"):
            PacketReader(big).read(handle)
        assert handle.largest == 4, "only the packet's own header was read"
    # A whole packet given to `parse` (streaming) is held to the same count, however it got its CRC right.
    body = struct.pack("<HH", 0, 5) + bytes(header.payload_size(5))
    with pytest.raises(CorruptError, match="claims 5 code frames; the header allows 1 to 4 per packet"):
        PacketReader(header).parse(body + struct.pack("<I", zlib.crc32(body, header.crc_seed)))
    with pytest.raises(CorruptError, match="31 bits per code"):  # nor is a packet sized by an unchecked header
        PacketReader(dataclasses.replace(big, bits_per_code=31))


def test_a_model_whose_codes_do_not_fit_the_format_cannot_write():
    wide = EscModel(EscConfig(codebook_size=2**17, codebook_dims=[1] * 6))
    with pytest.raises(ValueError, match="do not fit the .esc format: 17 bits per code"):
        EscHeader.for_model(wide, 1, 16000)


def test_the_final_packet_must_leave_at_least_one_sample(model, small_stream):
    _, codes, header = small_stream
    live = _live(header)
    for drop, left in [(400, -80), (320, 0)]:  # one code frame holds 320 samples
        packet = PacketWriter(live).packet(codes[0, ..., :1], final=True, drop=drop)
        with pytest.raises(CorruptError, match=rf"drops {drop} samples, impossible for 1 code frames .* {left} samp"):
            unpack(live.to_bytes() + packet)
    packet = PacketWriter(live).packet(codes[0, ..., :1], final=True, drop=319)
    assert unpack(live.to_bytes() + packet)[1].num_samples == 1


def test_the_length_must_be_how_the_model_frames_audio(model, small_stream, tmp_path):
    """One code frame of ESC-Base decodes to 240 samples: 310 samples are 2 frames. Without the model only the
    format's bounds apply; with it, the decoders said "cannot give 310 samples" (not a BitstreamError)."""
    _, codes, header = small_stream
    live = _live(header)
    packet = PacketWriter(live).packet(codes[0, ..., :1], final=True, drop=10)
    assert unpack(live.to_bytes() + packet)[1].num_samples == 310
    with pytest.raises(CorruptError, match="leaving 310: this model makes 2 code frames of 310 samples, not 1"):
        unpack(live.to_bytes() + packet, model)
    with pytest.raises(CorruptError, match="this model makes 2 code frames"):
        EscStreamingDecoder(model, live.to_bytes()).push(packet)
    (tmp_path / "live.esc").write_bytes(live.to_bytes() + packet)
    with pytest.raises(CorruptError, match="this model makes 2 code frames"):
        list(decode_file(model, tmp_path / "live.esc"))
    known = dataclasses.replace(header, num_samples=310, num_frames=1)
    with pytest.raises(CorruptError, match="310 samples in 1 code frames; this model makes 2"):
        unpack(known.to_bytes() + packet, model)
    fits = PacketWriter(live).packet(codes[0, ..., :1], final=True, drop=80)
    assert unpack(live.to_bytes() + fits, model)[1].num_samples == 240


def test_an_empty_stream_is_never_written_and_never_read(model, small_stream, tmp_path, capsys):
    """The decision (docs/bitstream.md): a stream holds at least one sample."""
    _, codes, header = small_stream
    with pytest.raises(ValueError, match="no audio"):
        EscStreamingEncoder(model, num_streams=2).flush()
    for blocks in ([], [np.zeros(0, dtype=np.float32)]):
        with pytest.raises(ValueError, match="no audio"):
            encode_file(model, blocks, tmp_path / "empty.esc", 2)
        assert not (tmp_path / "empty.esc").exists()
    with pytest.raises(ValueError, match="num_samples must be positive"):
        EscHeader.for_model(model, 2, 0)

    # Forged: the final packet of one frame drops all 320 samples, and the header agrees.
    packet = PacketWriter(_live(header)).packet(codes[0, ..., :1], final=True, drop=320)
    empty = dataclasses.replace(header, num_samples=0, num_frames=1).to_bytes() + packet
    with pytest.raises(CorruptError, match="0 samples .a stream holds at least one"):
        unpack(empty)
    (tmp_path / "empty.esc").write_bytes(empty)
    path = str(tmp_path / "empty.esc")
    for args in (["info", path], ["decode", path, str(tmp_path / "out.wav")]):
        # `info` divided by zero; `decode` wrote a WAV of 0 samples and exited with 0
        assert main(args) == 1
        assert "0 samples (a stream holds at least one)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, `unpack` gives codes that mean something, or a BitstreamError


FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decodes_or_says_why(data: bytes, model=None) -> bool:
    """Whether `unpack` decoded `data`; fails the test unless it gave in-range codes of the header's shape or
    raised a `BitstreamError` (caught as `ValueError`, as `esc` does) with a message."""
    try:
        codes, header = unpack(data, model)
    except ValueError as error:
        assert isinstance(error, BitstreamError) and str(error), repr(error)
        return False
    assert codes.dtype == torch.int64
    assert tuple(codes.shape) == (1, header.num_streams, header.group_size, header.num_frames)
    assert 0 <= int(codes.min()) and int(codes.max()) < header.codebook_size
    assert header.num_samples >= 1 and header.bits_per_code <= MAX_BITS_PER_CODE
    if model is not None:
        config = model.config
        assert (header.sample_rate, header.samples_per_frame, header.group_size, header.bits_per_code) == (
            config.sampling_rate,
            config.samples_per_code_frame,
            config.group_size,
            config.bits_per_codebook,
        )
        assert header.num_streams <= config.num_streams
        assert model.config.code_frames_for_samples(header.num_samples) == header.num_frames
    return True


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["overwrite", "insert", "delete", "cut"]),
        st.integers(0, 2**16),
        st.binary(min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(edits=_EDITS)
def test_fuzz_damaged_bytes(model, small_stream, edits):
    data = bytearray(small_stream[0])
    for kind, at, chunk in edits:
        at %= len(data) + 1
        if kind == "overwrite":
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at : at + len(chunk)]
        else:
            del data[at:]
    for with_model in (None, model):
        _decodes_or_says_why(bytes(data), with_model)


_FIELD_RANGES = {
    "sample_rate": 2**32 - 1,
    "samples_per_frame": 2**16 - 1,
    "num_streams": 255,
    "group_size": 255,
    "bits_per_code": 255,
    "frames_per_packet": 2**16 - 1,
}


@st.composite
def _forged_streams(draw, header: EscHeader) -> bytes:
    """A header with any field values, some of them the real ones, and packets with any contents; every CRC right."""
    fields = {}
    for name in draw(st.sets(st.sampled_from(sorted(_FIELD_RANGES)), max_size=3)):
        real = getattr(header, name)
        fields[name] = draw(st.one_of(st.integers(0, _FIELD_RANGES[name]), st.integers(max(0, real - 2), real + 2)))
    lengths = draw(
        st.one_of(
            st.just((header.num_samples, header.num_frames)),
            st.just((None, None)),
            st.tuples(st.integers(0, 6000), st.integers(0, 20)),
            st.tuples(
                st.one_of(st.none(), st.integers(0, 2**64 - 2)), st.one_of(st.none(), st.integers(0, 2**32 - 2))
            ),
        )
    )
    forged = dataclasses.replace(header, **fields, num_samples=lengths[0], num_frames=lengths[1])

    # By default the real stream's packets (4 × 4 frames, 320 samples dropped), each possibly altered.
    plan = [(i, 4, i == 3, 320 if i == 3 else 0) for i in range(4)]
    plan = plan[: draw(st.integers(1, 4))] if draw(st.booleans()) else plan
    parts = [forged.to_bytes()]
    for sequence, frames, final, drop in plan:
        altered = draw(st.sets(st.sampled_from(["sequence", "frames", "final", "drop", "size"]), max_size=2))
        if "sequence" in altered:
            sequence = draw(st.integers(0, 2**16 - 1))
        if "frames" in altered:
            frames = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**15 - 1)))
        if "final" in altered:
            final = not final
        if "drop" in altered:
            drop = draw(st.one_of(st.integers(0, 700), st.integers(0, 2**16 - 1)))
        size = math.ceil(frames * forged.bits_per_frame / 8)
        if "size" in altered or size > 4096:
            size = draw(st.integers(0, 64))
        body = struct.pack("<HH", sequence, frames | (0x8000 if final else 0))
        body += struct.pack("<H", drop) if final else b""
        body += draw(st.binary(min_size=size, max_size=size))
        parts.append(body + struct.pack("<I", zlib.crc32(body, forged.crc_seed)))
    return b"".join(parts)


def test_fuzz_forged_streams(model, small_stream):
    header = small_stream[2]
    decoded = []

    @FUZZ
    @given(data=_forged_streams(header))
    def check(data):
        decoded.append([_decodes_or_says_why(data, with_model) for with_model in (None, model)])

    check()
    assert any(without for without, _ in decoded) and any(with_model for _, with_model in decoded), (
        "the forged streams must also include valid ones"
    )

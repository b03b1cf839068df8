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
    HEADER_SIZES,
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
    header = EscHeader.for_model(model, 2, audio.numel(), frames_per_packet=4, version=1)
    return pack(codes, header), codes, header


HEADER_SIZE = HEADER_SIZES[1]  # `small_stream` is version 1; the v2 tests are at the end


def test_round_trip_is_exact_on_real_codes(model, clip):
    for num_streams in (1, 3, 6):
        codes = model.encode(clip[None, None], num_streams=num_streams).audio_codes
        header = EscHeader.for_model(model, num_streams, clip.numel())
        decoded, meta = unpack(pack(codes, header), model)
        assert torch.equal(decoded, codes) and meta == header
        assert meta.kbps == pytest.approx(model.config.bandwidth_for_num_streams(num_streams)) and meta.num_samples == clip.numel()


@pytest.mark.parametrize("bits", [1, 3, 6, 10, 13, 16])
def test_round_trip_any_power_of_two_codebook(bits):
    header = EscHeader(16000, 320, 4, 3, bits, 7, b"c" * 8, b"b" * 8, 320 * 23 - 80, 23, version=1)
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
    header = EscHeader.for_model(model, 4, 160000, version=1)
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
    body[4] = 3  # a future version, with a valid CRC
    future = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))) + data[HEADER_SIZE:]
    with pytest.raises(FormatError, match="unsupported ESC bitstream version 3"):
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
    other = EscHeader.for_model(model, 3, 4800, frames_per_packet=4, version=1)  # another stream's packets fail their CRC
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
        pack(codes, EscHeader.for_model(model, 2, version=1))
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
    data = _damaged(small_stream[0], edits)
    for with_model in (None, model):
        _decodes_or_says_why(data, with_model)


def _damaged(data: bytes, edits) -> bytes:
    """`data` with `_EDITS`' overwrites, insertions, deletions and cuts applied."""
    data = bytearray(data)
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
    return bytes(data)


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


@st.composite
def _well_formed_streams(draw, header: EscHeader, codes: torch.Tensor, coder=None) -> bytes:
    """A live stream (no length in the header) written by `PacketWriter` from real `codes` `(1, streams, groups,
    frames)` with any of them changed (so that in v2 both entropy-coded and bit-packed layers occur), in packets of
    any layer counts (v2); the fuzzing needs valid streams too, to reach the decoder's deeper paths."""
    header = dataclasses.replace(header, num_samples=None, num_frames=None)
    codes = codes[0].numpy().copy()
    for _ in range(draw(st.integers(0, 8))):
        codes[tuple(draw(st.integers(0, n - 1)) for n in codes.shape)] = draw(st.integers(0, header.codebook_size - 1))
    writer = PacketWriter(header, coder)
    step = header.frames_per_packet
    packets = [codes[..., start : start + step] for start in range(0, codes.shape[-1], step)]
    packets = packets[: draw(st.integers(1, len(packets)))]
    data = [header.to_bytes()]
    for index, frames in enumerate(packets):
        layers = draw(st.integers(1, header.num_streams)) if header.version >= 2 else header.num_streams
        final = index == len(packets) - 1
        drop = draw(st.integers(0, frames.shape[-1] * header.samples_per_frame - 1)) if final else 0
        data.append(writer.packet(frames[:layers], final=final, drop=drop))
    return b"".join(data)


def test_fuzz_forged_streams(model, small_stream):
    header = small_stream[2]
    decoded = []

    @FUZZ
    @given(data=st.one_of(_forged_streams(header), _well_formed_streams(header, small_stream[1])))
    def check(data):
        decoded.append([_decodes_or_says_why(data, with_model) for with_model in (None, model)])

    check()
    assert any(without for without, _ in decoded) and any(with_model for _, with_model in decoded), (
        "the forged streams must also include valid ones"
    )


# ----------------------------------------------------------------------------------------------------------------
# Version 2: layers, entropy coding, truncation


@pytest.fixture(scope="module")
def tables(model):
    from esc_hf.codec.entropy import load_entropy_model

    return load_entropy_model(model)


@pytest.fixture(scope="module", params=["raw", "entropy"])
def v2_stream(request, model, clip, tables):
    """A real clip's first 0.3 s at 6 streams in packets of 4 frames, version 2, raw or entropy coded."""
    audio = clip[:4800]
    codes = model.encode(audio[None, None]).audio_codes
    coder = tables if request.param == "entropy" else None
    header = EscHeader.for_model(model, 6, audio.numel(), frames_per_packet=4, entropy_model=coder)
    return pack(codes, header, coder), codes, header, coder


def test_v2_round_trip_is_exact_at_every_rate(model, clip, tables):
    codes = model.encode(clip[None, None]).audio_codes
    for num_streams in range(1, 7):
        part = codes[:, :num_streams]
        for coder in (None, tables):
            header = EscHeader.for_model(model, num_streams, clip.numel(), entropy_model=coder)
            assert header.version == 2 and header.size == HEADER_SIZES[2]
            decoded, meta = unpack(pack(part, header, coder), model)  # the model's folder gives the tables
            assert torch.equal(decoded, part) and meta == header


def test_coarse_codes_do_not_depend_on_finer_streams(model, clip):
    codes = model.encode(clip[None, None]).audio_codes
    for num_streams in range(1, 6):
        assert torch.equal(model.encode(clip[None, None], num_streams=num_streams).audio_codes, codes[:, :num_streams])


def test_truncate_equals_encoding_at_the_lower_rate(model, clip, tables, tmp_path):
    """Byte for byte, so the decoded audio is the lower rate's, bit for bit."""
    from esc_hf.codec.bitstream import truncate, truncate_packet

    codes = model.encode(clip[None, None]).audio_codes
    for coder in (None, tables):
        full = pack(codes, EscHeader.for_model(model, 6, clip.numel(), entropy_model=coder), coder)
        for num_streams in range(1, 7):
            header = EscHeader.for_model(model, num_streams, clip.numel(), entropy_model=coder)
            low = pack(codes[:, :num_streams], header, coder)
            assert truncate(full, num_streams) == low
        assert truncate(full, 9) == full  # more streams than it has: unchanged
        header = EscHeader.from_bytes(full)
        packet = full[header.size :][: 100000]
        reader = PacketReader(header, decode_codes=False)
        first = reader.read(io.BytesIO(packet))
        one = truncate_packet(packet[: first.size], header, 2)
        assert one == low_packet(model, codes, clip, coder, 2)
    (tmp_path / "full.esc").write_bytes(full)
    assert main(["truncate", str(tmp_path / "full.esc"), str(tmp_path / "low.esc"), "--kbps", "3"]) == 0
    assert main(["roundtrip", str(SPEECH[0]), str(tmp_path / "rt.wav"), "--kbps", "3"]) == 0
    assert main(["decode", str(tmp_path / "low.esc"), str(tmp_path / "low.wav")]) == 0
    # the same codes through the same chunked decoder, on one machine: the same computation, so the same samples
    assert np.array_equal(sf.read(str(tmp_path / "low.wav"))[0], sf.read(str(tmp_path / "rt.wav"))[0])


def low_packet(model, codes, clip, coder, num_streams):
    """The first packet of the clip encoded at `num_streams` streams."""
    header = EscHeader.for_model(model, num_streams, clip.numel(), entropy_model=coder)
    low = pack(codes[:, :num_streams], header, coder)
    header = EscHeader.from_bytes(low)
    reader = PacketReader(header, decode_codes=False)
    first = reader.read(io.BytesIO(low[header.size :]))
    return low[header.size : header.size + first.size]


def test_truncate_refuses_what_it_cannot_do(small_stream, v2_stream, tmp_path, capsys):
    from esc_hf.codec.bitstream import truncate

    with pytest.raises(FormatError, match="version 1 stream has no layers"):
        truncate(small_stream[0], 1)
    with pytest.raises(ValueError, match="at least 1"):
        truncate(v2_stream[0], 0)
    (tmp_path / "x.esc").write_bytes(v2_stream[0])
    for kbps, message in (("2", "not a multiple of this stream's 1.5 kbps"), ("12", "cannot be raised to 12")):
        assert main(["truncate", str(tmp_path / "x.esc"), str(tmp_path / "y.esc"), "--kbps", kbps]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "y.esc").exists()
    damaged = bytearray(v2_stream[0])
    damaged[-10] ^= 1
    with pytest.raises(CorruptError, match="CRC mismatch"):
        truncate(bytes(damaged), 1)  # a relay checks before it copies


def test_v2_every_truncation_and_bit_flip_is_reported(v2_stream):
    data, codes, header, coder = v2_stream
    assert torch.equal(unpack(data, entropy_model=coder)[0], codes)
    for size in range(len(data)):
        with pytest.raises(TruncatedError, match="cut off|ends before"):
            unpack(data[:size], entropy_model=coder)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((CorruptError, TruncatedError, FormatError)):
            unpack(bytes(flipped), entropy_model=coder)


def test_v2_tables_must_be_the_ones_the_stream_names(model, v2_stream, speech_codes_for_tables):
    from esc_hf.codec.entropy import EntropyModel

    data, _, header, coder = v2_stream
    if coder is None:
        assert header.coder == 0 and header.coder_fingerprint == bytes(8)
        return
    with pytest.raises(ModelMismatchError, match="entropy coded .* no entropy model"):
        unpack(data)  # no model, no tables
    other = EntropyModel.fit(speech_codes_for_tables, "none", 1024)
    with pytest.raises(ModelMismatchError, match="other tables"):
        unpack(data, model, entropy_model=other)
    with pytest.raises(ValueError, match="does not match the header"):
        PacketWriter(header, other)
    info = PacketReader(header, decode_codes=False)  # checking without the tables (esc info) works
    handle = io.BytesIO(data[header.size :])
    while info.read(handle) is not None:
        pass
    assert info.finished


@pytest.fixture(scope="module")
def speech_codes_for_tables(model, clip):
    return [model.encode(clip[None, None]).audio_codes[0].numpy()]


@pytest.mark.parametrize(
    "change, message",
    [({"coder": 7}, "coder 7"), ({"coder": 0, "coder_fingerprint": b"x" * 8}, "raw stream with an entropy model")],
)
def test_v2_header_fields_are_checked(v2_stream, change, message):
    data, _, header, _ = v2_stream
    forged = dataclasses.replace(header, **change)
    with pytest.raises(CorruptError, match=message):
        unpack(forged.to_bytes() + data[header.size :])


def test_v2_no_read_is_sized_by_an_unchecked_field(v2_stream):
    """A forged layer size is checked against the raw size of the packet's (checked) frame count before a read."""
    _, _, header, _ = v2_stream
    for field in (0x7FFF, 0xFFFF, 0x8001, 200):
        handle = _LargestRead(struct.pack("<HHH", 0, 4, field) + bytes(70000))
        with pytest.raises(CorruptError, match="layer 0"):
            PacketReader(header, decode_codes=False).read(handle)
        assert handle.largest <= 4, "only the packet's header and the layer's size were read"


def test_packets_with_fewer_layers_decode_frame_by_frame(model, clip):
    """A rate that changes from packet to packet (9 → 3 → 9 kbps, streaming encoder): each stretch away from a
    switch equals the constant-rate decode within float rounding of the chunked decode, and no switch clicks:
    the peak level near each switch stays within that of the two constant-rate decodes there."""
    from esc_hf.codec.bitstream import ABSENT
    from esc_hf.codec.streaming import ChunkPlan, EscStreamingDecoder, EscStreamingEncoder

    audio = np.concatenate([sf.read(str(path), dtype="float32")[0] for path in SPEECH])[:80000]  # 5 s

    def stream(rates):
        encoder = EscStreamingEncoder(model, kbps=9, chunk_frames=50, frames_per_packet=10)  # 1 s model calls
        packets = []
        for index, start in enumerate(range(0, audio.size, 3200)):  # 0.2 s: one packet of 10 frames per push
            encoder.set_rate(kbps=rates(index))
            packets += encoder.push(audio[start : start + 3200])
        packets += encoder.flush()
        decoder = EscStreamingDecoder(model, encoder.header, chunk_frames=50)
        return encoder.header, packets, np.concatenate([decoder.push(p) for p in packets])

    switching = lambda index: 3 if 8 <= index < 16 else 9  # noqa: E731
    header, packets, mixed = stream(switching)
    _, _, high = stream(lambda index: 9)
    _, _, low = stream(lambda index: 3)
    codes, _ = unpack(header + b"".join(packets), model)
    assert (codes == ABSENT).any() and mixed.size == high.size == low.size == audio.size
    plan = ChunkPlan.for_model(model, 50)
    margin = 320 * (max(plan.decode_left, plan.decode_right) + 10)
    reached = (codes[0, 2, 0] >= 0).numpy()  # the frames whose packets hold a third layer
    switches = [int(np.flatnonzero(~reached)[0]) * 320, int(np.flatnonzero(~reached)[-1] + 1) * 320]
    # one low stretch of whole packets (later than the pushes by the encoder's look-ahead)
    assert (~reached).sum() * 320 == switches[1] - switches[0] and (~reached).sum() % 10 == 0
    away_high = np.r_[0 : switches[0] - margin, switches[1] + margin : audio.size]
    away_low = np.r_[switches[0] + margin : switches[1] - margin]
    assert np.abs(mixed[away_high] - high[away_high]).max() <= 1e-6
    assert np.abs(mixed[away_low] - low[away_low]).max() <= 1e-6
    for at in switches:
        near = slice(at - margin, at + margin)
        assert np.abs(mixed[near]).max() <= 1.1 * max(np.abs(high[near]).max(), np.abs(low[near]).max())


def _v2_decodes_or_says_why(data: bytes, model=None, entropy_model=None) -> bool:
    """`_decodes_or_says_why` for version 2: codes in range, `ABSENT` only in trailing streams; and `truncate`
    either raises a `BitstreamError` too or gives a stream that decodes to the leading streams' codes."""
    from esc_hf.codec.bitstream import ABSENT, streams_per_frame, truncate

    try:
        codes, header = unpack(data, model, entropy_model)
    except ValueError as error:
        assert isinstance(error, BitstreamError) and str(error), repr(error)
        decoded = False
    else:
        assert tuple(codes.shape) == (1, header.num_streams, header.group_size, header.num_frames)
        assert int(codes.max()) < header.codebook_size and int(codes.min()) >= ABSENT
        present = streams_per_frame(codes[0].numpy())
        assert present.min() >= 1
        stream = np.arange(header.num_streams)[:, None, None]
        assert np.array_equal(codes[0].numpy() >= 0, np.broadcast_to(stream < present, codes[0].shape))
        decoded = True
    try:
        low = truncate(data, 1)
    except ValueError as error:
        assert isinstance(error, BitstreamError) and str(error), repr(error)
    else:
        if decoded:
            assert torch.equal(unpack(low, model, entropy_model)[0], codes[:, :1])
    return decoded


@FUZZ
@given(edits=_EDITS)
def test_fuzz_damaged_v2_bytes(model, tables, v2_stream, edits):
    data = _damaged(v2_stream[0], edits)
    _v2_decodes_or_says_why(data, None, v2_stream[3])
    _v2_decodes_or_says_why(data, model)


@st.composite
def _forged_v2_streams(draw, header: EscHeader, coder=None) -> bytes:
    """A v2 header with some fields changed and packets of any layers (sizes, flags, contents; with `coder`, also
    layers it really coded, of any codes); every CRC right."""
    fields = {}
    for name in draw(st.sets(st.sampled_from(["num_streams", "frames_per_packet", "coder"]), max_size=1)):
        fields[name] = draw(st.integers(0, 8))
    forged = dataclasses.replace(header, **fields, num_samples=None, num_frames=None)
    seed = forged.crc_seed
    parts = [forged.to_bytes()]
    packets = draw(st.integers(1, 3))
    for sequence in range(packets):
        frames = draw(st.one_of(st.just(4), st.integers(0, 6)))
        final = sequence == packets - 1 if draw(st.integers(0, 3)) else draw(st.booleans())
        head = struct.pack("<HH", sequence, frames | (0x8000 if final else 0))
        head += struct.pack("<H", draw(st.integers(0, 700))) if final else b""
        body, previous = [head], None
        for layer in range(draw(st.one_of(st.integers(1, 2), st.integers(0, 7)))):
            raw = draw(st.integers(0, 3)) > 0  # mostly bit-packed layers, mostly of the right size
            size = math.ceil(frames * 30 / 8) if raw and draw(st.integers(0, 3)) else draw(st.integers(1, 20))
            payload = draw(st.binary(min_size=size, max_size=size))
            codes = np.array(draw(st.lists(st.integers(0, 1023), min_size=3 * frames, max_size=3 * frames)))
            codes = codes.reshape(3, frames)
            if coder is not None and 0 < frames and layer < 6 and draw(st.booleans()):
                coded = coder.encode_layer(layer, codes, previous if previous is not None else codes)
                raw, payload = False, coded
                size = len(payload)
            previous = codes
            field = struct.pack("<H", size | (0x8000 if raw else 0))
            crc = zlib.crc32(payload, zlib.crc32(head + bytes([layer]) + field, seed))
            body += [field, payload, struct.pack("<I", crc)]
        body.append(b"\x00\x00")
        parts.append(b"".join(body))
    return b"".join(parts)


def test_fuzz_forged_v2_streams(model, tables, v2_stream):
    header, coder = v2_stream[2], v2_stream[3]
    decoded = []

    @FUZZ
    @given(data=st.one_of(_forged_v2_streams(header, coder), _well_formed_streams(header, v2_stream[1], coder)))
    def check(data):
        decoded.append(_v2_decodes_or_says_why(data, None, coder))

    check()
    assert any(decoded), "the forged streams must also include valid ones"

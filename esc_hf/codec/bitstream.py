"""The `.esc` bitstream: a checked header, then packets of bit-packed codes, each with its own CRC.

The layout is specified in `docs/bitstream.md`. `pack` / `unpack` turn codes into bytes and back;
`PacketWriter` / `PacketReader` do the same one packet at a time, for files longer than memory and for streaming.
Every defect of the input (truncation, a flipped bit, a foreign file, a file from another model) raises a
`BitstreamError` subclass whose message says what is wrong; nothing is decoded from bytes that failed a check.
"""

import hashlib
import io
import json
import math
import struct
import zlib
from dataclasses import dataclass, replace
from typing import BinaryIO

import numpy as np
import torch

MAGIC = b"\x89ESC"
VERSION = 1
DEFAULT_FRAMES_PER_PACKET = 50  # 1 s of ESC codes: 750 bytes at 6 kbps, so 8 bytes of framing cost about 1 %
UNKNOWN_SAMPLES = 2**64 - 1  # a live stream's header is sent before its length is known
UNKNOWN_FRAMES = 2**32 - 1

# magic, version, sample rate, samples per code frame, streams, groups, bits per code, frames per packet,
# config fingerprint, codebook fingerprint | number of samples, number of code frames | CRC-32 of all before it.
_PARAMS = struct.Struct("<4sBIHBBBH8s8s")
_LENGTHS = struct.Struct("<QI")
_CRC = struct.Struct("<I")
HEADER_SIZE = _PARAMS.size + _LENGTHS.size + _CRC.size
# Packet: sequence number, frame count (top bit: final packet) [, samples to drop after the final packet's
# frames], payload, CRC-32 seeded with the stream's parameters (so a packet from another stream fails its check).
_PACKET = struct.Struct("<HH")
_DROP = struct.Struct("<H")
_FINAL = 0x8000
MAX_FRAMES_PER_PACKET = _FINAL - 1
# Format limits, far above any ESC model (ESC-Base: 16 kHz, 320 samples per frame, 6 × 3 × 10 bits) and low enough
# that a forged header cannot make a reader allocate much: a packet's size is checked against these before it is read.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
MAX_SAMPLES_PER_FRAME = 0x7FFF  # the final packet drops under 2 frames of samples: that must fit its 16 bits
MAX_STREAMS = 64
MAX_GROUPS = 64
MAX_BITS_PER_CODE = 16
MAX_PACKET_PAYLOAD = 1 << 20  # bytes of codes; ESC-Base (22.5 bytes a frame) stays under it at any frame count

# Every field that decides what a code means or how it is decoded; training-only fields are left out so that
# changing a loss weight does not orphan files. Never remove a name: old files' fingerprints depend on this list.
_ARCHITECTURE_FIELDS = (
    "sampling_rate",
    "num_frequency_bins",
    "window_length_ms",
    "hop_length_ms",
    "patch_size",
    "hidden_dims",
    "num_heads",
    "depth",
    "window_size",
    "mlp_ratio",
    "backbone",
    "conv_kernel_size",
    "conv_depth",
    "quantizer",
    "num_streams",
    "overlap",
    "group_size",
    "codebook_size",
    "codebook_dims",
    "l2norm",
)


class BitstreamError(ValueError):
    """An `.esc` stream or file cannot be decoded; the message says why."""


class FormatError(BitstreamError):
    """Not an `.esc` stream (wrong magic) or a format version this code does not read."""


class CorruptError(BitstreamError):
    """A CRC check failed or a field holds an impossible value."""


class TruncatedError(BitstreamError):
    """The data ends before the stream does."""


class ModelMismatchError(BitstreamError):
    """The stream was encoded by a model other than the one asked to decode it."""


def _canonical(value):
    # 20 and 20.0 mean the same window length and must hash the same.
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def config_fingerprint(config) -> bytes:
    """8 bytes of SHA-256 over the architecture fields of an `EscConfig`."""
    fields = {name: _canonical(getattr(config, name)) for name in _ARCHITECTURE_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()[:8]


def codebook_fingerprint(model) -> bytes:
    """8 bytes of SHA-256 over every codebook table (float32, in module order): what the codes index."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name.endswith(".embedding.weight"):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.digest()[:8]


@dataclass(frozen=True)
class EscHeader:
    """What an `.esc` header says. `num_samples` / `num_frames` are None in a live stream's header."""

    sample_rate: int
    samples_per_frame: int
    num_streams: int
    group_size: int
    bits_per_code: int
    frames_per_packet: int
    config_fingerprint: bytes
    codebook_fingerprint: bytes
    num_samples: int | None = None
    num_frames: int | None = None

    @classmethod
    def for_model(
        cls,
        model,
        num_streams: int,
        num_samples: int | None = None,
        frames_per_packet: int = DEFAULT_FRAMES_PER_PACKET,
    ) -> "EscHeader":
        """The header of `model`'s codes with `num_streams` streams for `num_samples` samples (None: unknown)."""
        config = model.config
        num_streams = model.config.resolve_num_streams(num_streams)
        if not 1 <= frames_per_packet <= MAX_FRAMES_PER_PACKET:
            raise ValueError(f"frames_per_packet must be from 1 to {MAX_FRAMES_PER_PACKET}, got {frames_per_packet}")
        num_frames = None
        if num_samples is not None:
            if num_samples < 1:
                raise ValueError(f"num_samples must be positive, got {num_samples}")
            num_frames = model.config.code_frames_for_samples(num_samples)
        header = cls(
            sample_rate=config.sampling_rate,
            samples_per_frame=config.samples_per_code_frame,
            num_streams=num_streams,
            group_size=config.group_size,
            bits_per_code=config.bits_per_codebook,
            frames_per_packet=frames_per_packet,
            config_fingerprint=config_fingerprint(config),
            codebook_fingerprint=codebook_fingerprint(model),
            num_samples=num_samples,
            num_frames=num_frames,
        )
        if problems := header._problems():  # never write a stream that the reader would reject
            raise ValueError("this model's codes do not fit the .esc format: " + "; ".join(problems))
        return header

    # -- derived numbers ----------------------------------------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        return 1 << self.bits_per_code

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame

    @property
    def bits_per_frame(self) -> int:
        return self.num_streams * self.group_size * self.bits_per_code

    @property
    def kbps(self) -> float:
        """Nominal bitrate of the codes."""
        return self.bits_per_frame * self.frame_rate / 1000

    @property
    def duration(self) -> float | None:
        return None if self.num_samples is None else self.num_samples / self.sample_rate

    def payload_size(self, frames: int) -> int:
        """Bytes of packed codes in a packet of `frames` code frames."""
        return math.ceil(frames * self.bits_per_frame / 8)

    @property
    def crc_seed(self) -> int:
        return zlib.crc32(self._params_bytes())

    def with_length(self, num_samples: int, num_frames: int) -> "EscHeader":
        return replace(self, num_samples=num_samples, num_frames=num_frames)

    # -- bytes --------------------------------------------------------------------------------------------------

    def _params_bytes(self) -> bytes:
        return _PARAMS.pack(
            MAGIC,
            VERSION,
            self.sample_rate,
            self.samples_per_frame,
            self.num_streams,
            self.group_size,
            self.bits_per_code,
            self.frames_per_packet,
            self.config_fingerprint,
            self.codebook_fingerprint,
        )

    def to_bytes(self) -> bytes:
        samples = UNKNOWN_SAMPLES if self.num_samples is None else self.num_samples
        frames = UNKNOWN_FRAMES if self.num_frames is None else self.num_frames
        body = self._params_bytes() + _LENGTHS.pack(samples, frames)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> "EscHeader":
        """Parses and checks the first `HEADER_SIZE` bytes of `data`."""
        data = bytes(data[:HEADER_SIZE])
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise FormatError("not an ESC bitstream: the file does not start with the ESC magic bytes")
        if len(data) <= len(MAGIC):
            raise TruncatedError(f"the header is cut off after {len(data)} of {HEADER_SIZE} bytes")
        if data[len(MAGIC)] != VERSION:
            raise FormatError(
                f"unsupported ESC bitstream version {data[len(MAGIC)]} (this code reads version {VERSION})"
            )
        if len(data) < HEADER_SIZE:
            raise TruncatedError(f"the header is cut off after {len(data)} of {HEADER_SIZE} bytes")
        (stored,) = _CRC.unpack_from(data, HEADER_SIZE - _CRC.size)
        if zlib.crc32(data[: HEADER_SIZE - _CRC.size]) != stored:
            raise CorruptError("the header is corrupt (CRC mismatch)")
        _, _, rate, spf, streams, groups, bits, fpp, config_fp, codebook_fp = _PARAMS.unpack_from(data)
        samples, frames = _LENGTHS.unpack_from(data, _PARAMS.size)
        header = cls(
            rate,
            spf,
            streams,
            groups,
            bits,
            fpp,
            config_fp,
            codebook_fp,
            None if samples == UNKNOWN_SAMPLES else samples,
            None if frames == UNKNOWN_FRAMES else frames,
        )
        header._check()
        return header

    def _check(self) -> None:
        """Rejects values no encoder writes (a header can pass its CRC and still be forged or buggy)."""
        if problems := self._problems():
            raise CorruptError("the header holds impossible values: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        """What is out of the format's bounds (see the limits at the top), each named with its value."""
        problems = []
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            problems.append(f"sample rate {self.sample_rate} Hz (must be {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE})")
        if not 1 <= self.samples_per_frame <= MAX_SAMPLES_PER_FRAME:
            problems.append(
                f"{self.samples_per_frame} samples per code frame (must be 1 to {MAX_SAMPLES_PER_FRAME})"
            )
        if not 1 <= self.num_streams <= MAX_STREAMS:
            problems.append(f"{self.num_streams} streams (must be 1 to {MAX_STREAMS})")
        if not 1 <= self.group_size <= MAX_GROUPS:
            problems.append(f"{self.group_size} codebooks per stream (must be 1 to {MAX_GROUPS})")
        if not 1 <= self.bits_per_code <= MAX_BITS_PER_CODE:
            problems.append(f"{self.bits_per_code} bits per code (must be 1 to {MAX_BITS_PER_CODE})")
        if not 1 <= self.frames_per_packet <= MAX_FRAMES_PER_PACKET:
            problems.append(f"{self.frames_per_packet} frames per packet (must be 1 to {MAX_FRAMES_PER_PACKET})")
        elif not problems and self.payload_size(self.frames_per_packet) > MAX_PACKET_PAYLOAD:
            problems.append(
                f"packets of {self.frames_per_packet} frames × {self.bits_per_frame} bits = "
                f"{self.payload_size(self.frames_per_packet):,} bytes (must be at most {MAX_PACKET_PAYLOAD:,})"
            )
        if (self.num_samples is None) != (self.num_frames is None):
            problems.append("the sample count and frame count must both be known or both unknown")
        elif self.num_samples is not None and self.num_samples < 1:
            problems.append(f"{self.num_samples} samples (a stream holds at least one)")
        elif self.num_samples is not None and not (
            self.num_frames >= 1
            and (self.num_frames - 2) * self.samples_per_frame
            < self.num_samples
            <= self.num_frames * self.samples_per_frame
        ):
            problems.append(f"{self.num_samples} samples do not fit {self.num_frames} code frames")
        return problems

    # -- models -------------------------------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """Raises `ModelMismatchError` unless `model` is the model these codes were made with, and `CorruptError`
        if the header's length contradicts how that model frames audio."""
        config = model.config
        # A forged or buggy header keeps the right fingerprints, so every field that shapes the decoding is
        # compared too; this also names the difference when a file comes from another model.
        for name, ours, its in (
            ("sample rate", self.sample_rate, config.sampling_rate),
            ("samples per code frame", self.samples_per_frame, config.samples_per_code_frame),
            ("codebooks per stream", self.group_size, config.group_size),
            ("bits per code", self.bits_per_code, config.bits_per_codebook),
        ):
            if ours != its:
                raise ModelMismatchError(
                    f"the stream's {name} is {ours}, this model's is {its}: decode it with the model that encoded it"
                )
        if self.num_streams > config.num_streams:
            raise ModelMismatchError(
                f"the stream has {self.num_streams} streams, this model at most {config.num_streams}: decode it "
                "with the model that encoded it"
            )
        if self.config_fingerprint != config_fingerprint(config):
            raise ModelMismatchError(
                f"the stream was encoded by a model with another configuration (config fingerprint "
                f"{self.config_fingerprint.hex()}, this model's is {config_fingerprint(config).hex()}): decode it "
                "with the model that encoded it"
            )
        if self.codebook_fingerprint != codebook_fingerprint(model):
            raise ModelMismatchError(
                f"the stream was encoded by a model with other codebooks, i.e. another checkpoint of the same "
                f"architecture (codebook fingerprint {self.codebook_fingerprint.hex()}, this model's is "
                f"{codebook_fingerprint(model).hex()}): decode it with the model that encoded it"
            )
        expected = None if self.num_samples is None else model.config.code_frames_for_samples(self.num_samples)
        if expected is not None and self.num_frames != expected:
            raise CorruptError(
                f"the header says {self.num_samples} samples in {self.num_frames} code frames; this model makes "
                f"{expected} code frames of {self.num_samples} samples"
            )


# ----------------------------------------------------------------------------------------------------------------
# Bit packing


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    planes = (values.astype(np.uint32)[:, None] >> shifts) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1)).tobytes()


def _unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
    return planes.astype(np.int64) @ (np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64))


def _as_code_array(codes, header: EscHeader) -> np.ndarray:
    """Validates codes `(streams, groups, frames)` or `(1, streams, groups, frames)` → int64 numpy array."""
    if isinstance(codes, torch.Tensor):
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codes.ndim == 4:
        if codes.shape[0] != 1:
            raise ValueError(f"a bitstream holds one item; got a batch of {codes.shape[0]} (pack each item)")
        codes = codes[0]
    expected = (header.num_streams, header.group_size)
    if codes.ndim != 3 or codes.shape[:2] != expected:
        raise ValueError(
            f"codes must have shape ({header.num_streams} streams, {header.group_size} groups, frames), got "
            f"{codes.shape}"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= header.codebook_size):
        raise ValueError(f"codes must lie in [0, {header.codebook_size}) for {header.bits_per_code}-bit packing")
    return codes.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Packets


class PacketWriter:
    """Turns code frames into packets, numbering them in order."""

    def __init__(self, header: EscHeader):
        if problems := header._problems():  # never write a stream that the reader would reject
            raise ValueError("the header is outside the .esc format: " + "; ".join(problems))
        self.header = header
        self.sequence = 0
        self._seed = header.crc_seed

    def packet(self, codes, final: bool = False, drop: int = 0) -> bytes:
        """One packet of `codes` `(streams, groups, frames)`; the `final` one also says how many of the samples
        its frames decode to lie past the end of the audio (`drop`)."""
        codes = _as_code_array(codes, self.header)
        frames = codes.shape[-1]
        if not 1 <= frames <= self.header.frames_per_packet:
            raise ValueError(
                f"a packet holds 1 to {self.header.frames_per_packet} code frames (the header's frames per packet), "
                f"got {frames}"
            )
        if not 0 <= drop <= 0xFFFF:
            raise ValueError(f"drop must fit 16 bits, got {drop}")
        head = _PACKET.pack(self.sequence & 0xFFFF, frames | (_FINAL if final else 0))
        if final:
            head += _DROP.pack(drop)
        body = head + _pack_bits(codes.transpose(2, 0, 1).reshape(-1), self.header.bits_per_code)
        self.sequence += 1
        return body + _CRC.pack(zlib.crc32(body, self._seed))


@dataclass
class Packet:
    sequence: int
    codes: np.ndarray  # (streams, groups, frames) int64
    final: bool
    drop: int
    size: int  # bytes on the wire


class PacketReader:
    """Parses packets of one stream in order, checking each CRC, the numbering and the end of the stream. With
    `model`, the final packet's length is also checked against how `model` frames audio."""

    def __init__(self, header: EscHeader, model=None):
        header._check()  # packet sizes are computed from its fields
        self.header = header
        self.model = model
        self.sequence = 0
        self.frames = 0
        self.finished = False
        self.num_samples = None  # known once the final packet is read
        self._seed = header.crc_seed

    def _where(self) -> str:
        return f"packet {self.sequence} (code frame {self.frames})"

    def _check_frame_count(self, frames: int) -> None:
        if not 1 <= frames <= self.header.frames_per_packet:
            raise CorruptError(
                f"{self._where()} claims {frames} code frames; the header allows 1 to "
                f"{self.header.frames_per_packet} per packet (the packet or its frame count is corrupt)"
            )

    def read(self, handle: BinaryIO) -> Packet | None:
        """The next packet from a binary file object; None at a clean end of the data after the final packet."""
        head = handle.read(_PACKET.size)
        if not head:
            if self.finished:
                return None
            raise TruncatedError(f"the stream ends before its final packet ({self._where()} is missing)")
        if self.finished:
            raise CorruptError(f"{len(head) + len(handle.read())} bytes of unexpected data after the final packet")
        if len(head) < _PACKET.size:
            raise TruncatedError(f"{self._where()} is cut off in its header")
        _, count = _PACKET.unpack(head)
        # Checked before it sizes the read: the header's limits then bound every read (MAX_PACKET_PAYLOAD).
        self._check_frame_count(count & ~_FINAL)
        size = (_DROP.size if count & _FINAL else 0) + self.header.payload_size(count & ~_FINAL) + _CRC.size
        tail = handle.read(size)
        if len(tail) < size:
            # The count is not yet covered by a checked CRC: a flipped bit in it also ends up here.
            raise TruncatedError(f"{self._where()} is cut off (or its frame count is corrupt)")
        return self.parse(head + tail)

    def parse(self, data: bytes) -> Packet:
        """Checks and decodes one whole packet `data` (exactly the bytes `PacketWriter.packet` returned)."""
        if self.finished:
            raise CorruptError(f"a packet arrived after the final packet ({len(data)} bytes)")
        if len(data) < _PACKET.size + _CRC.size:
            raise TruncatedError(f"{self._where()} is cut off ({len(data)} bytes)")
        (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[: -_CRC.size], self._seed) != stored:
            raise CorruptError(f"{self._where()} is corrupt (CRC mismatch), or belongs to another stream")
        sequence, count = _PACKET.unpack_from(data)
        final, frames = bool(count & _FINAL), count & ~_FINAL
        self._check_frame_count(frames)
        offset = _PACKET.size + (_DROP.size if final else 0)
        payload = self.header.payload_size(frames)
        if len(data) != offset + payload + _CRC.size:
            raise CorruptError(f"{self._where()} has a frame count ({frames}) that does not match its size")
        if sequence != self.sequence & 0xFFFF:
            raise CorruptError(
                f"packet {sequence & 0xFFFF} arrived where packet {self.sequence & 0xFFFF} was expected (a packet "
                "was lost, repeated or reordered)"
            )
        drop = _DROP.unpack_from(data, _PACKET.size)[0] if final else 0
        header = self.header
        count = frames * header.num_streams * header.group_size
        values = _unpack_bits(data[offset : offset + payload], count, header.bits_per_code)
        codes = values.reshape(frames, header.num_streams, header.group_size).transpose(1, 2, 0)
        self.sequence += 1
        self.frames += frames
        known = header.num_frames is not None
        if known and (self.frames > header.num_frames or final != (self.frames == header.num_frames)):
            raise CorruptError(
                f"the packets hold {'more' if self.frames > header.num_frames else 'fewer'} code frames than the "
                f"header's {header.num_frames}"
            )
        if final:
            self.finished = True
            samples = self.frames * header.samples_per_frame - drop
            # At least one sample (an empty stream is refused), and less than 2 frames' worth dropped.
            if samples < 1 or samples <= (self.frames - 2) * header.samples_per_frame:
                raise CorruptError(
                    f"the final packet drops {drop} samples, impossible for {self.frames} code frames (it would "
                    f"leave {samples} samples)"
                )
            if header.num_samples is not None and samples != header.num_samples:
                raise CorruptError(
                    f"the final packet gives {samples} samples but the header says {header.num_samples}"
                )
            if self.model is not None and (expected := self.model.config.code_frames_for_samples(samples)) != self.frames:
                raise CorruptError(
                    f"the final packet drops {drop} samples, leaving {samples}: this model makes {expected} code "
                    f"frames of {samples} samples, not {self.frames}"
                )
            self.num_samples = samples
        return Packet(sequence, codes, final, drop, len(data))


# ----------------------------------------------------------------------------------------------------------------
# Whole streams


def pack(codes, header: EscHeader) -> bytes:
    """Header and packets for codes `(streams, groups, frames)` (or `(1, …)`) of audio with `header.num_samples`
    samples. Use `EscHeader.for_model(model, num_streams, num_samples)` for the header."""
    if header.num_samples is None:
        raise ValueError("pack needs the number of samples in the header (EscHeader.for_model(..., num_samples=N))")
    codes = _as_code_array(codes, header)
    frames = codes.shape[-1]
    if frames != header.num_frames:
        raise ValueError(f"{header.num_samples} samples make {header.num_frames} code frames; got {frames}")
    writer = PacketWriter(header)
    parts = [header.to_bytes()]
    for start in range(0, frames, header.frames_per_packet):
        end = min(start + header.frames_per_packet, frames)
        drop = frames * header.samples_per_frame - header.num_samples
        parts.append(writer.packet(codes[..., start:end], final=end == frames, drop=drop if end == frames else 0))
    return b"".join(parts)


def unpack(data: bytes, model=None) -> tuple[torch.LongTensor, EscHeader]:
    """Codes `(1, streams, groups, frames)` and the header (lengths filled in) from `pack`'s bytes, or from a live
    stream's header and packets concatenated. With `model`, also checks that `model` made the codes."""
    data = bytes(data)
    header = EscHeader.from_bytes(data)
    if model is not None:
        header.check_model(model)
    handle = io.BytesIO(data)
    handle.seek(HEADER_SIZE)
    reader = PacketReader(header, model)
    chunks = []
    while (packet := reader.read(handle)) is not None:
        chunks.append(packet.codes)
    codes = np.concatenate(chunks, axis=-1)
    return torch.from_numpy(codes)[None], header.with_length(reader.num_samples, reader.frames)

"""The `.esc` bitstream: a checked header, then packets of codes, each part with its own CRC.

The layout is specified in `docs/bitstream.md`. Version 2 (written by default) groups each packet's codes by
stream into layers, each with its length and CRC and, with an `EntropyModel`, entropy coded; `truncate` drops fine
layers by copying bytes. Version 1 (bit-packed codes, one CRC per packet) is still read and, on request, written.
`pack` / `unpack` turn codes into bytes and back; `PacketWriter` / `PacketReader` do the same one packet at a time,
for files longer than memory and for streaming. Every defect of the input (truncation, a flipped bit, a foreign
file, a file from another model or with other entropy tables) raises a `BitstreamError` subclass whose message says
what is wrong; nothing is decoded from bytes that failed a check.
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
VERSION = 2  # what the writers make unless asked for another
VERSIONS = (1, 2)
DEFAULT_FRAMES_PER_PACKET = 50  # 1 s of ESC codes: the framing costs about 1 % at 6 kbps
UNKNOWN_SAMPLES = 2**64 - 1  # a live stream's header is sent before its length is known
UNKNOWN_FRAMES = 2**32 - 1
ABSENT = -1  # `unpack`'s code for a stream that a packet does not hold (a layer dropped or never sent)
RAW, ENTROPY_CODED = 0, 1  # v2 coders: bit-packed layers, or layers coded with the model folder's EntropyModel
CODER_NAMES = {RAW: "raw (bit-packed)", ENTROPY_CODED: "entropy model"}

# magic, version, sample rate, samples per code frame, streams, groups, bits per code, frames per packet,
# config fingerprint, codebook fingerprint [| v2: coder, coder fingerprint] | samples, code frames | CRC-32.
_PARAMS = struct.Struct("<4sBIHBBBH8s8s")
_CODER = struct.Struct("<B8s")
_LENGTHS = struct.Struct("<QI")
_CRC = struct.Struct("<I")
HEADER_SIZES = {
    1: _PARAMS.size + _LENGTHS.size + _CRC.size,
    2: _PARAMS.size + _CODER.size + _LENGTHS.size + _CRC.size,
}
HEADER_SIZE = HEADER_SIZES[VERSION]
MAX_HEADER_SIZE = max(HEADER_SIZES.values())
# Packet: sequence number, frame count (top bit: final packet) [, samples to drop after the final packet's
# frames], then v1: payload, CRC-32 seeded with the stream's parameters (so a packet from another stream fails);
# v2: layers (size with the raw flag, payload, CRC-32), then a 0 size.
_PACKET = struct.Struct("<HH")
_DROP = struct.Struct("<H")
_LAYER = struct.Struct("<H")
_FINAL = 0x8000
_RAW_LAYER = 0x8000
MAX_FRAMES_PER_PACKET = _FINAL - 1
MAX_LAYER_SIZE = _RAW_LAYER - 1
# Format limits, far above any ESC model (ESC-Base: 16 kHz, 320 samples per frame, 6 × 3 × 10 bits) and low enough
# that a forged header cannot make a reader allocate much: a packet's size is checked against these before it is read.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
MAX_SAMPLES_PER_FRAME = 0x7FFF  # the final packet drops under 2 frames of samples: that must fit its 16 bits
MAX_STREAMS = 64
MAX_GROUPS = 64
MAX_BITS_PER_CODE = 16
MAX_PACKET_PAYLOAD = 1 << 20  # v1: bytes of codes; ESC-Base (22.5 bytes a frame) stays under it at any frame count

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
    """What an `.esc` header says. `num_samples` / `num_frames` are None in a live stream's header. In version 2
    `num_streams` is the most layers a packet holds, and `coder` says how layers are coded (`RAW` or
    `ENTROPY_CODED` with the tables whose fingerprint is `coder_fingerprint`)."""

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
    version: int = VERSION
    coder: int = RAW
    coder_fingerprint: bytes = bytes(8)

    @classmethod
    def for_model(
        cls,
        model,
        num_streams: int,
        num_samples: int | None = None,
        frames_per_packet: int = DEFAULT_FRAMES_PER_PACKET,
        version: int = VERSION,
        entropy_model=None,
    ) -> "EscHeader":
        """The header of `model`'s codes with `num_streams` streams for `num_samples` samples (None: unknown), in
        format `version`; a version 2 stream is entropy coded with `entropy_model` if one is given."""
        config = model.config
        num_streams = model.config.resolve_num_streams(num_streams)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version}")
        if entropy_model is not None and version < 2:
            raise ValueError("version 1 streams are not entropy coded; use version 2 or no entropy model")
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
            version=version,
            coder=RAW if entropy_model is None else ENTROPY_CODED,
            coder_fingerprint=bytes(8) if entropy_model is None else entropy_model.fingerprint,
        )
        if problems := header._problems():  # never write a stream that the reader would reject
            raise ValueError("this model's codes do not fit the .esc format: " + "; ".join(problems))
        return header

    # -- derived numbers ----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes of this header."""
        return HEADER_SIZES[self.version]

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
        """Nominal bitrate of the codes (all `num_streams` streams, `log2(codebook_size)` bits a code)."""
        return self.bits_per_frame * self.frame_rate / 1000

    @property
    def kbps_per_stream(self) -> float:
        return self.group_size * self.bits_per_code * self.frame_rate / 1000

    @property
    def duration(self) -> float | None:
        return None if self.num_samples is None else self.num_samples / self.sample_rate

    def payload_size(self, frames: int) -> int:
        """v1: bytes of packed codes in a packet of `frames` code frames."""
        return math.ceil(frames * self.bits_per_frame / 8)

    def raw_layer_size(self, frames: int) -> int:
        """v2: bytes of one bit-packed layer (one stream's codes) of `frames` code frames."""
        return math.ceil(frames * self.group_size * self.bits_per_code / 8)

    @property
    def crc_seed(self) -> int:
        return zlib.crc32(self._seed_bytes())

    def with_length(self, num_samples: int, num_frames: int) -> "EscHeader":
        return replace(self, num_samples=num_samples, num_frames=num_frames)

    # -- bytes --------------------------------------------------------------------------------------------------

    def _params_bytes(self, num_streams: int | None = None) -> bytes:
        params = _PARAMS.pack(
            MAGIC,
            self.version,
            self.sample_rate,
            self.samples_per_frame,
            self.num_streams if num_streams is None else num_streams,
            self.group_size,
            self.bits_per_code,
            self.frames_per_packet,
            self.config_fingerprint,
            self.codebook_fingerprint,
        )
        return params if self.version == 1 else params + _CODER.pack(self.coder, self.coder_fingerprint)

    def _seed_bytes(self) -> bytes:
        # v2 leaves the stream count out (`truncate` lowers it and keeps the packets' bytes).
        return self._params_bytes() if self.version == 1 else self._params_bytes(num_streams=0)

    def to_bytes(self) -> bytes:
        samples = UNKNOWN_SAMPLES if self.num_samples is None else self.num_samples
        frames = UNKNOWN_FRAMES if self.num_frames is None else self.num_frames
        body = self._params_bytes() + _LENGTHS.pack(samples, frames)
        return body + _CRC.pack(zlib.crc32(body))

    @staticmethod
    def size_from(data: bytes) -> int:
        """The size of the header that `data` starts with, from its magic and version byte (at least 5 bytes)."""
        data = bytes(data[: len(MAGIC) + 1])
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise FormatError("not an ESC bitstream: the file does not start with the ESC magic bytes")
        if len(data) <= len(MAGIC):
            raise TruncatedError(f"the header is cut off after {len(data)} bytes")
        version = data[len(MAGIC)]
        if version not in VERSIONS:
            raise FormatError(
                f"unsupported ESC bitstream version {version} (this code reads versions "
                f"{', '.join(map(str, VERSIONS))})"
            )
        return HEADER_SIZES[version]

    @classmethod
    def from_bytes(cls, data: bytes) -> "EscHeader":
        """Parses and checks the header that `data` starts with (`size_from(data)` bytes)."""
        data = bytes(data[:MAX_HEADER_SIZE])
        size = cls.size_from(data)
        data = data[:size]
        if len(data) < size:
            raise TruncatedError(f"the header is cut off after {len(data)} of {size} bytes")
        (stored,) = _CRC.unpack_from(data, size - _CRC.size)
        if zlib.crc32(data[: size - _CRC.size]) != stored:
            raise CorruptError("the header is corrupt (CRC mismatch)")
        _, version, rate, spf, streams, groups, bits, fpp, config_fp, codebook_fp = _PARAMS.unpack_from(data)
        coder, coder_fp = (RAW, bytes(8)) if version == 1 else _CODER.unpack_from(data, _PARAMS.size)
        samples, frames = _LENGTHS.unpack_from(data, size - _CRC.size - _LENGTHS.size)
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
            version,
            coder,
            coder_fp,
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
        if self.version not in VERSIONS:
            problems.append(f"version {self.version} (this code writes {', '.join(map(str, VERSIONS))})")
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
        elif not problems and self.version == 1 and self.payload_size(self.frames_per_packet) > MAX_PACKET_PAYLOAD:
            problems.append(
                f"packets of {self.frames_per_packet} frames × {self.bits_per_frame} bits = "
                f"{self.payload_size(self.frames_per_packet):,} bytes (must be at most {MAX_PACKET_PAYLOAD:,})"
            )
        elif not problems and self.version == 2 and self.raw_layer_size(self.frames_per_packet) > MAX_LAYER_SIZE:
            problems.append(
                f"layers of {self.frames_per_packet} frames × {self.group_size * self.bits_per_code} bits = "
                f"{self.raw_layer_size(self.frames_per_packet):,} bytes (must be at most {MAX_LAYER_SIZE:,})"
            )
        if self.version == 2 and self.coder not in CODER_NAMES:
            problems.append(f"coder {self.coder} (known: {', '.join(map(str, CODER_NAMES))})")
        if self.version == 2 and self.coder == RAW and self.coder_fingerprint != bytes(8):
            problems.append("a raw stream with an entropy model fingerprint")
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

    def check_entropy_model(self, entropy_model) -> None:
        """Raises `ModelMismatchError` unless `entropy_model` holds the tables this stream's layers were coded with
        (None passes for a raw stream)."""
        if self.version < 2 or self.coder == RAW:
            return
        if entropy_model is None:
            raise ModelMismatchError(
                f"the stream is entropy coded (tables {self.coder_fingerprint.hex()}) and the model's folder has no "
                "entropy model: decode it with the model folder that encoded it"
            )
        if entropy_model.fingerprint != self.coder_fingerprint:
            raise ModelMismatchError(
                f"the stream was entropy coded with other tables (fingerprint {self.coder_fingerprint.hex()}, the "
                f"model folder's are {entropy_model.fingerprint.hex()}): decode it with the model folder that "
                "encoded it"
            )


# ----------------------------------------------------------------------------------------------------------------
# Bit packing


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    planes = (values.astype(np.uint32)[:, None] >> shifts) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1)).tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
    return planes.astype(np.int64) @ (np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64))


def as_code_array(codes, header: EscHeader, layers: bool = False) -> np.ndarray:
    """Validates codes `(streams, groups, frames)` or `(1, streams, groups, frames)` → int64 numpy array. With
    `layers`, fewer streams than the header's are allowed (a v2 packet may hold fewer layers)."""
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
    streams_ok = codes.ndim == 3 and (
        1 <= codes.shape[0] <= header.num_streams if layers else codes.shape[0] == header.num_streams
    )
    if not streams_ok or codes.shape[1] != header.group_size:
        wanted = f"1 to {header.num_streams}" if layers else str(header.num_streams)
        raise ValueError(
            f"codes must have shape ({wanted} streams, {header.group_size} groups, frames), got {codes.shape}"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= header.codebook_size):
        raise ValueError(f"codes must lie in [0, {header.codebook_size}) for {header.bits_per_code}-bit packing")
    return codes.astype(np.int64)


def streams_per_frame(codes) -> np.ndarray:
    """How many leading streams each frame of codes `(streams, groups, frames)` holds (`ABSENT` marks the rest)."""
    codes = np.asarray(codes)
    return (codes >= 0).all(axis=-2).sum(axis=-2)


# ----------------------------------------------------------------------------------------------------------------
# Packets


class PacketWriter:
    """Turns code frames into packets, numbering them in order. A version 2 stream whose header names an entropy
    model needs that `entropy_model`."""

    def __init__(self, header: EscHeader, entropy_model=None):
        if problems := header._problems():  # never write a stream that the reader would reject
            raise ValueError("the header is outside the .esc format: " + "; ".join(problems))
        if header.version >= 2 and header.coder == ENTROPY_CODED:
            try:
                header.check_entropy_model(entropy_model)
            except ModelMismatchError as error:
                raise ValueError(f"the entropy model does not match the header: {error}") from None
        self.header = header
        self.entropy_model = entropy_model if header.coder == ENTROPY_CODED else None
        self.sequence = 0
        self._seed = header.crc_seed

    def packet(self, codes, final: bool = False, drop: int = 0) -> bytes:
        """One packet of `codes` `(streams, groups, frames)`; the `final` one also says how many of the samples
        its frames decode to lie past the end of the audio (`drop`). In version 2, `codes` may hold fewer streams
        than the header (a lower rate for this packet): they are its layers."""
        codes = as_code_array(codes, self.header, layers=self.header.version >= 2)
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
        self.sequence += 1
        bits = self.header.bits_per_code
        if self.header.version == 1:
            body = head + pack_bits(codes.transpose(2, 0, 1).reshape(-1), bits)
            return body + _CRC.pack(zlib.crc32(body, self._seed))
        parts = [head]
        for stream in range(codes.shape[0]):
            payload, flag = pack_bits(codes[stream].T.reshape(-1), bits), _RAW_LAYER
            if self.entropy_model is not None:
                coarser = codes[stream - 1] if stream else None
                coded = self.entropy_model.encode_layer(stream, codes[stream], coarser)
                if 0 < len(coded) < len(payload):  # never more than the raw bits: a reader's bound on every layer
                    payload, flag = coded, 0
            size = _LAYER.pack(len(payload) | flag)
            crc = zlib.crc32(payload, zlib.crc32(head + bytes([stream]) + size, self._seed))
            parts += [size, payload, _CRC.pack(crc)]
        parts.append(_LAYER.pack(0))
        return b"".join(parts)


@dataclass
class Packet:
    sequence: int
    codes: np.ndarray | None  # (header streams, groups, frames) int64, ABSENT for the layers it lacks
    final: bool
    drop: int
    size: int  # bytes on the wire
    frames: int = 0
    layer_sizes: tuple[int, ...] = ()  # v2: bytes of each layer on the wire (size, payload and CRC)
    layer_raw: tuple[bool, ...] = ()  # v2: whether each layer is bit-packed rather than entropy coded
    lost_before: int = 0  # packets missing just before this one (a reader with `allow_gaps`)

    @property
    def layers(self) -> int:
        return len(self.layer_sizes) if self.layer_sizes else 0


@dataclass
class _Parsed:
    sequence: int
    frames: int
    final: bool
    drop: int
    head: bytes
    layers: list  # v2: (offset, payload size, raw) per layer; v1: [(offset, payload size, True)]


def final_length(frames: int, drop: int, samples_per_frame: int) -> int:
    """The samples of a stream of `frames` code frames whose final packet drops `drop`: at least one (an empty
    stream is refused), and less than 2 frames' worth dropped; `CorruptError` otherwise."""
    samples = frames * samples_per_frame - drop
    if samples < 1 or samples <= (frames - 2) * samples_per_frame:
        raise CorruptError(
            f"the final packet drops {drop} samples, impossible for {frames} code frames (it would leave {samples} "
            "samples)"
        )
    return samples


class PacketReader:
    """Parses packets of one stream in order, checking each CRC, the numbering and the end of the stream. With
    `model`, the final packet's length is also checked against how `model` frames audio. An entropy-coded stream
    needs its `entropy_model` to decode codes; with `decode_codes=False` packets are only checked (their layers
    are not decoded) and `Packet.codes` is None. With `allow_gaps`, packets may be missing (a sequence number that
    jumps ahead): each missing one held `frames_per_packet` frames, as every packet but the final one does."""

    def __init__(
        self, header: EscHeader, model=None, entropy_model=None, decode_codes: bool = True, allow_gaps: bool = False
    ):
        header._check()  # packet sizes are computed from its fields
        if decode_codes:
            header.check_entropy_model(entropy_model)
        self.header = header
        self.allow_gaps = allow_gaps
        self.model = model
        self.entropy_model = entropy_model
        self.decode_codes = decode_codes
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

    def _layer_payload(self, layer: int, size_field: int, frames: int) -> tuple[int, bool]:
        """The payload bytes and rawness a layer's size field gives, checked against the format's bounds."""
        if layer >= self.header.num_streams:
            raise CorruptError(
                f"{self._where()} holds more layers than the header's {self.header.num_streams} streams (or a "
                "layer size is corrupt)"
            )
        raw, size = bool(size_field & _RAW_LAYER), size_field & ~_RAW_LAYER
        expected = self.header.raw_layer_size(frames)
        if raw and size != expected:
            raise CorruptError(
                f"{self._where()}, layer {layer}: {size} bit-packed bytes for {frames} frames, not {expected}"
            )
        if not raw and (self.header.coder != ENTROPY_CODED or not 1 <= size < expected):
            raise CorruptError(
                f"{self._where()}, layer {layer}: an entropy-coded size of {size} bytes is impossible here (the "
                f"stream's coder is {CODER_NAMES.get(self.header.coder)}; a coded layer is under {expected} bytes)"
            )
        return size, raw

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
        frames = count & ~_FINAL
        # Checked before it sizes a read: the header's limits then bound every read.
        self._check_frame_count(frames)
        if self.header.version == 1:
            size = (_DROP.size if count & _FINAL else 0) + self.header.payload_size(frames) + _CRC.size
            tail = handle.read(size)
            if len(tail) < size:
                # The count is not yet covered by a checked CRC: a flipped bit in it also ends up here.
                raise TruncatedError(f"{self._where()} is cut off (or its frame count is corrupt)")
            return self.parse(head + tail)
        parts = [head, handle.read(_DROP.size if count & _FINAL else 0)]
        for layer in range(MAX_STREAMS + 1):
            size_bytes = handle.read(_LAYER.size)
            parts.append(size_bytes)
            if len(size_bytes) < _LAYER.size:
                break
            (field,) = _LAYER.unpack(size_bytes)
            if field == 0:
                break
            size, _ = self._layer_payload(layer, field, frames)
            parts.append(handle.read(size + _CRC.size))
        return self.parse(b"".join(parts))

    def _split(self, data: bytes) -> _Parsed:
        """Walks one whole packet, checking its structure and every CRC, without decoding codes."""
        if len(data) < _PACKET.size + _CRC.size:
            raise TruncatedError(f"{self._where()} is cut off ({len(data)} bytes)")
        sequence, count = _PACKET.unpack_from(data)
        final, frames = bool(count & _FINAL), count & ~_FINAL
        offset = _PACKET.size + (_DROP.size if final else 0)
        if self.header.version == 1:
            (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
            if zlib.crc32(data[: -_CRC.size], self._seed) != stored:
                raise CorruptError(f"{self._where()} is corrupt (CRC mismatch), or belongs to another stream")
            self._check_frame_count(frames)
            payload = self.header.payload_size(frames)
            if len(data) != offset + payload + _CRC.size:
                raise CorruptError(f"{self._where()} has a frame count ({frames}) that does not match its size")
            drop = _DROP.unpack_from(data, _PACKET.size)[0] if final else 0
            return _Parsed(sequence, frames, final, drop, data[:offset], [(offset, payload, True)])
        self._check_frame_count(frames)
        if len(data) < offset:
            raise TruncatedError(f"{self._where()} is cut off in its header")
        drop = _DROP.unpack_from(data, _PACKET.size)[0] if final else 0
        head, layers = data[:offset], []
        while True:
            if offset + _LAYER.size > len(data):
                raise TruncatedError(f"{self._where()} is cut off after {len(layers)} layers")
            (field,) = _LAYER.unpack_from(data, offset)
            if field == 0:
                offset += _LAYER.size
                break
            size, raw = self._layer_payload(len(layers), field, frames)
            start, end = offset + _LAYER.size, offset + _LAYER.size + size + _CRC.size
            if end > len(data):
                raise TruncatedError(f"{self._where()}, layer {len(layers)} is cut off")
            (stored,) = _CRC.unpack_from(data, end - _CRC.size)
            seed = zlib.crc32(head + bytes([len(layers)]) + data[offset:start], self._seed)
            if zlib.crc32(data[start : end - _CRC.size], seed) != stored:
                raise CorruptError(
                    f"{self._where()}, layer {len(layers)} is corrupt (CRC mismatch), or belongs to another stream "
                    "or packet"
                )
            layers.append((start, size, raw))
            offset = end
        if not layers:
            raise CorruptError(f"{self._where()} holds no layers")
        if offset != len(data):
            raise CorruptError(f"{len(data) - offset} bytes follow the end of {self._where()}")
        return _Parsed(sequence, frames, final, drop, head, layers)

    def parse(self, data: bytes) -> Packet:
        """Checks and decodes one whole packet `data` (exactly the bytes `PacketWriter.packet` returned)."""
        if self.finished:
            raise CorruptError(f"a packet arrived after the final packet ({len(data)} bytes)")
        data = bytes(data)
        parsed = self._split(data)
        gap = (parsed.sequence - self.sequence) & 0xFFFF
        if self.allow_gaps and 0 < gap < 0x8000:
            self.sequence += gap
            self.frames += gap * self.header.frames_per_packet
        if parsed.sequence != self.sequence & 0xFFFF:
            raise CorruptError(
                f"packet {parsed.sequence} arrived where packet {self.sequence & 0xFFFF} was expected (a packet "
                "was lost, repeated or reordered)"
            )
        codes = self._codes(data, parsed) if self.decode_codes else None
        frames, final, drop, header = parsed.frames, parsed.final, parsed.drop, self.header
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
            samples = final_length(self.frames, drop, header.samples_per_frame)
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
        sizes = tuple(_LAYER.size + size + _CRC.size for _, size, _ in parsed.layers) if header.version >= 2 else ()
        raws = tuple(raw for _, _, raw in parsed.layers) if header.version >= 2 else ()
        lost = gap if self.allow_gaps and 0 < gap < 0x8000 else 0
        return Packet(parsed.sequence, codes, final, drop, len(data), frames, sizes, raws, lost)

    def _codes(self, data: bytes, parsed: _Parsed) -> np.ndarray:
        header, frames = self.header, parsed.frames
        if header.version == 1:
            offset, size, _ = parsed.layers[0]
            count = frames * header.num_streams * header.group_size
            values = unpack_bits(data[offset : offset + size], count, header.bits_per_code)
            return values.reshape(frames, header.num_streams, header.group_size).transpose(1, 2, 0)
        codes = np.full((header.num_streams, header.group_size, frames), ABSENT, np.int64)
        for stream, (offset, size, raw) in enumerate(parsed.layers):
            payload = data[offset : offset + size]
            if raw:
                values = unpack_bits(payload, frames * header.group_size, header.bits_per_code)
                codes[stream] = values.reshape(frames, header.group_size).T
                continue
            coarser = codes[stream - 1] if stream else None
            try:
                codes[stream] = self.entropy_model.decode_layer(stream, payload, frames, coarser)
            except ValueError as error:
                raise CorruptError(f"{self._where()}, layer {stream}: {error}") from None
        return codes


# ----------------------------------------------------------------------------------------------------------------
# Whole streams


def pack(codes, header: EscHeader, entropy_model=None) -> bytes:
    """Header and packets for codes `(streams, groups, frames)` (or `(1, …)`) of audio with `header.num_samples`
    samples. Use `EscHeader.for_model(model, num_streams, num_samples, entropy_model=...)` for the header; an
    entropy-coded header needs the same `entropy_model` here."""
    if header.num_samples is None:
        raise ValueError("pack needs the number of samples in the header (EscHeader.for_model(..., num_samples=N))")
    codes = as_code_array(codes, header)
    frames = codes.shape[-1]
    if frames != header.num_frames:
        raise ValueError(f"{header.num_samples} samples make {header.num_frames} code frames; got {frames}")
    writer = PacketWriter(header, entropy_model)
    parts = [header.to_bytes()]
    for start in range(0, frames, header.frames_per_packet):
        end = min(start + header.frames_per_packet, frames)
        drop = frames * header.samples_per_frame - header.num_samples
        parts.append(writer.packet(codes[..., start:end], final=end == frames, drop=drop if end == frames else 0))
    return b"".join(parts)


def entropy_model_for(header: EscHeader, model, entropy_model=None):
    """The entropy model to decode `header`'s stream with: `entropy_model` if given, else (for an entropy-coded
    stream) the one in `model`'s folder."""
    if entropy_model is not None or model is None or header.version < 2 or header.coder != ENTROPY_CODED:
        return entropy_model
    from .entropy import load_entropy_model

    return load_entropy_model(model)


def unpack(data: bytes, model=None, entropy_model=None) -> tuple[torch.LongTensor, EscHeader]:
    """Codes `(1, streams, groups, frames)` and the header (lengths filled in) from `pack`'s bytes, or from a live
    stream's header and packets concatenated. With `model`, also checks that `model` made the codes. An entropy-
    coded stream is decoded with `entropy_model`, by default the one in `model`'s folder. Frames whose packet holds
    fewer layers than the header's streams have `ABSENT` codes in the missing streams (see `streams_per_frame`)."""
    data = bytes(data)
    header = EscHeader.from_bytes(data)
    if model is not None:
        header.check_model(model)
    handle = io.BytesIO(data)
    handle.seek(header.size)
    reader = PacketReader(header, model, entropy_model_for(header, model, entropy_model))
    chunks = []
    while (packet := reader.read(handle)) is not None:
        chunks.append(packet.codes)
    codes = np.concatenate(chunks, axis=-1)
    return torch.from_numpy(codes)[None], header.with_length(reader.num_samples, reader.frames)


def streams_for_kbps(header: EscHeader, kbps: float) -> int:
    """The number of streams (layers) whose nominal rate is `kbps`, for `header`'s stream."""
    streams = kbps / header.kbps_per_stream
    if not (math.isfinite(streams) and abs(streams - round(streams)) < 1e-6 and round(streams) >= 1):
        raise ValueError(
            f"{kbps:g} kbps is not a multiple of this stream's {header.kbps_per_stream:g} kbps per layer"
        )
    return round(streams)


def truncate_packet(packet: bytes, header: EscHeader, num_streams: int) -> bytes:
    """A version 2 packet with only its first `num_streams` layers (all of them if it has fewer): the packet's
    bytes are checked (structure and every CRC) and copied; no model, no decoding. What a relay does."""
    _check_truncation(header, num_streams)
    packet = bytes(packet)
    parsed = PacketReader(header, decode_codes=False)._split(packet)
    sizes = [_LAYER.size + size + _CRC.size for _, size, _ in parsed.layers]
    return _keep_layers(packet, parsed.final, sizes, num_streams)


def _check_truncation(header: EscHeader, num_streams: int) -> None:
    if header.version < 2:
        raise FormatError("a version 1 stream has no layers to drop; re-encode it as version 2 (esc encode)")
    if num_streams < 1:
        raise ValueError(f"num_streams must be at least 1, got {num_streams}")


def _keep_layers(packet: bytes, final: bool, layer_sizes, num_streams: int) -> bytes:
    """The packet's head and first `num_streams` layers (`layer_sizes`: bytes of each on the wire), then the end."""
    end = _PACKET.size + (_DROP.size if final else 0) + sum(layer_sizes[:num_streams])
    return packet[:end] + _LAYER.pack(0)


class _Recording:
    """A binary file object that keeps what was read from it since the last `take()`."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.chunks = handle, []

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.chunks.append(data)
        return data

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def iter_packet_bytes(handle: BinaryIO, allow_gaps: bool = False):
    """The header, then `(Packet, the packet's bytes)` for each packet of the stream read from a binary file
    object, every one checked (its codes not decoded), in memory that does not grow with the stream's length.
    `allow_gaps`: packets may be missing (see `PacketReader`)."""
    recording = _Recording(handle)
    head = recording.read(len(MAGIC) + 1)
    header = EscHeader.from_bytes(head + recording.read(EscHeader.size_from(head) - len(head)))
    recording.take()
    yield header
    reader = PacketReader(header, decode_codes=False, allow_gaps=allow_gaps)
    while (packet := reader.read(recording)) is not None:
        yield packet, recording.take()


def iter_truncated(handle: BinaryIO, num_streams: int):
    """`truncate` of the stream read from a binary file object, one part at a time (the header, then each packet),
    in memory that does not grow with the stream's length."""
    packets = iter_packet_bytes(handle)
    header = next(packets)
    _check_truncation(header, num_streams)
    yield replace(header, num_streams=min(num_streams, header.num_streams)).to_bytes()
    for packet, data in packets:
        yield _keep_layers(data, packet.final, packet.layer_sizes, num_streams)


def truncate(data: bytes, num_streams: int) -> bytes:
    """A version 2 stream (a file's bytes) with every packet cut to its first `num_streams` layers, the header's
    stream count lowered to match: bytes copied after every check, no model, no decoding. Decoding the result
    gives exactly what encoding at the lower rate would have."""
    return b"".join(iter_truncated(io.BytesIO(bytes(data)), num_streams))

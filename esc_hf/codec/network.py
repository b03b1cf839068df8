"""Packets for a network: one per 1 to 8 code frames (20 ms each), with 5 bytes of framing.

An `.esc` v2 packet spends 6 bytes on each layer (a size and a CRC-32), which suits files but not a call's
20 ms packets. A network packet is the same stream's codes with the least framing that still lets a receiver
order packets, see what each holds and reject damaged ones:

| bytes | field |
|---|---|
| 2 | sequence number (u16, little-endian, wraps) |
| 1 | `frames - 1` (bits 0-2), `layers - 1` (bits 3-5), final packet (bit 6), bit 7 reserved (0) |
| 2 | final packet only: samples to drop from its end (u16) |
| n | the codes, bit-packed: layer by layer (coarse first), frame by frame, group by group |
| 2 | CRC-16 (CCITT, `binascii.crc_hqx`) of all the bytes before, seeded with the stream's parameters |

Its size follows from `frames` and `layers`, so no length field is needed; the transport (UDP, RTP) delimits
packets. The stream's parameters travel once, out of band (the `.esc` header, as a session description would):
the codes are bit-packed (`coder` 0), because entropy coding one to five frames per layer costs more in its
coder's flush than it saves (see `docs/packet_loss.md`). Layers are a prefix of the bits, so a relay lowers the
rate with `truncate_network_packet`, no model needed.
"""

import binascii
import struct
from dataclasses import dataclass

import numpy as np

from .bitstream import (
    ABSENT,
    RAW,
    CorruptError,
    EscHeader,
    TruncatedError,
    as_code_array,
    final_length,
    pack_bits,
    unpack_bits,
)

NETWORK_OVERHEAD = 5  # bytes of framing per packet (7 for the final one)
MAX_NETWORK_FRAMES = 8  # frames (and layers) a packet can hold: 3 bits each
_HEAD = struct.Struct("<HB")
_DROP = struct.Struct("<H")
_CRC = struct.Struct("<H")
_FINAL, _RESERVED = 0x40, 0x80


def check_network_header(header: EscHeader) -> None:
    """Raises `ValueError` unless `header` describes a stream that network packets can carry."""
    if header.version < 2 or header.coder != RAW:
        raise ValueError("network packets carry a version 2 stream of bit-packed layers (coder 0)")
    if header.num_streams > MAX_NETWORK_FRAMES or header.frames_per_packet > MAX_NETWORK_FRAMES:
        raise ValueError(
            f"network packets hold up to {MAX_NETWORK_FRAMES} streams and {MAX_NETWORK_FRAMES} code frames; this "
            f"stream has {header.num_streams} streams and {header.frames_per_packet} frames per packet"
        )


def network_packet_size(header: EscHeader, frames: int, layers: int, final: bool = False) -> int:
    """Bytes of a network packet of `frames` code frames and `layers` layers."""
    bits = layers * frames * header.group_size * header.bits_per_code
    return NETWORK_OVERHEAD + (_DROP.size if final else 0) + -(-bits // 8)


def pack_network_packet(header: EscHeader, sequence: int, codes, final: bool = False, drop: int = 0) -> bytes:
    """The network packet `sequence` of codes `(layers, groups, frames)` (the header's first `layers` streams)."""
    check_network_header(header)
    codes = as_code_array(codes, header, layers=True)
    layers, _, frames = codes.shape
    if not 1 <= frames <= header.frames_per_packet:
        raise ValueError(f"a packet holds 1 to {header.frames_per_packet} code frames, got {frames}")
    if not 0 <= drop <= 0xFFFF:
        raise ValueError(f"drop must fit 16 bits, got {drop}")
    info = (frames - 1) | (layers - 1) << 3 | (_FINAL if final else 0)
    data = _HEAD.pack(sequence & 0xFFFF, info) + (_DROP.pack(drop) if final else b"")
    data += pack_bits(codes.transpose(0, 2, 1).reshape(-1), header.bits_per_code)
    return data + _CRC.pack(binascii.crc_hqx(data, header.crc_seed & 0xFFFF))


@dataclass(frozen=True)
class NetworkPacket:
    sequence: int  # as sent: 16 bits, wrapping
    codes: np.ndarray  # (header streams, groups, frames) int64, ABSENT for the layers it lacks
    final: bool
    drop: int
    layers: int

    @property
    def frames(self) -> int:
        return self.codes.shape[-1]


def parse_network_packet(data: bytes, header: EscHeader) -> NetworkPacket:
    """Checks and decodes one network packet (`BitstreamError` if it is damaged or not of this stream)."""
    check_network_header(header)
    data = bytes(data)
    if len(data) < _HEAD.size + _CRC.size:
        raise TruncatedError(f"a network packet of {len(data)} bytes is too short")
    sequence, info = _HEAD.unpack_from(data)
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if binascii.crc_hqx(data[: -_CRC.size], header.crc_seed & 0xFFFF) != stored:
        raise CorruptError(f"network packet {sequence} is corrupt (CRC mismatch), or belongs to another stream")
    frames, layers, final = (info & 7) + 1, (info >> 3 & 7) + 1, bool(info & _FINAL)
    if info & _RESERVED or frames > header.frames_per_packet or layers > header.num_streams:
        raise CorruptError(
            f"network packet {sequence} claims {frames} frames of {layers} layers (the stream allows "
            f"{header.frames_per_packet} and {header.num_streams}), or a reserved bit"
        )
    if len(data) != network_packet_size(header, frames, layers, final):
        raise CorruptError(f"network packet {sequence} has {len(data)} bytes, not the size its frame count gives")
    drop = _DROP.unpack_from(data, _HEAD.size)[0] if final else 0
    start = _HEAD.size + (_DROP.size if final else 0)
    count = layers * frames * header.group_size
    values = unpack_bits(data[start : -_CRC.size], count, header.bits_per_code)
    codes = np.full((header.num_streams, header.group_size, frames), ABSENT, np.int64)
    codes[:layers] = values.reshape(layers, frames, header.group_size).transpose(0, 2, 1)
    return NetworkPacket(sequence, codes, final, drop, layers)


def truncate_network_packet(data: bytes, header: EscHeader, num_streams: int) -> bytes:
    """The packet with only its first `num_streams` layers (fewer kept as they are): a relay's rate change."""
    packet = parse_network_packet(data, header)
    if isinstance(num_streams, bool) or not isinstance(num_streams, int) or num_streams < 1:
        raise ValueError(f"num_streams must be a positive integer, got {num_streams!r}")
    layers = min(num_streams, packet.layers)
    return pack_network_packet(header, packet.sequence, packet.codes[:layers], packet.final, packet.drop)


def network_packets(header: EscHeader, codes, num_samples: int) -> list[bytes]:
    """All the network packets of a whole signal's codes `(streams, groups, frames)` (or `(1, streams, groups,
    frames)`) of `num_samples` samples, as `EscStreamingEncoder(framing="network")` sends them."""
    codes = np.asarray(codes)
    codes = codes[0] if codes.ndim == 4 else codes
    frames, size = codes.shape[-1], header.frames_per_packet
    drop = frames * header.samples_per_frame - num_samples
    final_length(frames, drop, header.samples_per_frame)  # the reader's rule, checked before writing
    starts = range(0, frames, size)
    return [
        pack_network_packet(
            header,
            index,
            codes[..., start : start + size],
            final=start + size >= frames,
            drop=drop if start + size >= frames else 0,
        )
        for index, start in enumerate(starts)
    ]

"""Long files in bounded memory, and streaming: ESC run chunk by chunk with enough context that every chunk's
output is the whole-file output.

ESC's Swin stages attend within windows of 4 latent frames, alternately shifted by 2, and never downsample time,
so each output depends on a finite span of the input: its receptive field. `receptive_field` computes it from the
model's own layers (window sizes and shifts, convolution kernels, STFT window) and `tests/test_streaming.py`
checks it against a measurement (perturb one input, see which outputs move). A chunk is run with at least that
much context on each side, starting on a window boundary, so the windows, STFT frames and code frames line up
with the whole-file computation: codes are identical, audio identical up to float rounding
(see `docs/streaming.md` for the numbers).

`ChunkedEncoder` / `ChunkedDecoder` work on samples and codes; `EscStreamingEncoder` / `EscStreamingDecoder`
add the bitstream's packets; `encode_file` / `decode_file` stream a file through them.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..utils.atomic_files import atomic_file
from .bitstream import (
    DEFAULT_FRAMES_PER_PACKET,
    MAX_HEADER_SIZE,
    VERSION,
    CorruptError,
    EscHeader,
    PacketReader,
    PacketWriter,
    TruncatedError,
    entropy_model_for,
    final_length,
    iter_packet_bytes,
    streams_per_frame,
)
from .concealment import LOST, ConcealedFrames, Concealment, conceal, lost_codes, lost_frames, sample_gains
from .network import check_network_header, pack_network_packet, parse_network_packet

# 10 s chunks: memory stays bounded while the context around each chunk costs little extra compute (the figures:
# docs/streaming.md, measured with benchmarks/bench_long_files.py).
FILE_CHUNK_FRAMES = 500
# 0.2 s: the latency a stream adds on top of the model's look-ahead (see docs/streaming.md).
STREAM_CHUNK_FRAMES = 10
FRAMINGS = ("file", "network")  # `.esc` packets, or network packets (network.py)
# A packet further ahead than this is refused rather than concealing everything before it.
MAX_GAP_SECONDS = 10


# ----------------------------------------------------------------------------------------------------------------
# Receptive field


def _conv_span(conv: nn.Module) -> tuple[int, int]:
    """Input frames `(first, last)` relative to output frame t of an ESC time convolution (stride 1 in time)."""
    kernel, padding = conv.kernel_size[-1], conv.padding[-1]
    if isinstance(conv, nn.ConvTranspose2d):
        return padding - kernel + 1, padding
    return -padding, kernel - 1 - padding


def _back(module: nn.Module, lo: int, hi: int) -> tuple[int, int]:
    """The input latent frames that outputs `lo … hi` of `module` depend on (time axis only)."""
    from ..models.esc.modeling_esc import EscConv2d, EscResidualUnit, EscSwinBlock, EscTransformerLayer

    if isinstance(module, EscTransformerLayer):
        for block in reversed(module.swint_blocks):
            lo, hi = _back(block, lo, hi)
        return lo, hi  # patch merge / split only touch frequency
    if isinstance(module, EscSwinBlock):
        ws, shift = module.window_size, module.shift_size
        return (lo - shift) // ws * ws + shift, (hi - shift) // ws * ws + shift + ws - 1
    if isinstance(module, EscConv2d):
        first, last = _conv_span(module.conv)
        return lo + first, hi + last
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        first, last = _conv_span(module)
        return lo + first, hi + last
    children = list(module.children())
    spans = [(lo, hi)]
    for child in reversed(children):
        spans.append(_back(child, *spans[-1]))
    if isinstance(module, EscResidualUnit):  # x + block(x): the identity path is inside the block's span
        return min(s[0] for s in spans), max(s[1] for s in spans)
    return spans[-1]


@dataclass(frozen=True)
class ReceptiveField:
    """How many code frames of input each side of a code frame its output depends on, and the alignment (code
    frames) at which a chunk must start for its windows to coincide with the whole-file computation."""

    encode_left: int
    encode_right: int
    decode_left: int
    decode_right: int
    align: int


def receptive_field(model) -> ReceptiveField:
    """The receptive field of `model.encode` (code frame ← samples) and `model.decode` (samples ← code frames)."""
    config = model.config
    hop, spf, overlap = config.hop_length, config.samples_per_code_frame, config.overlap
    patch = config.patch_size[1]
    window_offset = (config.n_fft - config.win_length) // 2 - config.n_fft // 2  # first sample of frame 0
    align = 1
    if config.backbone == "swin":
        align = math.lcm(config.window_size, overlap) // overlap

    def group(lo, hi):  # a code frame quantises `overlap` latent frames together
        return lo // overlap * overlap, hi // overlap * overlap + overlap - 1

    enc_left = enc_right = dec_left = dec_right = 0
    base = 1000 * align  # far from 0 so that floor division never sees negative numbers
    for frame in range(base, base + align):
        # encode: the last stream's codes of `frame` → samples
        lo, hi = overlap * frame, overlap * frame + overlap - 1
        if config.quantizer == "csrvq":
            for block in reversed(model.decoder.blocks[: config.num_streams - 2]):
                lo, hi = group(*_back(block, lo, hi))
        for stage in [*reversed(model.encoder.blocks), model.encoder.pre_nn]:
            lo, hi = _back(stage, lo, hi)
        first = hop * patch * lo + window_offset
        last = hop * (patch * hi + patch - 1) + window_offset + config.win_length - 1
        enc_left = max(enc_left, frame - first // spf)
        enc_right = max(enc_right, last // spf - frame)

        # decode: samples of `frame` → code frames (iSTFT, de-embedding convolutions, decoder stages)
        first_sample, last_sample = spf * frame, spf * frame + spf - 1
        lo = -((window_offset + config.win_length - 1 - first_sample) // hop)  # ceil
        hi = (last_sample - window_offset) // hop
        deembed = model.decoder.patch_deembed
        lo, hi = _back(deembed.de_proj2, lo, hi)
        lo, hi = _back(deembed.de_proj1, lo // patch, hi // patch)
        for stage in [model.decoder.post_nn, *reversed(model.decoder.blocks)]:
            lo, hi = _back(stage, lo, hi)
        lo, hi = group(lo, hi)
        dec_left = max(dec_left, frame - lo // overlap)
        dec_right = max(dec_right, hi // overlap - frame)
    return ReceptiveField(enc_left, enc_right, dec_left, dec_right, align)


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk length and context (code frames) for a model; every number a multiple of `align`."""

    chunk_frames: int
    encode_left: int
    encode_right: int
    decode_left: int
    decode_right: int
    samples_per_frame: int

    @classmethod
    def for_model(cls, model, chunk_frames: int = FILE_CHUNK_FRAMES) -> "ChunkPlan":
        field = receptive_field(model)
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")

        def up(n):
            return -(-n // field.align) * field.align

        # The decoder also waits for two frames after a chunk: the last 80 samples of the second-to-last code frame
        # may lie past the end of the audio, which only the final packet tells.
        return cls(
            up(chunk_frames),
            up(field.encode_left),
            up(field.encode_right),
            up(field.decode_left),
            up(max(field.decode_right, 2)),
            model.config.samples_per_code_frame,
        )

    def latency_frames(self, frames_per_packet: int | None = None) -> int:
        """Algorithmic latency of encoder + decoder in code frames: from the moment a sample enters the encoder
        until the decoder can return it, worst case over the samples of a chunk, with no compute time."""
        # A chunk's first sample waits for the chunk and the encoder's look-ahead; the decoder then needs the
        # codes `decode_right` frames further on, which arrive with the encoder chunk (or packet) holding them.
        unit = self.chunk_frames if frames_per_packet is None else math.lcm(self.chunk_frames, frames_per_packet)
        needed = self.chunk_frames + self.decode_right  # codes the decoder needs, counted from the chunk's start
        return -(-needed // unit) * unit + self.encode_right

    def latency_seconds(self, sampling_rate: int, frames_per_packet: int | None = None) -> float:
        return self.latency_frames(frames_per_packet) * self.samples_per_frame / sampling_rate


# ----------------------------------------------------------------------------------------------------------------
# Chunked encoder and decoder (samples ⇄ codes)


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


class ChunkedEncoder:
    """Feed samples in pieces of any size; get the codes of every code frame whose context is complete.

    The codes equal `model.encode` of the whole signal (see the module docstring)."""

    def __init__(self, model, num_streams: int, plan: ChunkPlan | None = None):
        self.model = model
        self.num_streams = model.config.resolve_num_streams(num_streams)
        self.plan = plan or ChunkPlan.for_model(model)
        self.spf = model.config.samples_per_code_frame
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self.num_samples = 0  # samples received
        self.next_frame = 0  # first code frame not yet returned
        self.finished = False

    def _empty(self) -> np.ndarray:
        return np.zeros((self.num_streams, self.model.config.group_size, 0), dtype=np.int64)

    def push(self, samples) -> np.ndarray:
        """Add mono float samples; returns codes `(streams, groups, frames)` (possibly 0 frames)."""
        if self.finished:
            raise ValueError("this encoder is finished; start a new one")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise ValueError("audio samples must be finite (got NaN or infinity)")
        self._buffer = np.concatenate([self._buffer, samples])
        self.num_samples += samples.size
        out = []
        plan = self.plan
        while self.num_samples >= self.spf * (self.next_frame + plan.chunk_frames + plan.encode_right):
            end_frame = self.next_frame + plan.chunk_frames
            out.append(self._chunk(end_frame, self.spf * (end_frame + plan.encode_right)))
        return np.concatenate(out, axis=-1) if out else self._empty()

    def finish(self) -> np.ndarray:
        """The remaining codes, up to the end of the audio."""
        if self.finished:
            raise ValueError("this encoder is already finished")
        if self.num_samples == 0:
            raise ValueError("no audio was given")
        self.finished = True
        total = self.model.config.code_frames_for_samples(self.num_samples)
        out = []
        while self.next_frame < total:
            end_frame = min(self.next_frame + self.plan.chunk_frames, total)
            out.append(self._chunk(end_frame, min(self.num_samples, self.spf * (end_frame + self.plan.encode_right))))
        self._buffer = self._buffer[:0]
        return np.concatenate(out, axis=-1) if out else self._empty()

    def _chunk(self, end_frame: int, end_sample: int) -> np.ndarray:
        start_frame = max(0, self.next_frame - self.plan.encode_left)
        start = self.spf * start_frame - self._buffer_start
        audio = torch.from_numpy(self._buffer[start : end_sample - self._buffer_start])
        with torch.inference_mode():
            audio = audio.to(self.model.device, _model_dtype(self.model))
            codes = self.model.encode(audio[None, None], num_streams=self.num_streams)
        codes = codes.audio_codes[0, :, :, self.next_frame - start_frame : end_frame - start_frame].cpu().numpy()
        self.next_frame = end_frame
        keep_from = self.spf * max(0, self.next_frame - self.plan.encode_left)
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return codes


def decode_codes(model, codes: np.ndarray, concealed: ConcealedFrames | None = None) -> np.ndarray:
    """float32 samples of codes `(streams, groups, frames)` in which `ABSENT` (-1) marks the streams a frame lacks
    (a v2 packet with fewer layers): each frame decodes with the streams it has (`EscModel.decode`'s
    `streams_per_frame`), exactly as a constant-rate decode where the rate does not change. With `concealed`
    (lost frames filled in, see `concealment.conceal`), its codes and blend are decoded instead; its gains are
    the caller's to apply."""
    blend = None
    if concealed is not None:
        codes, blend = concealed.codes, (concealed.blend_codes, concealed.blend)
    present = streams_per_frame(codes)
    lowest = int(present.min())
    constant = lowest == present.max()  # one rate: the plain decode of those streams

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array[:lowest] if constant else array))[None].to(model.device)

    options = {} if constant else {"streams_per_frame": torch.from_numpy(present)[None]}
    if blend is not None:
        options.update(blend_codes=tensor(blend[0]), blend_weights=torch.from_numpy(blend[1]).float()[None])
    with torch.inference_mode():
        out = model.decode(tensor(codes), **options)
    return out.audio_values[0, 0].float().cpu().numpy()


class ChunkedDecoder:
    """Feed codes in pieces of any size; get the samples whose codes are all in. `finish(num_samples)` returns the
    rest. The audio equals `model.decode` of all codes, cropped to `num_samples`.

    With a `concealment`, frames may be `LOST` (all streams): each is concealed when its samples are due, with
    what the decoder holds by then (see `concealment.py`); a chunk without lost frames decodes as without it."""

    def __init__(self, model, plan: ChunkPlan | None = None, concealment: Concealment | None = None):
        self.model = model
        self.plan = plan or ChunkPlan.for_model(model)
        self.spf = model.config.samples_per_code_frame
        self.concealment = concealment
        self._codes = None  # (streams, groups, frames) from frame _codes_start
        self._codes_start = 0
        self._decided = None  # ConcealedFrames of frames _codes_start … next_frame - 1 (with a concealment)
        self._previous, self._lost_before = None, 0  # the last frame received before next_frame, lost ones since
        self.num_frames = 0  # frames received
        self.next_frame = 0  # first code frame whose samples are not yet returned
        self.samples_out = 0
        self.finished = False

    def push(self, codes) -> np.ndarray:
        """Add codes `(streams, groups, frames)` (`ABSENT` in the streams a frame lacks, `LOST` in all streams of
        a frame that never arrived); returns float32 samples (possibly none)."""
        if self.finished:
            raise ValueError("this decoder is finished; start a new one")
        codes = np.asarray(codes, dtype=np.int64)
        if self._codes is not None and codes.shape[:2] != self._codes.shape[:2]:
            raise ValueError(f"codes of shape {codes.shape} do not continue codes of shape {self._codes.shape}")
        if (codes == LOST).any():
            if self.concealment is None:
                raise ValueError("the codes hold lost frames (LOST): decode them with a concealment method")
            if not np.array_equal(codes == LOST, np.broadcast_to(lost_frames(codes), codes.shape)):
                raise ValueError("a lost frame must be LOST in every stream")
        self._codes = codes if self._codes is None else np.concatenate([self._codes, codes], axis=-1)
        self.num_frames += codes.shape[-1]
        plan, out = self.plan, []
        while self.num_frames >= self.next_frame + plan.chunk_frames + plan.decode_right:
            out.append(self._chunk(self.next_frame + plan.chunk_frames, last=False))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def finish(self, num_samples: int | None = None) -> np.ndarray:
        """The remaining samples: up to `num_samples` in all, or every sample the codes describe."""
        if self.finished:
            raise ValueError("this decoder is already finished")
        if self.num_frames == 0:
            raise ValueError("no codes were given")
        self.finished = True
        full = self.model.config.samples_for_code_frames(self.num_frames)
        if num_samples is not None and not self.samples_out <= num_samples <= full:
            raise ValueError(f"{self.num_frames} code frames cannot give {num_samples} samples")
        out = []
        while self.next_frame < self.num_frames:
            out.append(self._chunk(min(self.next_frame + self.plan.chunk_frames, self.num_frames), last=True))
        audio = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        if num_samples is not None:
            audio = audio[: num_samples - (self.samples_out - audio.size)]
        self._codes = None
        return audio

    def _chunk(self, end_frame: int, last: bool) -> np.ndarray:
        start_frame = max(0, self.next_frame - self.plan.decode_left)
        stop_frame = min(self.num_frames, end_frame + self.plan.decode_right)
        codes = self._codes[..., start_frame - self._codes_start : stop_frame - self._codes_start]
        concealed = self._conceal(start_frame, end_frame) if self.concealment is not None else None
        if concealed is not None and not lost_frames(codes).any():
            concealed = None  # nothing lost in reach: the exact decode
        if concealed is not None:
            concealed = _frames(concealed, 0, stop_frame - start_frame)
        audio = decode_codes(self.model, codes, concealed)
        begin = self.spf * (self.next_frame - start_frame)
        end = audio.size if last and end_frame == self.num_frames else self.spf * (end_frame - start_frame)
        if concealed is not None:
            audio[begin:end] *= sample_gains(concealed.gain, self.spf, begin, end)
        self.next_frame = end_frame
        self.samples_out += end - begin
        keep_from = max(0, self.next_frame - self.plan.decode_left)
        self._codes = self._codes[..., keep_from - self._codes_start :]
        if self._decided is not None:
            self._decided = _frames(self._decided, keep_from - self._codes_start, None)
        self._codes_start = keep_from
        return audio[begin:end]

    def _conceal(self, start_frame: int, end_frame: int) -> ConcealedFrames:
        """Concealment of frames `start_frame` … (all received): frames before `next_frame` as decided before, the
        rest with what is in now; those before `end_frame` are decided for good."""
        ahead = self._codes[..., self.next_frame - self._codes_start :]
        new = conceal(ahead, self.concealment, self._previous, self._lost_before, self.plan.decode_right)
        for frame in range(end_frame - self.next_frame):
            if lost_frames(ahead[..., frame : frame + 1])[0]:
                self._lost_before += 1
            else:
                self._previous, self._lost_before = ahead[..., frame], 0
        decided = _frames(new, 0, end_frame - self.next_frame)
        self._decided = decided if self._decided is None else _joined(self._decided, decided)
        before = _frames(self._decided, start_frame - self._codes_start, self.next_frame - self._codes_start)
        return _joined(before, new)


def _frames(concealed: ConcealedFrames, start: int, stop: int | None) -> ConcealedFrames:
    return ConcealedFrames(
        concealed.codes[..., start:stop],
        concealed.blend_codes[..., start:stop],
        concealed.blend[start:stop],
        concealed.gain[start:stop],
    )


def _joined(first: ConcealedFrames, second: ConcealedFrames) -> ConcealedFrames:
    fields = ("codes", "blend_codes", "blend", "gain")
    return ConcealedFrames(*(np.concatenate([getattr(first, f), getattr(second, f)], axis=-1) for f in fields))


# ----------------------------------------------------------------------------------------------------------------
# Streaming with packets


class EscStreamingEncoder:
    """Audio in, `.esc` packets out. Send `header` (bytes) first; every packet is self-checking (CRC, sequence
    number), and `flush()` returns the final packet, which carries the exact length. `version` 2 (the default) is
    layered, and entropy coded with `entropy_model`: by default the tables of the model's folder if it has them,
    `False` for bit-packed layers. `set_rate` changes the rate from packet to packet. `framing="network"` makes
    packets for a network instead (`network.py`: 5 bytes of framing; bit-packed; `frames_per_packet` 1, 2 or 5
    for 20, 40 or 100 ms, by default 1), and encodes in chunks as short as the packets.

    ```python
    encoder = EscStreamingEncoder(model, kbps=6)
    send(encoder.header)
    for block in microphone_blocks:
        for packet in encoder.push(block):
            send(packet)
    for packet in encoder.flush():
        send(packet)
    ```
    """

    def __init__(
        self,
        model,
        kbps: float | None = None,
        num_streams: int | None = None,
        chunk_frames: int | None = None,
        frames_per_packet: int | None = None,
        version: int = VERSION,
        entropy_model=None,
        framing: str = "file",
    ):
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        if kbps is not None:
            num_streams = model.config.resolve_num_streams(num_streams, kbps)
        self.model = model
        self.framing = framing
        if framing == "network":
            if version < 2 or entropy_model not in (None, False):
                raise ValueError("network packets carry version 2 streams of bit-packed layers (no entropy model)")
            entropy_model, frames_per_packet = False, frames_per_packet or 1
            # Chunks as short as the packets: a packet goes out as soon as its frames are encoded.
            chunk_frames = chunk_frames or frames_per_packet
        self.plan = ChunkPlan.for_model(model, chunk_frames or STREAM_CHUNK_FRAMES)
        frames_per_packet = frames_per_packet or self.plan.chunk_frames
        if entropy_model is None and version >= 2:
            from .entropy import load_entropy_model

            entropy_model = load_entropy_model(model)
        elif entropy_model is False:
            entropy_model = None
        self.header_info = EscHeader.for_model(
            model, num_streams or model.config.num_streams, None, frames_per_packet, version, entropy_model
        )
        if framing == "network":
            check_network_header(self.header_info)
        self._encoder = ChunkedEncoder(model, self.header_info.num_streams, self.plan)
        self._writer = PacketWriter(self.header_info, entropy_model)
        self._sequence = 0
        self._pending = self._encoder._empty()
        self._layers = self.header_info.num_streams
        self.num_samples = None  # known after flush

    def set_rate(self, kbps: float | None = None, num_streams: int | None = None) -> None:
        """Packets from now on hold `num_streams` layers (or `kbps` worth), at most the header's streams: a rate
        that changes from packet to packet (version 2). Frames already pending go out at the new rate."""
        if self.header_info.version < 2:
            raise ValueError("a version 1 stream has one rate; use version 2 to change it")
        streams = self.model.config.resolve_num_streams(num_streams, kbps)
        if streams > self.header_info.num_streams:
            raise ValueError(
                f"{streams} streams is more than this stream's header allows ({self.header_info.num_streams}); "
                "create the encoder with the highest rate it will use"
            )
        self._layers = streams

    @property
    def header(self) -> bytes:
        return self.header_info.to_bytes()

    @property
    def latency_seconds(self) -> float:
        """Algorithmic latency of this encoder and a matching `EscStreamingDecoder` (see `ChunkPlan`)."""
        return self.plan.latency_seconds(self.header_info.sample_rate, self.header_info.frames_per_packet)

    def push(self, samples) -> list[bytes]:
        """Mono float samples at the model's rate → the packets now complete (possibly none)."""
        return self._packets(self._encoder.push(samples), final=False)

    def flush(self) -> list[bytes]:
        """Ends the stream: the remaining packets, the last of them final."""
        codes = self._encoder.finish()
        self.num_samples = self._encoder.num_samples
        return self._packets(codes, final=True)

    def _packets(self, codes: np.ndarray, final: bool) -> list[bytes]:
        self._pending = np.concatenate([self._pending, codes], axis=-1)
        size, packets = self.header_info.frames_per_packet, []
        # The encoder's look-ahead guarantees frames after every pushed chunk, so a full packet is never the last.
        while self._pending.shape[-1] > size or (self._pending.shape[-1] == size and not final):
            packets.append(self._packet(self._pending[: self._layers, :, :size]))
            self._pending = self._pending[..., size:]
        if final:
            frames = self._encoder.next_frame
            drop = frames * self.header_info.samples_per_frame - self.num_samples
            packets.append(self._packet(self._pending[: self._layers], final=True, drop=drop))
            self._pending = self._pending[..., :0]
        return packets

    def _packet(self, codes: np.ndarray, final: bool = False, drop: int = 0) -> bytes:
        if self.framing == "file":
            return self._writer.packet(codes, final, drop)
        self._sequence += 1
        return pack_network_packet(self.header_info, self._sequence - 1, codes, final, drop)


class EscStreamingDecoder:
    """`.esc` packets in, audio out. Give it the stream's header (bytes or `EscHeader`); it checks that `model`
    made the stream, and each packet's CRC. `push(packet)` returns the samples now complete; after the final
    packet it returns all the rest, trimmed to the exact length.

    File packets (`framing="file"`) must come in order, and a missing one is an error unless `conceal` names a
    method (`concealment.CONCEAL_METHODS`), which then fills the gap. Network packets (`framing="network"`) may
    come in any order within `reorder_window` packets (by default the decoder's look-ahead); `push_lost(sequence)`
    (or `push(None)` for the next one missing) says that one never came, and one that has not come when packets
    `reorder_window` further on have is taken as lost. Late and repeated packets are ignored and counted
    (`late_packets`). Without loss the audio is the same with and without `conceal`."""

    def __init__(
        self,
        model,
        header,
        chunk_frames: int = STREAM_CHUNK_FRAMES,
        entropy_model=None,
        framing: str = "file",
        conceal: str | Concealment | None = None,
        reorder_window: int | None = None,
    ):
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        self.header_info = header if isinstance(header, EscHeader) else EscHeader.from_bytes(header)
        self.header_info.check_model(model)
        self.framing = framing
        self.concealment = Concealment(conceal) if isinstance(conceal, str) else conceal
        plan = ChunkPlan.for_model(model, chunk_frames)
        self._decoder = ChunkedDecoder(model, plan, self.concealment)
        fpp = self.header_info.frames_per_packet
        if framing == "network":
            check_network_header(self.header_info)
            self._reader = None
        else:
            entropy_model = entropy_model_for(self.header_info, model, entropy_model)
            self._reader = PacketReader(
                self.header_info, model, entropy_model, allow_gaps=self.concealment is not None
            )
        if reorder_window is None:
            reorder_window = -(-plan.decode_right // fpp)
        if isinstance(reorder_window, bool) or not isinstance(reorder_window, int) or reorder_window < 1:
            raise ValueError(f"reorder_window must be a positive number of packets, got {reorder_window!r}")
        self.reorder_window = reorder_window
        self._next = 0  # the next packet (counted without wrapping) to decode
        self._waiting = {}  # packets (None: lost) that came before `_next`'s
        self._final = None  # the final packet's number, once known
        self.late_packets = 0
        self.lost_packets = 0
        self.num_samples = None  # known after the final packet

    @property
    def finished(self) -> bool:
        return self._decoder.finished

    def push(self, packet: bytes | None) -> np.ndarray:
        """One packet's bytes (None: the next one missing is lost) → the samples now complete (possibly none)."""
        if self.finished:
            raise ValueError("this stream is finished (its final packet was decoded); start a new decoder")
        if packet is None:
            self._need_network("push(None)")
            missing = self._next
            while missing in self._waiting:
                missing += 1
            return self._mark_lost(missing)
        if self.framing == "file":
            return self._push_file_packet(packet)
        parsed = parse_network_packet(packet, self.header_info)
        number = self._unwrap(parsed.sequence)
        if number is None or number in self._waiting:
            self.late_packets += 1
            return np.zeros(0, dtype=np.float32)
        if not parsed.final and parsed.frames != self.header_info.frames_per_packet:
            raise CorruptError(
                f"network packet {parsed.sequence} holds {parsed.frames} code frames; every packet but the final "
                f"one holds {self.header_info.frames_per_packet}"
            )
        self._waiting[number] = parsed
        return self._drain()

    def push_lost(self, sequence: int) -> np.ndarray:
        """Packet `sequence` (as sent: 16 bits) will not come; returns the samples now complete."""
        if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence <= 0xFFFF:
            raise ValueError(f"a sequence number is an integer from 0 to 65535, got {sequence!r}")
        self._need_network("push_lost")
        if self.finished:
            raise ValueError("this stream is finished (its final packet was decoded); start a new decoder")
        number = self._unwrap(sequence)
        if number is None or number in self._waiting:
            return np.zeros(0, dtype=np.float32)  # decoded or concealed already, or here
        return self._mark_lost(number)

    def flush(self) -> np.ndarray:
        """At the end of the stream: nothing more if the final packet came. Else, with `conceal`, the rest of what
        came, its gaps concealed, up to the length the header gives (a file's) or to the last frame received;
        without, `TruncatedError`."""
        if self.finished:
            return np.zeros(0, dtype=np.float32)
        if self.concealment is None or self._decoder.num_frames + len(self._waiting) == 0:
            raise TruncatedError(f"the stream ended before its final packet (after {self._decoder.num_frames} frames)")
        audio = []
        while self._waiting and not self.finished:
            audio.append(self._mark_lost(self._next))
        if not self.finished:
            header = self.header_info
            missing = (header.num_frames or 0) - self._decoder.num_frames
            if missing > 0:
                audio.append(self._decoder.push(lost_codes(header, missing)))
            audio.append(self._decoder.finish(header.num_samples))
        return np.concatenate(audio)

    def _need_network(self, what: str) -> None:
        if self.framing != "network":
            raise ValueError(f"{what} is for network packets; a file's packets show their gaps in their numbers")

    def _unwrap(self, sequence: int) -> int | None:
        """The packet number of a 16-bit `sequence`: the nearest at or after the next one to decode; None if it
        lies behind (late)."""
        ahead = (sequence - self._next) & 0xFFFF
        if ahead >= 0x8000 or (self._final is not None and self._next + ahead > self._final):
            return None
        if ahead > MAX_GAP_SECONDS * self.header_info.frame_rate / self.header_info.frames_per_packet:
            raise CorruptError(
                f"packet {sequence} is {ahead} packets ahead of the next one expected: more than {MAX_GAP_SECONDS} s"
            )
        return self._next + ahead

    def _mark_lost(self, number: int) -> np.ndarray:
        self._waiting.setdefault(number, None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        """Decodes the packets now in order; takes a packet as lost once packets `reorder_window` later came."""
        out = []
        while self._waiting and not self.finished:
            if self._next not in self._waiting:
                if max(self._waiting) - self._next < self.reorder_window:
                    break
                self._waiting[self._next] = None
            packet = self._waiting.pop(self._next)
            self._next += 1
            out.append(self._decode(packet))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _decode(self, packet) -> np.ndarray:
        header = self.header_info
        if packet is None:
            self.lost_packets += 1
            if self.concealment is None:
                raise TruncatedError(
                    f"packet {(self._next - 1) & 0xFFFF} was lost: decode with a concealment method (conceal=...)"
                )
            return self._decoder.push(lost_codes(header, header.frames_per_packet))
        audio = self._decoder.push(packet.codes)
        if not packet.final:
            return audio
        self._final = self._next - 1
        samples = final_length(self._decoder.num_frames, packet.drop, header.samples_per_frame)
        self.num_samples = samples
        return np.concatenate([audio, self._decoder.finish(samples)])

    def _push_file_packet(self, packet: bytes) -> np.ndarray:
        parsed = self._reader.parse(bytes(packet))
        out = []
        if parsed.lost_before:
            self.lost_packets += parsed.lost_before
            missing = parsed.lost_before * self.header_info.frames_per_packet
            out.append(self._decoder.push(lost_codes(self.header_info, missing)))
        out.append(self._decoder.push(parsed.codes))
        if parsed.final:
            self.num_samples = self._reader.num_samples
            out.append(self._decoder.finish(self.num_samples))
        return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------
# Files


def encode_file(
    model,
    blocks,
    path: str | Path,
    num_streams: int,
    chunk_frames: int = FILE_CHUNK_FRAMES,
    frames_per_packet: int | None = None,
    progress=None,
    version: int = VERSION,
    entropy_model=None,
) -> EscHeader:
    """Writes the `.esc` file of the audio in `blocks` (an iterable of mono float32 arrays at the model's rate)
    atomically, in memory that does not grow with the length. `progress(samples)` is called after each block.
    Version 2 files are entropy coded with `entropy_model`, by default the one in the model's folder if it has one
    (`False`: bit-packed layers)."""
    encoder = EscStreamingEncoder(
        model,
        num_streams=num_streams,
        chunk_frames=chunk_frames,
        frames_per_packet=frames_per_packet or DEFAULT_FRAMES_PER_PACKET,
        version=version,
        entropy_model=entropy_model,
    )
    with atomic_file(path) as handle:
        handle.write(encoder.header)  # rewritten with the length at the end
        for block in blocks:
            for packet in encoder.push(block):
                handle.write(packet)
            if progress is not None:
                progress(len(block))
        for packet in encoder.flush():
            handle.write(packet)
        header = encoder.header_info.with_length(encoder.num_samples, encoder._encoder.next_frame)
        handle.seek(0)
        handle.write(header.to_bytes())
    return header


def read_header(path: str | Path) -> EscHeader:
    with open(path, "rb") as handle:
        return EscHeader.from_bytes(handle.read(MAX_HEADER_SIZE))


def iter_packets(
    path: str | Path, header: EscHeader | None = None, model=None, decode_codes: bool = True, allow_gaps: bool = False
):
    """The header, then every checked `Packet` of an `.esc` file, read one at a time. With `model`, the header
    and the final packet's length are also checked against it (`EscHeader.check_model`), and an entropy-coded
    file is decoded with the model folder's entropy model. `decode_codes=False` checks packets without decoding
    their codes (no model needed). `allow_gaps`: packets may be missing (`Packet.lost_before`)."""
    with open(path, "rb") as handle:
        found = EscHeader.from_bytes(handle.read(MAX_HEADER_SIZE))
        handle.seek(found.size)
        used = found if header is None else header
        if model is not None:
            used.check_model(model)
        yield found
        entropy_model = entropy_model_for(used, model) if decode_codes else None
        reader = PacketReader(used, model, entropy_model, decode_codes, allow_gaps)
        while (packet := reader.read(handle)) is not None:
            yield packet


def decode_file(
    model, path: str | Path, chunk_frames: int = FILE_CHUNK_FRAMES, conceal: str | Concealment | None = None
):
    """Yields the header, then blocks of decoded float32 samples of an `.esc` file, in bounded memory. Every
    check of the stream happens before the samples that depend on it are yielded. A missing packet (a gap in
    the numbering, or a file that ends before its final packet) is an error unless `conceal` names a method
    (`concealment.CONCEAL_METHODS`) to fill it with."""
    with open(path, "rb") as handle:
        packets = iter_packet_bytes(handle, allow_gaps=conceal is not None)
        header = next(packets)
        decoder = EscStreamingDecoder(model, header, chunk_frames, conceal=conceal)
        yield header
        while True:
            try:
                item = next(packets, None)
            except TruncatedError:
                if conceal is None:
                    raise
                item = None  # the end is missing: concealed up to the length the header gives
            audio = decoder.flush() if item is None else decoder.push(item[1])
            if audio.size:
                yield audio
            if item is None:
                return

"""Packet loss, simulated: seeded loss patterns, and ESC and Opus decoding the same 20 ms packets under them.

Patterns are boolean arrays over packets (True: lost). `bernoulli_losses` loses each packet independently;
`gilbert_elliott_losses` is the two-state model of bursty loss (a good state that loses nothing, a bad one that
loses every packet), set by its mean loss rate and mean burst length. The final packet is never lost: it only
carries the stream's exact length, which a call does not need.

ESC is decoded by its streaming decoder from network packets (`esc_hf.codec.network`), with a concealment
method; Opus by libopus (through ctypes, as `baselines.AmrWbCodec` does) at 20 ms frames, its lost frames
decoded with a NULL packet: Opus's own concealment (in-band FEC off, as ESC has none).
"""

import ctypes
import ctypes.util
import re

import numpy as np

from .baselines import RATE, CodecUnavailable

LOSS_RATES = (0.05, 0.10, 0.20, 0.30)
MEAN_BURST_PACKETS = 3.0  # Gilbert–Elliott's default: bursts of 60 ms on average at 20 ms packets


def parse_loss(text: str) -> float:
    """`"10%"` or `"0.1"` → 0.1; `ValueError` unless it is a rate from 0 to 100 %."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", str(text))
    if not match:
        raise ValueError(f"a loss rate is a number (0.1) or a percentage (10%), got {text!r}")
    rate = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 <= rate < 1:
        raise ValueError(f"a loss rate must lie from 0 to below 100 %, got {text!r}")
    return rate


def _check(packets: int, rate: float) -> None:
    if isinstance(packets, bool) or not isinstance(packets, int) or packets < 1:
        raise ValueError(f"packets must be a positive integer, got {packets!r}")
    if not 0 <= rate < 1:
        raise ValueError(f"a loss rate must lie in [0, 1), got {rate!r}")


def bernoulli_losses(packets: int, rate: float, seed: int = 0) -> np.ndarray:
    """Each of `packets` packets but the last lost with probability `rate`."""
    _check(packets, rate)
    lost = np.random.default_rng(seed).random(packets) < rate
    lost[-1] = False
    return lost


def gilbert_elliott_losses(packets: int, rate: float, mean_burst: float = MEAN_BURST_PACKETS, seed: int = 0):
    """Bursty loss: a Markov chain that enters its lossy state with probability p and leaves it with r = 1 /
    `mean_burst`, p chosen so that `rate` = p / (p + r) of the packets are lost in the long run."""
    _check(packets, rate)
    if not mean_burst >= 1:
        raise ValueError(f"mean_burst must be at least 1 packet, got {mean_burst!r}")
    leave = 1.0 / mean_burst
    enter = rate * leave / (1 - rate)
    draws = np.random.default_rng(seed).random(packets)
    lost = np.zeros(packets, dtype=bool)
    bad = draws[0] < rate  # the chain's stationary distribution
    for i in range(packets):
        lost[i] = bad
        bad = draws[i] >= leave if bad else draws[i] < enter
    lost[-1] = False
    return lost


def esc_network_packets(model, audio: np.ndarray, num_streams: int) -> tuple:
    """`audio` (16 kHz float) coded by ESC with `num_streams` streams in 20 ms network packets: (header, packets).
    The whole-signal encode gives the codes the streaming encoder would (see `tests/test_streaming.py`)."""
    import torch

    from ..codec.bitstream import EscHeader
    from ..codec.network import network_packets

    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(audio)[None, None], num_streams=num_streams).audio_codes.numpy()
    header = EscHeader.for_model(model, num_streams, frames_per_packet=1)
    return header, network_packets(header, codes, audio.size)


def esc_under_loss(model, header, packets: list[bytes], lost, conceal: str | None = "interpolate", chunk_frames=10):
    """ESC's network `packets` with those where `lost` is True dropped, decoded by `EscStreamingDecoder` (in
    chunks of `chunk_frames`) with concealment `conceal`. What each lost frame gets does not depend on
    `chunk_frames` (the concealment looks as far ahead as the decoder's look-ahead, no further); only the
    chunks' seams near a gap do."""
    from ..codec.streaming import EscStreamingDecoder

    lost = np.asarray(lost, dtype=bool)
    if lost.shape != (len(packets),):
        raise ValueError(f"the loss pattern covers {lost.size} packets; there are {len(packets)}")
    decoder = EscStreamingDecoder(model, header, chunk_frames, framing="network", conceal=conceal)
    out = [
        decoder.push_lost(i) if gone else decoder.push(packet) for i, (packet, gone) in enumerate(zip(packets, lost))
    ]
    out.append(decoder.flush())
    return np.concatenate(out)


def gap_peak_ratio(
    decoded: np.ndarray,
    clean: np.ndarray,
    lost,
    samples_per_frame: int,
    margin: float = 0.02,
    context: float = 0.1,
    steps: bool = False,
) -> float:
    """The click check: over the gaps (runs of lost packets of `samples_per_frame` samples each), the largest
    ratio of `decoded`'s peak from `margin` seconds before a gap to `margin` after it, to the loss-free decode
    `clean`'s peak from `context` seconds before to `context` after. Concealment that only fills in, fades or
    mutes stays at or below about 1; a click or a burst of noise rises above. With `steps`, the peaks are of the
    sample-to-sample differences instead, which a click (a jump) raises most. Gaps where `clean` is quieter than
    -40 dBFS over the context are left out (a ratio of near-silences says nothing). NaN if no gap counts."""
    lost = np.asarray(lost, dtype=bool)
    near, far = round(margin * RATE), round(context * RATE)
    ratios = []
    start = 0
    while start < lost.size:
        if not lost[start]:
            start += 1
            continue
        end = start
        while end < lost.size and lost[end]:
            end += 1
        first, last = start * samples_per_frame, end * samples_per_frame
        around, here = clean[max(0, first - far) : last + far], decoded[max(0, first - near) : last + near]
        if np.abs(around).max(initial=0.0) > 0.01:
            if steps:
                around, here = np.diff(around), np.diff(here)
            ratios.append(float(np.abs(here).max(initial=0.0) / np.abs(around).max()))
        start = end
    return max(ratios) if ratios else float("nan")


class OpusLibrary:
    """libopus through ctypes, 20 ms frames at 16 kHz, wideband, VBR; `code(audio, kbps, lost)`."""

    FRAME = 320
    APPLICATION_VOIP, SET_BITRATE, SET_BANDWIDTH, BANDWIDTH_WIDEBAND, GET_LOOKAHEAD = 2048, 4002, 4008, 1103, 4027

    def __init__(self):
        found = ctypes.util.find_library("opus")
        if found is None:
            raise CodecUnavailable("libopus not found (Debian: apt-get install libopus0)")
        lib = ctypes.CDLL(found)
        lib.opus_encoder_create.restype = lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encoder_destroy.argtypes = lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encode_float.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        lib.opus_decode_float.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
        ]  # fmt: skip
        lib.opus_get_version_string.restype = ctypes.c_char_p
        self.lib = lib
        self.version = lib.opus_get_version_string().decode()

    def code(self, audio: np.ndarray, kbps: float, lost=None) -> tuple[np.ndarray, float]:
        """(decoded audio of `audio`'s length, time-aligned; mean bytes per packet). `lost` marks the 20 ms
        packets that are dropped (None: none)."""
        lib, frame, error = self.lib, self.FRAME, ctypes.c_int()
        encoder = lib.opus_encoder_create(RATE, 1, self.APPLICATION_VOIP, ctypes.byref(error))
        decoder = lib.opus_decoder_create(RATE, 1, ctypes.byref(error))
        if not encoder or not decoder:
            raise RuntimeError(f"libopus could not create a coder (error {error.value})")
        try:
            handle = ctypes.c_void_p(encoder)  # opus_encoder_ctl is variadic: no argtypes, so pass a typed pointer
            lib.opus_encoder_ctl(handle, self.SET_BITRATE, ctypes.c_int(round(kbps * 1000)))
            lib.opus_encoder_ctl(handle, self.SET_BANDWIDTH, ctypes.c_int(self.BANDWIDTH_WIDEBAND))
            delay = ctypes.c_int()
            lib.opus_encoder_ctl(handle, self.GET_LOOKAHEAD, ctypes.byref(delay))
            count = -(-(audio.size + delay.value) // frame)
            padded = np.zeros(count * frame, dtype=np.float32)
            padded[: audio.size] = audio
            lost = np.zeros(count, dtype=bool) if lost is None else np.asarray(lost, dtype=bool)
            if lost.size < count:  # the look-ahead's extra frame is never lost
                lost = np.concatenate([lost, np.zeros(count - lost.size, dtype=bool)])
            data, out, sizes = (ctypes.c_ubyte * 1500)(), np.zeros(count * frame, dtype=np.float32), []
            for i in range(count):
                size = lib.opus_encode_float(encoder, padded[i * frame :].ctypes.data, frame, data, len(data))
                if size < 0:
                    raise RuntimeError(f"opus_encode_float failed ({size})")
                sizes.append(size)
                target = out[i * frame :].ctypes.data
                got = lib.opus_decode_float(
                    decoder, None if lost[i] else data, 0 if lost[i] else size, target, frame, 0
                )
                if got != frame:
                    raise RuntimeError(f"opus_decode_float returned {got}")
        finally:
            lib.opus_encoder_destroy(encoder)
            lib.opus_decoder_destroy(decoder)
        return out[delay.value : delay.value + audio.size], float(np.mean(sizes))

"""Packet-loss concealment: what the decoder plays for code frames that never arrived.

A lost code frame is marked `LOST` in every stream. When the decoder needs it, a method decides, once and for
good, three things per lost frame: the codes to decode, a second set of codes and a weight to blend their
quantised features with (`EscModel.decode(blend_codes=..., blend_weights=...)`), and a gain for its samples:

- `"silence"`: no sound for the lost frames (a baseline: what a decoder without concealment can do).
- `"repeat"`: the last received frame's codes again, fading out.
- `"interpolate"`: the decoder's quantised latents interpolated from the last received frame to the next one,
  which the decoder's look-ahead (it waits `ChunkPlan.decode_right` frames anyway) often already holds; where
  the next frame is not in yet, as `"repeat"`.

All methods fade to silence within `max_frames` lost frames (a burst longer than that is silent in its middle)
and back in towards the next received frame. Gains change linearly from one frame's centre to the next, so that
no gap starts or ends with a step (a click). Frames that arrived are decoded exactly as without concealment.
"""

from dataclasses import dataclass

import numpy as np

from .bitstream import ABSENT, streams_per_frame

LOST = -2  # a code frame that never arrived (all streams)
CONCEAL_METHODS = ("silence", "repeat", "interpolate")
# 200 ms, about a syllable: a longer gap is faded out rather than filled with a guess.
DEFAULT_MAX_CONCEALED_FRAMES = 10


@dataclass(frozen=True)
class Concealment:
    """A concealment `method` (one of `CONCEAL_METHODS`) and the burst length (code frames) over which it fades to
    silence."""

    method: str = "interpolate"
    max_frames: int = DEFAULT_MAX_CONCEALED_FRAMES

    def __post_init__(self):
        if self.method not in CONCEAL_METHODS:
            raise ValueError(f"unknown concealment method {self.method!r} (known: {', '.join(CONCEAL_METHODS)})")
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 1:
            raise ValueError(f"max_frames must be a positive integer, got {self.max_frames!r}")


@dataclass
class ConcealedFrames:
    """What to decode for frames `(streams, groups, frames)`: `codes`, `blend_codes` and `blend` `(frames,)` for
    `EscModel.decode`, and the samples' `gain` `(frames,)` at each frame's centre."""

    codes: np.ndarray
    blend_codes: np.ndarray
    blend: np.ndarray
    gain: np.ndarray


def lost_codes(header, frames: int) -> np.ndarray:
    """Codes `(streams, groups, frames)` of `frames` frames that never arrived, for a stream of `header`."""
    return np.full((header.num_streams, header.group_size, frames), LOST, dtype=np.int64)


def lost_frames(codes: np.ndarray) -> np.ndarray:
    """`(frames,)` bool: which frames of codes `(streams, groups, frames)` are `LOST`."""
    return (codes == LOST).all(axis=(0, 1))


def conceal(
    codes: np.ndarray,
    concealment: Concealment,
    previous: np.ndarray | None = None,
    lost_before: int = 0,
    lookahead: int | None = None,
) -> ConcealedFrames:
    """Conceals the `LOST` frames of codes `(streams, groups, frames)`: all the frames known so far from some
    frame on. `previous` `(streams, groups)` is the last frame received before them (None: none was) and
    `lost_before` the lost frames between it and `codes[..., 0]`. A burst reaching the end of `codes` is treated
    as one whose next frame is not known yet. `lookahead` bounds how far after a lost frame the next received
    one may be used (the decoder's own look-ahead, so that what a frame gets does not depend on chunk sizes)."""
    lost = lost_frames(codes)
    frames = codes.shape[-1]
    out = ConcealedFrames(codes.copy(), codes.copy(), np.zeros(frames), np.ones(frames))
    limit = concealment.max_frames
    start = 0
    while start < frames:
        if not lost[start]:
            start += 1
            continue
        end = start
        while end < frames and lost[end]:
            end += 1
        before = previous if start == 0 else codes[..., start - 1]
        skipped = lost_before if start == 0 else 0
        after = codes[..., end] if end < frames else None
        burst = skipped + end - start  # the whole burst's length, if `after` is known
        for frame in range(start, end):
            j = skipped + frame - start  # position in the burst
            ahead = after if lookahead is None or end - frame <= lookahead else None
            fade_out = max(0.0, 1.0 - j / limit)
            fade_in = max(0.0, 1.0 - (burst - 1 - j) / limit) if ahead is not None else 0.0
            fill, other, weight = before, before, 0.0
            if before is None:  # the stream began with lost frames: only the next frame can help
                fill = other = ahead
                fade_out = 0.0
            elif ahead is not None and concealment.method == "interpolate":
                other, weight = ahead, (j + 1) / (burst + 1)
            if fill is None:  # nothing received on either side yet
                fill = other = np.zeros(codes.shape[:2], dtype=codes.dtype)
            fill, other = _common_streams(fill, other)
            out.codes[..., frame], out.blend_codes[..., frame], out.blend[frame] = fill, other, weight
            if concealment.method == "silence":
                out.gain[frame] = 0.0
            elif concealment.method == "repeat":
                out.gain[frame] = fade_out
            else:
                out.gain[frame] = max(fade_out, fade_in)
        start = end
    return out


def _common_streams(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both frames `(streams, groups)` cut to the streams both have (a rate may change across a gap)."""
    present = int(min(streams_per_frame(first[..., None])[0], streams_per_frame(second[..., None])[0]))
    first, second = first.copy(), second.copy()
    first[present:], second[present:] = ABSENT, ABSENT
    return first, second


def sample_gains(frame_gains: np.ndarray, samples_per_frame: int, begin: int, end: int) -> np.ndarray:
    """float32 gains of samples `begin … end - 1` (counted from the first of `frame_gains`' frames), linear from
    one frame's centre to the next."""
    centres = (np.arange(frame_gains.size) + 0.5) * samples_per_frame
    return np.interp(np.arange(begin, end), centres, frame_gains).astype(np.float32)

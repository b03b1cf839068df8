"""Reading and writing audio files for the codec: any rate and channel count in, 16 kHz mono float32 out."""

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .io_utils import atomic_file


class AudioFileError(ValueError):
    """An audio file is missing, unreadable or empty."""


def load_audio(path: str | Path, sampling_rate: int = 16000) -> tuple[np.ndarray, list[str]]:
    """Read `path` as mono float32 at `sampling_rate` (averaging channels, resampling with soxr).

    Returns the samples and a list of notes on what was changed ("resampled 44100 Hz → 16000 Hz", …).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"no such file: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioFileError(f"cannot read {path} as audio: {error}") from error
    notes = []
    if audio.shape[1] > 1:
        notes.append(f"mixed {audio.shape[1]} channels down to mono")
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise AudioFileError(f"{path} holds no samples")
    if rate != sampling_rate:
        notes.append(f"resampled {rate} Hz → {sampling_rate} Hz")
        audio = soxr.resample(audio, rate, sampling_rate, quality="HQ").astype(np.float32)
    return audio, notes


def save_audio(path: str | Path, audio: np.ndarray, sampling_rate: int = 16000) -> None:
    """Write mono `audio` atomically; the format follows the extension (wav, flac, ogg)."""
    path = Path(path)
    kind = path.suffix.lstrip(".").upper() or "WAV"
    if kind not in sf.available_formats():
        raise AudioFileError(f"cannot write {path}: unknown audio format {kind!r}")
    with atomic_file(path) as handle:
        sf.write(handle, np.asarray(audio, dtype=np.float32), sampling_rate, format=kind)

"""Reading and writing audio files for the codec: any rate and channel count in, 16 kHz mono float32 out.

Files are read and written block by block, so that memory does not grow with their length; `load_audio` and
`save_audio` are the whole-array forms of the same code.
"""

import contextlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..utils.atomic_files import atomic_path

BLOCK_SECONDS = 10.0
_READ_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


def list_audio_files(folder: str | Path) -> list[Path]:
    """The audio files under `folder` (recursively, by extension), sorted; `ValueError` if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"audio folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}")
    return files


class AudioFileError(ValueError):
    """An audio file is missing, unreadable or empty."""


class AudioSource:
    """An audio file opened for reading as mono float32 at `sampling_rate`: `notes` says what will be changed
    ("resampled 44100 Hz → 16000 Hz", …), `blocks()` yields the samples. Errors are `AudioFileError`s."""

    def __init__(self, path: str | Path, sampling_rate: int = 16000):
        self.path = Path(path)
        self.sampling_rate = sampling_rate
        if not self.path.is_file():
            raise AudioFileError(f"no such file: {self.path}")
        try:
            info = sf.info(str(self.path))
        except _READ_ERRORS as error:
            raise AudioFileError(f"cannot read {self.path} as audio: {error}") from error
        self.source_rate, self.channels, self.source_frames = info.samplerate, info.channels, info.frames
        if self.source_frames == 0:
            raise AudioFileError(f"{self.path} holds no samples")
        self.notes = []
        if self.channels > 1:
            self.notes.append(f"mixed {self.channels} channels down to mono")
        if self.source_rate != sampling_rate:
            self.notes.append(f"resampled {self.source_rate} Hz → {sampling_rate} Hz")

    @property
    def duration(self) -> float:
        return self.source_frames / self.source_rate

    def blocks(self, block_seconds: float = BLOCK_SECONDS):
        """Yields mono float32 blocks at `sampling_rate` (soxr's streaming resampler, identical to resampling the
        whole file at once)."""
        resampler = None
        if self.source_rate != self.sampling_rate:
            resampler = soxr.ResampleStream(self.source_rate, self.sampling_rate, 1, dtype="float32", quality="HQ")
        size = max(1, int(block_seconds * self.source_rate))
        got = 0
        try:
            with sf.SoundFile(str(self.path)) as handle:
                while True:
                    block = handle.read(size, dtype="float32", always_2d=True)
                    got += block.shape[0]
                    last = block.shape[0] < size  # not the header's frame count: some formats only estimate it
                    mono = block.mean(axis=1, dtype=np.float32) if self.channels > 1 else block[:, 0]
                    if resampler is not None:
                        mono = resampler.resample_chunk(mono, last=last)
                    if mono.size:
                        yield np.ascontiguousarray(mono, dtype=np.float32)
                    if last:
                        break
        except _READ_ERRORS as error:
            raise AudioFileError(f"cannot read {self.path} as audio: {error}") from error
        if got == 0:
            raise AudioFileError(f"{self.path} holds no samples")


def load_audio(path: str | Path, sampling_rate: int = 16000) -> tuple[np.ndarray, list[str]]:
    """Read `path` as mono float32 at `sampling_rate` (averaging channels, resampling with soxr).

    Returns the samples and a list of notes on what was changed ("resampled 44100 Hz → 16000 Hz", …).
    """
    source = AudioSource(path, sampling_rate)
    return np.concatenate(list(source.blocks())), source.notes


def _format(path: Path) -> str:
    kind = path.suffix.lstrip(".").upper() or "WAV"
    if kind not in sf.available_formats():
        raise AudioFileError(f"cannot write {path}: unknown audio format {kind!r} (use .wav, .flac or .ogg)")
    return kind


class AudioSink:
    """Mono audio written block by block into a temporary file that replaces `path` when the block succeeds.

    Samples beyond ±1 are clipped (integer formats would wrap them); `clipped` counts them."""

    def __init__(self, file: Path, path: Path, sampling_rate: int):
        # By file name, not a Python file object: libsndfile then reports a failed write (a full disk) as one
        # error, where a file object's cffi callbacks print a traceback per failed call.
        self._path = path
        self._file = sf.SoundFile(str(file), "w", samplerate=sampling_rate, channels=1, format=_format(path))
        self.clipped = 0
        self.samples = 0

    def write(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.clipped += int(np.count_nonzero(np.abs(audio) > 1.0))
        try:
            self._file.write(np.clip(audio, -1.0, 1.0))
        except sf.LibsndfileError as error:  # a full disk or a quota: an OSError like any other failed write
            raise OSError(f"cannot write {self._path}: {error}") from None
        self.samples += audio.size

    def close(self) -> None:
        try:
            self._file.close()
        except sf.LibsndfileError as error:
            raise OSError(f"cannot write {self._path}: {error}") from None


@contextlib.contextmanager
def open_audio_sink(path: str | Path, sampling_rate: int = 16000):
    path = Path(path)
    _format(path)
    with atomic_path(path) as tmp:
        sink = AudioSink(tmp, path, sampling_rate)
        try:
            yield sink
        finally:
            sink.close()


def save_audio(path: str | Path, audio: np.ndarray, sampling_rate: int = 16000) -> None:
    """Write mono `audio` atomically; the format follows the extension (wav, flac, ogg)."""
    with open_audio_sink(path, sampling_rate) as sink:
        sink.write(audio)


def decode_audio_value(value, sampling_rate: int = 16000) -> np.ndarray:
    """An undecoded `datasets.Audio` value (`{"bytes", "path"}`) or a decoded one (`{"array", "sampling_rate"}`)
    as mono float32 at `sampling_rate`."""
    if isinstance(value, dict) and value.get("array") is not None:
        audio, rate = np.asarray(value["array"], dtype=np.float32), value["sampling_rate"]
    elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        try:
            audio, rate = sf.read(source, dtype="float32", always_2d=True)
        except _READ_ERRORS as error:
            raise AudioFileError(f"cannot read audio {value.get('path') or '(bytes)'}: {error}") from None
    else:
        raise ValueError(f"cannot read an audio value of type {type(value).__name__} from the dataset")
    if audio.ndim == 2:
        audio = audio.mean(axis=1) if audio.shape[1] <= 8 else audio.mean(axis=0)
    if rate != sampling_rate:
        audio = soxr.resample(audio, rate, sampling_rate).astype(np.float32)
    return audio


def load_audio_dataset(name: str, split: str, audio_column: str, streaming: bool, config_name: str | None = None):
    """A Hugging Face dataset (Hub name, with `config_name`, or a `save_to_disk` folder) with its audio column left
    undecoded, so that soundfile reads it ([`decode_audio_value`]; no extra audio backend needed)."""
    import datasets

    path = Path(name)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = datasets.load_from_disk(str(path))
        data = data[split] if isinstance(data, datasets.DatasetDict) else data
        if streaming:
            data = data.to_iterable_dataset()
    else:
        data = datasets.load_dataset(name, config_name, split=split, streaming=streaming)
    if audio_column not in data.column_names:
        raise ValueError(f"dataset {name!r} has no column {audio_column!r}; columns: {data.column_names}")
    if isinstance(data.features[audio_column], datasets.Audio):
        data = data.cast_column(audio_column, datasets.Audio(decode=False))
    return data

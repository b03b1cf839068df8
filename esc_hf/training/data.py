"""Training data: audio decoded once into one array, then deterministic random crops of it.

Speech corpora are mostly short clips (1–3 s), so the clips of a split are concatenated into one 16 kHz mono
float32 array (cached as `.npy` and memory-mapped, so data-loader workers share it instead of re-opening thousands
of files) and every training item is a crop of `crop_length` samples at an offset drawn from `(seed, index)`. An
item is a pure function of its index, which makes resuming exact: a resumed run asks for the same indices.
"""

import hashlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..codec.audio_io import AudioFileError, decode_audio_value, load_audio


def split_files(files: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """A fixed split by a hash of each file's name: the same files are held out on every run and machine."""
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must lie between 0 and 1 when no validation folder is given")

    def bucket(path):
        return int(hashlib.sha1(path.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = [f for f in files if bucket(f) < val_fraction]
    train = [f for f in files if bucket(f) >= val_fraction]
    if not val or not train:
        raise ValueError(f"{len(files)} files are too few to hold out {val_fraction:.0%} for validation")
    return train, val


def overlap_warning(train_files: list[Path], val_files: list[Path], train_dir: str | Path,
                    val_dir: str | Path) -> str | None:  # fmt: skip
    """A one-line warning when validation files are also training files (the same resolved path, as when
    `--val-dir` is `--data-dir` or a folder inside it) or when one folder holds the other; else None. Validation
    on clips the model trained on flatters it, and nothing else would show it."""
    train_root, val_root = Path(train_dir).resolve(), Path(val_dir).resolve()
    shared = {f.resolve() for f in val_files} & {f.resolve() for f in train_files}
    nested = train_root.is_relative_to(val_root) or val_root.is_relative_to(train_root)
    if not shared and not nested:
        return None
    how = "are the same folder" if train_root == val_root else "are nested" if nested else "share files"
    return (f"--data-dir {train_dir} and --val-dir {val_dir} {how}: {len(shared)} of the {len(val_files)} "
            "validation files are also training files, so validation scores clips the model trained on; give "
            "--val-dir a folder outside --data-dir, or leave it out for a held-out split")


def _decode_one(path: Path, sampling_rate: int) -> np.ndarray:
    try:
        return load_audio(path, sampling_rate)[0]
    except AudioFileError as error:
        raise ValueError(f"training data: {error}") from error


def decode_files(files: list[Path], sampling_rate: int = 16000, num_workers: int = 1) -> list[np.ndarray]:
    """`files` decoded and resampled to mono float32, in order; `num_workers` > 1 decodes in that many processes."""
    if num_workers <= 1 or len(files) <= 1:
        return [_decode_one(path, sampling_rate) for path in files]
    # spawn, not fork: the caller has torch's thread pools running, which a forked child would inherit locked.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(num_workers, len(files)), mp_context=context) as pool:
        chunk = max(1, len(files) // (8 * num_workers))
        return list(pool.map(_decode_one, files, [sampling_rate] * len(files), chunksize=chunk))


def cached_concatenation(files: list[Path], cache_dir: Path, sampling_rate: int = 16000,
                         num_workers: int = 1) -> np.ndarray:  # fmt: skip
    """All `files` decoded, resampled and joined; cached under `cache_dir` keyed by the file list."""
    key = hashlib.sha1(json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode())
    path = Path(cache_dir) / f"audio-{sampling_rate}-{key.hexdigest()[:16]}.npy"
    if not path.exists():
        from ..utils.atomic_files import atomic_file

        audio = np.concatenate(decode_files(files, sampling_rate, num_workers)).astype(np.float32)
        with atomic_file(path) as handle:
            np.save(handle, audio)
    return np.load(path, mmap_mode="r")


def valid_crop_length(seconds: float, sampling_rate: int = 16000, multiple: int = 320, hop: int = 80) -> int:
    """The longest length `<= seconds` that ESC round-trips, `hop * (multiple/hop * k - 1)` (47,920 for 3 s)."""
    k = int(seconds * sampling_rate + hop) // multiple
    if k < 1:
        raise ValueError(f"crop of {seconds} s is too short")
    return k * multiple - hop


class RandomCropDataset(Dataset):
    """Item `i` is a crop of `crop_length` samples whose offset comes from `(seed, i)`; quiet crops are redrawn."""

    def __init__(self, audio: np.ndarray, crop_length: int, seed: int = 0, silence_db: float = -50.0,
                 length: int = 2**62):  # fmt: skip
        if audio.shape[0] <= crop_length:
            raise ValueError(f"training audio has {audio.shape[0]} samples, fewer than one crop ({crop_length})")
        self.audio, self.crop_length, self.seed, self.length = audio, crop_length, seed, length
        self.silence = 10 ** (silence_db / 20)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, index))
        for _ in range(20):
            start = int(rng.integers(0, self.audio.shape[0] - self.crop_length))
            crop = np.asarray(self.audio[start : start + self.crop_length], dtype=np.float32)
            if np.sqrt(np.mean(crop**2)) >= self.silence:
                break
        return torch.from_numpy(crop.copy())[None]


class StreamingCropDataset(IterableDataset):
    """Crops from a streamed Hugging Face dataset: clips are decoded as they arrive and joined in a buffer."""

    def __init__(self, examples, audio_column: str, crop_length: int, sampling_rate: int = 16000,
                 silence_db: float = -50.0):  # fmt: skip
        self.examples, self.audio_column = examples, audio_column
        self.crop_length, self.sampling_rate = crop_length, sampling_rate
        self.silence = 10 ** (silence_db / 20)

    def __iter__(self):
        buffer = np.zeros(0, np.float32)
        for example in self.examples:
            buffer = np.concatenate([buffer, decode_audio_value(example[self.audio_column], self.sampling_rate)])
            while buffer.shape[0] >= self.crop_length:
                crop, buffer = buffer[: self.crop_length], buffer[self.crop_length :]
                if np.sqrt(np.mean(crop**2)) >= self.silence:
                    yield torch.from_numpy(crop.copy())[None]

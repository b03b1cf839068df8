"""examples/fit_entropy_model.py: the `.esc` v2 entropy tables fitted on a model's training codes, in one process or
several, from scratch or from a cache of codes."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH, run_script

from esc_hf.codec.entropy import ENTROPY_MODEL_FILE, EntropyModel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "fit_entropy_model.py"
SHIPPED = ROOT / "checkpoints" / "esc-base"


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> Path:
    """At least ten training clips (one in ten is held out): pieces of the two real test clips."""
    folder = tmp_path_factory.mktemp("train")
    for path in SPEECH:
        audio, rate = sf.read(str(path), dtype="float32")
        for piece, start in enumerate(range(0, 5 * audio.size // 6, audio.size // 6)):
            sf.write(str(folder / f"{path.stem}-{piece}.flac"), audio[start : start + audio.size // 3], rate)
    return folder


def model_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(SHIPPED / file, folder)
    return folder


def fit(model: Path, train: Path, *extra, capsys) -> EntropyModel:
    code, out, err = run_script(SCRIPT, "--model", model, "--data", train, *extra, capsys=capsys)
    assert code == 0, err[-3000:]
    assert f"wrote {model / ENTROPY_MODEL_FILE}: {len(list(train.iterdir()))} clips" in out
    return EntropyModel.load(model / ENTROPY_MODEL_FILE)


def test_two_processes_and_a_cache_fit_the_same_tables(train, tmp_path, capsys):
    # The forked processes encode on one thread; so does this process here, so that every path runs the same
    # kernels and the codes, which the tables count, are equal.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = fit(model_folder(tmp_path, "one"), train, capsys=capsys)
    finally:
        torch.set_num_threads(threads)
    cache = tmp_path / "cache"
    forked = fit(model_folder(tmp_path, "two"), train, "--jobs", 2, "--cache", cache, capsys=capsys)
    assert forked.fingerprint == here.fingerprint
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{p.name}.npy" for p in train.iterdir())
    # A rerun (a killed run resumed) reads every clip's codes from the cache instead of encoding it again: clips of
    # the same names holding silence give the tables of the speech.
    silent = tmp_path / "silent"
    silent.mkdir()
    for path in train.iterdir():
        sf.write(str(silent / path.name), torch.zeros(16000).numpy(), 16000)
    cached = fit(model_folder(tmp_path, "three"), silent, "--cache", cache, capsys=capsys)
    assert cached.fingerprint == here.fingerprint


def test_a_cache_of_another_model_is_refused(train, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    first = sorted(train.iterdir())[0]
    np.save(cache / f"{first.name}.npy", np.zeros((2, 3, 50), np.int16))  # two streams, where the model codes six
    code, _, err = run_script(SCRIPT, "--model", model_folder(tmp_path, "m"), "--data", train, "--cache", cache,
                              capsys=capsys)  # fmt: skip
    assert code == 2 and f"{first.name}.npy" in err and "not codes of this model" in err


def test_no_jobs_is_refused(train, tmp_path, capsys):
    code, _, err = run_script(SCRIPT, "--model", model_folder(tmp_path, "m"), "--data", train, "--jobs", 0,
                              capsys=capsys)  # fmt: skip
    assert code == 2 and "--jobs must be at least 1, got 0" in err

"""Tokenising datasets (esc_hf/codec/dataset_codes.py, examples/tokenize_dataset.py): codes equal `model.encode`
of each item alone, from batches of mixed lengths, from two processes, after an interrupted run."""

import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SPEECH, free_port, get_fixture, run_script
from esc_hf import encode_batch
from esc_hf.codec.tokens import codes_to_tokens


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "examples" / "tokenize_dataset.py")
# Three lengths share a padded length (80·(4k−1) samples) and are batched together; the others run alone.
LENGTHS = [16000, 16100, 16000, 8000, 24000, 3000, 16050, 8001, 40000, 100]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A saved `datasets.Dataset` with ids, texts and an Audio column of clips of mixed lengths, and the model."""
    root = tmp_path_factory.mktemp("tokenize")
    model = get_fixture("swin_csrvq").model()
    model.save_pretrained(root / "model")
    speech = sf.read(str(SPEECH[0]), dtype="float32")[0]
    starts = np.random.default_rng(0).integers(0, speech.size - max(LENGTHS), len(LENGTHS))
    paths = []
    for index, (start, length) in enumerate(zip(starts, LENGTHS)):
        paths.append(str(root / f"utt{index}.wav"))
        sf.write(paths[-1], speech[start : start + length], 16000, subtype="FLOAT")
    data = datasets.Dataset.from_dict({"id": [f"utt{i}" for i in range(len(LENGTHS))],
                                       "text": [f"text {i}" for i in range(len(LENGTHS))], "audio": paths})  # fmt: skip
    data.cast_column("audio", datasets.Audio()).save_to_disk(str(root / "source"))
    clips = [sf.read(p, dtype="float32")[0] for p in paths]
    return root, model.eval(), clips


def alone(model, clip: np.ndarray, num_streams: int | None = None) -> np.ndarray:
    with torch.inference_mode():
        return model.encode(torch.from_numpy(clip)[None, None], num_streams=num_streams).audio_codes[0].numpy()


def test_encode_batch_in_dataset_map_equals_encode_alone(source):
    root, model, clips = source
    data = datasets.load_from_disk(str(root / "source")).cast_column("audio", datasets.Audio(decode=False))
    coded = data.map(encode_batch(model, num_streams=4, batch_size=3, lm_tokens=True), batched=True, batch_size=10,
                     remove_columns=["audio"])  # fmt: skip
    assert coded.column_names == ["id", "text", "codes", "num_samples", "tokens"]
    for row, clip in zip(coded, clips):
        codes = np.asarray(row["codes"])
        assert codes.dtype.kind == "i" and codes.shape[:2] == (4, 3)
        assert np.array_equal(codes, alone(model, clip, 4)), row["id"]
        assert row["num_samples"] == clip.size
        expected = codes_to_tokens(torch.from_numpy(codes).long()[None], model.config)[0].numpy()
        assert np.array_equal(row["tokens"], expected)


def test_mixed_lengths_would_change_the_last_frames(source):
    """Why items are batched only with items of the same padded length: zero-padding a clip further changes the
    codes of its last frames (the encoder looks ahead; the STFT reflects at the end)."""
    _, model, clips = source
    clip = clips[3]  # 8000 samples
    longer = np.zeros(clips[4].size, dtype=np.float32)
    longer[: clip.size] = clip
    own = alone(model, clip)
    padded = alone(model, longer)[..., : own.shape[-1]]
    assert not np.array_equal(own, padded) and np.array_equal(own[..., :-4], padded[..., :-4])


def test_encode_batch_refuses_bad_input(source):
    _, model, _ = source
    encode = encode_batch(model, kbps=None, batch_size=2)
    with pytest.raises(ValueError, match="no column 'audio'"):
        encode({"speech": [np.zeros(100)]})
    with pytest.raises(ValueError, match="no audio"):
        encode({"audio": [{"array": np.zeros(0, dtype=np.float32), "sampling_rate": 16000}]})
    with pytest.raises(ValueError, match="num_streams"):
        encode_batch(model, num_streams=9)
    with pytest.raises(ValueError, match="batch_size"):
        encode_batch(model, batch_size=0)


def launch(*args) -> str:
    """Standard output of the script in two processes (without a GPU Accelerate runs them on the CPU with gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", SCRIPT, *map(str, args)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run(*args, capsys) -> str:
    """Standard output of the script in one process: this one."""
    code, out, err = run_script(SCRIPT, *args, capsys=capsys, cwd=ROOT)
    assert code == 0, err[-3000:]
    return out


def test_two_processes_interrupted_and_resumed(source, tmp_path, capsys):
    root, model, clips = source
    common = ["--dataset", root / "source", "--model", root / "model", "--output", tmp_path / "codes", "--kbps",
              model.config.bandwidth_for_num_streams(3), "--batch-size", 4, "--shard-size", 2]  # fmt: skip
    first = launch(*common, "--max-shards", 1)  # 5 shards of 2 rows: each process writes one, then stops
    assert "stopped at --max-shards" in first and not (tmp_path / "codes").exists()
    work = tmp_path / ".codes.shards"
    assert len(list(work.glob("shard-*"))) == 2
    (work / ".shard-000004.tmp").mkdir()  # what a kill in the middle of writing a shard leaves
    second = launch(*common)
    assert second.count("1 already there") == 2 and not work.exists()
    data = datasets.load_from_disk(str(tmp_path / "codes"))
    assert data["id"] == [f"utt{i}" for i in range(len(LENGTHS))] and data["source_index"] == list(range(len(LENGTHS)))
    for row, clip in zip(data, clips):
        assert np.array_equal(np.asarray(row["codes"]), alone(model, clip, 3)), row["id"]
    assert '"codebook_fingerprint"' in data.info.description and '"num_streams": 3' in data.info.description
    assert "already complete" in run(*common, capsys=capsys)
    assert "verified 4 rows: 4 exact" in run(*common, "--verify", 4, capsys=capsys)


def test_folder_source(tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for path in SPEECH:
        sf.write(str(folder / f"{path.stem}.flac"), sf.read(str(path), dtype="float32")[0][:20000], 16000)
    run("--folder", folder, "--output", tmp_path / "codes", "--kbps", 1.5, capsys=capsys)
    data = datasets.load_from_disk(str(tmp_path / "codes"))
    assert sorted(data["file"]) == sorted(f"{p.stem}.flac" for p in SPEECH)
    assert all(np.asarray(codes).shape == (1, 3, 63) for codes in data["codes"])
    from esc_hf import load_model

    model = load_model(None)
    for row in data:
        clip = sf.read(str(folder / row["file"]), dtype="float32")[0]
        assert np.array_equal(np.asarray(row["codes"]), alone(model, clip, 1))


def test_streaming_source(source, tmp_path, capsys):
    root, model, clips = source
    run("--dataset", root / "source", "--streaming", "--model", root / "model", "--output", tmp_path / "codes",
        "--shard-size", 3, "--lm-tokens", capsys=capsys)  # fmt: skip
    data = datasets.load_from_disk(str(tmp_path / "codes"))
    assert sorted(data["id"]) == sorted(f"utt{i}" for i in range(len(LENGTHS)))  # every row once, in stream order
    for row in data:
        index = int(row["id"][3:])
        assert np.array_equal(np.asarray(row["codes"]), alone(model, clips[index])), row["id"]
        assert len(row["tokens"]) == np.asarray(row["codes"]).size

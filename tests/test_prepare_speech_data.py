"""examples/prepare_speech_data.py on a tiny fake unpacked package: no network, no dpkg-deb, no opusenc."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "prepare_speech_data.py"
_spec = importlib.util.spec_from_file_location("prepare_speech_data", SCRIPT)
prepare_speech_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_speech_data)

RATE = 44100
PACKAGE = "fake-speech"
COLUMNS = ["path", "duration_s", "source_package", "package_version", "original_files"]
# Each clip: 0.4 s of faint noise, a 0.6 s tone, 0.4 s of faint noise. Trimming keeps the tone, the 20 ms
# frames that touch it and 0.1 s on either side: about 0.82 s.
TRIMMED_S = 0.82


def _clip(seed: int, channels: str = "both") -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.6 * RATE)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * (300 + 100 * seed) * t)
    quiet = lambda: 1e-4 * rng.standard_normal(int(0.4 * RATE))  # noqa: E731
    mono = np.concatenate([quiet(), tone, quiet()])
    if channels == "mono":
        return mono
    right = 1e-4 * rng.standard_normal(mono.size) if channels == "left" else mono
    return np.stack([mono, right], axis=1)


@pytest.fixture
def unpacked(tmp_path):
    """DIR/<package>/usr/share/fake/... as `dpkg-deb -x` would leave it, with 44.1 kHz sources."""
    folder = tmp_path / "unpacked" / PACKAGE / "usr" / "share" / "fake"
    folder.mkdir(parents=True)
    sf.write(folder / "a.wav", _clip(1), RATE)  # stereo, both channels live: their mean
    sf.write(folder / "b.flac", _clip(2, "mono"), RATE)
    sf.write(folder / "c.wav", _clip(3, "left"), RATE)  # right channel dead: the left one alone
    sf.write(folder / "d.ogg", _clip(4, "mono"), RATE, format="OGG", subtype="VORBIS")  # like the real sources
    return tmp_path / "unpacked"


def _manifest(path: Path, rows: list[tuple[str, float, list[str]]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for name, duration, clips in rows:
            files = ";".join(f"usr/share/fake/{clip}" for clip in clips)
            writer.writerow([name, f"{duration:.3f}", PACKAGE, "1.0-1", files])
    return path


def _run(tmp_path, unpacked, train_rows, val_rows, capsys):
    train = _manifest(tmp_path / "train.csv", train_rows)
    val = _manifest(tmp_path / "val.csv", val_rows)
    code = prepare_speech_data.main([
        "--output", str(tmp_path / "out"), "--unpacked-dir", str(unpacked), "--train-manifest", str(train),
        "--val-manifest", str(val), "--opus-encoder", "libsndfile", "--jobs", "1", "--tolerance", "0.05",
    ])  # fmt: skip
    out = capsys.readouterr()
    return code, out.out, out.err


TRAIN = [("fake/xx/fake-xx-0000.opus", 2 * TRIMMED_S, ["a.wav", "b.flac"])]
VAL = [("fake/xx/fake-xx-0000.flac", 2 * TRIMMED_S, ["c.wav", "d.ogg"]),
       ("fake/yy/fake-yy-0000.flac", TRIMMED_S, ["a.wav"])]  # fmt: skip


def test_makes_train_opus_and_val_flac_and_skips_them_on_a_rerun(tmp_path, unpacked, capsys):
    code, out, err = _run(tmp_path, unpacked, TRAIN, VAL, capsys)
    assert code == 0, out + err
    train = tmp_path / "out" / "train" / TRAIN[0][0]
    info = sf.info(str(train))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("OGG", "OPUS", 16000, 1)
    assert info.duration == pytest.approx(2 * TRIMMED_S, abs=0.05)
    for name, duration, _ in VAL:
        info = sf.info(str(tmp_path / "out" / "val" / name))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        assert info.duration == pytest.approx(duration, abs=0.05)
    assert (tmp_path / "out" / "train" / "manifest.csv").read_bytes() == (tmp_path / "train.csv").read_bytes()
    assert (tmp_path / "out" / "val" / "manifest.csv").read_bytes() == (tmp_path / "val.csv").read_bytes()
    assert "0 of 3 files already present" in out

    # c.wav's dead right channel is dropped, not averaged in: its tone keeps its 0.5 peak (the mean would halve it).
    audio, rate = sf.read(str(tmp_path / "out" / "val" / VAL[0][0]))
    first = audio[: int(TRIMMED_S * rate)]
    assert np.abs(first).max() == pytest.approx(0.5, abs=0.02)
    # The ends are faded in and out, and the room tone around the words is kept (not digital silence).
    assert abs(audio[0]) < 1e-3 and abs(audio[-1]) < 1e-3
    assert np.count_nonzero(audio[100:1000]) > 100
    assert not list((tmp_path / "out").rglob("*.tmp"))

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.*") if p.name != "manifest.csv"}
    code, out, err = _run(tmp_path, unpacked, TRAIN, VAL, capsys)
    assert code == 0, out + err
    assert "3 of 3 files already present and correct; 0 to make" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_wrong_manifest_duration_is_reported_and_fails(tmp_path, unpacked, capsys):
    code, out, err = _run(tmp_path, unpacked, TRAIN, [(VAL[0][0], 2 * TRIMMED_S + 0.5, VAL[0][2])], capsys)
    assert code == 1
    assert f"mismatch: val/{VAL[0][0]}: duration" in err
    assert "manifest 2.140 s (off by -0.4" in err  # about 1.65 s made


def test_a_missing_source_file_is_a_one_line_error(tmp_path, unpacked, capsys):
    code, out, err = _run(tmp_path, unpacked, TRAIN, [(VAL[0][0], TRIMMED_S, ["c.wav", "gone.ogg"])], capsys)
    assert code == 1
    assert f"error: missing source file usr/share/fake/gone.ogg in {PACKAGE} 1.0-1 (needed by val/{VAL[0][0]})" in err


def test_a_missing_unpacked_package_is_a_one_line_error(tmp_path, capsys):
    code, out, err = _run(tmp_path, tmp_path / "nowhere", TRAIN, VAL, capsys)
    assert code == 1
    assert err.startswith("prepare_speech_data.py: error: --unpacked-dir has no folder") and err.count("\n") == 1


def test_mix_to_mono_rules():
    left = np.sin(np.linspace(0, 100, 1000))
    both = np.stack([left, 0.5 * left], axis=1)
    assert np.allclose(prepare_speech_data.mix_to_mono(both), 0.75 * left)  # mean
    assert np.allclose(prepare_speech_data.mix_to_mono(np.stack([left, 1e-3 * left], axis=1)), left)  # 60 dB quieter
    assert np.allclose(prepare_speech_data.mix_to_mono(np.stack([left, -left], axis=1)), left)  # anti-phase

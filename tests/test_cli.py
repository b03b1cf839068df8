import subprocess
import sys

import numpy as np
import soundfile as sf

from conftest import SPEECH
from esc_hf.cli import main


def test_roundtrip_real_clip_with_packaged_model(tmp_path, capsys):
    out = tmp_path / "decoded.wav"
    assert main(["roundtrip", str(SPEECH[0]), str(out), "--kbps", "1.8"]) == 0
    decoded, rate = sf.read(str(out))
    original, _ = sf.read(str(SPEECH[0]))
    assert rate == 16000 and decoded.shape == original.shape and np.abs(decoded).max() > 0
    assert "1.8 kbps" in capsys.readouterr().out


def test_roundtrip_resamples_and_downmixes(tmp_path, capsys):
    stereo = np.stack([np.sin(np.arange(44100) / 20), np.cos(np.arange(44100) / 30)], axis=1) * 0.3
    sf.write(str(tmp_path / "in.wav"), stereo, 44100)
    assert main(["roundtrip", str(tmp_path / "in.wav"), str(tmp_path / "out.flac")]) == 0
    assert sf.info(str(tmp_path / "out.flac")).samplerate == 16000
    err = capsys.readouterr().err
    assert "44100 Hz → 16000 Hz" in err and "2 channels" in err


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    for args in (["roundtrip", "missing.wav", "o.wav"], ["roundtrip", str(tmp_path / "bad.wav"), "o.wav"],
                 ["roundtrip", str(SPEECH[0]), str(tmp_path / "o.wav"), "--kbps", "5"]):  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "esc_hf", *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("esc: error:"), result.stderr
    assert not list(tmp_path.glob("o.wav*"))

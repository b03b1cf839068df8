"""examples/compare_decodes.py and the spectrograms it draws (esc_hf.eval.plotting)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import SPEECH
from PIL import Image

from esc_hf.eval.plotting import spectrogram_db

ROOT = Path(__file__).parent.parent
CHECKPOINT = ROOT / "checkpoints" / "esc-base"
spec = importlib.util.spec_from_file_location("compare_decodes", ROOT / "examples" / "compare_decodes.py")
compare_decodes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_decodes)


def test_spectrogram_db_finds_a_tone():
    rate = 16000
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate).astype(np.float32)
    spectrogram = spectrogram_db(tone)
    assert spectrogram.shape == (257, rate // 128 + 1)
    assert spectrogram[:, 60].argmax() == 1000 * 512 // rate  # bin 32


def test_draws_the_original_and_one_row_per_model(tmp_path, capsys):
    out = tmp_path / "decodes.png"
    code = compare_decodes.main([str(SPEECH[1]), f"a={CHECKPOINT}", f"b={CHECKPOINT}", "--kbps", "1.5",
                                 "--seconds", "1", "--plot", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    width, height = Image.open(out).size
    assert width == 800 and height == int(2.2 * 3 * 80)  # three rows: original, a, b


@pytest.mark.parametrize("models, extra, message", [
    (["a=M", "a=M"], [], "must differ"),
    (["original=M"], [], "must differ"),
    (["a=M"], ["--seconds", "0"], "--seconds must be positive"),
    (["a=nowhere"], [], "is not a folder"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_a_message(tmp_path, capsys, models, extra, message):
    models = [m.replace("=M", f"={CHECKPOINT}") for m in models]
    code = compare_decodes.main([str(SPEECH[1]), *models, *extra, "--plot", str(tmp_path / "x.png")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_an_unreadable_clip_is_refused_with_a_message(tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"not audio")
    code = compare_decodes.main([str(clip), f"a={CHECKPOINT}", "--plot", str(tmp_path / "x.png")])
    assert code == 2 and "clip.wav" in capsys.readouterr().err

"""ONNX export (python -m esc_hf.export_onnx) and ONNX Runtime inference against the PyTorch model."""

import json

import numpy as np
import pytest

from conftest import get_fixture, three_scale_model
from esc_hf.export_onnx import ExportError, export_onnx, main
from esc_hf.codec.onnx_runtime import EscOnnxModel


pytest.importorskip("onnxruntime")  # the `test` extra installs it; a bare install without it skips here, not fails


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The three-scale model, saved and exported through the command line (the slow step: once; the exporter's
    cost grows with the number of blocks). Without the exporter's optimiser, to keep the test short; the benchmark
    runs the optimised ESC-Base graphs and reports their code agreement."""
    root = tmp_path_factory.mktemp("onnx")
    model = three_scale_model()
    model.save_pretrained(root / "model")
    assert main(["--model", str(root / "model"), "--output-dir", str(root / "onnx"), "--no-optimize"]) == 0
    return model, EscOnnxModel(root / "onnx", threads=2), root / "onnx"


def test_export_writes_both_graphs_and_metadata(exported):
    _, _, folder = exported
    assert {"encoder.onnx", "decoder.onnx", "esc_onnx.json", "config.json"} <= {p.name for p in folder.iterdir()}
    meta = json.loads((folder / "esc_onnx.json").read_text())
    assert meta["encoder_num_streams"] == 3 and meta["frames_per_code"] == 4
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


@pytest.mark.parametrize("key", ["waveform", "waveform_short"])
def test_onnxruntime_matches_pytorch(exported, key):
    model, codec, _ = exported
    # Two lengths: one graph serves both (dynamic code_frames, odd and even).
    waveform = get_fixture("swin_csrvq").inputs[key]
    for n in range(1, model.config.num_streams + 1):
        codes = codec.encode(waveform.numpy(), num_streams=n)
        expected = model.encode(waveform[:, None], num_streams=n).audio_codes
        # Exact equality: on these inputs every codebook decision of the three-scale model is ≥ 1.2e-4 (squared
        # distance) from a tie, far above the ~1e-7 differences of ONNX Runtime's kernels.
        assert np.array_equal(codes, expected.numpy()), f"codes differ at {n} streams"
        audio = codec.decode(codes, length=waveform.shape[-1])
        reference = model.decode(expected).audio_values[:, 0].numpy()
        assert audio.shape == reference.shape
        np.testing.assert_allclose(audio, reference, atol=1e-4, rtol=0)


def test_onnxruntime_batch_of_one_and_bad_input(exported):
    model, codec, _ = exported
    waveform = get_fixture("swin_csrvq").inputs["waveform"]
    codes = codec.encode(waveform[0].numpy())  # (length,) works, any length (padded like EscModel)
    assert codes.shape[:2] == (1, 3)
    odd = codec.encode(waveform[0, :5000].numpy(), num_streams=2)
    assert np.array_equal(odd, model.encode(waveform[:1, :5000], num_streams=2).audio_codes.numpy())
    assert codec.decode(odd, length=5000).shape == (1, 5000)
    with pytest.raises(ValueError, match="num_streams"):
        codec.encode(waveform.numpy(), num_streams=4)
    with pytest.raises(ValueError, match="shape"):
        codec.decode(codes[:, :, :2])
    with pytest.raises(ValueError, match="integers in"):
        codec.decode(codes + 64)
    with pytest.raises(ValueError, match="asked for"):
        codec.decode(codes, length=10**6)


def test_export_rejects_bad_arguments(tmp_path):
    model = get_fixture("swin_csrvq").model()
    with pytest.raises(ExportError, match="num_streams"):
        export_onnx(model, tmp_path / "out", num_streams=0)
    with pytest.raises(ValueError, match="not an ESC ONNX export"):
        EscOnnxModel(tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format": "esc-onnx/1"}, "is format 'esc-onnx/1', this esc_hf reads 'esc-onnx/2': export the model again"),
        ({"frames_per_code": 8}, "does not match the config.json beside it: frames_per_code"),
        ({"encoder_num_streams": 7}, "does not match the config.json beside it: encoder_num_streams"),
        ({"codebook_size": "1024", "group_size": None}, "group_size, codebook_size"),
    ],
)
def test_runtime_checks_the_metadata(exported, tmp_path, change, message):
    """A folder whose esc_onnx.json is of another format, or disagrees with its config.json, is refused before a
    graph runs (format 1 graphs take flat frames and would fail inside ONNX Runtime)."""
    import shutil

    _, _, folder = exported
    copy = tmp_path / "onnx"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "esc_onnx.json").read_text())
    (copy / "esc_onnx.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        EscOnnxModel(copy)
    (copy / "esc_onnx.json").write_bytes(b"\xff{")
    with pytest.raises(ValueError, match="is not JSON"):
        EscOnnxModel(copy)

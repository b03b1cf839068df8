"""The converter: every checkpoint form the authors ship, loud failures, and the folder it writes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REFERENCE, get_fixture
from esc_hf import EscModel
from esc_hf.convert import ConversionError, config_from_authors, convert_state_dict, load_authors_checkpoint, main


RELEASED = REFERENCE / "swin_csrvq" / "released_form"


def codes_of(model, name="swin_csrvq"):
    return model.encode(get_fixture(name).inputs["waveform"]).audio_codes


def test_cli_converts_released_folder(tmp_path, capsys):
    out = tmp_path / "esc-tiny"
    assert main(["--checkpoint", str(RELEASED), "--output-dir", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_esc.py",
            "configuration_esc.py", "feature_extraction_esc.py"} <= names  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_esc.EscModel"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "pipeline_tag:" in card and "63,628" in card
    model = EscModel.from_pretrained(out).eval()
    assert torch.equal(codes_of(model), get_fixture("swin_csrvq").outputs["codes_6"])
    assert not list(tmp_path.glob(".esc-tiny*")), "no temporary folder is left behind"


def test_bare_state_dict_and_explicit_config(tmp_path):
    state = torch.load(RELEASED / "model.pth", weights_only=True)["model_state_dict"]
    torch.save(state, tmp_path / "bare.pth")
    model = load_authors_checkpoint(tmp_path / "bare.pth", RELEASED / "config.yaml")
    assert torch.equal(codes_of(model), get_fixture("swin_csrvq").outputs["codes_6"])


def test_fixture_folder_form():
    for name in ("swin_rvq", "conv_csrvq"):
        model = load_authors_checkpoint(REFERENCE / name)
        assert torch.equal(codes_of(model, name), get_fixture(name).outputs["codes_6"])


def test_unknown_and_missing_keys_are_named():
    model = EscModel(config_from_authors(get_fixture("swin_csrvq").meta["model"], "csvq+swinT"))
    state = load_file(str(REFERENCE / "swin_csrvq" / "state_dict.safetensors"))
    extra = {**state, "decoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="unknown keys.*decoder.extra.weight"):
        convert_state_dict(extra, model)
    missing = {k: v for k, v in state.items() if k != "quantizers.0.vqs.0.embedding.weight"}
    with pytest.raises(ConversionError, match="missing keys.*quantizers.0.vqs.0.embedding.weight"):
        convert_state_dict(missing, model)
    wrong_window = {**state, "ft.window": torch.ones(320)}
    with pytest.raises(ConversionError, match="Hann window"):
        convert_state_dict(wrong_window, model)


def test_authors_config_quirks():
    # ablations/9kbps_csvq_conv.yaml says codebook_dim for ESC; rvq+conv gives a uniform list (the authors' configs name it both ways).
    assert config_from_authors({"codebook_dim": 8, "backbone": "convolution"}, "csvq+conv").codebook_dims == [8] * 6
    rvq = config_from_authors({"codebook_dim": [8] * 6, "num_rvqs": 6, "backbone": "convolution"}, "rvq+conv")
    assert rvq.quantizer == "rvq" and rvq.codebook_dims == [8] * 6
    with pytest.raises(ConversionError, match="unknown keys"):
        config_from_authors({"warp_drive": True}, "csvq+swinT")
    with pytest.raises(ConversionError, match="unknown model_name"):
        config_from_authors({}, "vq+lstm")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "out")]) == 1
    assert "error:" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "junk.pth"), "--config", str(RELEASED / "config.yaml"),
                 "--output-dir", str(tmp_path / "out")]) == 1  # fmt: skip
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

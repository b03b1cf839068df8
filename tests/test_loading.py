"""Loading models: the packaged default, folders, Hub ids, and one clear error for each way a load fails."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from esc_hf import DEFAULT_MODEL, EscModel, ModelLoadError, load_model


def test_default_model_is_exported_and_loads():
    assert (DEFAULT_MODEL / "config.json").is_file() and (DEFAULT_MODEL / "model.safetensors").is_file()
    model = load_model()
    assert isinstance(model, EscModel) and not model.training


@pytest.fixture
def copy_of_default(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    return folder


def test_damaged_config_is_one_clear_error(copy_of_default):
    config = json.loads((copy_of_default / "config.json").read_text())
    config["hidden_dims"] = "oops"
    (copy_of_default / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"cannot load model .*hidden_dims"):
        load_model(copy_of_default)
    (copy_of_default / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"cannot load model .*"):
        load_model(copy_of_default)


def test_truncated_weights_are_one_clear_error(copy_of_default):
    weights = copy_of_default / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"cannot load model .*"):
        load_model(copy_of_default)


def test_paths_that_are_not_models(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model("./missing")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="it is a file"):
        load_model(tmp_path / "file.txt")


def test_hub_id_offline_fails_at_once(tmp_path, monkeypatch):
    """Offline, a Hub id that is not in the cache is an immediate one-line error, not ~20 s of download retries."""
    # HF_HUB_OFFLINE as a user sets it: in the environment of a fresh process (huggingface_hub reads it on import).
    code = "from esc_hf import load_model\nload_model('org/esc-base')"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert "ModelLoadError: cannot load model 'org/esc-base': HF_HUB_OFFLINE is set" in result.stderr, result.stderr
    # Not declared offline, but nothing listens where the Hub should be (port 9, discard, is closed here): the
    # connection check answers before transformers' download retries would start. Here, in this process: the
    # settings are huggingface_hub's module constants, which the loader reads at each call.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError, match=r"\(http://127.0.0.1:9\) cannot be reached to download it \(offline\?\)"):
        load_model("org/esc-base")

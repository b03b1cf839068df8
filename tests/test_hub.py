"""Loading through the Hub cache (offline) and through remote code where esc_hf is not importable."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REFERENCE
from esc_hf.convert import main as convert_main


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hub cache holding `org/esc-tiny` exactly as `huggingface_hub` lays out a download."""
    root = tmp_path_factory.mktemp("hub")
    folder = root / "converted"
    assert convert_main(["--checkpoint", str(REFERENCE / "swin_csrvq" / "released_form"), "--output-dir", str(folder)]) == 0
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "cache" / "models--org--esc-tiny"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def run_python(code: str, env_extra: dict, cwd) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_extra)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


REFERENCE_CODES = f"""
import json, torch
from safetensors.torch import load_file
x = load_file({str(REFERENCE / "swin_csrvq" / "inputs.safetensors")!r})["waveform"]
expected = load_file({str(REFERENCE / "swin_csrvq" / "outputs.safetensors")!r})["codes_4"]
"""


def test_from_pretrained_through_offline_hub_cache(hub_cache, tmp_path):
    result = run_python(
        REFERENCE_CODES
        + """
import esc_hf
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained("org/esc-tiny").eval()
fe = AutoFeatureExtractor.from_pretrained("org/esc-tiny")
inputs = fe(list(x.numpy()), sampling_rate=16000, return_tensors="pt")
codes = model.encode(inputs.input_values, inputs.padding_mask, num_streams=4).audio_codes
print(json.dumps({"cls": type(model).__module__, "fe": type(fe).__name__, "equal": bool(torch.equal(codes, expected))}))
""",
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache / "cache"), "HF_HOME": str(tmp_path / "home")},
        tmp_path,
    )
    assert result == {"cls": "esc_hf.models.esc.modeling_esc", "fe": "EscFeatureExtractor", "equal": True}


def test_remote_code_without_esc_hf(hub_cache, tmp_path):
    result = run_python(
        """
import sys
sys.modules["esc_hf"] = None  # any `import esc_hf` now fails, as in an environment without the package
"""
        + REFERENCE_CODES
        + """
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained("org/esc-tiny", trust_remote_code=True).eval()
fe = AutoFeatureExtractor.from_pretrained("org/esc-tiny", trust_remote_code=True)
codes = model.encode(x, num_streams=4).audio_codes
features = fe(list(x.numpy()), sampling_rate=16000, return_stft=True, return_tensors="pt").input_features
assert torch.equal(model.encode(input_features=features, num_streams=4).audio_codes, codes)
try:
    import esc_hf
    imported = True
except ImportError:
    imported = False
print(json.dumps({"module": type(model).__module__.split(".")[0], "fe": type(fe).__name__,
                  "equal": bool(torch.equal(codes, expected)), "esc_hf": imported}))
""",
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache / "cache"), "HF_HOME": str(tmp_path / "home"),
         "HF_MODULES_CACHE": str(tmp_path / "modules")},
        tmp_path,
    )
    assert result == {"module": "transformers_modules", "fe": "EscFeatureExtractor", "equal": True, "esc_hf": False}


def test_remote_code_leaves_an_installed_esc_hf_alone(hub_cache, tmp_path):
    """With esc_hf installed, the remote-code copy still runs its own files only: an installed esc_hf may be another
    version than the one that saved the model. Every file the modeling file imports was saved beside it."""
    saved = {p.name for p in (hub_cache / "converted").glob("*.py")}
    assert saved == {"configuration_esc.py", "modeling_esc.py", "inference_esc.py", "feature_extraction_esc.py"}
    result = run_python(
        REFERENCE_CODES
        + """
import sys, warnings
from transformers import AutoModel
model = AutoModel.from_pretrained("org/esc-tiny", trust_remote_code=True).eval()
codes = model.encode(x, num_streams=4).audio_codes  # the eager inference forms
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # on a CPU without bf16 instructions: slow, not wrong
    model.set_backbone_dtype(torch.bfloat16)  # where the installed package's CPU kernels would be loaded
model.encode(x, num_streams=4)
print(json.dumps({"module": type(model).__module__.split(".")[0], "equal": bool(torch.equal(codes, expected)),
                  "esc_hf": any(name.split(".")[0] == "esc_hf" for name in sys.modules)}))
""",
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache / "cache"), "HF_HOME": str(tmp_path / "home"),
         "HF_MODULES_CACHE": str(tmp_path / "modules")},
        tmp_path,
    )
    assert result == {"module": "transformers_modules", "equal": True, "esc_hf": False}

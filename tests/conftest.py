import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from esc_hf import EscConfig, EscModel
from esc_hf.convert import load_authors_checkpoint


TESTS = Path(__file__).parent
REFERENCE = TESTS / "fixtures" / "reference"
TINY_FIXTURES = ["swin_csrvq", "swin_rvq", "conv_csrvq", "conv_rvq"]
# The ESC-Base-sized fixture is too large to copy into the repo; it is read from shared/ beside the checkout.
ESC_BASE_FIXTURE = TESTS.parent.parent / "shared" / "reference" / "esc_base_random"
SPEECH = sorted((TESTS / "data").glob("*.flac"))

# The README's test command runs two pytest-xdist workers on a 2-core machine: then each takes one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def free_port() -> int:
    """A TCP port free now, for a test's `accelerate launch` (two tests launching at once must not share one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_script(path: Path, *args, capsys, cwd: Path | None = None) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `python PATH ARGS` (in `cwd`), run in this process: the script's own
    `main()` under its own `sys.argv`, without the seconds a new process spends importing torch and transformers.
    Tests of what only a fresh process shows (a console entry point, rlimits, output at exit, several processes)
    start one; the others use this. Torch's thread count and the environment, which a script may set, are
    restored afterwards."""
    threads, environment = torch.get_num_threads(), dict(os.environ)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(path), *map(str, args)])
        patch.setattr(sys, "path", list(sys.path))  # a benchmark puts its own folder first
        if cwd is not None:
            patch.chdir(cwd)
        try:
            spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            code = module.main()
        except SystemExit as exit_:  # argparse's errors and --help
            code = exit_.code
        finally:
            torch.set_num_threads(threads)
            os.environ.clear()
            os.environ.update(environment)
    return (0 if code is None else code), *capsys.readouterr()


class Fixture:
    def __init__(self, folder: Path):
        self.folder = folder
        self.name = folder.name
        self.meta = json.loads((folder / "config.json").read_text())
        self.inputs = load_file(str(folder / "inputs.safetensors"))
        self.outputs = load_file(str(folder / "outputs.safetensors"))
        short = folder / "outputs_short.safetensors"
        self.outputs_short = load_file(str(short)) if short.exists() else None

    def model(self):
        return load_authors_checkpoint(self.folder)


_cache = {}


def get_fixture(name: str) -> Fixture:
    if name not in _cache:
        folder = ESC_BASE_FIXTURE if name == "esc_base_random" else REFERENCE / name
        if not folder.exists():
            pytest.skip(f"{folder} is not present (it lives in the project's shared/ folder beside the checkout)")
        _cache[name] = Fixture(folder)
    return _cache[name]


@pytest.fixture(params=TINY_FIXTURES)
def tiny(request) -> Fixture:
    return get_fixture(request.param)


def three_scale_model():
    """The `swin_csrvq` fixture's architecture cut to three scales (three streams, two Swin stages on each side,
    shifted windows included), seeded, eval mode. For tests of tracing (torch.export, torch.compile), whose cost
    grows with the number of blocks: three scales exercise all the network does (a stream at the bottleneck, one
    at an inner scale, one at the outer) in about half the time of six. The authors' outputs are matched by the
    six-scale fixtures in tests/test_modeling.py; tracing tests match this model's eager outputs."""
    config = get_fixture("swin_csrvq").model().config.to_dict()
    for key in ("model_type", "transformers_version"):
        config.pop(key, None)
    config.update(
        hidden_dims=config["hidden_dims"][:3],
        num_heads=config["num_heads"][:2],
        codebook_dims=config["codebook_dims"][:3],
        num_streams=3,
    )
    torch.manual_seed(0)
    return EscModel(EscConfig(**config)).eval()


@pytest.fixture
def tiny_model():
    """The `swin_csrvq` fixture model (63k parameters), eval mode."""
    return get_fixture("swin_csrvq").model()

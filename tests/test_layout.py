"""The package's layout: imports run one way between its layers (the contracts in pyproject.toml), and no module
touches a private member defined in another folder of the package."""

import ast
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "esc_hf"


def test_import_contracts_hold():
    # A fresh process and no cache: the result is about the files as they are now.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "default_model" not in p.parts)


def _private_names(path: Path) -> set[str]:
    """Single-underscore names defined in `path`: module-level and class-level functions, classes and variables."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_uses(path: Path) -> list[tuple[int, str]]:
    """Private names `path` imports or reads as an attribute of anything but `self` / `cls`."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            uses += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            uses.append((node.lineno, node.attr))
    return [(line, name) for line, name in uses if name.startswith("_") and not name.startswith("__")]


def test_no_private_member_crosses_a_folder():
    defined = {path: _private_names(path) for path in _python_files(PACKAGE)}
    crossings = []
    for path in _python_files(PACKAGE) + _python_files(ROOT / "benchmarks") + _python_files(ROOT / "examples"):
        own = set().union(*(names for p, names in defined.items() if p.parent == path.parent))
        elsewhere = set().union(*(names for p, names in defined.items() if p.parent != path.parent))
        crossings += [f"{path.relative_to(ROOT)}:{line} {name}" for line, name in _private_uses(path)
                      if name in elsewhere - own]  # fmt: skip
    assert not crossings, "private members used outside their folder:\n" + "\n".join(crossings)


def test_the_checks_see_a_crossing():
    """The private-member check finds what it looks for (it could otherwise pass by reading nothing)."""
    uses = _private_uses(PACKAGE / "models" / "esc" / "inference_esc.py")
    assert {"_shift_window_mask", "_rescale"} <= {name for _, name in uses}
    assert "_shift_window_mask" in _private_names(PACKAGE / "models" / "esc" / "modeling_esc.py")


def test_old_module_paths_still_import_for_a_release():
    """The flat layout's module paths (release 0.1) give the moved modules themselves, with a DeprecationWarning."""
    code = (
        "import warnings, importlib, json\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "import esc_hf.codec.bitstream as new\n"
        "try:\n"
        "    import esc_hf.bitstream\n"
        "    warned = False\n"
        "except DeprecationWarning as warning:\n"
        "    warned = 'esc_hf.codec.bitstream' in str(warning)\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from esc_hf.modeling_esc import EscModel\n"
        "from esc_hf.streaming import EscStreamingEncoder\n"
        "import esc_hf.bitstream as old\n"
        "print(json.dumps({'warned': warned, 'same': old is new, 'spec': new.__spec__.name,\n"
        "                  'model': EscModel.__module__, 'stream': EscStreamingEncoder.__module__}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "warned": True, "same": True, "spec": "esc_hf.codec.bitstream",
        "model": "esc_hf.models.esc.modeling_esc", "stream": "esc_hf.codec.streaming",
    }  # fmt: skip

"""The README's examples run as written: every Python block, and the command-line blocks that need no data or
hardware beyond this repository (the others name placeholders such as DATA/ or a GPU)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from esc_hf.cli import main

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README.read_text(), re.S)
PYTHON = [code for kind, code in BLOCKS if kind == "python"]
# Command-line blocks whose every line runs here as written.
RUNNABLE_BASH = [code for kind, code in BLOCKS if kind == "bash" and code.startswith("esc encode tests/data/")]


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """A folder with the repository's test clips where the README expects them, as the working directory."""
    shutil.copytree(Path(__file__).parent / "data", tmp_path / "tests" / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_the_blocks_this_file_runs():
    assert len(PYTHON) >= 2 and len(RUNNABLE_BASH) == 1


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs(index, repo_copy):
    exec(compile(PYTHON[index], f"README.md python block {index}", "exec"), {})
    if "spectrogram.png" in PYTHON[index]:
        png = repo_copy / "spectrogram.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_compress_a_file_block_runs(repo_copy, capsys):
    """Every line of the block, through `esc_hf.cli.main`: the function the installed `esc` script runs (checked
    first, in a shell, where the seconds of a fresh process's imports are not spent: `--help` loads no torch)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.run("esc --help", shell=True, capture_output=True, text=True, env=env)
    assert shell.returncode == 0 and "usage: esc" in shell.stdout, shell.stderr
    (script,) = entry_points(group="console_scripts", name="esc")
    assert script.load() is main
    for line in RUNNABLE_BASH[0].splitlines():
        command = shlex.split(line.split("#")[0])
        assert command[0] == "esc", line
        capsys.readouterr()
        assert main(command[1:]) == 0, (line, capsys.readouterr().err)
    assert (repo_copy / "speech.esc").stat().st_size > 0 and (repo_copy / "decoded.wav").stat().st_size > 0

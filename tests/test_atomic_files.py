"""Atomic writes: stale temporaries of killed writers are cleaned up, and a second live writer is refused."""

import os
import signal
import subprocess
import sys
import time

import pytest

from esc_hf.utils import atomic_files
from esc_hf.utils.atomic_files import ConcurrentWriteError, atomic_directory, atomic_file

# atomic_files needs only the standard library: load it alone, so the writer starts without torch.
WRITER = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("atomic_files", {atomic_files.__file__!r})
atomic_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic_files)
with atomic_files.atomic_file(sys.argv[1]) as handle:
    handle.write(b"first writer")
    print("writing", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def writer(tmp_path):
    """A process in the middle of writing tmp_path/out.bin (it finishes when a line is sent to its stdin)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "out.bin")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "writing\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_second_writer_of_the_same_file_is_refused(tmp_path, writer):
    with pytest.raises(ConcurrentWriteError, match="another process is writing"):
        with atomic_file(tmp_path / "out.bin") as handle:
            handle.write(b"second writer")
    with atomic_file(tmp_path / "other.bin") as handle:  # other targets in the folder are not affected
        handle.write(b"other")
    writer.communicate("\n")
    assert writer.returncode == 0 and (tmp_path / "out.bin").read_bytes() == b"first writer"
    assert temporaries(tmp_path) == []


def test_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path, writer):
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    (left,) = temporaries(tmp_path)
    assert left.startswith(".out.bin.")
    old = time.time() - 60
    os.utime(tmp_path / left, (old, old))
    legacy = tmp_path / ".out.bin.a1b2c3d4.tmp"  # the naming before the writer's PID was part of it
    legacy.write_bytes(b"x")
    os.utime(legacy, (old, old))
    sibling = tmp_path / ".out.bin.bak.123.a1b2c3d4.tmp"  # a temporary of another target, out.bin.bak
    sibling.write_bytes(b"x")
    with atomic_file(tmp_path / "out.bin") as handle:
        handle.write(b"after the crash")
    assert (tmp_path / "out.bin").read_bytes() == b"after the crash"
    assert temporaries(tmp_path) == [sibling.name]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "out.bin") as handle:
            handle.write(b"half")
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "folder") as folder:
            (folder / "a").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_directory_replaces_the_old_one_whole(tmp_path):
    for text in ("old", "new"):
        with atomic_directory(tmp_path / "folder") as folder:
            (folder / "a").write_text(text)
    assert (tmp_path / "folder" / "a").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["folder"]

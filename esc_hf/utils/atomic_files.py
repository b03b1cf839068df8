"""Atomic writes: a crash or an error never leaves a half-written file or folder where a finished one belongs.

Every write goes to a temporary `.NAME.PID.XXXX.tmp` beside the target and is renamed onto it when complete. The
writer holds an exclusive `flock` on its temporary file for as long as it writes, which gives two guarantees:

* a second process writing the same target at the same time is refused with `ConcurrentWriteError` (instead of
  both succeeding and one result silently replacing the other);
* a temporary left by a writer that was killed (`kill -9`, power loss) is unlocked, so the next writer of that
  target recognises it as stale and removes it.
"""

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path


# A temporary created less than this long ago may belong to a writer that has not yet taken its lock.
_STALE_AFTER_SECONDS = 2.0


class ConcurrentWriteError(OSError):
    """Another process is writing the same output right now."""


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _claim(path: Path, own: Path) -> None:
    """Remove stale temporaries of `path`; raise `ConcurrentWriteError` if a live writer holds one."""
    # Ours are `.NAME.PID.XXXXXXXX.tmp` (before the PID was added: `.NAME.XXXXXXXX.tmp`); the fixed-length random
    # part keeps the temporaries of `a.wav.1` from matching those of `a.wav`.
    ours = re.compile(re.escape(f".{path.name}") + r"(\.\d+)?\.[a-z0-9_]{8}\.tmp")
    for other in path.parent.iterdir():
        if other.name == own.name or not ours.fullmatch(other.name):
            continue
        try:
            fd = os.open(other, os.O_RDONLY)
        except OSError:  # vanished meanwhile: its writer finished or cleaned up
            continue
        try:
            if not _try_lock(fd):
                raise ConcurrentWriteError(f"another process is writing {path} right now; try again when it is done")
            if time.time() - os.fstat(fd).st_mtime < _STALE_AFTER_SECONDS:
                continue
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked_temporary(path: Path, make):
    """Create a temporary beside `path` with `make(prefix, suffix, dir)`, lock it, clear stale ones; yield it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(make(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    lock = os.open(tmp, os.O_RDONLY)
    try:
        _try_lock(lock)  # a fresh name nobody else knows yet: this cannot be refused
        _claim(path, tmp)
        yield tmp
    finally:
        os.close(lock)
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename, on error it is removed."""
    path = Path(path)
    with _locked_temporary(path, tempfile.mkdtemp) as tmp:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the finished folder should not be
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield the path of a temporary file beside `path` for a library that writes by file name (libsndfile
    reports a full disk as one error that way, not from inside a Python callback); it is renamed onto `path`
    only if the block succeeds."""
    path = Path(path)

    def make(**kwargs):
        fd, name = tempfile.mkstemp(**kwargs)
        os.close(fd)
        return name

    with _locked_temporary(path, make) as tmp:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the finished file should not be
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside `path` for writing; it is renamed onto `path` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()

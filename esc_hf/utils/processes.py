"""Run one function over many tasks in forked processes of one torch thread each.

Scoring (PESQ, STOI), the classical codecs and small-batch inference each keep one core busy whatever torch's thread
count, so a loop over clips in one process leaves the other cores idle for most of its run. `forked_map` splits such
a loop over `jobs` processes. They are forked, not spawned, so that they inherit the function and what it needs (a
model, loaded libraries, the clips) instead of having it pickled; only the tasks and the results cross processes.
"""

import contextlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


@contextlib.contextmanager
def forked_map(function: Callable[[Any], Any], jobs: int = 1, log: Callable[[str], None] = print):
    """Yield `map_(tasks)`, an iterator of `function(task)` for each task, in the tasks' order.

    With `jobs` > 1 the calls run in that many forked processes of one torch thread each. They inherit `function`
    as it was on entering, with all it refers to (a closure, a lambda, a model), so only the tasks and the results
    must pickle. A call's exception is raised here from the iterator, and a worker that dies raises
    `BrokenProcessPool` (where `multiprocessing.Pool` would wait forever). Where processes cannot be forked (not
    Linux), `log` says so and the calls run here, one after another, as they do with `jobs` = 1.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        log(f"  {jobs} jobs need forked processes, which this platform lacks: running the tasks one by one")
        jobs = 1
    if jobs == 1:
        yield lambda tasks: map(function, tasks)
        return
    global _FUNCTION
    _FUNCTION = function
    try:
        with ProcessPoolExecutor(jobs, multiprocessing.get_context("fork"), _one_thread) as pool:
            yield lambda tasks: pool.map(_call, tasks)
    finally:
        _FUNCTION = None


# What the forked processes call: set only while a pool is open, and inherited, never pickled.
_FUNCTION: Callable[[Any], Any] | None = None


def _one_thread() -> None:
    import torch

    # Before any op in the fork: the parent's OpenMP threads do not exist here, and one thread per process is the
    # point of forking.
    torch.set_num_threads(1)


def _call(task: Any) -> Any:
    return _FUNCTION(task)

"""esc_hf.utils.processes.forked_map: a map over forked processes of one torch thread each."""

import os
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch

from esc_hf.utils.processes import forked_map


def describe(task):
    """What a call saw: its task, its process and its thread count."""
    return task, os.getpid(), torch.get_num_threads()


def fail_on_three(task):
    if task == 3:
        raise KeyError(f"task {task} failed")
    return task


def die(task):
    os._exit(1)


def test_forked_calls_return_in_order_from_other_processes_of_one_thread():
    with forked_map(describe, jobs=2) as map_:
        results = list(map_(range(12)))
        again = list(map_([5, 1]))  # one pool serves several maps
    assert [r[0] for r in results] == list(range(12)) and [r[0] for r in again] == [5, 1]
    assert os.getpid() not in {r[1] for r in results + again}
    assert {r[2] for r in results + again} == {1}


def test_the_processes_inherit_the_function_instead_of_pickling_it():
    table = {n: n * n for n in range(10)}
    with forked_map(lambda task: table[task], jobs=2) as map_:  # a lambda does not pickle
        assert list(map_(range(10))) == [n * n for n in range(10)]


def test_one_job_runs_here_as_map_does():
    with forked_map(describe, jobs=1) as map_:
        results = list(map_(range(3)))
    assert results == [(i, os.getpid(), torch.get_num_threads()) for i in range(3)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_call_that_raises_raises_its_error_here(jobs):
    with pytest.raises(KeyError, match="task 3 failed"):
        with forked_map(fail_on_three, jobs=jobs) as map_:
            list(map_(range(6)))


def test_a_worker_that_dies_raises_instead_of_waiting():
    with pytest.raises(BrokenProcessPool):
        with forked_map(die, jobs=2) as map_:
            list(map_(range(4)))


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_bad_jobs_are_refused(jobs):
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        with forked_map(describe, jobs=jobs):
            pass

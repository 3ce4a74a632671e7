"""``parallel.map_jobs``: worker processes give the sequential results, in order, memory maps by reference."""

from __future__ import annotations

import sys
import warnings

import cloudpickle
import numpy as np
import pytest

from utils import parallel
from utils.selection import run_transfer

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def _describe(x):
    """What a worker received: the type, the file behind a memory map, and a checksum of the values."""
    return type(x).__name__, getattr(x, "filename", None), float(np.asarray(x, dtype=np.float64).sum())


def _warn_and_square(v):
    warnings.warn(f"job {v}", UserWarning, stacklevel=1)
    return v * v


def _synthetic(n, rng):
    acts = rng.normal(size=(n, 4, 8)).astype(np.float32)
    return acts, np.array(["a", "b", "c"])[acts[:, 2, [1, 5, 7]].argmax(axis=1)]


def test_two_workers_give_the_sequential_transfer_results_in_order():
    rng = np.random.default_rng(0)
    train, dev, test = _synthetic(600, rng), _synthetic(200, rng), _synthetic(200, rng)
    jobs = [
        {
            "train": train,
            "dev": dev,
            "test": test,
            "probe_params": {"random_state": s, "max_epochs": 5},
            "progress": False,
            "info": {"seed": s},
        }
        for s in (0, 1, 2)
    ]
    alone = parallel.map_jobs(run_transfer, jobs, n_jobs=1, progress=False)
    together = parallel.map_jobs(run_transfer, jobs, n_jobs=2, progress=False)
    assert [r.info["seed"] for r in together] == [0, 1, 2]
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a.neurons, b.neurons)
        np.testing.assert_array_equal(a.test_predictions, b.test_predictions)
        assert a.oracle_dev == b.oracle_dev and a.test == b.test
    assert len({tuple(r.neurons) for r in alone}) > 1 or len({r.dev for r in alone}) > 1  # the seeds matter


def test_memory_maps_reach_the_workers_as_files(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.arange(2_000_000, dtype=np.float32).reshape(1000, 2000))
    mm = np.load(path, mmap_mode="r")
    (kind, filename, total), _ = parallel.map_jobs(_describe, [{"x": mm}, {"x": mm[:10]}], n_jobs=2, progress=False)
    assert kind == "memmap" and str(filename) == str(path)
    assert total == pytest.approx(float(np.asarray(mm, dtype=np.float64).sum()))


def test_worker_warnings_are_raised_again_in_the_caller_in_order():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = parallel.map_jobs(_warn_and_square, [{"v": v} for v in (3, 4, 5)], n_jobs=2, progress=False)
    assert out == [9, 16, 25]
    assert [str(w.message) for w in caught if w.category is UserWarning] == ["job 3", "job 4", "job 5"]


def test_bad_job_counts_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        parallel.map_jobs(_warn_and_square, [{"v": 1}], n_jobs=0)
    assert parallel.default_jobs() >= 1


def test_large_in_memory_arrays_are_written_once_and_sent_as_memory_maps(tmp_path):
    big = np.random.default_rng(0).normal(size=(2000, 1200))  # 19 MB: over parallel.SHARE_BYTES
    small = np.arange(10.0)
    jobs = [{"x": big}, {"x": (small, big)}, {"x": {"a": big}}]
    shared = parallel._share_large(jobs, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1  # three uses, one file
    assert isinstance(shared[0]["x"], np.memmap) and shared[1]["x"][1] is shared[0]["x"] is shared[2]["x"]["a"]
    assert shared[1]["x"][0] is small  # small arrays travel as they are
    np.testing.assert_array_equal(shared[0]["x"], big)
    (kind, filename, total), _ = parallel.map_jobs(_describe, [{"x": big}, {"x": small}], n_jobs=2, progress=False)
    assert kind == "memmap" and "redundancy-jobs-" in str(filename)
    assert total == pytest.approx(float(big.sum()))


def test_jobs_of_different_functions_share_one_call():
    jobs = [{"fn": _warn_and_square, "v": 3}, {"fn": _describe, "x": np.ones(4)}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        square, described = parallel.map_jobs(parallel.call, jobs, n_jobs=2, progress=False)
    assert square == 9 and described == ("ndarray", None, 4.0)


def _hold_memory_and_square(v):
    """Keep ~320 MB alive in the worker: loky's leak check restarts a worker whose RSS grew past 300 MB."""
    import builtins
    import time

    # a module of the worker, not this test module's globals (pickled afresh with each job)
    builtins.__dict__.setdefault("_test_parallel_kept", []).append(np.ones(40_000_000))
    time.sleep(1.2)  # past loky's 1 s between two checks, and with jobs still waiting
    return v * v


def test_a_worker_restarted_by_lokys_memory_check_gives_the_results_and_no_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = parallel.map_jobs(_hold_memory_and_square, [{"v": v} for v in range(6)], n_jobs=2, progress=False)
    assert out == [v * v for v in range(6)]
    assert not [w for w in caught if "worker stopped" in str(w.message)], [str(w.message) for w in caught]

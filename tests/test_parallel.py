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

"""``memo.ResultCache``: a result is computed once and read back only while code and inputs are the same."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from utils import memo, parallel
from utils.activations import ActivationStore

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def _count_and_sum(x, *, folder, scale=1.0):
    """Leave a marker file per call (so calls made in worker processes are counted too), return a sum."""
    folder = Path(folder)
    (folder / f"call-{len(list(folder.iterdir()))}-{os.getpid()}").touch()
    return float(np.asarray(x, dtype=np.float64).sum()) * scale


def _calls(folder: Path) -> int:
    return len(list(folder.iterdir()))


@pytest.fixture
def calls(tmp_path):
    folder = tmp_path / "calls"
    folder.mkdir()
    return folder


def test_a_result_is_computed_once_and_read_back(tmp_path, calls):
    cache = memo.ResultCache(tmp_path / "results")
    x = np.arange(12.0).reshape(3, 4)
    assert cache(_count_and_sum, x, folder=calls) == 66.0
    assert cache(_count_and_sum, x.copy(), folder=calls) == 66.0  # equal values, another object: read back
    assert _calls(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert "1 read back" in cache.summary() and "1 computed here" in cache.summary()
    assert cache(_count_and_sum, x, folder=calls, scale=2.0) == 132.0  # another argument: computed
    y = x.copy()
    y[2, 3] += 1e-6  # one value changed
    cache(_count_and_sum, y, folder=calls)
    assert _calls(calls) == 3


def test_a_timed_result_is_read_back_with_the_seconds_of_the_call_that_computed_it(tmp_path, calls):
    cache = memo.ResultCache(tmp_path / "results")
    x = np.arange(6.0)
    result, seconds = cache(memo.timed, _count_and_sum, x, folder=calls, machine="m1")
    assert result == 15.0 and seconds > 0 and _calls(calls) == 1
    again = cache(memo.timed, _count_and_sum, x, folder=calls, machine="m1")
    assert again == (15.0, seconds) and _calls(calls) == 1  # read back: the first call's time, not a new one
    other = cache(memo.timed, _count_and_sum, x, folder=calls, machine="m2")  # another machine: measured anew
    assert other[0] == 15.0 and _calls(calls) == 2
    assert memo.timed(_count_and_sum, x, folder=calls, scale=2.0)[0] == 30.0  # kwargs reach fn, machine does not


def test_keys_of_memory_maps_follow_the_file_and_the_view(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(40, dtype=np.float32).reshape(20, 2))
    a, b = np.load(path, mmap_mode="r"), np.load(path, mmap_mode="r")
    fp = memo.fingerprint
    assert fp(a) == fp(b)  # the same file opened twice
    assert fp(a[:10]) == fp(b[:10])
    assert fp(a[:10]) != fp(a[10:])  # same shape, other rows
    assert fp(a[:, 0]) != fp(a[:, 1])
    assert fp(a[:10]) != fp(np.asarray(a[:10]).copy())  # by file, not by value: another identity
    before = fp(a)
    os.utime(path, ns=(1, 1))  # the file rewritten since (its modification time changes)
    assert fp(np.load(path, mmap_mode="r")) != before


def test_stores_are_keyed_by_their_metadata_sha256(tmp_path):
    def store(meta_sha):
        return ActivationStore(
            tmp_path, np.zeros((2, 1, 3)), np.zeros(2), ["a", "b"], np.zeros(2), {"meta_sha256": meta_sha}
        )

    assert memo.fingerprint(store("1" * 64)) == memo.fingerprint(store("1" * 64))
    assert memo.fingerprint(store("1" * 64)) != memo.fingerprint(store("2" * 64))


def test_functions_and_containers_are_part_of_the_key():
    fp = memo.fingerprint
    assert fp({"a": 1, "b": [1, 2]}) == fp({"b": [1, 2], "a": 1})
    assert fp({"a": 1}) != fp({"a": 1.0})  # the type is part of the value
    assert fp(["x", "y"]) != fp(["x y"]) != fp(("x", "y"))
    assert fp(np.sum) != fp(np.mean)

    def f(v):
        return v + 1

    def g(v):
        return v + 2

    g.__qualname__ = f.__qualname__  # same name, other code: a function outside utils is keyed by its code
    assert fp(f) != fp(g)


def test_a_corrupt_entry_is_recomputed_with_a_warning(tmp_path, calls):
    cache = memo.ResultCache(tmp_path / "results")
    cache(_count_and_sum, np.ones(5), folder=calls)
    (entry,) = (tmp_path / "results").rglob("*.pkl")
    blob = bytearray(entry.read_bytes())
    blob[-3] ^= 0xFF
    entry.write_bytes(bytes(blob))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert cache(_count_and_sum, np.ones(5), folder=calls) == 5.0
    assert _calls(calls) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache(_count_and_sum, np.ones(5), folder=calls) == 5.0  # the rewritten entry is good
    assert _calls(calls) == 2


def test_a_disabled_cache_computes_every_call_and_stores_nothing(tmp_path, calls):
    cache = memo.ResultCache(tmp_path / "results", enabled=False)
    for _ in range(2):
        cache(_count_and_sum, np.ones(3), folder=calls)
    assert _calls(calls) == 2 and not (tmp_path / "results").exists()
    assert "off" in cache.summary()


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_map_jobs_runs_only_the_jobs_the_cache_lacks(tmp_path, calls, n_jobs):
    cache = memo.ResultCache(tmp_path / "results")
    shared = np.random.default_rng(0).normal(size=(300, 200))  # one array in every job
    jobs = [{"x": shared, "folder": str(calls), "scale": float(s)} for s in range(4)]
    first = parallel.map_jobs(_count_and_sum, jobs[:2], n_jobs=n_jobs, cache=cache, progress=False)
    assert _calls(calls) == 2
    every = parallel.map_jobs(_count_and_sum, jobs, n_jobs=n_jobs, cache=cache, progress=False)
    assert _calls(calls) == 4  # only the two new jobs ran
    assert every[:2] == first and every == pytest.approx([shared.sum() * s for s in range(4)])
    assert cache.hits == 2 and cache.misses == 4

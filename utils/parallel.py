"""Independent jobs on several cores: worker processes, results in input order, one progress bar.

Start at ``map_jobs``. Most probe training here (small minibatch steps, many short fits) keeps
one core busy; the fits of different runs and seeds do not depend on each other, so on a machine
with ``n`` cores ``n`` worker processes finish them up to ``n`` times sooner. Workers are joblib's
``loky`` processes: activation stores (``np.memmap``) are sent as file references, not copied, and
each worker runs torch on one thread, so ``n_jobs`` workers use ``n_jobs`` cores.

Large in-memory arrays among the jobs' arguments are written once to a temporary folder and sent
as memory maps too (``_share_large``), so a train matrix used by fifty jobs is neither copied fifty
times nor hashed fifty times. Results equal a sequential run's: each job is seeded by its own
arguments, never by the order or the worker it ran in (up to the order of floating-point sums when a
sequential run would use more than one thread for a large fit). Warnings raised in a worker are raised again in the caller (in input order),
so ``report.warnings_as_notes`` and ``pytest.warns`` see them as if the job had run in-process.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .memo import ResultCache

SHARE_BYTES = 8 * 2**20
"""In-memory arrays of at least this many bytes are sent to the workers as memory maps."""


def default_jobs() -> int:
    """Worker processes to use: the cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _share_large(jobs: list[Mapping[str, Any]], folder: Path, min_bytes: int = SHARE_BYTES) -> list[dict]:
    """The jobs with every in-memory array of ``min_bytes`` or more (also inside tuples, lists and
    dicts) replaced by a read-only memory map of a copy in ``folder``; an array used by several jobs
    is written once."""
    written: dict[int, np.ndarray] = {}

    def share(v: Any) -> Any:
        if isinstance(v, np.ndarray) and not isinstance(v, np.memmap) and v.nbytes >= min_bytes and v.dtype != object:
            if id(v) not in written:
                path = folder / f"array{len(written)}.npy"
                np.save(path, v)
                written[id(v)] = np.load(path, mmap_mode="r")
            return written[id(v)]
        if isinstance(v, tuple):
            return tuple(share(x) for x in v)
        if isinstance(v, list):
            return [share(x) for x in v]
        if isinstance(v, dict):
            return {k: share(x) for k, x in v.items()}
        return v

    return [{k: share(v) for k, v in kw.items()} for kw in jobs]


def _run_one(fn: Callable[..., Any], kwargs: Mapping[str, Any], threads: int | None) -> tuple[Any, list]:
    """Call ``fn(**kwargs)`` in a worker on ``threads`` torch threads; return its result and warnings."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(**kwargs)
    return result, [(w.message, w.category, w.filename, w.lineno) for w in caught]


def _timed(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[Any, float]:
    """``fn(**kwargs)`` and the seconds it took (what a cached entry records)."""
    started = time.perf_counter()
    result = fn(**kwargs)
    return result, time.perf_counter() - started


def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``fn(**kwargs)``: lets one ``map_jobs`` call run jobs of different functions (pass ``fn`` in each job)."""
    return fn(**kwargs)


def map_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[Mapping[str, Any]],
    *,
    n_jobs: int | None = 1,
    desc: str | None = None,
    progress: bool = True,
    cache: ResultCache | None = None,
) -> list[Any]:
    """``[fn(**kw) for kw in jobs]``, ``n_jobs`` at a time in worker processes.

    Parameters
    ----------
    fn : callable
        A function importable by the workers (a module-level function, or one defined in a notebook:
        joblib pickles it by value).
    jobs : sequence of dict
        Keyword arguments of each call. Arrays in them are sent to the workers (memory maps by
        reference).
    n_jobs : int or None, default 1
        Worker processes; 1 runs every job here, in order, with no process started; ``None`` uses
        ``default_jobs()``.
    desc : str, optional
        Label of the progress bar.
    progress : bool, default True
    cache : memo.ResultCache, optional
        Jobs whose result this cache holds (same code, same arguments) are read back; the others run
        and their results are stored.

    Returns
    -------
    results : list
        ``fn``'s return values, in the order of ``jobs``.
    """
    n_jobs = default_jobs() if n_jobs is None else int(n_jobs)
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1 (or None for every core), got {n_jobs}")
    jobs = list(jobs)
    if cache is not None and cache.enabled:
        seen: dict = {}  # an array shared by many jobs is hashed once
        keys = [cache.key(fn, (), kw, seen=seen) for kw in jobs]
        found = [cache.load(fn, k) for k in keys]
        todo = [i for i, (hit, _) in enumerate(found) if not hit]
        computed = map_jobs(
            _timed, [{"fn": fn, "kwargs": jobs[i]} for i in todo], n_jobs=n_jobs, desc=desc, progress=progress
        )
        out = [result for _, result in found]
        for i, (result, seconds) in zip(todo, computed):
            cache.store(fn, keys[i], result, seconds)
            out[i] = result
        return out
    if n_jobs == 1 or len(jobs) <= 1:
        return [fn(**kw) for kw in tqdm(jobs, desc=desc, disable=not progress)]
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=min(n_jobs, len(jobs)), backend="loky", return_as="generator")
    out = []
    # loky restarts a worker whose resident memory grew 300 MB past its size after its first job, and warns.
    # Pages of the memory-mapped stores a later job reads count as resident, so a job on a larger store
    # triggers it: the finished job's result is kept and a fresh worker takes the next one. Not a fault of
    # ours to report in a notebook; the warning comes from loky's manager thread, in this process.
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="redundancy-jobs-") as folder:
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given", category=UserWarning)
        shared = _share_large(jobs, Path(folder))
        calls = (delayed(_run_one)(fn, kw, 1) for kw in shared)
        for result, caught in tqdm(runner(calls), total=len(jobs), desc=desc, disable=not progress):
            for message, category, filename, lineno in caught:
                warnings.warn_explicit(message, category, filename, lineno)
            out.append(result)
        del shared
    return out

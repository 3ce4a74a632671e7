"""Results of long computations, kept on disk and reused when the same code sees the same inputs.

Start with ``ResultCache``: ``cache = ResultCache()`` then ``cache(fn, *args, **kwargs)`` returns
``fn(*args, **kwargs)``, computed once and read back on every later call whose key is the same;
``parallel.map_jobs(fn, jobs, cache=cache)`` does the same job by job. This is what makes a rerun of
``make reproduce`` with the caches in place take minutes instead of an hour, and what lets a notebook
reopened in JupyterLab come back to where it was.

The key of a call is a sha256 over:

- the code: every ``utils/*.py`` file, the versions of the numerical libraries and of Python
  (``code_fingerprint``), so that any change of the package recomputes everything (coarse, never stale);
- the function: its module and qualified name (a function defined outside ``utils``, say in a notebook
  cell, by its pickled code);
- the arguments, by value (``fingerprint``): an ``ActivationStore`` by the sha256 of its metadata (which
  holds the sha256 of every file), a memory map by its file (path, size, modification time) and the
  place and shape of the view, any other array by its bytes, containers and dataclasses field by field,
  an object with a ``cache_identity()`` method by what that returns (``tiled_clustering.ColumnConcat``:
  its stores, not gigabytes of columns), anything else by its pickle (``joblib.hash``).

A measured time can be kept too: ``cache(memo.timed, fn, *args, machine=signature)`` returns
``(result, seconds)``, the seconds being those of the call that computed it, on a machine of that
signature (``machine.machine_signature()``), even when the pair is read back.

An entry is one file, ``<cache_dir>/results/<module.function>/<key>.pkl``: a line with the sha256 of
the pickled record, then the record (key, function, seconds it took, result). It is written to a
temporary name and renamed into place (atomic), and checked on reading: an entry that does not match
its sha256 or its key is recomputed, with a warning. Delete the ``results`` folder to start afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import mmap
import os
import pickle
import platform
import time
import warnings
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .paths import REPO_ROOT, cache_dir

_LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "transformers", "pandas")


@functools.cache
def code_fingerprint(package: Path = REPO_ROOT / "utils") -> str:
    """sha256 over the package's ``*.py`` files (names and bytes), the numerical libraries' versions
    and Python's: the part of every key that says which code computed the result."""
    h = hashlib.sha256()
    for path in sorted(Path(package).rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in _LIBRARIES:
        try:
            version = metadata.version(lib)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{lib}={version};".encode())
    h.update(platform.python_version().encode())
    return h.hexdigest()


def _memmap_identity(a: np.memmap) -> tuple | None:
    """(file, size, mtime, byte offset of the view in the file, shape, strides, dtype) of a memory map,
    or None when the array is not backed by an open map (then it is hashed by value)."""
    mm = getattr(a, "_mmap", None)
    filename = getattr(a, "filename", None)
    if mm is None or filename is None or a.size == 0:
        return None
    start = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    map_offset = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY  # where the map begins in the file
    stat = os.stat(filename)
    position = map_offset + a.__array_interface__["data"][0] - start
    return (str(filename), stat.st_size, stat.st_mtime_ns, position, a.shape, a.strides, a.dtype.str)


def _feed(h: Any, value: Any, seen: dict | None = None) -> None:
    """Add ``value`` to the running hash ``h`` (see the module docstring for what identifies what).
    ``seen``: id -> digest of the arrays hashed so far in one call (alive for its duration)."""
    from .activations import ActivationStore

    tag = type(value).__qualname__.encode()
    h.update(b"<" + tag + b">")
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        h.update(repr(value).encode() if not isinstance(value, bytes) else value)
    elif isinstance(value, ActivationStore):
        h.update(value.meta["meta_sha256"].encode())
    elif callable(getattr(value, "cache_identity", None)) and not isinstance(value, type):
        _feed(h, value.cache_identity(), seen)
    elif isinstance(value, np.ndarray):
        identity = _memmap_identity(value) if isinstance(value, np.memmap) else None
        if identity is not None:
            h.update(repr(identity).encode())
        elif value.dtype == object:
            import joblib

            h.update(joblib.hash(value).encode())
        else:
            digest = None if seen is None else seen.get(id(value))
            if digest is None:
                digest = hashlib.sha256(repr((value.shape, value.dtype.str)).encode())
                digest.update(memoryview(np.ascontiguousarray(value)).cast("B"))
                digest = digest.digest()
                if seen is not None:
                    seen[id(value)] = digest
            h.update(digest)
    elif isinstance(value, (list, tuple)):
        if value and all(type(v) is str for v in value):  # a list of words: one string, not one hash call each
            h.update(b"str*" + str(len(value)).encode() + b":" + "\0".join(value).encode())
        else:
            h.update(str(len(value)).encode())
            for v in value:
                _feed(h, v, seen)
    elif isinstance(value, Mapping):
        h.update(str(len(value)).encode())
        for k in sorted(value, key=repr):
            _feed(h, k, seen)
            _feed(h, value[k], seen)
    elif isinstance(value, functools.partial):
        _feed(h, value.func, seen)
        _feed(h, value.args, seen)
        _feed(h, value.keywords, seen)
    elif callable(value) and hasattr(value, "__qualname__") and hasattr(value, "__module__"):
        module = value.__module__ or ""
        h.update(f"{module}.{value.__qualname__}".encode())
        if module != "utils" and not module.startswith("utils."):  # not covered by code_fingerprint
            import cloudpickle

            h.update(cloudpickle.dumps(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _feed(h, f.name, seen)
            _feed(h, getattr(value, f.name), seen)
    else:
        import joblib

        h.update(joblib.hash(value).encode())


def fingerprint(value: Any) -> str:
    """sha256 (hex) of a value as ``ResultCache`` keys it: equal for equal inputs, different when any
    array, store, parameter or function differs."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _name(fn: Callable) -> str:
    """A folder name for a function's entries: ``module.qualname``, or its ``func`` for a partial."""
    fn = fn.func if isinstance(fn, functools.partial) else fn
    name = f"{getattr(fn, '__module__', '') or ''}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._") or "function"


def timed(fn: Callable, /, *args: Any, machine: str | None = None, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the wall-clock seconds it took, as one value a ``ResultCache`` can keep.

    Parameters
    ----------
    fn : callable
    *args, **kwargs
        Passed to ``fn``.
    machine : str, optional
        Not passed on: it enters the cache key (``machine.machine_signature()``), so that a time measured
        on one kind of machine is never read back on another.

    Returns
    -------
    result : any
        What ``fn`` returned.
    seconds : float
        ``time.perf_counter()`` around the call.
    """
    del machine  # only part of the key
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


class ResultCache:
    """``fn(*args, **kwargs)``, computed once and read back while the code and the inputs stay the same.

    Parameters
    ----------
    root : path, optional
        Folder of the entries; default ``cache_dir() / "results"``.
    enabled : bool, default True
        False computes every call afresh (and stores nothing): the notebooks' ``reuse_results``.

    Attributes
    ----------
    hits, misses : int
        Calls answered from disk, and calls computed (and stored), so far.
    seconds_saved : float
        What the answered calls took when they were computed.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "results"
        self.enabled = bool(enabled)
        self.hits = 0
        self.misses = 0
        self.seconds_saved = 0.0

    def key(
        self, fn: Callable, args: tuple = (), kwargs: Mapping[str, Any] | None = None, *, seen: dict | None = None
    ) -> str:
        """The sha256 that names the entry of ``fn(*args, **kwargs)``; pass one ``seen`` dict to the keys
        of jobs that share arrays, so each array is hashed once."""
        h = hashlib.sha256(code_fingerprint().encode())
        _feed(h, fn, seen)
        _feed(h, tuple(args), seen)
        _feed(h, dict(kwargs or {}), seen)
        return h.hexdigest()

    def path(self, fn: Callable, key: str) -> Path:
        return self.root / _name(fn) / f"{key}.pkl"

    def load(self, fn: Callable, key: str) -> tuple[bool, Any]:
        """``(True, result)`` when a valid entry exists, else ``(False, None)`` (warning if it was corrupt)."""
        path = self.path(fn, key)
        if not path.exists():
            return False, None
        try:
            blob = path.read_bytes()
            digest, _, payload = blob.partition(b"\n")
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                raise ValueError("its content does not match the sha256 it was written with")
            record = pickle.loads(payload)
            if record.get("key") != key:
                raise ValueError(f"it holds the entry of key {str(record.get('key'))[:12]}..., not {key[:12]}...")
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            warnings.warn(f"cached result {path} is unreadable ({err}); recomputing it", RuntimeWarning, stacklevel=3)
            return False, None
        self.hits += 1
        self.seconds_saved += float(record.get("seconds", 0.0))
        return True, record["result"]

    def store(self, fn: Callable, key: str, result: Any, seconds: float) -> Path:
        """Write an entry atomically (temporary file, then rename); it counts as one result computed here."""
        path = self.path(fn, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "key": key,
            "function": _name(fn),
            "seconds": float(seconds),
            "created": time.time(),
            "result": result,
        }
        payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        os.replace(tmp, path)
        self.misses += 1
        return path

    def __call__(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, from disk when this code computed it from these inputs before."""
        if not self.enabled:
            return fn(*args, **kwargs)
        key = self.key(fn, args, kwargs)
        found, result = self.load(fn, key)
        if found:
            return result
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.store(fn, key, result, time.perf_counter() - started)
        return result

    def summary(self) -> str:
        """One line: how many calls were read back, how many computed, and the time saved."""
        if not self.enabled:
            return "results cache off (reuse_results = False): everything was computed here"
        return (
            f"results cache: {self.hits} read back (they took {self.seconds_saved:.0f} s to compute), "
            f"{self.misses} computed here"
        )

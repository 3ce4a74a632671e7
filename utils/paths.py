"""Where things live: the repository root, the cache for fetched material and activation stores, and
the two guards every cache path goes through.

- ``cache_dir()``: the cache root (``$REDUNDANCY_CACHE`` or ``~/.cache/transformer-redundancy``).
- ``check_name(value, what=...)``: names that become folder names (task names, store key parts) are
  restricted to letters, digits, ``.``, ``_``, ``-`` and ``+``, starting with a letter or digit, so that
  no name can climb out of the cache (``..``) or hide a separator.
- ``locked(path)``: a file lock (``filelock``, an OS lock that the kernel releases when the holder
  dies, also on ``kill -9``) that serialises everyone who builds or replaces ``path``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "REDUNDANCY_CACHE"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def cache_dir() -> Path:
    """Return the cache root: ``$REDUNDANCY_CACHE`` or ``~/.cache/transformer-redundancy``.

    Returns
    -------
    path : Path
        An existing directory holding fetched archives, unpacked resources and activation stores.
    """
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "transformer-redundancy")
    root.mkdir(parents=True, exist_ok=True)
    return root


def resolve(path: str | os.PathLike) -> Path:
    """Resolve ``path`` against the repository root when it is relative (notebook parameters are)."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def check_name(value: str, *, what: str = "name") -> str:
    """Return ``value`` when it is safe as one folder name, else raise ``ValueError`` saying why.

    Parameters
    ----------
    value : str
        A task name or another part of a cache path.
    what : str
        What the value is, for the message (``"task name"``).

    Returns
    -------
    value : str
        Unchanged: 1 to 128 of ``A-Z a-z 0-9 . _ + -``, starting with a letter or a digit.
    """
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} cannot be used as a folder name in the cache: use 1 to 128 letters, digits, "
            "'.', '_', '+' or '-', starting with a letter or a digit (no '/', no '..', no spaces), "
            "e.g. 'my-task_v2'."
        )
    return value


@contextmanager
def locked(path: str | os.PathLike, *, what: str = "") -> Iterator[None]:
    """Hold the lock of ``path`` (the file ``<path>.lock`` beside it) for the duration of the block.

    A second process (or notebook) that asks for the same lock waits, with a warning naming the lock,
    until the first releases it; the lock is the kernel's (``flock``), so a holder that is killed
    releases it at once and nothing stale is left to clean up. Nested use in one thread is allowed.

    Parameters
    ----------
    path : path
        The folder or file being built; its parent is created when missing.
    what : str
        What is being built, for the waiting message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(path.name + ".lock"), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        warnings.warn(
            f"another process is building {what or path} (it holds {lock.lock_file}); waiting for it to finish",
            stacklevel=3,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()

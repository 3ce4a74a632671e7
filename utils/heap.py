"""Give memory that the C allocator keeps after large frees back to the operating system.

Start at ``release_unused`` and ``large_blocks_mapped``. On Linux, glibc's ``free`` returns memory to the system only from the
top of its heap; pages in the middle stay resident until ``malloc_trim`` is called. A long workload
that allocates many mid-sized blocks and then frees them (a fine-tune: activations, gradients and
Adam's moments, several GiB) leaves most of that memory in the process: one MPNet fine-tune on this
project's machine left 2,966 MiB resident after ``gc.collect()`` and 296 MiB after ``malloc_trim(0)``
(``benchmarks/README.md``). Call ``release_unused`` after such a step, not inside loops: it walks the
whole heap. Elsewhere (macOS, musl, Windows) it only collects garbage.

The same heap grows *during* a fine-tune: batches of different lengths allocate tensors of different
sizes, glibc keeps them in its heap (its mmap threshold rises to 32 MiB after the first large free), and
the holes left by one step do not fit the next step's tensors. ``large_blocks_mapped`` makes every block
of 1 MiB or more a memory map of its own for the duration of a ``with`` block, returned to the system
the moment it is freed: MPNet fine-tuning on 500 uncertainty sentences (one epoch, 16 steps) peaked at
5.0 GiB anonymous instead of 7.0 GiB, for 27% more training time (fresh pages are faulted in every step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20  # where glibc's own (dynamic) threshold ends on 64-bit systems


@functools.cache
def _mallopt():
    """glibc's ``mallopt`` (a ctypes function), or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (a ctypes function), or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_unused() -> bool:
    """Collect Python garbage, then hand the C heap's free pages back to the system.

    Returns
    -------
    trimmed : bool
        True when glibc's ``malloc_trim(0)`` ran and reported memory released; False when it released
        nothing or the C library has no such call (then only ``gc.collect()`` ran).
    """
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@contextmanager
def large_blocks_mapped(threshold: int = 2**20) -> Iterator[bool]:
    """Inside the block, every C allocation of ``threshold`` bytes or more is a memory map of its own.

    Such a block goes back to the system as soon as it is freed, so a loop whose large buffers change
    size from one iteration to the next cannot fragment the heap (see the module docstring for what it
    saves and costs). On leaving, the threshold is set to 32 MiB, where glibc's own adjustment ends.

    Parameters
    ----------
    threshold : int, default 1 MiB
        Bytes; must be positive.

    Yields
    ------
    applied : bool
        False where the C library has no ``mallopt`` (nothing changes then).
    """
    if threshold < 1:
        raise ValueError(f"threshold must be a positive number of bytes, got {threshold}")
    mallopt = _mallopt()
    applied = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    try:
        yield applied
    finally:
        if applied:
            mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)

"""Give memory that the C allocator keeps after large frees back to the operating system.

Start at ``release_unused``. On Linux, glibc's ``free`` returns memory to the system only from the
top of its heap; pages in the middle stay resident until ``malloc_trim`` is called. A long workload
that allocates many mid-sized blocks and then frees them (a fine-tune: activations, gradients and
Adam's moments, several GiB) leaves most of that memory in the process: one MPNet fine-tune on this
project's machine left 2,966 MiB resident after ``gc.collect()`` and 296 MiB after ``malloc_trim(0)``
(``benchmarks/README.md``). Call ``release_unused`` after such a step, not inside loops: it walks the
whole heap. Elsewhere (macOS, musl, Windows) it only collects garbage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


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

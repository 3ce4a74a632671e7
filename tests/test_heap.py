"""``heap.release_unused``: the C heap's free pages really go back to the system (Linux, glibc)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from utils import heap


def _anonymous_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no RssAnon line in /proc/self/status")


@pytest.mark.skipif(heap._malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_release_unused_returns_freed_heap_pages() -> None:
    # 3,200 blocks of 64 KiB (below glibc's mmap threshold, so they live in the heap), every 16th kept:
    # freeing the others leaves 15-block holes that free() alone never returns, since none is at the top.
    blocks = [np.ones(8192) for _ in range(3200)]  # 8,192 float64 = 64 KiB each, pages touched
    kept = blocks[::16]
    del blocks
    before = _anonymous_mib()
    assert heap.release_unused() is True
    after = _anonymous_mib()
    freed = 3200 * 15 / 16 * 64 / 1024  # 187.5 MiB
    assert before - after > 0.5 * freed, f"RssAnon {before:.0f} -> {after:.0f} MiB; expected about {freed:.0f} MiB back"
    assert all(float(b.sum()) == 8192.0 for b in kept)  # what is still referenced is untouched


def test_release_unused_without_glibc_only_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    collected = []
    monkeypatch.setattr(heap.gc, "collect", lambda: collected.append(1) or 0)
    assert heap.release_unused() is False
    assert collected == [1]


_MAPPED_SCRIPT = """
import numpy as np
from utils import heap

def anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))

def drop(n, size):  # MiB given back at once when n blocks are freed but every 16th
    blocks = [np.ones(size // 8) for _ in range(n)]
    kept = blocks[::16]
    before = anon()
    del blocks
    return before - anon()

with heap.large_blocks_mapped() as applied:
    inside = drop(160, 3 * 2**19)
outside = drop(160, 3 * 2**19)
print(applied, inside, outside)
"""


@pytest.mark.skipif(heap._mallopt() is None, reason="needs glibc's mallopt")
def test_large_blocks_mapped_returns_large_blocks_when_freed_and_restores_the_threshold() -> None:
    # A fresh interpreter: blocks are mapped only when no free heap chunk fits them, so this process's
    # own heap (other tests' frees) would serve them. 1.5 MiB blocks: 240 MiB, 225 MiB of it freed.
    out = subprocess.run([sys.executable, "-c", _MAPPED_SCRIPT], capture_output=True, text=True, check=True)
    applied, inside, outside = out.stdout.split()
    freed = 160 * 15 / 16 * 1.5
    assert applied == "True"
    assert float(inside) > 0.8 * freed, f"inside: {float(inside):.0f} of {freed:.0f} MiB came back at once"
    # back at 32 MiB: 1.5 MiB blocks live in the heap again, and its holes stay until a trim
    assert float(outside) < 0.2 * freed, f"outside: {float(outside):.0f} of {freed:.0f} MiB came back without a trim"


def test_large_blocks_mapped_refuses_a_non_positive_threshold() -> None:
    with pytest.raises(ValueError, match="positive number of bytes"):
        with heap.large_blocks_mapped(0):
            pass

"""``heap.release_unused``: the C heap's free pages really go back to the system (Linux, glibc)."""

from __future__ import annotations

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

"""What a run was measured on: the CPU, its cores, memory, native bfloat16 and the GPU.

Start at ``machine_record``: the dictionary a run's provenance file keeps (``tutorial``). Timings
depend on it, so ``machine_signature`` — the part a timing depends on, as one string — enters the
cache key of every timing kept in a ``memo.ResultCache`` (``selection.timed_speedup``): a timing is
never read back on another kind of machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from .precision import cpu_has_bfloat16


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``cpuinfo`` (Linux), else ``platform.processor()`` or the architecture."""
    fallback = platform.processor() or platform.machine()
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return fallback
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), fallback)


def machine_record() -> dict[str, Any]:
    """The machine as the provenance file records it.

    Returns
    -------
    record : dict
        ``platform``, ``processor`` (the architecture), ``cpu_model``, ``cpus`` (``os.cpu_count()``),
        ``memory_gib`` (physical memory, None where unknown), ``bfloat16_native`` (``avx512_bf16`` or
        ``amx_bf16`` listed: what ``precision="auto"`` turns into bfloat16), ``torch_threads`` and
        ``gpu`` (the first CUDA device's name, or None).
    """
    import torch

    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "bfloat16_native": cpu_has_bfloat16(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_signature(record: dict[str, Any] | None = None) -> str:
    """The CPU model, the cores, the torch threads and the GPU of ``record`` (default: this machine), as one string.

    What a timing depends on; ``selection.timed_speedup`` takes it as an argument so that a timing read
    back from a ``memo.ResultCache`` was measured on a machine of the same kind.
    """
    r = machine_record() if record is None else record
    return f"{r['cpu_model']}; {r['cpus']} CPUs, {r['torch_threads']} torch threads; {r['gpu'] or 'no GPU'}"

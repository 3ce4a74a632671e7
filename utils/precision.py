"""The arithmetic of forward (and fine-tuning) passes: float32, or bfloat16 under ``torch.autocast``.

Start at ``resolve_precision``: extraction (``activations``) and fine-tuning (``finetune``) take a
``precision`` of ``"float32"``, ``"bfloat16"`` or ``"auto"``, and turn ``"auto"`` into bfloat16 only
on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX; about 2x faster there), where it was
measured faithful (``benchmarks/bench_bf16_fidelity.py`` for stores, ``benchmarks/finetune_precision.py``
for fine-tunes; tables in ``benchmarks/README.md``). Elsewhere, and on CUDA, ``"auto"`` is float32
(without native instructions torch emulates bfloat16 on the CPU, slower than float32).
``autocast(precision, device)`` is the context a pass runs in; weights, stored vectors and optimiser
state stay float32 either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("float32", "bfloat16")
"""The resolved precisions (what stores and recipes are keyed on); ``"auto"`` resolves to one of them."""


def cpu_has_bfloat16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """True when the CPU lists native bfloat16 instructions (``avx512_bf16`` or ``amx_bf16``; Linux only).

    Parameters
    ----------
    cpuinfo : path, default ``/proc/cpuinfo``
        Read for its ``flags``; a missing or unreadable file counts as no native bfloat16.
    """
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of ``PRECISIONS``, else raise ValueError saying what to pass."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or 'auto' where a store is made), got {precision!r}")
    return precision


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """Turn ``"auto"`` into ``"bfloat16"`` on a CPU with native bfloat16 (``cpu_has_bfloat16``), else ``"float32"``.

    Parameters
    ----------
    precision : {"float32", "bfloat16", "auto"}
        Any value other than ``"auto"`` is checked against ``PRECISIONS`` and returned.
    device : str or torch.device, optional
        Defaults to ``models.default_device()`` (CUDA when present; CUDA stays float32 under ``"auto"``).

    Returns
    -------
    precision : {"float32", "bfloat16"}
    """
    if precision == "auto":
        if device is None:
            from .models import default_device

            device = default_device()
        return "bfloat16" if torch.device(device).type == "cpu" and cpu_has_bfloat16() else "float32"
    return check_precision(precision)


def autocast(precision: str, device: str | torch.device) -> Any:
    """The context of a pass: bfloat16 autocast on ``device`` for ``"bfloat16"``, nothing for ``"float32"``."""
    if check_precision(precision) == "bfloat16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

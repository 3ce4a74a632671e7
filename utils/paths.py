"""Where things live: the repository root and the cache for fetched material and activation stores."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "REDUNDANCY_CACHE"


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

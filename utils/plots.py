"""Figures from tidy tables: one consistent style, titled axes, colour bars. No statistics here.

Functions take numbers that were computed elsewhere and return the matplotlib ``Figure`` so that a
notebook can show it; ``save`` writes it as PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

sns.set_theme(context="notebook", style="whitegrid")


def save(fig: plt.Figure, path: str | os.PathLike, *, dpi: int = 130) -> Path:
    """Save ``fig`` as PNG at ``path`` (parent folders created, written atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def heatmap(
    matrix: np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str,
    ticklabels: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = False,
    fmt: str = ".2f",
    cmap: str = "viridis",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Draw a square matrix of shape (n_rows, n_cols) as an annotated heatmap with a colour bar."""
    matrix = np.asarray(matrix)
    if ax is None:
        size = max(4.0, 0.45 * matrix.shape[1] + 2.0)
        fig, ax = plt.subplots(figsize=(size, size * 0.85))
    else:
        fig = ax.figure
    labels = list(ticklabels) if ticklabels is not None else "auto"
    sns.heatmap(
        matrix, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=annotate, fmt=fmt,
        annot_kws={"fontsize": 7}, xticklabels=labels, yticklabels=labels, square=True,
        cbar_kws={"label": cbar_label},
    )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def norm_curves(table: "pd.DataFrame", *, title: str) -> plt.Figure:
    """Plot ``mean_norm`` against ``layer``, one line per (model, task) of a tidy table."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for (model, task), group in table.groupby(["model", "task"], sort=False):
        ax.plot(group["layer"], group["mean_norm"], marker="o", label=f"{model} · {task}")
    ax.set_title(title)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("mean L2 norm of an item vector")
    ax.legend(fontsize=8)
    return fig

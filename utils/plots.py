"""Figures from tidy tables: one consistent style, titled axes, colour bars. No statistics here.

Start reading at ``save`` and ``heatmap_panels`` (one layer x layer matrix per run). Every function
takes numbers computed elsewhere (tidy pandas tables with the columns named in its docstring, or
matrices of shape (n_layers, n_layers)) and returns the matplotlib ``Figure`` so that a notebook can
show it; ``save`` writes it as PNG. One function per figure kind, in notebook order: 01
(``norm_curves``), 02 (``heatmap_panels``, ``kept_curves``, ``span_bars``, ``layer_share_curves``),
03 (``layer_probe_curves``, ``neuron_curves``, ``selected_layer_bars``), 04 (``transfer_steps``).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
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


def norm_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Plot ``mean_norm`` against ``layer``, one line per (model, task) of a tidy table."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for (model, task), group in table.groupby(["model", "task"], sort=False):
        ax.plot(group["layer"], group["mean_norm"], marker="o", label=f"{model} · {task}")
    ax.set_title(title)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("mean L2 norm of an item vector")
    ax.legend(fontsize=8)
    return fig


def transfer_steps(steps: pd.DataFrame, *, title: str) -> plt.Figure:
    """Test score against % of neurons kept through the pipeline's steps, one line per (model, task)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (model, task), g in steps.groupby(["model", "task"], sort=False):
        ax.plot(g["pct_kept"], g["test"], marker="o", label=f"{model} · {task}")
        for row in g.itertuples(index=False):
            ax.annotate(row.step, (row.pct_kept, row.test), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ticks = [t for t in (100, 30, 10, 3, 1, 0.3, 0.1) if t >= steps["pct_kept"].min() * 0.5]
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.invert_xaxis()
    ax.set_title(title)
    ax.set_xlabel("% of the model's neurons kept (log scale)")
    ax.set_ylabel("test score (accuracy)")
    ax.legend(fontsize=8)
    return fig


# ---- general redundancy (notebook 02) -------------------------------------------------------


def heatmap_panels(
    matrices: dict[str, np.ndarray],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str,
    vmin: float,
    vmax: float,
    annotate: bool | None = None,
    fmt: str = ".2f",
    cmap: str = "viridis",
    ncols: int | None = None,
) -> plt.Figure:
    """One heatmap per entry of ``matrices`` (label -> (n_rows, n_cols)), all on one colour scale.

    ``annotate=None`` writes the values into the cells when a matrix has at most 16 rows and
    columns; NaN cells are drawn grey.
    """
    labels = list(matrices)
    ncols = ncols or min(len(labels), 3)
    nrows = -(-len(labels) // ncols)
    side = max(3.2, 0.33 * max(np.asarray(m).shape[0] for m in matrices.values()) + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols + 1.0, side * nrows + 0.6), squeeze=False,
                             layout="constrained")
    mappable = None
    for ax, label in zip(axes.flat, labels):
        m = np.asarray(matrices[label], dtype=float)
        ann = max(m.shape) <= 16 if annotate is None else annotate
        ax.grid(False)
        ax.set_facecolor("0.88")  # NaN cells (e.g. a constant layer) show as grey
        sns.heatmap(m, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=ann, fmt=fmt,
                    annot_kws={"fontsize": 6}, square=True, cbar=False)
        mappable = ax.collections[0]
        xstep, ystep = max(1, m.shape[1] // 13), max(1, m.shape[0] // 13)
        ax.set_xticks(np.arange(0, m.shape[1], xstep) + 0.5, np.arange(0, m.shape[1], xstep), fontsize=7)
        ax.set_yticks(np.arange(0, m.shape[0], ystep) + 0.5, np.arange(0, m.shape[0], ystep), fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), label=cbar_label, shrink=0.8)
    fig.suptitle(title)
    return fig


def kept_curves(
    table: pd.DataFrame,
    *,
    title: str,
    reference_pct_kept: float | None = None,
    reference_label: str = "",
) -> plt.Figure:
    """``pct_kept`` against ``threshold``, one line per ``run`` of a tidy table, with a reference level."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for run, group in table.groupby("run", sort=False):
        group = group.sort_values("threshold")
        ax.plot(group["threshold"], group["pct_kept"], marker="o", label=run)
    if reference_pct_kept is not None:
        ax.axhline(reference_pct_kept, color="0.3", linestyle="--", linewidth=1, label=reference_label)
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.set_xlabel("clustering threshold t (distance 1 − |r|)")
    ax.set_ylabel("neurons kept (% of all neurons)")
    ax.legend(fontsize=8)
    return fig


def span_bars(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Grouped bars of ``n_clusters`` per ``span`` (layers a cluster covers), one colour per ``run``."""
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    sns.barplot(data=table, x="span", y="n_clusters", hue="run", ax=ax)
    ax.set_title(title)
    ax.set_xlabel("layers spanned by a cluster (max layer − min layer + 1)")
    ax.set_ylabel("clusters (2+ neurons)")
    ax.legend(fontsize=8)
    return fig


def layer_share_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """``pct_redundant`` against ``layer``, one line per ``run`` of a tidy table."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for run, group in table.groupby("run", sort=False):
        group = group.sort_values("layer")
        ax.plot(group["layer"], group["pct_redundant"], marker="o", label=run)
    ax.set_title(title)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("neurons dropped by clustering (% of layer)")
    ax.legend(fontsize=8)
    return fig


# ---- task-specific redundancy (notebook 03) -------------------------------------------------


def layer_probe_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Dev accuracy (left) and selectivity (right) per layer, independent and incremental probes.

    ``table`` has columns ``layer, mode, score, control_score, selectivity`` with modes
    ``independent``, ``incremental`` and one ``oracle`` row, drawn as a horizontal line.
    """
    fig, (ax_score, ax_sel) = plt.subplots(1, 2, figsize=(11, 3.9), layout="constrained")
    colours = {"independent": "C0", "incremental": "C1"}
    for mode, colour in colours.items():
        g = table[table["mode"] == mode].sort_values("layer")
        if not len(g):
            continue
        ax_score.plot(g["layer"], g["score"], marker="o", color=colour, label=f"{mode}: task")
        if g["control_score"].notna().any():
            ax_score.plot(g["layer"], g["control_score"], marker="x", linestyle="--", color=colour, alpha=0.6,
                          label=f"{mode}: control task")
            ax_sel.plot(g["layer"], g["selectivity"], marker="o", color=colour, label=mode)
    oracle = table[table["mode"] == "oracle"]
    if len(oracle):
        ax_score.axhline(float(oracle["score"].iloc[0]), color="0.2", linestyle=":", linewidth=1.2,
                         label=f"oracle (all layers) {float(oracle['score'].iloc[0]):.3f}")
        if oracle["selectivity"].notna().any():
            ax_sel.axhline(float(oracle["selectivity"].iloc[0]), color="0.2", linestyle=":", linewidth=1.2,
                           label="oracle")
    ax_score.set_title("dev accuracy")
    ax_score.set_xlabel("layer (0 = embeddings; incremental: layers 0..l)")
    ax_score.set_ylabel("accuracy")
    ax_score.legend(fontsize=7)
    ax_sel.set_title("selectivity = task − control accuracy")
    ax_sel.set_xlabel("layer (0 = embeddings; incremental: layers 0..l)")
    ax_sel.set_ylabel("selectivity")
    if ax_sel.lines:
        ax_sel.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def neuron_curves(curve: pd.DataFrame, *, oracle: float, target: float | None, title: str) -> plt.Figure:
    """Dev score against the number of top neurons kept (log scale), one line per ``ordering``."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, g in curve.groupby("ordering", sort=False):
        g = g.sort_values("k")
        ax.plot(g["k"], g["score"], marker="o", markersize=4, label=name)
    ax.axhline(oracle, color="0.2", linestyle=":", linewidth=1.2, label=f"oracle {oracle:.3f}")
    if target is not None:
        ax.axhline(target, color="C3", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("neurons kept (top k of each ordering; log scale)")
    ax.set_ylabel("dev accuracy of a probe retrained on them")
    ax.legend(fontsize=8)
    return fig


def selected_layer_bars(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Bars of ``count`` per ``layer``, one colour per ``run`` (e.g. model · task): where selected neurons sit."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    sns.barplot(data=table, x="layer", y="count", hue="run", ax=ax)
    ax.set_title(title)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("neurons of the minimal set")
    ax.legend(fontsize=8)
    return fig

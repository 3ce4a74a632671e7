"""Figures from tidy tables, legible at the width a reader sees them. No statistics here.

Start with the constants: every figure is at most ``MAX_WIDTH_IN`` inches wide and saved at ``DPI``
(at most 1,500 px), and no text is smaller than ``MIN_FONT_PT``, so a PNG shown about 1,000 px wide
keeps all its text at 8 points or more. Then read ``heatmap_panels`` (layer × layer matrices, one
panel per run, one shared colour bar, undefined cells hatched grey) and the line/bar functions, which
draw one panel per model when models of different depth meet (each panel keeps its own layer axis).

Conventions shared by every function:

- functions take tidy ``pandas.DataFrame`` tables (or a dict of matrices) computed elsewhere and
  return the matplotlib ``Figure``; ``save`` writes it as PNG;
- a run is labelled ``model · task`` (or the table's ``run`` column); colours follow the task, and
  the same task has the same colour in every figure;
- NaN cells of a heatmap (e.g. a layer that is constant over the items, whose similarities are
  undefined) are drawn in ``UNDEFINED_COLOR`` with a hatch, with a legend entry saying so;
- ordering names are shown as the text names them (``ORDERING_LABELS``: ``mean_difference`` is the
  "F statistic" ordering);
- axes are logarithmic where the drawn quantity spans two decades or more (``LOG_DECADES``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.textpath import TextPath
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Saved resolution (dots per inch) of ``save``.
DPI = 150
#: Widest figure, in inches: 1,500 px at ``DPI``; shown 1,000 px wide, text keeps ≥ 96 % of its size.
MAX_WIDTH_IN = 10.0
#: Smallest font size (points) of any text drawn by this module.
MIN_FONT_PT = 8.0
#: Face colour, hatch and hatch colour of undefined (NaN) heatmap cells, in every heatmap.
UNDEFINED_COLOR = "#d9d9d9"
UNDEFINED_HATCH = "///"
UNDEFINED_EDGE = "#a6a6a6"
#: Default legend text for undefined cells.
UNDEFINED_LABEL = "undefined: constant layer"
#: Names of neuron orderings as the notebooks' text uses them.
ORDERING_LABELS = {
    "lca": "LCA",
    "random": "random",
    "bottom": "bottom (LCA reversed)",
    "mean_difference": "F statistic",
}
#: A quantity spanning at least this many decades (max / min ≥ 10**LOG_DECADES) gets a log axis.
LOG_DECADES = 2.0

_ORDERING_COLORS = {"lca": "C0", "random": "C1", "bottom": "C2", "mean_difference": "C4"}
_STEP_MARKERS = {"oracle": "*", "LS": "o", "LS+CC": "^", "LS+CC+FS": "D"}
_ANNOT_PT = 8.0

sns.set_theme(
    context="notebook",
    style="whitegrid",
    rc={
        "font.size": 10,
        "axes.titlesize": 10.5,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "legend.title_fontsize": 9,
        "figure.titlesize": 12,
        "figure.dpi": 100,
        "hatch.color": UNDEFINED_EDGE,
        "hatch.linewidth": 0.8,
    },
)


def save(fig: plt.Figure, path: str | os.PathLike, *, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG at ``path`` (parent folders created, written atomically); return the path.

    At the default ``DPI`` a figure of this module is at most 1,500 px wide (``bbox_inches="tight"``
    trims the margins).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    os.replace(tmp, path)
    return path


# ---- shared helpers ---------------------------------------------------------------------------


def spans_decades(values: Sequence[float] | np.ndarray, decades: float = LOG_DECADES) -> bool:
    """True when the positive finite ``values`` span at least ``decades`` powers of ten (max / min)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and float(np.log10(v.max() / v.min())) >= decades


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{what} needs a tidy table with columns {list(columns)}; missing {missing} "
            f"(got {list(table.columns)}). Build it as the notebooks do, one row per observation."
        )


def _grid(n: int, ncols: int | None = None) -> tuple[int, int]:
    """Rows and columns for ``n`` panels: one row up to 3, 2 × 2 for 4, then rows of 3."""
    if n < 1:
        raise ValueError("nothing to draw: got 0 panels; pass at least one run")
    if ncols is None:
        ncols = n if n <= 3 else (2 if n == 4 else 3)
    ncols = max(1, min(int(ncols), n))
    return -(-n // ncols), ncols


def _panels(
    n: int,
    *,
    panel_w: float,
    panel_h: float,
    ncols: int | None = None,
    extra_w: float = 0.0,
    extra_h: float = 0.6,
    sharex: bool | str = False,
    sharey: bool | str = False,
) -> tuple[plt.Figure, list[plt.Axes]]:
    """A constrained-layout figure of ``n`` panels no wider than ``MAX_WIDTH_IN``; no empty axes."""
    nrows, ncols = _grid(n, ncols)
    width = min(MAX_WIDTH_IN, panel_w * ncols + extra_w)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width, panel_h * nrows + extra_h),
        squeeze=False,
        sharex=sharex,
        sharey=sharey,
        layout="constrained",
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        fig.delaxes(ax)
    for ax in flat[:n]:  # shared axes hide inner tick labels; keep them, panels may differ in depth
        ax.tick_params(labelleft=True, labelbottom=True)
    return fig, flat[:n]


def _groups(table: pd.DataFrame, column: str) -> list[tuple[str, pd.DataFrame]]:
    """Sub-tables per value of ``column`` in order of appearance; the whole table when it is absent."""
    if column not in table.columns:
        return [("", table)]
    return [(str(k), g) for k, g in table.groupby(column, sort=False)]


def _series_key(table: pd.DataFrame) -> str:
    """Column that names a series inside a model's panel: ``task`` if present, else ``run``."""
    for column in ("task", "run", "model"):
        if column in table.columns:
            return column
    raise ValueError(f"expected a 'task', 'run' or 'model' column to name the series; got {list(table.columns)}")


def _colors(values: Sequence[str]) -> dict[str, str]:
    """One colour per value, in order of first appearance (the same task keeps its colour)."""
    return {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(values))}


def _run_label(table: pd.DataFrame) -> pd.Series:
    if "run" in table.columns:
        return table["run"].astype(str)
    if {"model", "task"} <= set(table.columns):
        return table["model"].astype(str) + " · " + table["task"].astype(str)
    raise ValueError(f"expected a 'run' column or 'model' and 'task' columns; got {list(table.columns)}")


def _depth_note(table: pd.DataFrame, layer_column: str = "layer") -> str:
    return f" ({int(table[layer_column].max()) + 1} layers)" if layer_column in table.columns and len(table) else ""


def _legend_below(fig: plt.Figure, handles: list, labels: list[str], *, ncols: int | None = None) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols or min(len(labels), 4), frameon=False)


def _percent_ticks(ax: plt.Axes, values: np.ndarray) -> None:
    ticks = [t for t in (100, 30, 10, 3, 1, 0.3, 0.1, 0.03, 0.01) if t >= np.nanmin(values) * 0.5]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}%" for t in ticks])


def _layer_ticks(ax: plt.Axes, axis: str = "x") -> None:
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(nbins=7, integer=True))


# ---- heatmaps (notebook 02) -------------------------------------------------------------------


def _text_width_pt(text: str, size: float) -> float:
    return float(TextPath((0, 0), text, size=size).get_extents().width)


def _tick_step(n: int, length_pt: float, size: float = 9.0) -> int:
    """Smallest step in (1, 2, 5, 10, ...) whose tick labels 0, step, ... fit along ``length_pt``."""
    label_pt = _text_width_pt(str(max(n - 1, 0)), size) + 0.8 * size
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500):
        if (n / step) * label_pt <= length_pt:
            return step
    return 1000


def _draw_matrix(ax: plt.Axes, m: np.ndarray, *, vmin: float, vmax: float, cmap: str) -> plt.cm.ScalarMappable:
    """Draw one matrix on ``ax``: NaN cells in ``UNDEFINED_COLOR`` under a hatch, in any colour map."""
    colormap = plt.get_cmap(cmap).with_extremes(bad=UNDEFINED_COLOR)
    image = ax.imshow(
        np.ma.masked_invalid(m), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
    )
    ax.grid(False)
    ax.set_box_aspect(float(np.clip(m.shape[0] / m.shape[1], 0.45, 1.0)))
    for i, j in zip(*np.nonzero(~np.isfinite(m))):
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor=UNDEFINED_EDGE, hatch=UNDEFINED_HATCH, linewidth=0
            )
        )
    ax.tick_params(length=2)
    return image


def _finish_matrix(ax: plt.Axes, m: np.ndarray, image, *, annotate: bool | None, fmt: str) -> None:
    """Layer ticks that fit, and cell values where the cells fit 8-point text (after the layout settled)."""
    bbox = ax.get_window_extent()
    width_pt, height_pt = bbox.width * 72 / ax.figure.dpi, bbox.height * 72 / ax.figure.dpi
    cell_w, cell_h = width_pt / m.shape[1], height_pt / m.shape[0]
    finite = m[np.isfinite(m)]
    widest = max((format(v, fmt) for v in (finite if finite.size else [0.0])), key=len)
    fits = cell_w >= _text_width_pt(widest, _ANNOT_PT) + 3 and cell_h >= 1.5 * _ANNOT_PT
    if fits if annotate is None else annotate:
        for i, j in zip(*np.nonzero(np.isfinite(m))):
            r, g, b, _ = image.cmap(image.norm(m[i, j]))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j,
                i,
                format(m[i, j], fmt),
                ha="center",
                va="center",
                fontsize=_ANNOT_PT,
                color="white" if dark else "black",
            )
    ax.set_xticks(np.arange(0, m.shape[1], _tick_step(m.shape[1], width_pt)))
    ax.set_yticks(np.arange(0, m.shape[0], _tick_step(m.shape[0], height_pt)))


def heatmap_panels(
    matrices: Mapping[str, np.ndarray],
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
    undefined_label: str = UNDEFINED_LABEL,
) -> plt.Figure:
    """One heatmap per entry of ``matrices``, all on one colour scale with one titled colour bar.

    Parameters
    ----------
    matrices : mapping of str to array-like of shape (n_rows, n_cols)
        Panel title -> matrix (e.g. ``"mpnet / pos"`` -> layer × layer CKA). Matrices may differ in
        size (13- and 31-layer models): every panel has the same size and its own layer ticks.
    title, xlabel, ylabel, cbar_label : str
        Figure title, axis titles of every panel, colour-bar title.
    vmin, vmax : float
        Colour scale shared by all panels.
    annotate : bool or None
        Write values into the cells; ``None`` does so only where the cells fit 8-point text.
    fmt : str
        Format of the cell values.
    cmap : str
        Matplotlib colour map; NaN cells are ``UNDEFINED_COLOR`` with a hatch in every colour map.
    ncols : int or None
        Panels per row; ``None``: up to 3 in one row, 2 × 2 for 4 panels, rows of 3 beyond.
    undefined_label : str
        Legend text for NaN cells, shown when any matrix has one.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    labels = list(matrices)
    arrays = [np.asarray(matrices[k], dtype=float) for k in labels]
    for label, m in zip(labels, arrays):
        if m.ndim != 2 or 0 in m.shape:
            raise ValueError(f"matrix {label!r} must be 2-D and non-empty; got shape {m.shape}")
    nrows, ncols = _grid(len(labels), ncols)
    aspect = max(float(np.clip(m.shape[0] / m.shape[1], 0.45, 1.0)) for m in arrays)
    panel_w = min(4.6 / max(aspect, 0.66), (MAX_WIDTH_IN - 1.3) / ncols)  # wide matrices get wide panels
    fig, axes = _panels(
        len(labels), ncols=ncols, panel_w=panel_w, panel_h=panel_w * aspect + 0.35, extra_w=1.3, extra_h=0.8
    )
    images = []
    for ax, label, m in zip(axes, labels, arrays):
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        images.append(_draw_matrix(ax, m, vmin=vmin, vmax=vmax, cmap=cmap))
    fig.colorbar(images[-1], ax=axes, label=cbar_label, shrink=0.9 if nrows > 1 else 1.0, aspect=30)
    if any(np.isnan(m).any() for m in arrays):
        patch = Patch(facecolor=UNDEFINED_COLOR, edgecolor=UNDEFINED_EDGE, hatch=UNDEFINED_HATCH, linewidth=0)
        fig.legend([patch], [undefined_label], loc="outside lower right", frameon=False)
    fig.suptitle(title)
    fig.canvas.draw()  # settle the layout, then size ticks and annotations to the drawn cells
    for ax, m, image in zip(axes, arrays, images):
        _finish_matrix(ax, m, image, annotate=annotate, fmt=fmt)
    return fig


# ---- activations (notebook 01) ----------------------------------------------------------------


def norm_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Mean activation norm per layer: one panel per model (own layer axis), one line per task.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, one row per (model, task, layer), columns ``model, task, layer, mean_norm``.
    title : str
        Figure title.

    The norm axis is shared and logarithmic when the norms span two decades or more (a 31-layer
    decoder reaches 1,000 where a 13-layer encoder stays below 20).

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["model", "task", "layer", "mean_norm"], "norm_curves")
    models = _groups(table, "model")
    colors = _colors(table["task"].astype(str))
    fig, axes = _panels(len(models), panel_w=4.6, panel_h=3.4, sharey=True, extra_h=0.9)
    log = spans_decades(table["mean_norm"])
    for ax, (model, g) in zip(axes, models):
        for task, t in g.groupby("task", sort=False):
            t = t.sort_values("layer")
            ax.plot(t["layer"], t["mean_norm"], marker="o", markersize=3.5, color=colors[str(task)], label=str(task))
        ax.set_title(f"{model}{_depth_note(g)}")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("mean L2 norm of an item vector" + (" (log scale)" if log else ""))
        _layer_ticks(ax)
        if log:
            ax.set_yscale("log")
    handles = [Line2D([], [], color=c, marker="o", markersize=3.5) for c in colors.values()]
    _legend_below(fig, handles, list(colors))
    fig.suptitle(title)
    return fig


# ---- feature-selected transfer (notebook 04) --------------------------------------------------


def transfer_steps(steps: pd.DataFrame, *, title: str) -> plt.Figure:
    """Test score against % of neurons kept through the pipeline's steps: one panel per task.

    Parameters
    ----------
    steps : pandas.DataFrame
        Tidy, one row per (model, task, step), columns ``step, pct_kept, test`` and ``model``,
        ``task``; steps ``oracle``, ``LS``, ``LS+CC``, ``LS+CC+FS`` each get their own marker, models
        their own colour.
    title : str
        Figure title.

    The % axis is logarithmic (the pipeline keeps 100 % down to under 1 %) and runs from all neurons
    (left) to the fewest (right).

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(steps, ["step", "pct_kept", "test"], "transfer_steps")
    tasks = _groups(steps, "task")
    model_colors = _colors(steps["model"].astype(str)) if "model" in steps.columns else {"": "C0"}
    fig, axes = _panels(len(tasks), panel_w=3.3, panel_h=3.3, sharex=True, extra_h=1.1)
    for ax, (task, g) in zip(axes, tasks):
        for model, m in _groups(g, "model"):
            color = model_colors[model]
            ax.plot(m["pct_kept"], m["test"], color=color, linewidth=1.2, alpha=0.8)
            for row in m.itertuples(index=False):
                ax.plot(
                    row.pct_kept,
                    row.test,
                    linestyle="none",
                    color=color,
                    marker=_STEP_MARKERS.get(str(row.step), "s"),
                    markersize=10 if row.step == "oracle" else (5 if row.step == "LS+CC" else 7),
                    markeredgecolor="white",
                    markeredgewidth=0.6,
                )
        ax.set_xscale("log")
        ax.set_title(task or title)
        ax.set_xlabel("% of the model's neurons kept (log)")
        ax.set_ylabel("test accuracy")
    _percent_ticks(axes[0], steps["pct_kept"].to_numpy(float))
    axes[0].set_xlim(max(130.0, steps["pct_kept"].max() * 1.3), steps["pct_kept"].min() / 2.0)  # all → fewest
    handles = [Line2D([], [], color=c, linewidth=1.5) for c in model_colors.values()]
    labels = [m for m in model_colors]
    step_names = [s for s in _STEP_MARKERS if s in set(steps["step"].astype(str))]
    handles += [
        Line2D([], [], color="0.35", linestyle="none", marker=_STEP_MARKERS[s], markersize=7) for s in step_names
    ]
    labels += step_names
    _legend_below(fig, handles, labels, ncols=len(labels))
    fig.suptitle(title)
    return fig


# ---- general redundancy (notebook 02) ---------------------------------------------------------


def kept_curves(
    table: pd.DataFrame,
    *,
    title: str,
    reference_pct_kept: float | None = None,
    reference_label: str = "",
) -> plt.Figure:
    """``pct_kept`` against clustering ``threshold``, one line per run, with a reference level.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, one row per (run, threshold), columns ``threshold, pct_kept`` and ``run`` (or ``model``
        and ``task``). With ``model`` and ``task`` the colour follows the model, the line style the task.
    title : str
        Figure title.
    reference_pct_kept : float, optional
        A horizontal dashed line at this % (e.g. the paper's 15 % kept), labelled ``reference_label``.
    reference_label : str

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["threshold", "pct_kept"], "kept_curves")
    table = table.assign(_run=_run_label(table))
    styled = {"model", "task"} <= set(table.columns)
    model_colors = _colors(table["model"].astype(str)) if styled else _colors(table["_run"])
    task_styles = dict(zip(dict.fromkeys(table["task"].astype(str)) if styled else [], ["-", "--", ":", "-."] * 3))
    task_markers = dict(zip(task_styles, "os^Dv<>"))
    fig, ax = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    for run, g in table.groupby("_run", sort=False):
        g = g.sort_values("threshold")
        first = g.iloc[0]
        color = model_colors[str(first["model"])] if styled else model_colors[str(run)]
        ax.plot(
            g["threshold"],
            g["pct_kept"],
            color=color,
            linestyle=task_styles.get(str(first["task"]), "-") if styled else "-",
            marker=task_markers.get(str(first["task"]), "o") if styled else "o",
            markersize=4.5,
            label=run,
        )
    if reference_pct_kept is not None:
        ax.axhline(reference_pct_kept, color="0.3", linestyle="--", linewidth=1, label=reference_label or None)
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.set_xlabel("clustering threshold t (distance 1 − |r|)")
    ax.set_ylabel("neurons kept (% of all neurons)")
    fig.legend(loc="outside right upper", frameon=False)
    return fig


def span_bars(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Clusters per span (layers a cluster covers): one panel per model (own span axis), one line per task.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, one row per (model, task, span), columns ``span, n_clusters`` and ``model``, ``task``
        (or ``run``).
    title : str
        Figure title.

    Counts run from a handful to thousands, so the count axis is logarithmic when they span two
    decades; spans with no cluster cannot sit on a log axis and are left out (the y label says so).

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["span", "n_clusters"], "span_bars")
    models = _groups(table, "model")
    key = "task" if "task" in table.columns else _series_key(table)
    colors = _colors(table[key].astype(str))
    log = spans_decades(table["n_clusters"])
    fig, axes = _panels(len(models), panel_w=4.6, panel_h=3.3, sharey=True, extra_h=0.9)
    for ax, (model, g) in zip(axes, models):
        for name, s in g.groupby(key, sort=False):
            s = s.sort_values("span")
            if log:
                s = s[s["n_clusters"] > 0]
            ax.plot(s["span"], s["n_clusters"], marker="o", markersize=4, color=colors[str(name)], label=str(name))
        widest = int(g.loc[g["n_clusters"] > 0, "span"].max()) if (g["n_clusters"] > 0).any() else 0
        ax.set_title(f"{model}: widest cluster spans {widest} layers" if model else title)
        ax.set_xlabel("layers spanned (max − min layer + 1)")
        if ax is axes[0]:  # one shared count axis: its title once
            ax.set_ylabel("clusters of 2+ neurons" + (" (log; none: not drawn)" if log else ""))
        ax.set_xlim(0.5, g["span"].max() + 0.5)
        _layer_ticks(ax)
        if log:
            ax.set_yscale("log")
    handles = [Line2D([], [], color=c, marker="o", markersize=4) for c in colors.values()]
    _legend_below(fig, handles, list(colors))
    fig.suptitle(title)
    return fig


def layer_share_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """``pct_redundant`` against ``layer``: one panel per model (own layer axis), one line per task.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, one row per (model, task, layer), columns ``layer, pct_redundant`` and ``model``,
        ``task`` (or ``run``).
    title : str
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["layer", "pct_redundant"], "layer_share_curves")
    models = _groups(table, "model")
    key = "task" if "task" in table.columns else _series_key(table)
    colors = _colors(table[key].astype(str))
    fig, axes = _panels(len(models), panel_w=4.6, panel_h=3.3, sharey=True, extra_h=0.9)
    for ax, (model, g) in zip(axes, models):
        for name, s in g.groupby(key, sort=False):
            s = s.sort_values("layer")
            ax.plot(s["layer"], s["pct_redundant"], marker="o", markersize=4, color=colors[str(name)], label=str(name))
        ax.set_title(f"{model}{_depth_note(g)}" if model else title)
        ax.set_xlabel("layer (0 = embeddings)")
        if ax is axes[0]:  # one shared axis: its title once
            ax.set_ylabel("neurons dropped by clustering (% of layer)")
        ax.set_ylim(-3, 103)
        _layer_ticks(ax)
    handles = [Line2D([], [], color=c, marker="o", markersize=4) for c in colors.values()]
    _legend_below(fig, handles, list(colors))
    fig.suptitle(title)
    return fig


# ---- task-specific redundancy (notebook 03) ---------------------------------------------------


def layer_probe_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Dev accuracy (left) and selectivity (right) per layer, independent and incremental probes.

    Parameters
    ----------
    table : pandas.DataFrame
        One run, columns ``layer, mode, score, control_score, selectivity``; modes ``independent``
        and ``incremental`` (one row per layer each) and one ``oracle`` row, drawn as a horizontal line.
    title : str
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["layer", "mode", "score", "control_score", "selectivity"], "layer_probe_curves")
    fig, (ax_score, ax_sel) = plt.subplots(1, 2, figsize=(MAX_WIDTH_IN, 4.0), layout="constrained")
    colours = {"independent": "C0", "incremental": "C1"}
    handles, labels = [], []
    for mode, colour in colours.items():
        g = table[table["mode"] == mode].sort_values("layer")
        if not len(g):
            continue
        (line,) = ax_score.plot(g["layer"], g["score"], marker="o", markersize=3.5, color=colour)
        handles.append(line)
        labels.append(f"{mode}: task")
        if g["control_score"].notna().any():
            (line,) = ax_score.plot(
                g["layer"], g["control_score"], marker="x", markersize=4, linestyle="--", color=colour, alpha=0.6
            )
            handles.append(line)
            labels.append(f"{mode}: control task")
            ax_sel.plot(g["layer"], g["selectivity"], marker="o", markersize=3.5, color=colour)
    oracle = table[table["mode"] == "oracle"]
    if len(oracle):
        value = float(oracle["score"].iloc[0])
        handles.append(ax_score.axhline(value, color="0.2", linestyle=":", linewidth=1.2))
        labels.append(f"oracle (all layers): {value:.3f}")
        if oracle["selectivity"].notna().any():
            ax_sel.axhline(float(oracle["selectivity"].iloc[0]), color="0.2", linestyle=":", linewidth=1.2)
    ax_score.set_title("dev accuracy")
    ax_score.set_ylabel("accuracy")
    ax_sel.set_title("selectivity = task − control accuracy")
    ax_sel.set_ylabel("selectivity")
    layers = table.loc[table["mode"] != "oracle", "layer"]
    of = f" of {int(layers.max()) + 1}" if len(layers) else ""
    for ax in (ax_score, ax_sel):
        ax.set_xlabel(f"layer l{of} (0 = embeddings; incremental: layers 0..l)")
        _layer_ticks(ax)
    _legend_below(fig, handles, labels, ncols=3)
    fig.suptitle(title)
    return fig


def neuron_curves(curve: pd.DataFrame, *, oracle: float, target: float | None, title: str) -> plt.Figure:
    """Dev score against the number of top neurons kept (log scale), one line per ``ordering``.

    Parameters
    ----------
    curve : pandas.DataFrame
        One run, one row per (ordering, k), columns ``ordering, k, score``; orderings are shown as the
        text names them (``ORDERING_LABELS``: LCA, random, bottom, F statistic).
    oracle : float
        Dev score of the probe on all neurons (dotted line).
    target : float or None
        Minimal-set target (dashed line), if any.
    title : str
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(curve, ["ordering", "k", "score"], "neuron_curves")
    fig, ax = plt.subplots(figsize=(7.0, 4.3), layout="constrained")
    for i, (name, g) in enumerate(curve.groupby("ordering", sort=False)):
        g = g.sort_values("k")
        ax.plot(
            g["k"],
            g["score"],
            marker="o",
            markersize=4,
            color=_ORDERING_COLORS.get(str(name), f"C{4 + i}"),
            label=ORDERING_LABELS.get(str(name), str(name)),
        )
    ax.axhline(oracle, color="0.2", linestyle=":", linewidth=1.2, label=f"oracle: {oracle:.3f}")
    if target is not None:
        ax.axhline(target, color="C3", linestyle="--", linewidth=1, label=f"target: {target:.3f}")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("neurons kept (top k of each ordering; log scale)")
    ax.set_ylabel("dev accuracy of a probe retrained on them")
    fig.legend(loc="outside right upper", frameon=False, title="ordering")
    return fig


def selected_layer_bars(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Neurons of a minimal set per layer: one panel per run (rows: models, columns: tasks).

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, one row per (run, layer), columns ``layer, count`` and ``run`` (or ``model`` and
        ``task``).
    title : str
        Figure title.

    Each panel keeps its own layer axis (models differ in depth); panels of one model share their
    count axis.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["layer", "count"], "selected_layer_bars")
    table = table.assign(_run=_run_label(table))
    runs = _groups(table, "_run")
    task_colors = _colors(table["task"].astype(str)) if "task" in table.columns else {}
    ncols = None
    if {"model", "task"} <= set(table.columns):
        n_models, n_tasks = table["model"].nunique(), table["task"].nunique()
        if n_models * n_tasks == len(runs) and n_tasks <= 3:
            ncols = n_tasks
    fig, axes = _panels(len(runs), ncols=ncols, panel_w=3.3, panel_h=2.7, extra_h=0.6, sharey="row" if ncols else False)
    for i, (ax, (run, g)) in enumerate(zip(axes, runs)):
        g = g.sort_values("layer")
        color = task_colors.get(str(g["task"].iloc[0]), "C0") if task_colors else f"C{i % 10}"
        ax.bar(g["layer"], g["count"], width=0.8, color=color)
        ax.set_title(f"{run}: {int(g['count'].sum()):,} neurons")
        ax.set_xlabel(f"layer{_depth_note(g)}")
        ax.set_ylabel("neurons of the set")
        ax.set_xlim(-0.7, g["layer"].max() + 0.7)
        ax.grid(axis="x", visible=False)
        _layer_ticks(ax)
    fig.suptitle(title)
    return fig


# ---- general redundancy the authors' way (notebook 02) ----------------------------------------

_TASK_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_TASK_MARKERS = "os^DvP"


def cc_sweep_curves(
    table: pd.DataFrame,
    *,
    title: str,
    value: str = "test",
    tolerance: float | None = None,
    reference_pct_kept: float | None = None,
    reference_label: str = "",
) -> plt.Figure:
    """Neurons kept (left, log) and probe accuracy with its interval band (right) against the threshold.

    One line per model × task (colour: model; line style and marker: task). The oracle (all neurons,
    no clustering) is drawn at t = 0, so each line starts from 100 % of the neurons and the oracle's
    accuracy.

    Parameters
    ----------
    table : pandas.DataFrame
        ``cc_sweep.csv`` rows: columns ``model, task, step, threshold, pct_kept`` and ``value``,
        ``value_low``, ``value_high``; rows of step ``oracle`` and ``clustering`` are drawn (the
        ``constant`` row is not: it has no probe).
    title : str
        Figure title.
    value : {"test", "dev", "ratio"}
        Accuracy on test or dev, or the test accuracy as a fraction of the oracle's (drawn in %).
    tolerance : float, optional
        With ``value="ratio"``: a dashed line at this fraction (e.g. 0.97).
    reference_pct_kept : float, optional
        A dashed line on the left panel at this % of neurons kept (e.g. the paper's 15 %).
    reference_label : str

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    if value not in ("test", "dev", "ratio"):
        raise ValueError(f"value must be 'test', 'dev' or 'ratio', got {value!r}")
    _require(
        table,
        ["model", "task", "step", "threshold", "pct_kept", value, f"{value}_low", f"{value}_high"],
        "cc_sweep_curves",
    )
    drawn = table[table["step"].isin(["oracle", "clustering"])].copy()
    drawn["threshold"] = drawn["threshold"].where(drawn["step"] == "clustering", 0.0)
    scale = 100.0 if value == "ratio" else 1.0
    model_colors = _colors(drawn["model"].astype(str))
    tasks = list(dict.fromkeys(drawn["task"].astype(str)))
    styles = {t: _TASK_STYLES[i % len(_TASK_STYLES)] for i, t in enumerate(tasks)}
    markers = {t: _TASK_MARKERS[i % len(_TASK_MARKERS)] for i, t in enumerate(tasks)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.2), layout="constrained")
    for (model, task), g in drawn.groupby(["model", "task"], sort=False):
        g = g.sort_values("threshold")
        style = dict(
            color=model_colors[str(model)],
            linestyle=styles[str(task)],
            marker=markers[str(task)],
            markersize=4.5,
            linewidth=1.3,
        )
        left.plot(g["threshold"], g["pct_kept"], **style)
        right.plot(g["threshold"], g[value] * scale, **style)
        right.fill_between(
            g["threshold"],
            g[f"{value}_low"] * scale,
            g[f"{value}_high"] * scale,
            color=model_colors[str(model)],
            alpha=0.15,
            linewidth=0,
        )
    if reference_pct_kept is not None:
        left.axhline(reference_pct_kept, color="0.3", linestyle="--", linewidth=1)
        if reference_label:
            left.annotate(
                reference_label,
                (0.02, reference_pct_kept),
                xycoords=("axes fraction", "data"),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=MIN_FONT_PT + 0.5,
                color="0.3",
            )
    if tolerance is not None and value == "ratio":
        right.axhline(tolerance * scale, color="0.3", linestyle="--", linewidth=1)
        right.annotate(
            f"tolerance {tolerance * scale:g}%",
            (0.02, tolerance * scale),
            xycoords=("axes fraction", "data"),
            xytext=(0, -11),
            textcoords="offset points",
            fontsize=MIN_FONT_PT + 0.5,
            color="0.3",
        )
    if spans_decades(drawn["pct_kept"], 1.0):
        left.set_yscale("log")
        ticks = [t for t in (100, 50, 30, 10, 5, 3, 1, 0.5, 0.3, 0.1) if t >= drawn["pct_kept"].min() * 0.5]
        left.yaxis.set_major_locator(FixedLocator(ticks))
        left.yaxis.set_minor_locator(NullLocator())
        left.set_yticklabels([f"{t:g}%" for t in ticks])
    for ax in (left, right):
        ax.set_xlabel("clustering threshold t (0 = oracle, all neurons)")
        ax.set_xlim(-0.03, max(0.93, drawn["threshold"].max() + 0.03))
    left.set_title("neurons kept (one per cluster)")
    left.set_ylabel("neurons kept (% of all, log)" if left.get_yscale() == "log" else "neurons kept (% of all)")
    names = {"test": "test accuracy", "dev": "dev accuracy", "ratio": "test accuracy (% of the oracle's)"}
    right.set_title(f"probe on the representatives: {names[value]}, 95% band")
    right.set_ylabel(names[value])
    handles = [Line2D([], [], color=c, linewidth=1.5) for c in model_colors.values()]
    labels = list(model_colors)
    handles += [Line2D([], [], color="0.35", linestyle=styles[t], marker=markers[t], markersize=4.5) for t in tasks]
    labels += tasks
    _legend_below(fig, handles, labels, ncols=min(len(labels), 6))
    fig.suptitle(title)
    return fig


# ---- pretrained and fine-tuned side by side (notebooks 02 and 03) ------------------------------

_FT_COLORS = {"pretrained": "C0", "fine-tuned": "C3"}


def finetune_layer_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Per-layer similarities of a pretrained model and its fine-tuned twin: one panel per base · task.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, one row per (base, task, series, layer), columns ``base, task, series, layer, value``
        (linear CKA, 0 to 1). Series are drawn in order of appearance; a series whose name holds one of
        ``"pretrained"`` and ``"fine-tuned"`` takes that model's colour, one naming both or neither (e.g. the
        CKA between the two models' layer l) is drawn in black. NaN values (constant layers) leave a gap.
    title : str
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["base", "task", "series", "layer", "value"], "finetune_layer_curves")
    pairs = [(f"{b} · {t}", g) for (b, t), g in table.groupby(["base", "task"], sort=False)]
    series = list(dict.fromkeys(table["series"].astype(str)))
    styles = {}
    for i, name in enumerate(series):
        named = [c for key, c in _FT_COLORS.items() if key in name]
        color = named[0] if len(named) == 1 else "0.1"  # naming both models: a comparison of the two
        styles[name] = dict(color=color, linestyle=("-", "--", ":", "-.")[i % 4], marker="os^D"[i % 4])
    fig, axes = _panels(len(pairs), panel_w=4.6, panel_h=3.4, sharey=True, extra_h=1.0)
    for ax, (label, g) in zip(axes, pairs):
        for name, s in g.groupby("series", sort=False):
            s = s.sort_values("layer")
            ax.plot(s["layer"], s["value"], markersize=4, linewidth=1.4, label=str(name), **styles[str(name)])
        ax.set_title(f"{label}{_depth_note(g)}")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("linear CKA")
        ax.set_ylim(-0.03, 1.05)
        _layer_ticks(ax)
    handles = [Line2D([], [], markersize=4, linewidth=1.4, **styles[n]) for n in series]
    _legend_below(fig, handles, series, ncols=min(len(series), 3))
    fig.suptitle(title)
    return fig


def finetune_probe_curves(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Layer probes of a pretrained model and of its fine-tuned twin, one panel per base · task.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy, columns ``base, task, model, layer, mode, score``: ``model`` is ``"pretrained"`` or
        ``"fine-tuned"``; modes ``independent`` (solid) and ``incremental`` (dashed) one row per layer,
        ``oracle`` (dotted, the probe on all layers) and ``classifier`` (the fine-tuned classifier itself,
        dash-dot, black) one row each, drawn as horizontal lines.
    title : str
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    _require(table, ["base", "task", "model", "layer", "mode", "score"], "finetune_probe_curves")
    pairs = [(f"{b} · {t}", g) for (b, t), g in table.groupby(["base", "task"], sort=False)]
    fig, axes = _panels(len(pairs), panel_w=4.6, panel_h=3.5, extra_h=1.2)
    line_styles = {"independent": "-", "incremental": "--"}
    handles, labels = {}, {}
    for ax, (label, g) in zip(axes, pairs):
        for (model, mode), s in g.groupby(["model", "mode"], sort=False):
            color = _FT_COLORS.get(str(model), "0.3")
            key = f"{model}: {mode}"
            if mode in line_styles:
                s = s.sort_values("layer")
                (line,) = ax.plot(
                    s["layer"], s["score"], color=color, linestyle=line_styles[mode], marker="o", markersize=3.5
                )
            elif mode == "oracle":
                line = ax.axhline(float(s["score"].iloc[0]), color=color, linestyle=":", linewidth=1.3)
                key = f"{model}: oracle (all layers)"
            elif mode == "classifier":
                line = ax.axhline(float(s["score"].iloc[0]), color="0.1", linestyle="-.", linewidth=1.3)
                key = "fine-tuned classifier itself"
            else:
                continue
            handles.setdefault(key, line)
            labels.setdefault(key, key)
        layers = g.loc[g["mode"].isin(list(line_styles)), "layer"]
        ax.set_title(f"{label} ({int(layers.max()) + 1} layers)" if len(layers) else label)
        ax.set_xlabel("layer l (incremental: layers 0..l)")
        ax.set_ylabel("dev accuracy")
        _layer_ticks(ax)
    order = sorted(handles, key=lambda k: (k.startswith("fine-tuned classifier"), not k.startswith("pretrained"), k))
    _legend_below(fig, [handles[k] for k in order], [labels[k] for k in order], ncols=3)
    fig.suptitle(title)
    return fig

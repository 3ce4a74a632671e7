"""Figures are legible at reader size: every plot function on small tidy tables shaped like the real ones.

A reader sees a PNG about 1,000 px wide on a 96-px-per-inch screen. Text of ``s`` points saved at
``dpi`` into a ``W``-px-wide PNG then appears at ``s * dpi / 96 * min(1, 1000 / W)`` points; every
visible text must stay at 8 points or more, and ``W`` at most 2,000 px at ``plots.save``'s default dpi.
The tables mix a 13-layer and a 31-layer model, as the notebooks do.
"""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from figure_text import visible_texts
from matplotlib.colors import to_rgba
from PIL import Image

from utils import plots

READER_PX = 1000
SCREEN_PPI = 96
MIN_PT = 8.0
MAX_PX = 2000
DEPTHS = {"mpnet": 13, "smollm2": 31}
TASKS = ("pos", "sentiment", "uncertainty")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---- tidy tables shaped like the notebooks' ---------------------------------------------------


def norms_table(scale_smollm2: float = 1000.0) -> pd.DataFrame:
    rows = []
    for model, n in DEPTHS.items():
        top = scale_smollm2 if model == "smollm2" else 10.0
        for task in TASKS:
            for layer in range(n):
                rows.append({"model": model, "task": task, "layer": layer, "mean_norm": 3 + top * layer / (n - 1)})
    return pd.DataFrame(rows)


def cka_matrix(n: int, *, constant_layer: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.uniform(0, 1, (n, n))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    if constant_layer is not None:
        m[constant_layer, :] = np.nan
        m[:, constant_layer] = np.nan
    return m


def cka_runs() -> dict[str, np.ndarray]:
    return {
        "mpnet / pos": cka_matrix(13, seed=1),
        "mpnet / sentiment": cka_matrix(13, constant_layer=0, seed=2),
        "smollm2 / pos": cka_matrix(31, seed=3),
        "smollm2 / sentiment": cka_matrix(31, seed=4),
    }


def kept_table() -> pd.DataFrame:
    rows = []
    for model in DEPTHS:
        for task in TASKS[:2]:
            for t in np.arange(0.1, 1.0, 0.1):
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "run": f"{model} / {task}",
                        "threshold": t,
                        "pct_kept": 100 * (1 - t) ** 2,
                    }
                )
    return pd.DataFrame(rows)


def spans_table() -> pd.DataFrame:
    rows = []
    for model, n in DEPTHS.items():
        for task in TASKS[:2]:
            for span in range(1, n + 1):
                rows.append(
                    {
                        "threshold": 0.3,
                        "span": span,
                        "n_clusters": int(2000 / span**2),
                        "model": model,
                        "task": task,
                        "run": f"{model} / {task}",
                    }
                )
    return pd.DataFrame(rows)


def share_table() -> pd.DataFrame:
    rows = []
    for model, n in DEPTHS.items():
        for task in TASKS[:2]:
            for layer in range(n):
                rows.append(
                    {
                        "threshold": 0.3,
                        "layer": layer,
                        "pct_redundant": 100 * layer / n,
                        "model": model,
                        "task": task,
                        "run": f"{model} / {task}",
                    }
                )
    return pd.DataFrame(rows)


def probe_table(n: int = 31) -> pd.DataFrame:
    rows = []
    for mode in ("independent", "incremental"):
        for layer in range(n):
            score, control = 0.8 + 0.1 * layer / n, 0.6 - 0.2 * layer / n
            rows.append(
                {"layer": layer, "mode": mode, "score": score, "control_score": control, "selectivity": score - control}
            )
    rows.append({"layer": n - 1, "mode": "oracle", "score": 0.91, "control_score": 0.6, "selectivity": 0.31})
    return pd.DataFrame(rows)


def curve_table() -> pd.DataFrame:
    ks = [9, 19, 49, 99, 199, 499, 999, 1996, 4992, 9000]
    return pd.DataFrame(
        [
            {"ordering": o, "k": k, "score": 0.2 + 0.7 * np.log10(k) / 4 - 0.05 * i}
            for i, o in enumerate(["lca", "random", "bottom", "mean_difference"])
            for k in ks
        ]
    )


def layer_counts_table() -> pd.DataFrame:
    rows = []
    for model, n in DEPTHS.items():
        for task in TASKS:
            for layer in range(n):
                rows.append(
                    {
                        "run": f"{model} · {task}",
                        "model": model,
                        "task": task,
                        "layer": layer,
                        "count": (layer * 7) % 50,
                    }
                )
    return pd.DataFrame(rows)


def steps_table() -> pd.DataFrame:
    rows = []
    for model, total in (("mpnet", 9984), ("smollm2", 17856)):
        for task in TASKS:
            for step, neurons in (("oracle", total), ("LS", 2304), ("LS+CC", 1536), ("LS+CC+FS", 89)):
                rows.append(
                    {
                        "step": step,
                        "neurons": neurons,
                        "test": 0.7 + neurons / total / 10,
                        "pct_kept": 100 * neurons / total,
                        "model": model,
                        "task": task,
                    }
                )
    return pd.DataFrame(rows)


def cc_sweep_table() -> pd.DataFrame:
    rows = []
    for model in ("mpnet", "smollm2"):
        for task in TASKS:
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "step": "oracle",
                    "threshold": np.nan,
                    "pct_kept": 100.0,
                    "test": 0.9,
                    "test_low": 0.88,
                    "test_high": 0.92,
                    "ratio": 1.0,
                    "ratio_low": 1.0,
                    "ratio_high": 1.0,
                }
            )
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "step": "constant",
                    "threshold": np.nan,
                    "pct_kept": 92.3,
                    "test": np.nan,
                    "test_low": np.nan,
                    "test_high": np.nan,
                    "ratio": np.nan,
                    "ratio_low": np.nan,
                    "ratio_high": np.nan,
                }
            )
            for t in np.arange(0.1, 1.0, 0.1):
                acc = 0.9 - 0.3 * t**3
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "step": "clustering",
                        "threshold": t,
                        "pct_kept": 100 * (1 - t) ** 3 + 0.05,
                        "test": acc,
                        "test_low": acc - 0.03,
                        "test_high": acc + 0.03,
                        "ratio": acc / 0.9,
                        "ratio_low": acc / 0.9 - 0.02,
                        "ratio_high": acc / 0.9 + 0.02,
                    }
                )
    return pd.DataFrame(rows)


FIGURES = {
    "norm_curves": lambda: plots.norm_curves(norms_table(), title="Mean activation norm per layer"),
    "heatmap_panels": lambda: plots.heatmap_panels(
        cka_runs(),
        title="Linear CKA between layers",
        xlabel="layer",
        ylabel="layer",
        cbar_label="linear CKA",
        vmin=0.0,
        vmax=1.0,
    ),
    "heatmap_panels_cross": lambda: plots.heatmap_panels(
        {"mpnet (rows) vs smollm2 (columns) / pos": cka_matrix(31)[:13]},
        title="Linear CKA between two models",
        xlabel="layer (second model)",
        ylabel="layer (first model)",
        cbar_label="linear CKA",
        vmin=0.0,
        vmax=1.0,
        ncols=1,
    ),
    "kept_curves": lambda: plots.kept_curves(
        kept_table(), title="Neurons kept", reference_pct_kept=15.0, reference_label="paper: 85% redundant (15% kept)"
    ),
    "span_bars": lambda: plots.span_bars(spans_table(), title="Layers spanned by clusters"),
    "layer_share_curves": lambda: plots.layer_share_curves(share_table(), title="Neurons dropped per layer"),
    "layer_probe_curves": lambda: plots.layer_probe_curves(probe_table(), title="smollm2 · pos: layer probes"),
    "neuron_curves": lambda: plots.neuron_curves(curve_table(), oracle=0.91, target=0.90, title="accuracy vs k"),
    "selected_layer_bars": lambda: plots.selected_layer_bars(layer_counts_table(), title="Layers of the sets"),
    "transfer_steps": lambda: plots.transfer_steps(steps_table(), title="Feature-selected transfer"),
    "cc_sweep_curves": lambda: plots.cc_sweep_curves(
        cc_sweep_table(),
        title="Probes on cluster representatives",
        reference_pct_kept=15.0,
        reference_label="paper: 15% kept",
    ),
    "cc_sweep_curves_ratio": lambda: plots.cc_sweep_curves(
        cc_sweep_table(), title="% of the oracle", value="ratio", tolerance=0.97
    ),
}


def _default_dpi() -> float:
    return float(inspect.signature(plots.save).parameters["dpi"].default)


def _data_axes(fig: plt.Figure) -> list[plt.Axes]:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# ---- legibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_fits_reader_width_and_text_stays_8pt(name, tmp_path):
    fig = FIGURES[name]()
    dpi = _default_dpi()
    path = plots.save(fig, tmp_path / f"{name}.png")
    with Image.open(path) as image:
        width_px = image.size[0]
    assert width_px <= MAX_PX, f"{name}: {width_px} px wide at the default {dpi:g} dpi; at most {MAX_PX}"
    shrink = min(1.0, READER_PX / width_px) * dpi / SCREEN_PPI
    sizes = {t.get_text(): t.get_fontsize() * shrink for t in visible_texts(fig)}
    assert sizes, f"{name}: no text found"
    smallest = min(sizes, key=sizes.get)
    assert sizes[smallest] >= MIN_PT, (
        f"{name}: text {smallest!r} appears at {sizes[smallest]:.1f} pt when the {width_px}-px PNG is shown "
        f"{READER_PX} px wide; at least {MIN_PT} pt"
    )


@pytest.mark.parametrize("name", list(FIGURES))
def test_no_empty_panels_and_every_axis_titled(name):
    fig = FIGURES[name]()
    fig.canvas.draw()
    axes = _data_axes(fig)
    assert axes
    for ax in axes:
        assert ax.get_visible() and ax.has_data(), f"{name}: an empty panel ({ax.get_title()!r})"
        # a y axis shared with a titled panel of the same row may leave its title to that panel
        y_titled = ax.get_ylabel().strip() or any(
            other.get_ylabel().strip() and ax.get_shared_y_axes().joined(ax, other) for other in axes
        )
        assert ax.get_xlabel().strip() and y_titled, f"{name}: untitled axis in {ax.get_title()!r}"
    for cbar_ax in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert cbar_ax.get_ylabel().strip() or cbar_ax.get_title().strip(), f"{name}: colour bar without a title"


def test_panel_grids_follow_the_number_of_runs():
    assert len(_data_axes(FIGURES["heatmap_panels"]())) == 4  # 2 × 2, no empty quadrant
    bars = FIGURES["selected_layer_bars"]()
    axes = _data_axes(bars)
    assert len(axes) == 6
    rows = {round(ax.get_position().y0, 3) for ax in axes}
    assert len(rows) == 2, "six runs of two models × three tasks: two rows of three"
    assert len(_data_axes(FIGURES["transfer_steps"]())) == len(TASKS)
    assert len(_data_axes(FIGURES["norm_curves"]())) == len(DEPTHS)


@pytest.mark.parametrize("name", ["norm_curves", "layer_share_curves", "selected_layer_bars"])
def test_models_of_different_depth_keep_their_own_layer_axis(name):
    fig = FIGURES[name]()
    fig.canvas.draw()
    by_depth = {}
    for ax in _data_axes(fig):
        depth = next(n for m, n in DEPTHS.items() if ax.get_title().startswith(m))
        by_depth.setdefault(depth, []).append(ax.get_xlim())
    for depth, limits in by_depth.items():
        for low, high in limits:
            assert low <= 0 and depth - 1 <= high < depth + 1, (
                f"{name}: a {depth}-layer panel spans x in [{low:.1f}, {high:.1f}]; expected its own 0..{depth - 1}"
            )


# ---- undefined cells -------------------------------------------------------------------------


def _cell_pixels(fig: plt.Figure, ax: plt.Axes, row: int, col: int) -> np.ndarray:
    """RGB pixels (0-255) of the middle 60 % of cell (row, col) of an image drawn on ``ax``."""
    fig.canvas.draw()
    buffer = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = buffer.shape[0]
    (x0, y0), (x1, y1) = ax.transData.transform([(col - 0.3, row - 0.3), (col + 0.3, row + 0.3)])
    xs = slice(round(min(x0, x1)), round(max(x0, x1)))
    ys = slice(height - round(max(y0, y1)), height - round(min(y0, y1)))
    return buffer[ys, xs].reshape(-1, 3)


@pytest.mark.parametrize("cmap", ["viridis", "magma"])
def test_nan_cells_are_drawn_in_the_undefined_colour(cmap):
    m = cka_matrix(13, constant_layer=0)
    m[5, 6] = m[6, 5] = 0.0  # the low end of the colour map must not look undefined
    fig = plots.heatmap_panels(
        {"mpnet / sentiment": m, "smollm2 / pos": cka_matrix(31)},
        title="t",
        xlabel="layer",
        ylabel="layer",
        cbar_label="CKA",
        vmin=0.0,
        vmax=1.0,
        cmap=cmap,
    )
    ax = _data_axes(fig)[0]
    face = np.array(to_rgba(plots.UNDEFINED_COLOR)[:3]) * 255
    edge = np.array(to_rgba(plots.UNDEFINED_EDGE)[:3]) * 255
    for row, col in [(0, 0), (0, 7), (9, 0)]:
        pixels = _cell_pixels(fig, ax, row, col)
        assert len(pixels) > 20
        is_face = np.all(np.abs(pixels - face) <= 2, axis=1)
        assert is_face.mean() >= 0.5, f"{cmap}: NaN cell ({row}, {col}) is mostly {np.median(pixels, 0)}, not {face}"
        grey = np.ptp(pixels, axis=1) <= 3  # hatch lines blend face and edge, both neutral grey
        between = np.all((pixels >= edge.min() - 3) & (pixels <= face.max() + 3), axis=1)
        assert np.all(grey & between), f"{cmap}: NaN cell ({row}, {col}) holds non-grey pixels"
    finite = _cell_pixels(fig, ax, 5, 6)
    expected = np.array(plt.get_cmap(cmap)(0.0)[:3]) * 255
    assert np.all(np.abs(np.median(finite, axis=0) - expected) <= 3), f"{cmap}: the 0.0 cell is not the map's low end"
    assert not np.any(np.all(np.abs(finite - face) <= 2, axis=1)), f"{cmap}: a finite cell looks undefined"
    assert any(plots.UNDEFINED_LABEL in t.get_text() for t in visible_texts(fig)), "no legend entry for NaN cells"


def test_no_undefined_note_without_nan_cells():
    fig = FIGURES["heatmap_panels_cross"]()
    assert not any(plots.UNDEFINED_LABEL in t.get_text() for t in visible_texts(fig))


# ---- cell values only where they fit ---------------------------------------------------------


def test_cell_values_written_only_where_they_fit():
    fig = FIGURES["heatmap_panels"]()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, (label, m) in zip(_data_axes(fig), cka_runs().items()):
        values = [t for t in ax.texts if t.get_text().strip()]
        cell_px = ax.get_window_extent().width / m.shape[1]
        if m.shape[0] == 13:
            assert len(values) == np.isfinite(m).sum(), f"{label}: 13 × 13 cells are big enough for their values"
            assert {t.get_text() for t in values} >= {format(v, ".2f") for v in m[np.isfinite(m)][:5]}
            widest = max(t.get_window_extent(renderer).width for t in values)
            assert widest <= cell_px, f"{label}: a value {widest:.0f} px wide overflows its {cell_px:.0f}-px cell"
        else:
            assert not values, f"{label}: 31 × 31 cells are too small for 8-point values"


# ---- log axes and names ----------------------------------------------------------------------


def test_spans_decades():
    assert plots.spans_decades([9, 9000])
    assert plots.spans_decades([0.5, 100])
    assert not plots.spans_decades([3, 200])
    assert not plots.spans_decades([0, np.nan, 5, 10])


@pytest.mark.parametrize(
    ("name", "axis"), [("neuron_curves", "x"), ("transfer_steps", "x"), ("norm_curves", "y"), ("span_bars", "y")]
)
def test_log_axis_where_values_span_two_decades(name, axis):
    for ax in _data_axes(FIGURES[name]()):
        scale = ax.get_xscale() if axis == "x" else ax.get_yscale()
        assert scale == "log", f"{name}: {axis} axis is {scale} though the values span ≥ 2 decades"


def test_linear_axis_where_values_span_less():
    fig = plots.norm_curves(norms_table(scale_smollm2=20.0), title="norms within one decade")
    assert {ax.get_yscale() for ax in _data_axes(fig)} == {"linear"}


def test_legends_use_the_names_of_the_text():
    texts = {t.get_text() for t in visible_texts(FIGURES["neuron_curves"]())}
    assert {"LCA", "random", "F statistic"} <= texts
    assert any(t.startswith("bottom") for t in texts)
    assert not any("mean_difference" in t or t == "lca" for t in texts)


def test_missing_column_names_what_is_expected():
    with pytest.raises(ValueError, match=r"norm_curves needs .*mean_norm"):
        plots.norm_curves(norms_table().drop(columns="mean_norm"), title="t")


def test_cc_sweep_curves_draw_every_run_with_its_band_and_a_log_count_axis():
    table = cc_sweep_table()
    fig = FIGURES["cc_sweep_curves"]()
    left, right = _data_axes(fig)
    runs = table.groupby(["model", "task"]).ngroups
    assert left.get_yscale() == "log"  # 100% down to 0.15%
    assert len(left.get_lines()) == runs + 1  # one per run and the paper's reference
    assert len(right.collections) == runs  # one interval band per run
    first = right.get_lines()[0]
    np.testing.assert_allclose(first.get_xdata()[0], 0.0)  # the oracle sits at t = 0
    assert len(first.get_xdata()) == 10  # oracle + nine thresholds; the constant row has no probe
    ratio = FIGURES["cc_sweep_curves_ratio"]()
    assert any("tolerance 97%" in t.get_text() for t in visible_texts(ratio))
    with pytest.raises(ValueError, match="cc_sweep_curves needs .*test_low"):
        plots.cc_sweep_curves(table.drop(columns="test_low"), title="t")

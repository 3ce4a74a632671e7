"""The interactive explorer of notebook 05: widgets over the cached activation stores and results.

Start reading at ``Explorer``: ``Explorer().widget`` is the whole app (shown by
``notebooks/05_explore.ipynb``, in JupyterLab or as a page with ``make explore``). Under it:

- ``find_stores`` lists the finished train stores in the cache (what notebook 01 made);
- ``prepare(model, task)`` reads one of them and precomputes, once per store, what every interaction
  needs: the neuron correlation matrix (a float32 memory map), its average-linkage tree, layer CKA and
  every neuron's standard deviation, cached on disk under ``cache_dir()/explorer``; it also reads the
  transfer result of notebook 04 (LCA ranks come from its oracle probe's weights);
- the ``Explorer`` methods ``render_*`` draw one panel each and return what they drew (HTML text and
  PNG bytes), so that tests call them directly; widget events only call them.

Whatever is missing (no store, no transfer result) is reported by a ``MissingInput`` whose message
names the notebook or command that makes it, and the panel shows that message instead of failing.
Every neuron is addressed as (layer, unit), layer 0 the embeddings, global index ``layer * hidden + unit``.
"""

from __future__ import annotations

import html
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import inspection
from .activations import ActivationStore, StoreError
from .clustering import NeuronClusters, cluster_neurons, cluster_sweep, linkage_tree
from .moments import feature_stats
from .paths import cache_dir, resolve
from .selection import TransferResult
from .similarity import gram_statistics

__all__ = [
    "write_neuron_lists",
    "MissingInput",
    "STORE_HINT",
    "TRANSFER_HINT",
    "find_stores",
    "find_store",
    "Prepared",
    "prepare",
    "Explorer",
]

STORE_HINT = (
    "run notebooks/01_activation_extraction.ipynb (make quick: MiniLM on small budgets; "
    "make reproduce: MPNet and SmolLM2)"
)
TRANSFER_HINT = (
    "run notebooks/04_feature_selected_transfer.ipynb (make quick writes build/quick/figures/transfer; "
    "make reproduce writes figures/transfer)"
)
DEFAULT_FIGURES_DIRS = ("figures", "build/quick/figures")
CACHE_VERSION = 3
THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""Clustering thresholds precomputed once per store (the slider's steps); others are cut on demand."""


class MissingInput(LookupError):
    """Something the explorer reads has not been made yet; the message says what makes it."""


# ---------------------------------------------------------------------------------------------
# finding and preparing stores


def _store_root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else cache_dir() / "activations"


def find_stores(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The finished train stores under ``root`` (default ``cache_dir()/activations``).

    Returns
    -------
    stores : DataFrame
        Columns ``model, task, level, n_items, n_layers, hidden, path``; one row per store, sorted by
        model, task and then the most items first.
    """
    rows = []
    base = _store_root(root)
    for meta_path in sorted(base.glob("*/*-train-*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not meta.get("complete") or meta.get("split") != "train":
            continue
        rows.append(
            {
                "model": meta.get("model", meta_path.parent.parent.name),
                "task": meta.get("task"),
                "level": meta.get("level"),
                "n_items": int(meta["n_items"]),
                "n_layers": int(meta["n_layers"]),
                "hidden": int(meta["hidden"]),
                "path": str(meta_path.parent),
            }
        )
    table = pd.DataFrame(rows, columns=["model", "task", "level", "n_items", "n_layers", "hidden", "path"])
    return table.sort_values(["model", "task", "n_items"], ascending=[True, True, False], kind="stable").reset_index(
        drop=True
    )


def find_store(model: str, task: str, *, root: str | os.PathLike | None = None) -> Path:
    """Folder of the train store of (model, task) with the most items; ``MissingInput`` when there is none."""
    stores = find_stores(root)
    hit = stores[(stores.model == model) & (stores.task == task)]
    if hit.empty:
        raise MissingInput(f"no activation store of {model} · {task} under {_store_root(root)}: {STORE_HINT}.")
    return Path(hit.iloc[0]["path"])


@dataclass
class Prepared:
    """One (model, task) train store with everything precomputed for the explorer.

    Attributes
    ----------
    model, task : str
    store : ActivationStore
        The train store, shape (n_items, n_layers, hidden).
    corr : ndarray of shape (n_features, n_features)
        Neuron correlations, float32 (a memory map of the cached file).
    linkage : ndarray of shape (n_features - 1, 4)
        Average-linkage tree on ``1 - |r|``.
    cka : ndarray of shape (n_layers, n_layers)
        Linear CKA between layers.
    std : ndarray of shape (n_features,)
        Standard deviation of every neuron over the store (ddof 0, ``moments.feature_stats``: what the
        probes standardise with).
    transfer : TransferResult or None
        Notebook 04's result for (model, task), when it exists and fits the store's shape.
    transfer_note : str
        Where the transfer result came from, or the message saying what makes it.
    lca : DataFrame or None
        ``inspection.lca_table`` of the transfer result's oracle probe (weights standardised with ``std``).
    seconds : float
        Time ``prepare`` took (reading a cached precomputation is fast; making it is not).
    """

    model: str
    task: str
    store: ActivationStore
    corr: np.ndarray
    linkage: np.ndarray
    cka: np.ndarray
    std: np.ndarray
    transfer: TransferResult | None
    transfer_note: str
    lca: pd.DataFrame | None
    seconds: float = 0.0
    _clusters: dict = field(default_factory=dict, repr=False)

    @property
    def n_layers(self) -> int:
        return self.store.n_layers

    @property
    def hidden(self) -> int:
        return self.store.hidden

    @property
    def level(self) -> str:
        return str(self.store.meta.get("level", "word"))

    def clusters(self, threshold: float) -> NeuronClusters:
        """``clustering.cluster_neurons`` at ``threshold`` from the cached tree (kept per threshold)."""
        key = round(float(threshold), 6)
        if key not in self._clusters:
            self._clusters[key] = cluster_neurons(self.corr, key, linkage=self.linkage)
        return self._clusters[key]


def _precompute(store: ActivationStore, folder: Path, *, progress: bool) -> None:
    """One pass over the store: correlation, CKA and std; then the linkage tree; written atomically."""
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    acc = gram_statistics(store, progress=progress)
    np.save(tmp / "cka.npy", acc.block_similarity())
    # the probe's own statistics (moments.feature_stats, float64 and shifted): raw weights x this std give
    # back its standardised weights exactly, even for near-constant neurons the Gram's float32 sums lose
    np.save(tmp / "std.npy", feature_stats(store.activations)[1].reshape(-1))
    corr = acc.correlation(warn=False)
    del acc
    np.save(tmp / "corr.npy", corr)
    tree = linkage_tree(corr)
    np.save(tmp / "linkage.npy", tree)
    sweep = cluster_sweep(corr, THRESHOLDS, linkage=tree)
    np.save(tmp / "cluster_labels.npy", np.stack([c.labels for c in sweep]).astype(np.int32))
    np.savez(tmp / "representatives.npz", *[c.representatives for c in sweep])
    (tmp / "meta.json").write_text(
        json.dumps(
            {
                "cache_version": CACHE_VERSION,
                "store": str(store.path),
                "activations_sha256": store.meta.get("activations_sha256"),
            }
        )
    )
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _find_transfer(
    model: str, task: str, n_features: int, figures_dirs: Sequence[str | os.PathLike]
) -> tuple[TransferResult | None, str]:
    """The first saved transfer result of (model, task) in ``figures_dirs`` that fits, and a note."""
    tried = []
    for d in figures_dirs:
        # notebook 04 saves one result per seed ("<model>-<task>-seed0", ...); older runs saved "<model>-<task>"
        for name in (f"{model}-{task}-seed0", f"{model}-{task}"):
            path = resolve(d) / "transfer" / name
            tried.append(str(path))
            if (path / "result.json").exists():
                result = TransferResult.load(path)
                if result.neurons_total == n_features:
                    return result, f"transfer result and LCA ranks from {path}"
    return None, f"no transfer result of {model} · {task} (looked in {', '.join(tried)}): {TRANSFER_HINT}."


_PREPARED: dict[tuple, Prepared] = {}


def prepare(
    model: str,
    task: str,
    *,
    root: str | os.PathLike | None = None,
    figures_dirs: Sequence[str | os.PathLike] = DEFAULT_FIGURES_DIRS,
    cache_root: str | os.PathLike | None = None,
    progress: bool = False,
) -> Prepared:
    """Open the (model, task) train store and load (or make, once) its precomputation.

    Parameters
    ----------
    model, task : str
    root : path, optional
        Where stores live (default ``cache_dir()/activations``).
    figures_dirs : sequence of paths
        Where notebook 04's ``transfer/<model>-<task>`` results are looked for, in order (relative
        paths are taken from the repository root).
    cache_root : path, optional
        Where the precomputation is kept (default ``cache_dir()/explorer``); keyed by the store's
        folder and checksum, so a rebuilt store is precomputed again.
    progress : bool

    Returns
    -------
    prepared : Prepared
        Kept in memory for the process (the last two).

    Raises
    ------
    MissingInput
        No store of (model, task): the message names notebook 01.
    """
    key = (model, task, str(root), tuple(str(d) for d in figures_dirs), str(cache_root))
    if key in _PREPARED:
        return _PREPARED[key]
    t0 = time.perf_counter()
    path = find_store(model, task, root=root)
    try:
        store = ActivationStore.open(path, verify=False)
    except StoreError as exc:
        raise MissingInput(f"the store at {path} is unusable ({exc}): {STORE_HINT}.") from exc
    digest = str(store.meta.get("activations_sha256", "nosum"))[:16]
    base = Path(cache_root) if cache_root is not None else cache_dir() / "explorer"
    folder = base / model.replace("/", "__") / f"{path.name}-{digest}"
    meta_file = folder / "meta.json"
    if not meta_file.exists() or json.loads(meta_file.read_text()).get("cache_version") != CACHE_VERSION:
        _precompute(store, folder, progress=progress)
    corr = np.load(folder / "corr.npy", mmap_mode="r")
    labels = np.load(folder / "cluster_labels.npy").astype(np.int64)
    with np.load(folder / "representatives.npz") as z:
        reps = [z[f"arr_{k}"] for k in range(len(THRESHOLDS))]
    sweep = {t: NeuronClusters(t, labels[k], reps[k]) for k, t in enumerate(THRESHOLDS)}
    std = np.load(folder / "std.npy")
    transfer, note = _find_transfer(model, task, store.n_layers * store.hidden, figures_dirs)
    lca = None
    if transfer is not None and transfer.oracle is not None:
        scale = np.where(std > 0, std, 1.0)
        lca = inspection.lca_table(
            np.atleast_2d(transfer.oracle.coef_) * scale,
            classes=transfer.oracle.classes_ if transfer.oracle.classes_ is not None else None,
        )
    prepared = Prepared(
        model,
        task,
        store,
        corr,
        np.load(folder / "linkage.npy"),
        np.load(folder / "cka.npy"),
        std,
        transfer,
        note,
        lca,
        _clusters=sweep,
    )
    if len(_PREPARED) >= 2:
        _PREPARED.pop(next(iter(_PREPARED)))
    _PREPARED[key] = prepared
    prepared.seconds = time.perf_counter() - t0
    return prepared


def write_neuron_lists(prepared: Prepared, folder: str | os.PathLike) -> list[Path]:
    """Write the neuron lists known for one (model, task) as tidy CSV (``inspection.NEURON_LIST_COLUMNS``).

    ``<model>-<task>-lca.csv``: every neuron in the LCA order of notebook 04's oracle probe (weights
    standardised with the store's std); ``<model>-<task>-transfer.csv``: the neurons the transfer
    pipeline kept, ranked by LCA of its final probe. Lists whose source is missing are not written.

    Parameters
    ----------
    prepared : Prepared
    folder : path

    Returns
    -------
    paths : list of Path
        The files written (empty without a transfer result).
    """
    d, folder, out = prepared, Path(folder), []
    stem = f"{d.model}-{d.task}"
    if d.lca is not None:
        table = inspection.neuron_list(
            d.lca.index.to_numpy(),
            model=d.model,
            task=d.task,
            hidden=d.hidden,
            ranks=d.lca["rank"],
            classes=d.lca["classes"].tolist(),
            weights=d.lca["weight"],
        )
        out.append(inspection.write_neuron_list(table, folder / f"{stem}-lca.csv"))
    if d.transfer is not None:
        table = inspection.transfer_neuron_list(
            d.transfer, model=d.model, task=d.task, scale=np.where(d.std > 0, d.std, 1.0)
        )
        out.append(inspection.write_neuron_list(table, folder / f"{stem}-transfer.csv"))
    return out


# ---------------------------------------------------------------------------------------------
# drawing helpers (matplotlib figures turned into PNG bytes; no pyplot state left behind)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _table_html(table: pd.DataFrame, *, digits: int = 3) -> str:
    return table.to_html(
        index=False, escape=True, float_format=lambda x: f"{x:.{digits}f}", border=0, classes="explorer-table"
    )


def _message(text: str) -> str:
    return f'<div class="explorer-message" style="color:#a33">{html.escape(text)}</div>'


def _parse_neurons(text: str, *, n_layers: int, hidden: int) -> list[tuple[int, int]]:
    """``"3:17, 5:200"`` -> [(3, 17), (5, 200)]; ValueError naming the bad item."""
    out = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            layer, unit = (int(x) for x in item.split(":"))
            inspection.neuron_index(layer, unit, hidden=hidden, n_layers=n_layers)
        except ValueError as exc:
            raise ValueError(f"could not read neuron {item!r}: write layer:unit, e.g. 3:17 ({exc})") from exc
        out.append((layer, unit))
    return out


# ---------------------------------------------------------------------------------------------
# the app


class Explorer:
    """Widgets over one (model, task) at a time: layers, clusters, one neuron, your own sentence.

    Parameters
    ----------
    root : path, optional
        Where activation stores live (default ``cache_dir()/activations``).
    figures_dirs : sequence of paths
        Where notebook 04's transfer results are looked for.
    cache_root : path, optional
        Where precomputations are kept.
    model, task : str, optional
        Start on this pair (default: the first store found, MPNet · POS when it exists).

    Attributes
    ----------
    widget : ipywidgets.VBox
        The app; display it.
    data : Prepared or None
        The current (model, task); None when there is nothing to show (``status`` says why).
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike | None = None,
        figures_dirs: Sequence[str | os.PathLike] = DEFAULT_FIGURES_DIRS,
        cache_root: str | os.PathLike | None = None,
        model: str | None = None,
        task: str | None = None,
    ):
        import ipywidgets as w

        self._root, self._figures_dirs, self._cache_root = root, tuple(figures_dirs), cache_root
        self.stores = find_stores(root)
        self.data: Prepared | None = None
        self._loaded_model: Any = None
        models = sorted(self.stores.model.unique().tolist())
        if model is None and models:
            model = "mpnet" if "mpnet" in models else models[0]
        self.model = w.Dropdown(options=models, value=model if model in models else None, description="model")
        self.task = w.Dropdown(options=[], description="task")
        self.threshold = w.FloatSlider(
            value=0.3,
            min=0.1,
            max=0.9,
            step=0.1,
            description="threshold t",
            readout_format=".1f",
            continuous_update=False,
        )
        self.layer = w.IntSlider(value=0, min=0, max=0, description="layer", continuous_update=False)
        self.unit = w.BoundedIntText(value=0, min=0, max=0, description="unit")
        self.layer_i = w.Dropdown(options=[0], description="CKA row")
        self.layer_j = w.Dropdown(options=[0], description="CKA column")
        self.cluster = w.Dropdown(options=[], description="cluster", layout=w.Layout(width="420px"))
        self.sentence = w.Text(
            value="The quick brown fox jumps over the lazy dog .",
            description="sentence",
            layout=w.Layout(width="640px"),
        )
        self.extra = w.Text(value="", placeholder="more neurons, e.g. 3:17, 5:200", description="neurons")
        self.run_button = w.Button(description="run sentence", button_style="primary")
        self.status = w.HTML()
        self.cka_image, self.pair_image, self.cluster_image, self.card_image = (
            w.Image(
                format="png", layout=w.Layout(width=f"{px}px", height="auto", flex="0 0 auto", object_fit="contain")
            )
            for px in (380, 380, 320, 440)
        )
        self.pair_html, self.cluster_html, self.card_html, self.sentence_html = (w.HTML() for _ in range(4))
        layers_tab = w.VBox(
            [
                w.HTML(
                    "<b>Layer × layer linear CKA</b> — pick a cell (row, column) to see the "
                    "neuron correlations of that layer pair."
                ),
                w.HBox([self.layer_i, self.layer_j]),
                w.HBox([self.cka_image, self.pair_image]),
                self.pair_html,
            ]
        )
        clusters_tab = w.VBox(
            [
                w.HTML(
                    "<b>Clusters</b> at the threshold t (distance 1 − |r|) with a member in the "
                    "chosen layer, largest first."
                ),
                self.cluster,
                w.HBox([self.cluster_html, self.cluster_image], layout=w.Layout(align_items="flex-start")),
            ]
        )
        card_tab = w.VBox(
            [self.unit, w.HBox([self.card_html, self.card_image], layout=w.Layout(align_items="flex-start"))]
        )
        sentence_tab = w.VBox([w.HBox([self.sentence, self.run_button]), self.extra, self.sentence_html])
        self.tabs = w.Tab(children=[layers_tab, clusters_tab, card_tab, sentence_tab])
        for i, name in enumerate(["Layers (CKA)", "Clusters", "Neuron card", "Your sentence"]):
            self.tabs.set_title(i, name)
        self.widget = w.VBox(
            [
                w.HTML("<h3>Redundancy explorer</h3>"),
                w.HBox([self.model, self.task]),
                w.HBox([self.threshold, self.layer]),
                self.status,
                self.tabs,
            ]
        )
        self.model.observe(self._on_model, names="value")
        self.task.observe(self._on_task, names="value")
        self.threshold.observe(lambda _: self._refresh_clusters(), names="value")
        self.layer.observe(lambda _: self._refresh_clusters(), names="value")
        self.unit.observe(lambda _: self.render_card(), names="value")
        self.layer_i.observe(lambda _: self.render_cka(), names="value")
        self.layer_j.observe(lambda _: self.render_cka(), names="value")
        self.cluster.observe(lambda _: self.render_cluster(), names="value")
        self.run_button.on_click(lambda _: self.render_sentence())
        if self.model.value is None:
            self.status.value = _message(f"no activation store under {_store_root(root)}: {STORE_HINT}.")
        else:
            self._on_model()
            if task is not None and task in self.task.options:
                self.task.value = task

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- selection ------------------------------------------------------------------------------

    def _on_model(self, _: Any = None) -> None:
        tasks = sorted(self.stores[self.stores.model == self.model.value].task.unique().tolist())
        preferred = "pos" if "pos" in tasks else (tasks[0] if tasks else None)
        old = self.task.value
        self.task.options = tasks
        self.task.value = preferred
        if old == preferred:
            self._on_task()

    def _on_task(self, _: Any = None) -> str:
        """Load (model, task) and redraw every panel; returns the status text."""
        self.data = None
        if self.model.value is None or self.task.value is None:
            self.status.value = _message(f"no activation store selected: {STORE_HINT}.")
            return self.status.value
        try:
            self.status.value = f"<i>preparing {html.escape(self.model.value)} · {html.escape(self.task.value)} …</i>"
            self.data = prepare(
                self.model.value,
                self.task.value,
                root=self._root,
                figures_dirs=self._figures_dirs,
                cache_root=self._cache_root,
            )
        except MissingInput as exc:
            self.status.value = _message(str(exc))
            return self.status.value
        d = self.data
        self.status.value = (
            f"{d.model} · {d.task}: {len(d.store):,} {d.level}s × {d.n_layers} layers × {d.hidden} "
            f"units = {d.n_layers * d.hidden:,} neurons (store {html.escape(d.store.path.name)}); "
            f"{html.escape(d.transfer_note)}"
        )
        with self.layer.hold_trait_notifications(), self.unit.hold_trait_notifications():
            self.layer.max = d.n_layers - 1
            self.unit.max = d.hidden - 1
        self.layer_i.options = list(range(d.n_layers))
        self.layer_j.options = list(range(d.n_layers))
        self.render_cka()
        self._refresh_clusters()
        return self.status.value

    # -- panels ---------------------------------------------------------------------------------

    def render_cka(self) -> str:
        """The CKA heatmap (selected cell outlined) and the neuron |r| of layer pair (row, column)."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        d = self.data
        if d is None:
            self.pair_html.value = self.status.value
            return self.pair_html.value
        i, j = int(self.layer_i.value or 0), int(self.layer_j.value or 0)
        fig, ax = plt.subplots(figsize=(4.6, 4))
        im = ax.imshow(d.cka, vmin=0, vmax=1, cmap="viridis")
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set(title=f"{d.model} · {d.task}: layer CKA", xlabel="layer (column)", ylabel="layer (row)")
        ticks = np.arange(0, d.n_layers, 1 if d.n_layers <= 16 else 4)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        fig.colorbar(im, ax=ax, label="linear CKA")
        self.cka_image.value = _png(fig)
        h = d.hidden
        block = np.abs(np.asarray(d.corr[i * h : (i + 1) * h, j * h : (j + 1) * h], dtype=np.float32))
        fig, ax = plt.subplots(figsize=(4.6, 4))
        im = ax.imshow(block, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
        ax.set(title=f"|r| of neurons: layer {i} × layer {j}", xlabel=f"unit in layer {j}", ylabel=f"unit in layer {i}")
        fig.colorbar(im, ax=ax, label="|r|")
        self.pair_image.value = _png(fig)
        work = block.copy()
        best_match = block.copy()
        if i == j:
            work[np.tril_indices(h)] = -1  # each pair once, no self-pairs
            np.fill_diagonal(best_match, 0.0)
        top = np.argpartition(-work, 10, axis=None)[:10]  # the 10 largest, then sorted (ties: lower index)
        flat = top[np.lexsort((top, -work.ravel()[top]))]
        a, b = np.unravel_index(flat, work.shape)
        best = pd.DataFrame(
            {"neuron A": [f"{i}:{x}" for x in a], "neuron B": [f"{j}:{y}" for y in b], "|r|": block[a, b]}
        )
        self.pair_html.value = (
            f"<b>CKA(layer {i}, layer {j}) = {d.cka[i, j]:.3f}</b>; mean |r| over the "
            f"{h}×{h} unit pairs {block.mean():.3f}; mean over the units of layer {i} of their best |r| in "
            f"layer {j}{' (other units)' if i == j else ''}: {best_match.max(axis=1).mean():.3f}. Most correlated pairs:"
            + _table_html(best)
        )
        return self.pair_html.value

    def _refresh_clusters(self) -> None:
        """New threshold or layer: refill the cluster list, redraw the cluster and the card."""
        d = self.data
        if d is None:
            return
        cl = d.clusters(self.threshold.value)
        h, layer = d.hidden, int(self.layer.value)
        in_layer = np.unique(cl.labels[layer * h : (layer + 1) * h])
        sizes = cl.sizes()[in_layer]
        order = np.lexsort((in_layer, -sizes))
        shown = in_layer[order][:200]
        # (cluster, layer) pairs of every neuron of the shown clusters, once each
        mask = np.isin(cl.labels, shown)
        pairs = np.unique(np.stack([cl.labels[mask], np.flatnonzero(mask) // h]), axis=1)
        layers_of = {int(c): pairs[1, pairs[0] == c] for c in shown}
        options = [
            (f"cluster {c}: {cl.sizes()[c]} neuron(s), layers {', '.join(map(str, layers_of[int(c)]))}", int(c))
            for c in shown
        ]
        self.cluster.options = options
        self.cluster.value = options[0][1] if options else None
        self.render_cluster()
        self.render_card()

    def render_cluster(self) -> str:
        """The chosen cluster's members (layer, unit) with |r| and the representative, and its |r| matrix."""
        import matplotlib.pyplot as plt

        d = self.data
        if d is None or self.cluster.value is None:
            self.cluster_html.value = self.status.value if d is None else _message("no cluster to show")
            return self.cluster_html.value
        cl = d.clusters(self.threshold.value)
        first = int(np.flatnonzero(cl.labels == self.cluster.value)[0])
        view = inspection.cluster_members(d.corr, first, hidden=d.hidden, clusters=cl)
        kept = d.n_layers * d.hidden - int(cl.redundant().sum())
        table = view.members[["layer", "unit", "representative", "mean_abs_r"]].head(50)
        self.cluster_html.value = (
            f"t = {cl.threshold:.2f}: {cl.n_clusters:,} clusters, {kept:,} neurons kept of "
            f"{cl.n_features:,}. This cluster: {view.size} neuron(s), representative "
            f"{view.representative // d.hidden}:{view.representative % d.hidden}" + _table_html(table)
        )
        m = min(view.size, 40)
        fig, ax = plt.subplots(figsize=(3.8, 3.3))
        im = ax.imshow(view.abs_r[:m, :m], vmin=0, vmax=1, cmap="magma")
        names = [f"{r.layer}:{r.unit}" for r in view.members.head(m).itertuples()]
        ax.set_xticks(range(m), names, rotation=90, fontsize=6)
        ax.set_yticks(range(m), names, fontsize=6)
        ax.set_title("pairwise |r| of the members")
        fig.colorbar(im, ax=ax)
        self.cluster_image.value = _png(fig)
        return self.cluster_html.value

    def render_card(self) -> str:
        """The neuron card of (layer, unit): activation by class, top/bottom items, cluster, LCA rank."""
        import matplotlib.pyplot as plt

        d = self.data
        if d is None:
            self.card_html.value = self.status.value
            return self.card_html.value
        layer, unit = int(self.layer.value), int(self.unit.value)
        prof = inspection.neuron_profile(
            d.store, layer, unit, lca=d.lca, corr=d.corr, clusters=d.clusters(self.threshold.value)
        )
        values = inspection.neuron_values(d.store, layer, unit)
        if d.lca is not None:
            chosen_for = (
                f"selected for class(es) {html.escape(', '.join(map(str, prof.classes)))}"
                if prof.classes
                else "no p of LCA's grid selects it (ranked by its weight alone)"
            )
            strongest = ", ".join(map(str, d.lca.loc[prof.neuron, "strongest"]))
            lca_text = (
                f"LCA rank <b>{prof.lca_rank:,}</b> of {d.n_layers * d.hidden:,} (oracle probe of notebook 04), "
                f"{chosen_for}; largest |w| for {html.escape(strongest)}; Σ|w| = {prof.weight:.3g}"
            )
            if d.transfer is not None:
                kept = prof.neuron in set(d.transfer.neurons.tolist())
                lca_text += f"; {'kept' if kept else 'not kept'} by the transfer pipeline"
        else:
            lca_text = _message(f"LCA rank unknown: {d.transfer_note}")
        others = prof.cluster.members[prof.cluster.members.neuron != prof.neuron].head(8)
        members = (
            ", ".join(
                f"{r.layer}:{r.unit}{' (rep.)' if r.representative else ''} |r| {r.abs_r:.2f}"
                for r in others.itertuples()
            )
            or "none (a singleton)"
        )
        rep = prof.cluster.representative
        top = inspection.top_items(d.store, layer, unit, k=8)
        bottom = inspection.top_items(d.store, layer, unit, k=5, bottom=True)
        text_col = "context" if "context" in top.columns else "text"
        self.card_html.value = (
            f"<h4>neuron {layer}:{unit} (index {prof.neuron:,})</h4><p>{lca_text}</p>"
            f"<p>cluster at t = {self.threshold.value:.2f}: {prof.cluster.size} neuron(s), representative "
            f"{rep // d.hidden}:{rep % d.hidden}; others: {html.escape(members)}</p>"
            "<b>highest activations</b>"
            + _table_html(top[["activation", "label", text_col]])
            + "<b>lowest activations</b>"
            + _table_html(bottom[["activation", "label", text_col]])
            + "<b>by class</b> (highest mean first)"
            + _table_html(prof.by_class.head(12))
        )
        classes = prof.by_class.sort_values("count", ascending=False, kind="stable")["class"].head(6).tolist()
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        bins = np.histogram_bin_edges(values, bins=40)
        labels = np.asarray(d.store.labels)
        for c in classes:
            ax.hist(values[labels == c], bins=bins, histtype="step", linewidth=1.5, label=str(c))
        ax.hist(
            values[~np.isin(labels, classes)], bins=bins, histtype="stepfilled", alpha=0.2, color="grey", label="other"
        )
        ax.set(title=f"neuron {layer}:{unit}: activation by class", xlabel="activation", ylabel="items")
        ax.legend(fontsize=7, ncol=2)
        self.card_image.value = _png(fig)
        return self.card_html.value

    def render_sentence(self) -> str:
        """Run the sentence through the model; the card's neuron, its cluster and the extra neurons, word by word."""
        d = self.data
        if d is None:
            self.sentence_html.value = self.status.value
            return self.sentence_html.value
        words = self.sentence.value.split()
        if not words:
            self.sentence_html.value = _message("type a sentence first (words separated by spaces)")
            return self.sentence_html.value
        try:
            extra = _parse_neurons(self.extra.value, n_layers=d.n_layers, hidden=d.hidden)
        except ValueError as exc:
            self.sentence_html.value = _message(str(exc))
            return self.sentence_html.value
        from .activations import extract
        from .models import load_model

        if self._loaded_model is None or self._loaded_model[0] != d.model:
            self._loaded_model = (d.model, load_model(d.model, device="cpu"))
        loaded = self._loaded_model[1]
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one short sentence: threads gain nothing and stall on a busy machine
        try:
            acts = extract(
                loaded,
                [words],
                level="word",
                aggregation=d.store.meta.get("aggregation", "last") if d.level == "word" else "last",
                progress=False,
            )  # (n_words, n_layers, hidden)
        finally:
            torch.set_num_threads(threads)
        layer, unit = int(self.layer.value), int(self.unit.value)
        cl = d.clusters(self.threshold.value)
        idx = inspection.neuron_index(layer, unit, hidden=d.hidden)
        members = np.flatnonzero(cl.labels == cl.labels[idx])
        chosen = [(layer, unit)] + [(int(m // d.hidden), int(m % d.hidden)) for m in members if m != idx][:7] + extra
        rows = []
        for lay, un in dict.fromkeys(chosen):
            v = np.asarray(acts[:, lay, un], dtype=np.float64)
            g = lay * d.hidden + un
            mean = float(np.asarray(d.store.activations[:, lay, un], dtype=np.float64).mean())
            z = (v - mean) / (d.std[g] if d.std[g] > 0 else 1.0)
            cells = "".join(
                f'<td style="background:{_colour(zi)};padding:2px 6px" title="z = {zi:.2f}">{vi:.2f}</td>'
                for vi, zi in zip(v, z)
            )
            rows.append(f"<tr><th>{lay}:{un}</th>{cells}</tr>")
        head = "".join(f"<th>{html.escape(wd)}</th>" for wd in words)
        self.sentence_html.value = (
            f"<p>{d.model}, word vectors ({loaded.n_layers} layers); colour: standard scores against the "
            f"{d.task} train store (red high, blue low).</p>"
            f'<table class="explorer-sentence"><tr><th>neuron</th>{head}</tr>{"".join(rows)}</table>'
        )
        return self.sentence_html.value


def _colour(z: float) -> str:
    """Red for high standard scores, blue for low, white around 0 (|z| >= 3 saturates)."""
    a = float(np.clip(abs(z) / 3.0, 0.0, 1.0))
    lo = int(255 * (1 - 0.7 * a))
    return f"rgb(255,{lo},{lo})" if z > 0 else f"rgb({lo},{lo},255)"

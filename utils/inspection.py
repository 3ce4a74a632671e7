"""Looking at single neurons: what makes them fire, which neurons duplicate them, how a probe uses them.

Start reading at ``top_items`` (the k items of a store on which a neuron is highest or lowest,
words shown in their sentence), then ``cluster_members`` (the neurons that share its correlation
cluster, with their pairwise |r| and the cluster's representative) and ``neuron_profile`` (both,
plus its activation by class and its LCA rank). ``lca_table`` turns a probe's weights into one row
per neuron (LCA rank, the classes that select it, its weight); ``neuron_list`` / ``write_neuron_list``
/ ``read_neuron_list`` keep such lists as tidy CSV (``model, task, layer, unit, rank, classes,
weight``) for the LCA orderings, minimal sets and the transfer pipeline's kept neurons.
These are plain functions on arrays and stores; ``utils.explorer`` builds the widgets on them.

Quantities and their shapes:

- a store's activations: (n_items, n_layers, hidden); neuron ``layer * hidden + unit``.
- ``corr``: (n_features, n_features) neuron correlations (``clustering.neuron_correlation``).
- ``coef``: (n_classes, n_features) probe weights on standardised features
  (``LinearProbe.standardized_coef_``, or raw ``coef_ * std`` of the training activations).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .clustering import NeuronClusters, cluster_neurons
from .ranking import lca_entry_steps, lca_ordering

__all__ = [
    "NEURON_LIST_COLUMNS",
    "CLASS_SEPARATOR",
    "neuron_index",
    "layer_unit",
    "neuron_values",
    "top_items",
    "ClusterView",
    "cluster_members",
    "class_profile",
    "lca_table",
    "NeuronProfile",
    "neuron_profile",
    "neuron_list",
    "lca_neuron_list",
    "minimal_set_neuron_list",
    "transfer_neuron_list",
    "write_neuron_list",
    "read_neuron_list",
]

NEURON_LIST_COLUMNS = ("model", "task", "layer", "unit", "rank", "classes", "weight")
"""Columns of a neuron-list CSV, in order."""
CLASS_SEPARATOR = "|"
"""Separator of the class names in a neuron list's ``classes`` cell."""


# ---------------------------------------------------------------------------------------------
# indices


def neuron_index(layer: int, unit: int, *, hidden: int, n_layers: int | None = None) -> int:
    """Global neuron index ``layer * hidden + unit``, checked against the model's shape."""
    layer, unit = int(layer), int(unit)
    if not 0 <= unit < hidden:
        raise ValueError(f"unit must lie in [0, {hidden}) for hidden size {hidden}, got {unit}")
    if layer < 0 or (n_layers is not None and layer >= n_layers):
        raise ValueError(f"layer must lie in [0, {n_layers}) (0 = embeddings), got {layer}")
    return layer * hidden + unit


def layer_unit(neurons: Any, *, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """(layer, unit) arrays of global neuron indices, each of shape ``np.shape(neurons)``."""
    neurons = np.asarray(neurons, dtype=np.int64)
    return neurons // hidden, neurons % hidden


def _check_store(store: Any) -> None:
    """TypeError unless ``store`` looks like an ActivationStore."""
    for name in ("activations", "labels", "words", "sentence_ids"):
        if not hasattr(store, name):
            raise TypeError(
                f"expected an ActivationStore (with .{name}), got {type(store).__name__}; "
                "open one with ActivationStore.open(path) or activations.get_activations(...)"
            )


def neuron_values(store: Any, layer: int, unit: int) -> np.ndarray:
    """Activations of one neuron over all items of a store, ndarray of shape (n_items,), float64."""
    _check_store(store)
    n_items, n_layers, hidden = store.activations.shape
    neuron_index(layer, unit, hidden=hidden, n_layers=n_layers)
    return np.asarray(store.activations[:, int(layer), int(unit)], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# top items


def _context(store: Any, rows: np.ndarray, width: int) -> list[str]:
    """Each row's word in its sentence, ``width`` words either side, the word marked ``[[word]]``."""
    sids = np.asarray(store.sentence_ids)
    starts = np.searchsorted(sids, sids[rows], side="left")
    ends = np.searchsorted(sids, sids[rows], side="right")
    out = []
    for row, a, b in zip(rows, starts, ends):
        lo, hi = max(a, row - width), min(b, row + width + 1)
        words = [f"[[{w}]]" if i == row else str(w) for i, w in zip(range(lo, hi), store.words[lo:hi])]
        out.append(("… " if lo > a else "") + " ".join(words) + (" …" if hi < b else ""))
    return out


def top_items(
    store: Any, layer: int, unit: int, *, k: int = 10, bottom: bool = False, context: int = 6
) -> pd.DataFrame:
    """The k items on which one neuron is highest (or lowest), with their label and text.

    Parameters
    ----------
    store : ActivationStore
        Word level: each item is a word (shown in its sentence); sentence level: a sentence.
    layer, unit : int
        The neuron (layer 0 = embeddings).
    k : int, default=10
    bottom : bool, default=False
        The k lowest activations instead of the highest.
    context : int, default=6
        Words shown either side of a word (word level).

    Returns
    -------
    items : DataFrame
        ``k`` rows, most extreme first: ``rank`` (1..k), ``row`` (item index in the store),
        ``activation``, ``label``, ``text`` (the word, or the sentence) and, at word level,
        ``context`` (the sentence around the word, the word marked ``[[word]]``). The order is
        ``numpy.argsort(-values, kind="stable")`` (``argsort(values)`` for ``bottom``): ties go to
        the earlier item.
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of items, got {k}")
    values = neuron_values(store, layer, unit)
    order = np.argsort(values if bottom else -values, kind="stable")[:k]
    table = pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "row": order,
            "activation": values[order],
            "label": np.asarray(store.labels)[order],
            "text": [store.words[i] for i in order],
        }
    )
    if store.meta.get("level", "word") == "word":
        table["context"] = _context(store, order, context)
    return table


# ---------------------------------------------------------------------------------------------
# clusters


@dataclass(frozen=True)
class ClusterView:
    """The correlation cluster of one neuron at one threshold.

    Attributes
    ----------
    neuron : int
        The neuron asked about (global index).
    threshold : float
    members : DataFrame
        One row per member, the representative first, then by |r| with ``neuron``: ``neuron``,
        ``layer``, ``unit``, ``representative`` (bool), ``abs_r`` (|r| with the asked neuron),
        ``mean_abs_r`` (mean |r| to the other members; NaN for a singleton).
    abs_r : ndarray of shape (n_members, n_members)
        Pairwise |r| between the members, in the order of ``members``.
    """

    neuron: int
    threshold: float
    members: pd.DataFrame
    abs_r: np.ndarray

    @property
    def size(self) -> int:
        return int(len(self.members))

    @property
    def representative(self) -> int:
        return int(self.members.loc[self.members["representative"], "neuron"].iloc[0])


def cluster_members(
    corr: Any,
    neuron: int,
    *,
    hidden: int,
    threshold: float | None = None,
    clusters: NeuronClusters | None = None,
    linkage: np.ndarray | None = None,
) -> ClusterView:
    """The members of ``neuron``'s cluster, as (layer, unit), with pairwise |r| and the representative.

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)
        Neuron correlations (a memory map is fine: only the members' rows are read).
    neuron : int
        Global index ``layer * hidden + unit``.
    hidden : int
    threshold : float, optional
        Distance cut (``1 - |r|``); needed unless ``clusters`` is given.
    clusters : NeuronClusters, optional
        A clustering already made (``clustering.cluster_neurons``); reused as is.
    linkage : ndarray of shape (n_features - 1, 4), optional
        The tree to cut at ``threshold`` (``clustering.linkage_tree``), to avoid rebuilding it.

    Returns
    -------
    view : ClusterView
    """
    if clusters is None:
        if threshold is None:
            raise ValueError("pass a threshold (with the linkage tree if you have it) or a NeuronClusters")
        clusters = cluster_neurons(corr, threshold, linkage=linkage)
    n = clusters.n_features
    if not 0 <= int(neuron) < n:
        raise ValueError(f"neuron must lie in [0, {n}), got {neuron}")
    neuron = int(neuron)
    members = np.flatnonzero(clusters.labels == clusters.labels[neuron])
    corr = corr if hasattr(corr, "shape") else np.asarray(corr)
    block = np.abs(np.asarray(corr[members][:, members], dtype=np.float64))  # reads only the members' rows
    rep = int(np.intersect1d(members, clusters.representatives)[0])
    with_neuron = block[:, np.searchsorted(members, neuron)]
    m = len(members)
    mean_abs = (block.sum(axis=1) - np.diag(block)) / (m - 1) if m > 1 else np.full(m, np.nan)
    layers, units = layer_unit(members, hidden=hidden)
    table = pd.DataFrame(
        {
            "neuron": members,
            "layer": layers,
            "unit": units,
            "representative": members == rep,
            "abs_r": with_neuron,
            "mean_abs_r": mean_abs,
        }
    )
    order = np.lexsort((members, -with_neuron, members != rep))
    return ClusterView(
        neuron, float(clusters.threshold), table.iloc[order].reset_index(drop=True), block[np.ix_(order, order)]
    )


# ---------------------------------------------------------------------------------------------
# profiles


def class_profile(values: Any, labels: Any) -> pd.DataFrame:
    """Activation of one neuron by class: count, mean, std, quartiles; the class with the highest mean first.

    Parameters
    ----------
    values : array-like of shape (n_items,)
    labels : array-like of shape (n_items,)

    Returns
    -------
    table : DataFrame
        Columns ``class, count, mean, std, q25, median, q75`` (``std`` with ddof 0).
    """
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    if values.shape != labels.shape or values.ndim != 1:
        raise ValueError(f"values and labels must be 1D of one length, got {values.shape} and {labels.shape}")
    g = pd.DataFrame({"class": labels, "v": values}).groupby("class", sort=True)["v"]
    table = pd.DataFrame(
        {
            "count": g.size(),
            "mean": g.mean(),
            "std": g.std(ddof=0),
            "q25": g.quantile(0.25),
            "median": g.median(),
            "q75": g.quantile(0.75),
        }
    ).reset_index()
    return table.sort_values(["mean", "class"], ascending=[False, True], kind="stable").reset_index(drop=True)


def lca_table(coef: Any, *, classes: Sequence | None = None, step: float = 0.001) -> pd.DataFrame:
    """Every neuron's LCA rank, the classes that select it, and its weight.

    Parameters
    ----------
    coef : array-like of shape (n_classes, n_features) or (n_features,)
        Probe weights on standardised features (what ``ranking.lca_ordering`` ranks).
    classes : sequence of length n_classes, optional
        Class names (``probe.classes_``); defaults to ``0 .. n_classes - 1``.
    step : float, default=0.001
        LCA grid step.

    Returns
    -------
    table : DataFrame
        One row per neuron, indexed by neuron (0 .. n_features - 1): ``rank`` (1 = first in
        ``ranking.lca_ordering``), ``entry_step`` (``ranking.lca_entry_steps``), ``classes``
        (tuple of the classes whose own LCA selection takes the neuron in at that step, largest
        |w| first; empty when no p of the grid selects it, and it is ranked by weight alone),
        ``weight`` (Σ over classes of |w|, LCA's tie-break) and ``strongest`` (the three classes
        with the largest |w|).
    """
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    n_classes, n = coef.shape
    names = np.asarray(list(classes) if classes is not None else range(n_classes))
    if len(names) != n_classes:
        raise ValueError(f"classes has {len(names)} names for {n_classes} rows of coef")
    order = lca_ordering(coef, step=step)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    per_class = np.stack([lca_entry_steps(coef[c], step=step) for c in range(n_classes)])  # (n_classes, n)
    entry = per_class.min(axis=0)
    never = int(round(1.0 / step)) + 1  # lca_entry_steps' value for a neuron no p of the grid selects
    absw = np.abs(coef)
    by_weight = np.argsort(-absw, axis=0, kind="stable")  # (n_classes, n): classes by |w|, per neuron
    served, strongest = [], []
    for i in range(n):
        cs = by_weight[:, i]
        served.append(tuple(names[cs[per_class[cs, i] == entry[i]]].tolist()) if entry[i] < never else ())
        strongest.append(tuple(names[cs[:3]].tolist()))
    return pd.DataFrame(
        {"rank": rank, "entry_step": entry, "classes": served, "weight": absw.sum(axis=0), "strongest": strongest},
        index=pd.RangeIndex(n, name="neuron"),
    )


@dataclass(frozen=True)
class NeuronProfile:
    """What is known about one neuron.

    Attributes
    ----------
    neuron, layer, unit : int
    by_class : DataFrame
        ``class_profile`` of its activations.
    lca_rank : int or None
        Rank in the LCA ordering (1 = most important); None without probe weights.
    classes : tuple
        The classes that select it in LCA (empty without probe weights).
    weight : float or None
        Σ |w| over classes.
    cluster : ClusterView or None
        Its correlation cluster (None without correlations).
    """

    neuron: int
    layer: int
    unit: int
    by_class: pd.DataFrame
    lca_rank: int | None
    classes: tuple
    weight: float | None
    cluster: ClusterView | None


def neuron_profile(
    store: Any,
    layer: int,
    unit: int,
    *,
    lca: pd.DataFrame | None = None,
    corr: Any = None,
    clusters: NeuronClusters | None = None,
) -> NeuronProfile:
    """A neuron's activation by class, its LCA rank and classes, and its cluster.

    Parameters
    ----------
    store : ActivationStore
    layer, unit : int
    lca : DataFrame, optional
        ``lca_table`` of a probe on all of the store's neurons.
    corr : array-like of shape (n_features, n_features), optional
    clusters : NeuronClusters, optional
        With ``corr``: the clustering whose cluster is shown.

    Returns
    -------
    profile : NeuronProfile
    """
    values = neuron_values(store, layer, unit)
    hidden = store.activations.shape[2]
    idx = neuron_index(layer, unit, hidden=hidden)
    rank = classes = weight = None
    if lca is not None:
        row = lca.loc[idx]
        rank, classes, weight = int(row["rank"]), tuple(row["classes"]), float(row["weight"])
    cluster = (
        cluster_members(corr, idx, hidden=hidden, clusters=clusters)
        if corr is not None and clusters is not None
        else None
    )
    return NeuronProfile(
        idx, int(layer), int(unit), class_profile(values, store.labels), rank, classes or (), weight, cluster
    )


# ---------------------------------------------------------------------------------------------
# neuron lists as tidy CSV


def neuron_list(
    neurons: Any,
    *,
    model: str,
    task: str,
    hidden: int,
    ranks: Any = None,
    classes: Sequence[Sequence] | None = None,
    weights: Any = None,
) -> pd.DataFrame:
    """A tidy neuron list: one row per neuron, columns ``NEURON_LIST_COLUMNS``, sorted by rank.

    Parameters
    ----------
    neurons : array-like of shape (n,)
        Global indices.
    model, task : str
    hidden : int
    ranks : array-like of shape (n,), optional
        Defaults to 1..n in the given order.
    classes : sequence of n sequences of class names, optional
    weights : array-like of shape (n,), optional
        NaN when absent.

    Returns
    -------
    table : DataFrame
        ``classes`` holds the names joined by ``CLASS_SEPARATOR``.
    """
    neurons = np.asarray(neurons, dtype=np.int64).reshape(-1)
    n = len(neurons)
    ranks = np.arange(1, n + 1) if ranks is None else np.asarray(ranks, dtype=np.int64).reshape(-1)
    weights = np.full(n, np.nan) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    classes = [()] * n if classes is None else list(classes)
    if not (len(ranks) == len(weights) == len(classes) == n):
        raise ValueError(
            f"neurons, ranks, classes and weights must have one length; got {n}, {len(ranks)}, "
            f"{len(classes)}, {len(weights)}"
        )
    cells = []
    for cs in classes:
        names = [str(c) for c in cs]
        bad = [c for c in names if CLASS_SEPARATOR in c]
        if bad:
            raise ValueError(f"class name {bad[0]!r} contains the separator {CLASS_SEPARATOR!r}; rename the class")
        cells.append(CLASS_SEPARATOR.join(names))
    layers, units = layer_unit(neurons, hidden=hidden)
    table = pd.DataFrame(
        {
            "model": model,
            "task": task,
            "layer": layers,
            "unit": units,
            "rank": ranks,
            "classes": cells,
            "weight": weights,
        },
        columns=list(NEURON_LIST_COLUMNS),
    )
    return table.sort_values("rank", kind="stable").reset_index(drop=True)


def lca_neuron_list(
    coef: Any, *, model: str, task: str, hidden: int, classes: Sequence | None = None, step: float = 0.001
) -> pd.DataFrame:
    """The LCA ordering of every neuron as a neuron list (rank 1 = most important).

    ``coef`` and ``classes`` as in ``lca_table``.
    """
    t = lca_table(coef, classes=classes, step=step)
    return neuron_list(
        t.index.to_numpy(),
        model=model,
        task=task,
        hidden=hidden,
        ranks=t["rank"],
        classes=t["classes"].tolist(),
        weights=t["weight"],
    )


def minimal_set_neuron_list(neurons: Any, lca: pd.DataFrame, *, model: str, task: str, hidden: int) -> pd.DataFrame:
    """A minimal neuron set (e.g. ``MinimalSet.neurons``) with each neuron's row of the LCA ``lca_table``.

    Ranks are the neurons' LCA ranks over all neurons, so the list reads in LCA order.
    """
    neurons = np.asarray(neurons, dtype=np.int64)
    rows = lca.loc[neurons]
    return neuron_list(
        neurons,
        model=model,
        task=task,
        hidden=hidden,
        ranks=rows["rank"],
        classes=rows["classes"].tolist(),
        weights=rows["weight"],
    )


def transfer_neuron_list(
    result: Any, *, model: str | None = None, task: str | None = None, scale: Any = None, step: float = 0.001
) -> pd.DataFrame:
    """The neurons the transfer pipeline kept (``selection.TransferResult``), ranked by LCA of its final probe.

    Parameters
    ----------
    result : TransferResult
        E.g. ``TransferResult.load("figures/transfer/mpnet-pos")``; its ``reduced`` probe holds
        raw weights on the kept neurons.
    model, task : str, optional
        Default to ``result.info["model"]`` / ``["task"]``.
    scale : array-like of shape (neurons_total,), optional
        Training standard deviation of every neuron; with it, weights are standardised (``coef * std``)
        before ranking, as the pipeline ranks. Without it, raw weights are ranked.
    step : float, default=0.001

    Returns
    -------
    table : DataFrame
        One row per kept neuron.
    """
    r = result.reduced
    coef = np.atleast_2d(np.asarray(r.coef_, dtype=np.float64))
    if scale is not None:
        coef = coef * np.asarray(scale, dtype=np.float64)[np.asarray(r.neurons)]
    classes = r.classes_ if r.classes_ is not None else ["value"]
    t = lca_table(coef, classes=classes, step=step)
    return neuron_list(
        np.asarray(r.neurons)[t.index.to_numpy()],
        model=model or result.info.get("model", ""),
        task=task or result.info.get("task", ""),
        hidden=result.hidden,
        ranks=t["rank"],
        classes=t["classes"].tolist(),
        weights=t["weight"],
    )


def write_neuron_list(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a neuron list as CSV (atomically); return the path."""
    missing = [c for c in NEURON_LIST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"a neuron list needs the columns {list(NEURON_LIST_COLUMNS)}; missing {missing}. "
            "Make it with inspection.neuron_list(...)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table[list(NEURON_LIST_COLUMNS)].to_csv(tmp, index=False, float_format="%.17g")
    os.replace(tmp, path)
    return path


def read_neuron_list(path: str | os.PathLike) -> pd.DataFrame:
    """Read a neuron list written by ``write_neuron_list`` (class names and ids kept as text)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no neuron list at {path}; write one with inspection.write_neuron_list")
    table = pd.read_csv(
        path,
        dtype={
            "model": str,
            "task": str,
            "classes": str,
            "layer": np.int64,
            "unit": np.int64,
            "rank": np.int64,
            "weight": np.float64,
        },
        keep_default_na=False,
        na_values={"weight": ["", "nan", "NaN"]},
    )
    if list(table.columns) != list(NEURON_LIST_COLUMNS):
        raise ValueError(f"{path} has columns {list(table.columns)}, expected {list(NEURON_LIST_COLUMNS)}")
    return table

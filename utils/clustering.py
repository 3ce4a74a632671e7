"""Neuron-level redundancy: correlation of all neurons, average-linkage clusters, and summaries.

Start reading at ``neuron_correlation`` (Pearson correlation of every pair of neurons of every layer,
from the streaming Gram of ``similarity.GramAccumulator``), then ``cluster_neurons`` (the authors'
agglomerative clustering on ``1 - |r|`` with average linkage, cut at a distance threshold, with one
deterministic representative per cluster) and ``cluster_sweep`` (one linkage tree, cut at many
thresholds). The summaries turn clusterings into tidy pandas tables for the figures;
``general_redundancy`` makes all of them for one store from one streaming pass (the layer CKA of the
same pass comes from ``similarity.layer_cka_variants``). ``report.describe_general_redundancy``
writes the reading of those tables next to the paper's findings.

Quantities and their shapes:

- ``corr``: ndarray of shape (n_features, n_features), float32; ``n_features = n_layers * hidden``,
  neuron index ``layer * hidden + unit``.
- ``linkage``: ndarray of shape (n_features - 1, 4), scipy's linkage matrix.
- ``NeuronClusters.labels``: ndarray of shape (n_features,), cluster ids ``0 .. n_clusters - 1``
  numbered by each cluster's lowest neuron index; ``representatives``: ndarray of shape
  (n_clusters,), sorted neuron indices.
- ``layer x layer`` summaries: ndarray of shape (n_layers, n_layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as scipy_linkage

from .similarity import (
    DEFAULT_CHUNK_SIZE,
    ConstantFeatureWarning,
    GramAccumulator,
    gram_statistics,
    layer_cka_variants,
)
from .validation import as_array

__all__ = [
    "ConstantFeatureWarning",
    "neuron_correlation",
    "linkage_tree",
    "NeuronClusters",
    "cluster_neurons",
    "cluster_sweep",
    "redundancy_by_threshold",
    "layer_redundancy",
    "cluster_layer_spans",
    "layer_pair_counts",
    "layer_duplication",
    "same_unit_share",
    "GeneralRedundancy",
    "general_redundancy",
]

_ROW_BLOCK = 512  # rows of the correlation matrix handled at once by the band-wise helpers


# ---------------------------------------------------------------------------------------------
# correlation


def neuron_correlation(
    activations: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compute_dtype: Any = np.float32,
    progress: bool = True,
) -> np.ndarray:
    """Pearson correlation between all pairs of neurons of all layers, from one streaming pass.

    Parameters
    ----------
    activations : array-like of shape (n_items, n_layers, hidden) or (n_samples, n_features)
        Or an ``ActivationStore``, or a filled ``similarity.GramAccumulator`` (then no pass is made,
        and the same statistics also give the layer CKA).
    chunk_size : int, default=2048
        Rows read at a time.
    compute_dtype : {np.float32, np.float64}, default=np.float32
        Precision of the per-chunk products (totals are float64).
    progress : bool, default=True

    Returns
    -------
    corr : ndarray of shape (n_features, n_features), float32
        Symmetric, unit diagonal. A constant neuron gets correlation 0 with every other neuron, and a
        ``ConstantFeatureWarning`` names how many and which.

    Raises
    ------
    ValueError
        If the activations contain NaN or infinity (the message names the rows), or have the wrong shape.
    """
    if isinstance(activations, GramAccumulator):
        acc = activations
    else:
        acc = gram_statistics(activations, chunk_size=chunk_size, compute_dtype=compute_dtype, progress=progress)
    return acc.correlation(dtype=np.float32)


def _check_corr(corr: Any) -> np.ndarray:
    """Return ``corr`` as a square float array or raise ValueError with what was expected."""
    corr = np.asarray(corr)
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(
            f"Expected a square correlation matrix of shape (n_features, n_features), got shape "
            f"{corr.shape}. Compute it with neuron_correlation(activations)."
        )
    if corr.shape[0] < 2:
        raise ValueError(f"Need at least 2 neurons to cluster, got {corr.shape[0]}.")
    if not np.isfinite(corr).all():
        raise ValueError("The correlation matrix contains NaN or infinity; neuron_correlation never does.")
    return corr


def _row_bands(n: int, size: int = _ROW_BLOCK):
    """Yield (start, stop) row ranges covering 0..n."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _condensed_distance(corr: np.ndarray) -> np.ndarray:
    """``1 - |r|`` for i < j in scipy's condensed order (float64), built band by band."""
    n = corr.shape[0]
    out = np.empty(n * (n - 1) // 2)
    cols = np.arange(n)
    pos = 0
    for a, b in _row_bands(n):
        mask = cols[None, :] > np.arange(a, b)[:, None]  # strict upper triangle of this band
        vals = corr[a:b][mask]  # row-major: exactly the condensed order
        out[pos : pos + len(vals)] = vals
        pos += len(vals)
    np.abs(out, out=out)
    np.subtract(1.0, out, out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _abs_corr_from_condensed(dist: np.ndarray) -> np.ndarray:
    """The square ``|r|`` (float32, unit diagonal) back from condensed ``1 - |r|`` distances.

    The inverse of ``_condensed_distance`` up to the sign of ``r``, which clustering never reads
    (distances, representatives and summaries all use ``|r|``). Exact for float32 correlations:
    ``1 - (1 - x)`` in float64 returns every float32 ``x`` in [2^-29, 1] unchanged.

    Parameters
    ----------
    dist : ndarray of shape (n_features * (n_features - 1) / 2,)

    Returns
    -------
    abs_corr : ndarray of shape (n_features, n_features), float32
    """
    m = len(dist)
    n = int(round((1 + np.sqrt(1 + 8 * m)) / 2))
    if n * (n - 1) // 2 != m:
        raise ValueError(f"{m} condensed distances are not n(n-1)/2 for any n; pass _condensed_distance's output.")
    out = np.empty((n, n), dtype=np.float32)
    pos = 0
    for i in range(n - 1):  # the strict upper triangle, row by row (contiguous writes)
        np.subtract(1.0, dist[pos : pos + n - 1 - i], out=out[i, i + 1 :], casting="same_kind")
        pos += n - 1 - i
    for a, b in _row_bands(n):  # mirror it band by band: the rows above, then the band's own block
        out[a:b, :a] = out[:a, a:b].T
        block, lower = out[a:b, a:b], np.tril_indices(b - a, -1)
        block[lower] = block.T[lower]
    np.fill_diagonal(out, 1.0)
    return out


def linkage_tree(corr: Any) -> np.ndarray:
    """Average-linkage tree of the neurons on the distance ``1 - |r|`` (the authors' clustering).

    Cut it at any number of thresholds with ``cluster_neurons(corr, t, linkage=tree)``.

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)

    Returns
    -------
    linkage : ndarray of shape (n_features - 1, 4)
        ``scipy.cluster.hierarchy.linkage(1 - |r| condensed, method="average")``. Memory: the
        condensed distances (float64, 4 n_features² bytes) and scipy's working copy of them.
    """
    return _average_linkage(_condensed_distance(_check_corr(corr)))


def correlation_linkage(activations: Any, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``|r|`` between all neurons and their average-linkage tree, holding at most two n² arrays.

    The same tree as ``linkage_tree(neuron_correlation(activations))``, and ``|r|`` bit-equal to
    ``np.abs`` of that correlation (``_abs_corr_from_condensed``), which is all ``cluster_neurons``
    reads. scipy's ``linkage`` copies its condensed input, so keeping the square matrix through the
    linkage makes three n² arrays (3.8 GB for SmolLM2's 17,856 neurons); here the square matrix is
    freed before the linkage and rebuilt from the distances after it.

    Parameters
    ----------
    activations : array-like of shape (n_items, n_layers, hidden) or (n_samples, n_features)
        As ``neuron_correlation``.
    progress : bool, default=True

    Returns
    -------
    abs_corr : ndarray of shape (n_features, n_features), float32
        ``|r|`` with a unit diagonal.
    linkage : ndarray of shape (n_features - 1, 4)
    """
    corr = neuron_correlation(activations, progress=progress)
    dist = _condensed_distance(_check_corr(corr))
    del corr
    return _abs_corr_and_tree(dist)


def _abs_corr_and_tree(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|r|`` (float32 square) and the average-linkage tree from condensed ``1 - |r|`` distances.

    The linkage runs first, while only ``dist`` and scipy's copy of it are held; the square ``|r|`` is
    rebuilt afterwards. Callers drop their square correlation before calling and ``dist`` after.
    """
    tree = _average_linkage(dist)
    return _abs_corr_from_condensed(dist), tree


def _average_linkage(dist: np.ndarray) -> np.ndarray:
    """scipy's average-linkage tree of condensed distances ``1 - |r|`` (it copies ``dist``)."""
    return scipy_linkage(dist, method="average")


@dataclass(frozen=True)
class NeuronClusters:
    """Flat clusters of neurons at one distance threshold, with one representative each.

    Attributes
    ----------
    threshold : float
        Distance cut ``t``: merged clusters have average ``|r| >= 1 - t`` between their halves.
    labels : ndarray of shape (n_features,)
        Cluster of each neuron, ``0 .. n_clusters - 1``, numbered by each cluster's lowest neuron.
    representatives : ndarray of shape (n_clusters,)
        Sorted neuron indices, one per cluster: the member with the highest mean ``|r|`` to the other
        members (ties go to the lowest index); a singleton represents itself.
    """

    threshold: float
    labels: np.ndarray
    representatives: np.ndarray

    @property
    def n_features(self) -> int:
        return int(len(self.labels))

    @property
    def n_clusters(self) -> int:
        return int(len(self.representatives))

    def sizes(self) -> np.ndarray:
        """Number of neurons in each cluster, ndarray of shape (n_clusters,)."""
        return np.bincount(self.labels, minlength=self.n_clusters)

    def redundant(self) -> np.ndarray:
        """Boolean mask of shape (n_features,): neurons that are dropped (not a representative)."""
        mask = np.ones(self.n_features, dtype=bool)
        mask[self.representatives] = False
        return mask


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0..k-1 in order of each cluster's lowest member index."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def _within_cluster_abs_sums(corr: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Σ_j |r_ij| over the members j of i's own cluster (self included), band by band (float64)."""
    out = np.empty(len(labels))
    for a, b in _row_bands(len(labels)):
        same = labels[a:b, None] == labels[None, :]
        out[a:b] = np.where(same, np.abs(corr[a:b], dtype=np.float64), 0.0).sum(axis=1)
    return out


def _representatives(corr: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per cluster, the member with the largest within-cluster Σ|r|; ties to the lowest index."""
    score = _within_cluster_abs_sums(corr, labels)
    order = np.lexsort((np.arange(len(labels)), -score, labels))
    sorted_labels = labels[order]
    first = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    return np.sort(order[first])


def cluster_neurons(corr: Any, threshold: float, *, linkage: np.ndarray | None = None) -> NeuronClusters:
    """Cluster neurons by correlation: average linkage on ``1 - |r|``, cut at ``threshold``.

    The partition equals ``scipy.cluster.hierarchy.fcluster(linkage(d, "average"), threshold,
    criterion="distance")`` with ``d`` the condensed ``1 - |r|``. Unlike the authors' code (a
    random member), the representative is deterministic: the member with the highest mean ``|r|``
    to its cluster, ties to the lowest index.

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)
        From ``neuron_correlation``.
    threshold : float
        Distance cut in [0, 1]; 0.3 keeps clusters whose halves correlate by >= 0.7 on average.
    linkage : ndarray of shape (n_features - 1, 4), optional
        A tree from ``linkage_tree(corr)``, to cut many thresholds without recomputing it.

    Returns
    -------
    clusters : NeuronClusters
    """
    corr = _check_corr(corr)
    _check_threshold(threshold)  # before the tree, which takes a while
    return _cut(corr, threshold, linkage_tree(corr) if linkage is None else linkage)


def _check_threshold(threshold: float) -> None:
    """Raise ValueError unless ``threshold`` is a distance in [0, 1]."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a distance 1 - |r| and must lie in [0, 1], got {threshold}.")


def _cut(corr: np.ndarray, threshold: float, linkage: np.ndarray) -> NeuronClusters:
    """``cluster_neurons`` on a checked ``corr`` (``_check_corr``) and a tree of it."""
    _check_threshold(threshold)
    n = corr.shape[0]
    if linkage.shape != (n - 1, 4):
        raise ValueError(f"linkage has shape {linkage.shape}, expected {(n - 1, 4)} for {n} neurons.")
    labels = _relabel(fcluster(linkage, t=float(threshold), criterion="distance"))
    return NeuronClusters(float(threshold), labels, _representatives(corr, labels))


def cluster_sweep(corr: Any, thresholds: Sequence[float], *, linkage: np.ndarray | None = None) -> list[NeuronClusters]:
    """``cluster_neurons`` at each threshold from one linkage tree.

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)
    thresholds : sequence of float
    linkage : ndarray of shape (n_features - 1, 4), optional

    Returns
    -------
    clusterings : list of NeuronClusters
        In the order of ``thresholds``.
    """
    corr = _check_corr(corr)  # once, not once a threshold
    tree = linkage_tree(corr) if linkage is None else linkage
    return [_cut(corr, t, tree) for t in thresholds]


# ---------------------------------------------------------------------------------------------
# summaries (tidy tables)


def _as_list(clusterings: NeuronClusters | Sequence[NeuronClusters]) -> list[NeuronClusters]:
    """Wrap a single NeuronClusters in a list."""
    return [clusterings] if isinstance(clusterings, NeuronClusters) else list(clusterings)


def _check_layout(n_features: int, n_layers: int, hidden: int) -> None:
    """Raise ValueError unless n_features == n_layers * hidden."""
    if n_layers * hidden != n_features:
        raise ValueError(
            f"n_layers * hidden = {n_layers} * {hidden} = {n_layers * hidden} does not match "
            f"{n_features} neurons; pass the store's n_layers and hidden."
        )


def redundancy_by_threshold(clusterings: NeuronClusters | Sequence[NeuronClusters]) -> pd.DataFrame:
    """Neurons that survive clustering (one per cluster) at each threshold.

    Parameters
    ----------
    clusterings : NeuronClusters or sequence of NeuronClusters

    Returns
    -------
    table : DataFrame
        Columns ``threshold, neurons_total, neurons_kept, pct_kept`` (percent), sorted by threshold.
    """
    rows = [
        {
            "threshold": c.threshold,
            "neurons_total": c.n_features,
            "neurons_kept": c.n_clusters,
            "pct_kept": 100.0 * c.n_clusters / c.n_features,
        }
        for c in _as_list(clusterings)
    ]
    return pd.DataFrame(rows).sort_values("threshold", ignore_index=True)


def layer_redundancy(
    clusterings: NeuronClusters | Sequence[NeuronClusters], *, n_layers: int, hidden: int
) -> pd.DataFrame:
    """Share of each layer's neurons that clustering drops (not representatives).

    Parameters
    ----------
    clusterings : NeuronClusters or sequence of NeuronClusters
    n_layers, hidden : int

    Returns
    -------
    table : DataFrame
        Columns ``threshold, layer, neurons, redundant, pct_redundant``; one row per (threshold, layer).
    """
    frames = []
    for c in _as_list(clusterings):
        _check_layout(c.n_features, n_layers, hidden)
        redundant = c.redundant().reshape(n_layers, hidden).sum(axis=1)
        frames.append(
            pd.DataFrame(
                {
                    "threshold": c.threshold,
                    "layer": np.arange(n_layers),
                    "neurons": hidden,
                    "redundant": redundant,
                    "pct_redundant": 100.0 * redundant / hidden,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def cluster_layer_spans(
    clusters: NeuronClusters, *, n_layers: int, hidden: int, include_singletons: bool = False
) -> pd.DataFrame:
    """Histogram of how many layers clusters span (``max layer - min layer + 1`` of their members).

    Singletons are left out by default: they span one layer by definition and, at low thresholds,
    swamp the histogram. (The authors' ``cluster_analysis.py`` counted them; pass
    ``include_singletons=True`` for their histogram.)

    Parameters
    ----------
    clusters : NeuronClusters
    n_layers, hidden : int
    include_singletons : bool, default=False

    Returns
    -------
    table : DataFrame
        Columns ``span`` (1 .. n_layers) and ``n_clusters``.
    """
    _check_layout(clusters.n_features, n_layers, hidden)
    layer = np.arange(clusters.n_features) // hidden
    k = clusters.n_clusters
    lo = np.full(k, n_layers)
    hi = np.full(k, -1)
    np.minimum.at(lo, clusters.labels, layer)
    np.maximum.at(hi, clusters.labels, layer)
    span = hi - lo + 1
    if not include_singletons:
        span = span[clusters.sizes() >= 2]
    counts = np.bincount(span, minlength=n_layers + 1)[1:]
    return pd.DataFrame({"span": np.arange(1, n_layers + 1), "n_clusters": counts})


def layer_pair_counts(corr: Any, n_layers: int, hidden: int, *, min_abs_corr: float = 0.8) -> np.ndarray:
    """Count highly correlated neuron pairs between every pair of layers.

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)
    n_layers, hidden : int
    min_abs_corr : float, default=0.8
        A pair counts when ``|r| >= min_abs_corr``.

    Returns
    -------
    counts : ndarray of shape (n_layers, n_layers), int64
        Symmetric; entry (a, b) is the number of unordered pairs {i, j}, i in layer a, j in layer b,
        i != j (self pairs never count).
    """
    corr = _check_corr(corr)
    _check_layout(corr.shape[0], n_layers, hidden)
    counts = np.empty((n_layers, n_layers), dtype=np.int64)
    for a in range(n_layers):  # one band of rows per layer
        band = np.abs(corr[a * hidden : (a + 1) * hidden]) >= min_abs_corr
        counts[a] = band.reshape(hidden, n_layers, hidden).sum(axis=(0, 2))
    diag = np.arange(n_layers)
    counts[diag, diag] = (counts[diag, diag] - hidden) // 2  # drop i == j; count {i, j} once
    return counts


def layer_duplication(corr: Any, n_layers: int, hidden: int) -> np.ndarray:
    """How strongly layer a's neurons are duplicated in layer b: mean over a's neurons of max |r| in b.

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)
    n_layers, hidden : int

    Returns
    -------
    dup : ndarray of shape (n_layers, n_layers), float64
        ``dup[a, b] = mean_{i in a} max_{j in b, j != i} |r_ij|``; not symmetric in general. A layer
        whose neurons are all constant (``neuron_correlation`` gives them r = 0 with every other
        neuron) has no correlation to speak of: its row and column are NaN ("undefined"), as in the
        layer CKA, rather than a duplication of 0.
    """
    corr = _check_corr(corr)
    _check_layout(corr.shape[0], n_layers, hidden)
    dup = np.empty((n_layers, n_layers))
    own = np.arange(hidden)
    undefined = np.zeros(n_layers, dtype=bool)
    for a in range(n_layers):
        band = np.abs(corr[a * hidden : (a + 1) * hidden], dtype=np.float64)
        band[own, a * hidden + own] = -np.inf  # a neuron does not duplicate itself
        best = band.reshape(hidden, n_layers, hidden).max(axis=2)  # (hidden, n_layers)
        undefined[a] = not (best > 0).any()
        dup[a] = best.mean(axis=0)
    dup[undefined, :] = np.nan
    dup[:, undefined] = np.nan
    return dup


def same_unit_share(clusters: NeuronClusters, *, hidden: int) -> float:
    """Share of multi-neuron clusters whose members all have the same unit index in their layers.

    A high share means the redundancy is the residual stream: unit ``u`` of layer ``l`` carried on
    almost unchanged as unit ``u`` of the next layers.

    Parameters
    ----------
    clusters : NeuronClusters
    hidden : int

    Returns
    -------
    share : float
        In [0, 1]; NaN when no cluster has two or more neurons.
    """
    if clusters.n_features % hidden:
        raise ValueError(f"{clusters.n_features} neurons is not a multiple of hidden = {hidden}.")
    unit = np.arange(clusters.n_features) % hidden
    k = clusters.n_clusters
    lo = np.full(k, hidden)
    hi = np.full(k, -1)
    np.minimum.at(lo, clusters.labels, unit)
    np.maximum.at(hi, clusters.labels, unit)
    multi = clusters.sizes() >= 2
    return float(np.mean(lo[multi] == hi[multi])) if multi.any() else float("nan")


# ---------------------------------------------------------------------------------------------
# one store, every table


@dataclass
class GeneralRedundancy:
    """Every general-redundancy number of one activation store (one streaming pass, one linkage tree).

    Attributes
    ----------
    n_items, n_layers, hidden : int
    cka, cka_debiased : ndarray of shape (n_layers, n_layers)
        Linear CKA between layers, biased (the paper's) and debiased.
    cka_standardized : ndarray of shape (n_layers, n_layers)
        Linear CKA on dimension-standardised activations (the paper group's variant; constant
        neurons left out).
    kept : DataFrame
        ``redundancy_by_threshold`` over the thresholds.
    layer_share : DataFrame
        ``layer_redundancy`` over the thresholds.
    spans : DataFrame
        ``cluster_layer_spans`` at ``reference_threshold`` (clusters of 2+ neurons), with a
        ``threshold`` column.
    duplication : ndarray of shape (n_layers, n_layers)
        ``layer_duplication``.
    pair_counts : ndarray of shape (n_layers, n_layers)
        ``layer_pair_counts`` at ``min_abs_corr``.
    clusters : NeuronClusters
        The clustering at ``reference_threshold``.
    same_unit : float
        ``same_unit_share`` of ``clusters``.
    constant_neurons : ndarray of shape (n_constant,)
        Neurons constant over the items (correlation 0 with everything: singletons at any t < 1).
    sweep : list of NeuronClusters
        The clustering at every threshold (sorted, ``reference_threshold`` included), for retraining
        probes on the representatives (``selection.cc_sweep``).
    """

    n_items: int
    n_layers: int
    hidden: int
    cka: np.ndarray
    cka_debiased: np.ndarray
    cka_standardized: np.ndarray
    kept: pd.DataFrame
    layer_share: pd.DataFrame
    spans: pd.DataFrame
    duplication: np.ndarray
    pair_counts: np.ndarray
    clusters: NeuronClusters
    same_unit: float
    constant_neurons: np.ndarray
    sweep: list[NeuronClusters] = field(default_factory=list, repr=False)


def general_redundancy(
    activations: Any,
    *,
    thresholds: Sequence[float],
    reference_threshold: float = 0.3,
    min_abs_corr: float = 0.8,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
) -> GeneralRedundancy:
    """Neuron correlation clusters and their summaries for one store, from one streaming pass.

    The pass fills one ``GramAccumulator``; its correlation matrix is clustered here, and the
    layer x layer CKA of the same accumulator is read by ``similarity.layer_cka_variants`` so that
    nothing is streamed twice.

    Parameters
    ----------
    activations : array-like of shape (n_items, n_layers, hidden), or an ``ActivationStore``
    thresholds : sequence of float
        Distance cuts for the kept-vs-threshold curve and per-layer shares.
    reference_threshold : float, default=0.3
        The cut at which spans and the returned ``clusters`` are read (the paper's pipeline uses 0.3);
        added to ``thresholds`` if missing.
    min_abs_corr : float, default=0.8
        ``|r|`` from which a neuron pair counts in ``pair_counts``.
    chunk_size : int, default=2048
    progress : bool, default=True

    Returns
    -------
    result : GeneralRedundancy
    """
    array = as_array(activations)
    if len(getattr(array, "shape", ())) != 3:
        raise ValueError(
            f"Expected activations of shape (n_items, n_layers, hidden), got "
            f"{getattr(array, 'shape', type(array).__name__)}."
        )
    n_items, n_layers, hidden = (int(x) for x in array.shape)
    acc = gram_statistics(array, chunk_size=chunk_size, progress=progress)
    constant = acc.constant_features()
    corr = acc.correlation()
    cka = layer_cka_variants(acc, corr=corr)
    del acc  # the Gram strips: free them before the linkage needs its memory
    duplication = layer_duplication(corr, n_layers, hidden)
    pair_counts = layer_pair_counts(corr, n_layers, hidden, min_abs_corr=min_abs_corr)
    # Memory: scipy's linkage copies its condensed input, so the square matrix beside the two would
    # make three n² arrays (3.6 GiB for SmolLM2's 17,856 neurons). Free it during the linkage and
    # rebuild |r| (all that clustering reads) from the distances afterwards: two at a time.
    dist = _condensed_distance(_check_corr(corr))
    del corr
    abs_corr, tree = _abs_corr_and_tree(dist)
    del dist
    thresholds = sorted(set(float(t) for t in thresholds) | {float(reference_threshold)})
    sweep = cluster_sweep(abs_corr, thresholds, linkage=tree)
    at_ref = sweep[thresholds.index(float(reference_threshold))]
    spans = cluster_layer_spans(at_ref, n_layers=n_layers, hidden=hidden)
    spans.insert(0, "threshold", float(reference_threshold))
    return GeneralRedundancy(
        n_items=n_items,
        n_layers=n_layers,
        hidden=hidden,
        cka=cka.biased,
        cka_debiased=cka.debiased,
        cka_standardized=cka.standardized,
        kept=redundancy_by_threshold(sweep),
        layer_share=layer_redundancy(sweep, n_layers=n_layers, hidden=hidden),
        spans=spans,
        duplication=duplication,
        pair_counts=pair_counts,
        clusters=at_ref,
        same_unit=same_unit_share(at_ref, hidden=hidden),
        constant_neurons=constant,
        sweep=sweep,
    )

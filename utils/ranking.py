"""Neuron orderings and minimal neuron sets (Dalvi et al. 2020, section "Task-specific redundancy").

Start reading at ``lca_ordering``: the authors' Linguistic Correlation Analysis ranking of neurons
from a trained probe's weights, computed without a loop over the p-grid. Baselines:
``random_ordering``, ``bottom_ordering`` (LCA reversed) and the probe-free
``mean_difference_ordering`` (ANOVA F statistic of class-conditional means). ``minimal_neuron_set``
retrains probes on the top-k neurons along ``PCT_GRID`` and stops at the first k whose dev score
reaches a target (neighbouring grid points are trained together, ``GROUP_COLUMNS``);
``accuracy_curve`` draws the whole curve for several orderings;
``minimal_set_table`` scores the sets on test with intervals (sentence bootstrap, paired
comparisons with the oracle and between orderings).

Quantities and shapes:

- ``coef``: array of shape (n_classes, n_features), e.g. ``LinearProbe.standardized_coef_`` (what
  we rank by: weights on unit-variance features) or ``coef_`` (raw weights, as the authors).
- ``ordering``: int array of shape (n_features,), most important neuron first; a permutation.
- neuron index ``layer * hidden + unit`` when features are flattened activations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .intervals import paired_interval, score_interval
from .metrics import bootstrap_ci, macro_f1
from .moments import constant_features, feature_stats, row_chunks
from .probing import fit_subset_probes, make_probe
from .validation import check_features, check_targets, is_regression_target

PCT_GRID: tuple[float, ...] = (
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.01,
    0.02,
    0.03,
    0.04,
    0.05,
    0.06,
    0.07,
    0.08,
    0.09,
    0.10,
    0.15,
    0.20,
    0.25,
    0.30,
    0.35,
    0.40,
    0.45,
    0.50,
    0.60,
    0.70,
    0.80,
    0.90,
)
"""The authors' percentage grid for the minimal neuron set (``run_pipeline_all.py``): fractions of all neurons."""


# ---------------------------------------------------------------------------------------------
# LCA


def _lca_grid(step: float) -> int:
    """Number of p-steps K with ``K * step == 1``; ValueError when 1 / step is not a whole number."""
    if not (isinstance(step, (int, float)) and 0 < step <= 1):
        raise ValueError(f"step must be a number in (0, 1], got {step!r}")
    K = int(round(1.0 / step))
    if abs(K * step - 1.0) > 1e-9:
        raise ValueError(f"1 / step must be a whole number (the authors use step = 1 / search_stride), got step={step}")
    return K


def _abs_weights(coef: Any) -> np.ndarray:
    """|coef| as a 2D float array of shape (n_classes, n_features), validated."""
    a = np.abs(np.atleast_2d(np.asarray(coef)))
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"coef must have shape (n_classes, n_features) or (n_features,), got {np.shape(coef)}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("coef contains NaN or infinity; the probe did not train properly")
    return a


def lca_entry_steps(coef: Any, *, step: float = 0.001) -> np.ndarray:
    """Index i of the first p = i * step at which each neuron enters the authors' LCA selection.

    For each class c the authors sort |w_c| in descending order and select the shortest prefix
    whose cumulative mass reaches ``p * total_c`` (``cum >= total * p``: the prefix ends *with*
    the first neuron that reaches it, and at p = 0 it is the single largest weight). The neuron at
    sorted position j > 0 is therefore selected at p exactly when the mass before it is below the
    threshold, ``cum[j - 1] < p * total``; position 0 is always selected. So each neuron's entry
    step for class c is the first grid index whose threshold exceeds ``cum[j - 1]``: one
    ``searchsorted`` over the thresholds, computed in the dtype of ``coef`` as the authors' numpy
    code does (thresholds ``total * p`` with p = i / K). A neuron's entry step is the minimum over
    classes (the union). Ties in |w| are sorted by lower index first.

    Parameters
    ----------
    coef : array-like of shape (n_classes, n_features) or (n_features,)
    step : float
        Grid step of p; ``1 / step`` must be whole (the authors: 0.001, i.e. search_stride 1000).

    Returns
    -------
    entry : ndarray of shape (n_features,), int
        In ``0 .. 1 / step``; ``1 / step + 1`` for a neuron that never enters (e.g. all-zero weights).
    """
    K = _lca_grid(step)
    a = _abs_weights(coef)
    C, n = a.shape
    dtype = a.dtype.type
    order = np.argsort(-a, axis=1, kind="stable")  # descending |w|, lower index first on ties
    sorted_a = np.take_along_axis(a, order, axis=1)
    cum = np.cumsum(sorted_a, axis=1)
    p = (np.arange(K + 1) / K).astype(dtype)  # the authors' p / search_stride, as their dtype sees it
    entry_sorted = np.zeros((C, n), dtype=np.int64)
    for c in range(C):  # loop over classes (tens), never over neurons
        total = np.sum(a[c])
        thresholds = total * p
        entry_sorted[c, 1:] = np.searchsorted(thresholds, cum[c, :-1], side="right")
    entry = np.empty((C, n), dtype=np.int64)
    np.put_along_axis(entry, order, entry_sorted, axis=1)
    return entry.min(axis=0)


def lca_ordering(coef: Any, *, step: float = 0.001) -> np.ndarray:
    """Neurons ranked by the authors' LCA: the smaller the p at which a neuron enters, the earlier.

    Within one p-step (the authors' order there is arbitrary: a Python set) neurons are ordered by
    larger total |w| over classes, then lower index, so the ordering is deterministic. Neurons
    that never enter (all-zero weights) come last in the same order. See ``lca_entry_steps`` for
    the derivation; ``tests/test_ranking.py`` checks it against a plain loop over the p-grid.

    Parameters
    ----------
    coef : array-like of shape (n_classes, n_features) or (n_features,)
        Probe weights; pass ``probe.standardized_coef_`` to rank on standardised features, or
        ``probe.coef_`` for the authors' raw weights.
    step : float
        Grid step of p (the authors: 0.001).

    Returns
    -------
    ordering : ndarray of shape (n_features,)
        A permutation of ``range(n_features)``, most important first.
    """
    entry = lca_entry_steps(coef, step=step)
    total = _abs_weights(coef).astype(np.float64).sum(axis=0)
    return np.lexsort((np.arange(len(entry)), -total, entry))


def bottom_ordering(coef: Any, *, step: float = 0.001) -> np.ndarray:
    """The LCA ordering reversed: the least important neurons first (the paper's "bottom" baseline)."""
    return lca_ordering(coef, step=step)[::-1].copy()


def random_ordering(n_features: int, *, random_state: int = 0) -> np.ndarray:
    """A seeded random permutation of ``range(n_features)`` (the paper's "random" baseline)."""
    if not (isinstance(n_features, (int, np.integer)) and n_features >= 1):
        raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
    return np.random.default_rng(random_state).permutation(int(n_features))


def f_statistic(X: Any, y: Any) -> np.ndarray:
    """One-way ANOVA F statistic of every feature across the classes of ``y``.

    ``F = [sum_c n_c (mean_c - mean)^2 / (C - 1)] / [sum_c sum_{i in c} (x_i - mean_c)^2 / (n - C)]``,
    from class sums accumulated by one-hot matrix products over row chunks (float64), so a
    np.memmap is streamed. Equals ``sklearn.feature_selection.f_classif``'s F.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)

    Returns
    -------
    F : ndarray of shape (n_features,)
        NaN for a constant feature (``moments.constant_features``: also a dead neuron whose std is
        float noise); inf when classes differ but are constant within.
    """
    X = check_features(X)
    y = check_targets(y, X.shape[0])
    classes, codes = np.unique(y, return_inverse=True)
    n, C = len(y), len(classes)
    if C < 2 or n <= C:
        raise ValueError(
            f"the F statistic needs at least 2 classes and more items than classes; got {C} classes, {n} items"
        )
    mean, std = feature_stats(X)  # also rejects NaN / inf with a clear message
    constant = constant_features(std, mean)
    sums = np.zeros((C, X.shape[1]))
    sq = np.zeros(X.shape[1])
    starts, step = row_chunks(n, X.shape[1])
    for s in starts:
        xb = np.asarray(X[s : s + step], dtype=np.float64) - mean  # centred: no cancellation
        onehot = np.zeros((len(xb), C))
        onehot[np.arange(len(xb)), codes[s : s + step]] = 1.0
        sums += onehot.T @ xb
        sq += (xb * xb).sum(axis=0)
    counts = np.bincount(codes, minlength=C).astype(np.float64)
    between = (sums**2 / counts[:, None]).sum(axis=0)  # total mean is 0 after centring
    within = np.maximum(sq - between, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (between / (C - 1)) / (within / (n - C))
    F[constant] = np.nan  # dead neurons (moments.constant_features): float noise, never a signal
    return F


def mean_difference_ordering(X: Any, y: Any) -> np.ndarray:
    """Probe-free ranking: neurons by how far apart their class-conditional means are (F statistic).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)

    Returns
    -------
    ordering : ndarray of shape (n_features,)
        Largest F first; constant neurons (NaN) last; ties by lower index.
    """
    F = f_statistic(X, y)
    key = np.where(np.isnan(F), -np.inf, F)
    return np.lexsort((np.arange(len(F)), -key))


def neurons_per_layer(neurons: Any, *, hidden: int, n_layers: int) -> np.ndarray:
    """How many of ``neurons`` (global indices ``layer * hidden + unit``) sit in each layer, shape (n_layers,)."""
    neurons = np.asarray(neurons, dtype=np.int64)
    if neurons.size and (neurons.min() < 0 or neurons.max() >= hidden * n_layers):
        raise ValueError(
            f"neuron indices must lie in [0, {hidden * n_layers}), got range [{neurons.min()}, {neurons.max()}]"
        )
    return np.bincount(neurons // hidden, minlength=n_layers)


# ---------------------------------------------------------------------------------------------
# minimal neuron sets


@dataclass
class MinimalSet:
    """The smallest top-k neuron set on the grid that reaches a dev target.

    Attributes
    ----------
    k : int
        Neurons kept.
    pct : float
        ``k`` as the grid's fraction of ``n_total`` (``k / n_total`` when the target was not reached).
    neurons : ndarray of shape (k,)
        Kept neuron indices, ascending: the columns ``probe`` reads (``X[:, neurons]``).
    score : float
        Dev score of ``probe``.
    target : float
    reached : bool
        False when no grid point reached the target; then all features are kept.
    curve : DataFrame
        Every retraining tried: columns ``pct, k, score``.
    probe : LinearProbe
        The probe trained on ``X_train[:, neurons]`` (score it on test once, at the end).
    """

    k: int
    pct: float
    neurons: np.ndarray
    score: float
    target: float
    reached: bool
    curve: pd.DataFrame = field(repr=False)
    probe: Any = field(repr=False)


def _grid_ks(pcts: Sequence[float], n_total: int, n_features: int) -> list[tuple[float, int]]:
    """(pct, k) pairs with ``k = int(pct * n_total)`` (the authors' truncation), 1 <= k <= n_features, k new."""
    out, seen = [], set()
    for pct in pcts:
        if not 0 < pct <= 1:
            raise ValueError(f"percentages must lie in (0, 1], got {pct}")
        k = int(pct * n_total + 1e-9)
        if 1 <= k <= n_features and k not in seen:
            out.append((float(pct), k))
            seen.add(k)
    return out


GROUP_COLUMNS = 2048
"""Neighbouring grid points k_1 < ... < k_G are trained as one batched model (``probing.fit_subset_probes``)
while ``G * k_G`` stays within this many columns. A probe on a few hundred neurons spends most of its
time on the per-step work of a minibatch step rather than on arithmetic, so training several in one
step is cheaper; beyond this width the arithmetic dominates, and the points after the one that reaches
the target would be trained for nothing."""


def _groups(ks: Sequence[int], max_columns: int | None = None) -> list[list[int]]:
    """Indices of increasing grid sizes ``ks`` in runs of neighbours with ``len(run) * k_last <= max_columns``
    (default ``GROUP_COLUMNS``; 0 gives one run per point)."""
    max_columns = GROUP_COLUMNS if max_columns is None else max_columns
    groups: list[list[int]] = []
    for i, k in enumerate(ks):
        if groups and (len(groups[-1]) + 1) * k <= max_columns:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _check_ordering(ordering: Any, n_features: int) -> np.ndarray:
    """``ordering`` as an int array: a permutation (or a prefix of one) of range(n_features)."""
    ordering = np.asarray(ordering)
    if ordering.ndim != 1 or not np.issubdtype(ordering.dtype, np.integer):
        raise ValueError(
            f"ordering must be a 1D integer array of neuron indices, got shape {ordering.shape} dtype {ordering.dtype}"
        )
    if ordering.size and (ordering.min() < 0 or ordering.max() >= n_features):
        raise ValueError(f"ordering holds indices outside [0, {n_features}): X has {n_features} features")
    if len(np.unique(ordering)) != len(ordering):
        raise ValueError("ordering repeats neurons; pass a permutation such as lca_ordering(...) returns")
    return ordering.astype(np.int64)


def _fit_top(
    X_train: Any,
    y_train: np.ndarray,
    X_dev: Any,
    y_dev: np.ndarray,
    neurons: np.ndarray,
    probe_params: Mapping[str, Any],
) -> tuple[float, Any]:
    """Train a probe on the given (sorted) columns and return its dev score and the probe."""
    probe = make_probe(y_train, **probe_params)
    Xd = np.asarray(X_dev[:, neurons])
    probe.fit(np.asarray(X_train[:, neurons]), y_train, X_dev=Xd, y_dev=y_dev)
    return float(probe.score(Xd, y_dev)), probe


def _fit_tops(
    X_train: Any,
    y_train: np.ndarray,
    X_dev: Any,
    y_dev: np.ndarray,
    ordering: np.ndarray,
    ks: Sequence[int],
    probe_params: Mapping[str, Any],
) -> list[tuple[float, Any]]:
    """``_fit_top`` on ``np.sort(ordering[:k])`` for every k of ``ks``, trained together (``fit_subset_probes``)."""
    sets = [np.sort(ordering[:k]) for k in ks]
    if len(sets) == 1:
        return [_fit_top(X_train, y_train, X_dev, y_dev, sets[0], probe_params)]
    probes = fit_subset_probes(
        X_train, y_train, X_dev=X_dev, y_dev=y_dev, subsets=sets, probe_params=dict(probe_params)
    )
    return [(float(p.score(np.asarray(X_dev[:, c]), y_dev)), p) for c, p in zip(sets, probes)]


def minimal_neuron_set(
    X_train: Any,
    y_train: Any,
    X_dev: Any,
    y_dev: Any,
    ordering: Any,
    *,
    target: float,
    probe_params: Mapping[str, Any] | None = None,
    pct_grid: Sequence[float] = PCT_GRID,
    n_total: int | None = None,
    progress: bool = False,
) -> MinimalSet:
    """Retrain on the top-k neurons for k along the grid; stop at the first dev score >= ``target``.

    As the authors' ``run_neuron_selection``: ``k = int(pct * n_total)`` for ``pct`` in
    ``pct_grid``, where ``n_total`` is the model's neuron count even when ``X_train`` holds a
    subset (grid points with ``k > n_features`` are skipped). The target is usually
    ``oracle_dev_score * (1 - delta / 100)``. The authors stop at a score strictly above the
    target; here "reaches" is ``>=`` (different only on exact ties).

    Parameters
    ----------
    X_train : array-like of shape (n_samples, n_features)
    y_train : array-like of shape (n_samples,)
    X_dev : array-like of shape (n_dev, n_features)
    y_dev : array-like of shape (n_dev,)
    ordering : array-like of int
        Neurons (columns of X) most important first, e.g. ``lca_ordering(probe.standardized_coef_)``.
    target : float
        Dev score to reach (accuracy, or Pearson r for a real-valued target).
    probe_params : dict, optional
        Parameters of the retrained probes (``LinearProbe``).
    pct_grid : sequence of float
        Fractions of ``n_total``, increasing (default ``PCT_GRID``).
    n_total : int, optional
        Neuron count the percentages refer to; defaults to ``n_features``.
    progress : bool
        Show a tqdm bar over grid points.

    Returns
    -------
    result : MinimalSet
    """
    X_train = check_features(X_train, name="X_train")
    y_train = check_targets(y_train, X_train.shape[0], name="y_train", x_name="X_train")
    n_features = X_train.shape[1]
    X_dev = check_features(X_dev, name="X_dev", n_features=n_features)
    y_dev = check_targets(y_dev, X_dev.shape[0], name="y_dev", x_name="X_dev")
    ordering = _check_ordering(ordering, n_features)
    n_total = n_features if n_total is None else int(n_total)
    if n_total < n_features:
        raise ValueError(f"n_total ({n_total}) must be at least the number of features ({n_features})")
    params = dict(probe_params or {})
    rows, probe, score, reached = [], None, math.nan, False
    grid = _grid_ks(pct_grid, n_total, min(n_features, len(ordering)))
    for group in tqdm(_groups([k for _, k in grid]), desc="minimal set", disable=not progress, leave=False):
        fits = _fit_tops(X_train, y_train, X_dev, y_dev, ordering, [grid[i][1] for i in group], params)
        for i, fit in zip(group, fits):  # as one by one: the first point that reaches the target
            (pct, k), (score, probe) = grid[i], fit
            neurons = np.sort(ordering[:k])
            rows.append({"pct": pct, "k": k, "score": score})
            if score >= target:
                reached = True
                break
        if reached:
            break
    if not reached:
        warnings.warn(
            f"no grid point reached the target {target:.4f} (best {max((r['score'] for r in rows), default=math.nan):.4f}); "
            f"keeping all {n_features} features",
            stacklevel=2,
        )
        neurons = np.arange(n_features)
        score, probe = _fit_top(X_train, y_train, X_dev, y_dev, neurons, params)
        pct, k = n_features / n_total, n_features
        rows.append({"pct": pct, "k": k, "score": score})
    curve = pd.DataFrame(rows, columns=["pct", "k", "score"])
    return MinimalSet(
        k=int(k),
        pct=float(pct),
        neurons=neurons,
        score=float(score),
        target=float(target),
        reached=reached,
        curve=curve,
        probe=probe,
    )


def accuracy_curve(
    X_train: Any,
    y_train: Any,
    X_dev: Any,
    y_dev: Any,
    *,
    orderings: Mapping[str, Any],
    pcts: Sequence[float] = PCT_GRID,
    probe_params: Mapping[str, Any] | None = None,
    n_total: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Dev score of probes retrained on the top-k neurons of several orderings (LCA vs random vs bottom).

    Parameters
    ----------
    X_train, y_train, X_dev, y_dev
        As in ``minimal_neuron_set``.
    orderings : mapping name -> ordering
        E.g. ``{"lca": ..., "random": ..., "bottom": ...}``.
    pcts : sequence of float
        Fractions of ``n_total`` (``k = int(pct * n_total)``).
    probe_params : dict, optional
    n_total : int, optional
        Defaults to ``n_features``.
    progress : bool

    Returns
    -------
    curve : DataFrame
        Columns ``ordering, pct, k, score``, one row per (ordering, grid point).
    """
    X_train = check_features(X_train, name="X_train")
    y_train = check_targets(y_train, X_train.shape[0], name="y_train", x_name="X_train")
    n_features = X_train.shape[1]
    X_dev = check_features(X_dev, name="X_dev", n_features=n_features)
    y_dev = check_targets(y_dev, X_dev.shape[0], name="y_dev", x_name="X_dev")
    n_total = n_features if n_total is None else int(n_total)
    params = dict(probe_params or {})
    checked = {name: _check_ordering(o, n_features) for name, o in orderings.items()}
    jobs = []  # (ordering, its grid points, one group of them)
    for name, o in checked.items():
        grid = _grid_ks(pcts, n_total, len(o))
        jobs += [(name, grid, group) for group in _groups([k for _, k in grid])]
    rows = []
    for name, grid, group in tqdm(jobs, desc="accuracy curve", disable=not progress, leave=False):
        fits = _fit_tops(X_train, y_train, X_dev, y_dev, checked[name], [grid[i][1] for i in group], params)
        for i, (score, _) in zip(group, fits):
            pct, k = grid[i]
            rows.append({"ordering": name, "pct": pct, "k": k, "score": score})
    return pd.DataFrame(rows, columns=["ordering", "pct", "k", "score"])


# ---------------------------------------------------------------------------------------------
# the notebook's tables


def neuron_orderings(coef: Any, X: Any, y: Any, *, random_state: int = 0, step: float = 0.001) -> dict[str, np.ndarray]:
    """The four orderings compared in notebook 03: LCA, random, bottom (LCA reversed) and probe-free.

    Parameters
    ----------
    coef : array-like of shape (n_classes, n_features)
        Weights of a probe on all of X's features (``probe.standardized_coef_``).
    X : array-like of shape (n_samples, n_features)
        Train features, for the probe-free ranking.
    y : array-like of shape (n_samples,)
    random_state : int
        Seed of the random ordering.
    step : float
        LCA grid step.

    Returns
    -------
    orderings : dict
        ``{"lca", "random", "bottom", "mean_difference"}`` -> ordering of shape (n_features,).
    """
    lca = lca_ordering(coef, step=step)
    return {
        "lca": lca,
        "random": random_ordering(len(lca), random_state=random_state),
        "bottom": lca[::-1].copy(),
        "mean_difference": mean_difference_ordering(X, y),
    }


def set_predictions(sets: Mapping[str, MinimalSet], *, X_test: Any, oracle: Any) -> dict[str, np.ndarray]:
    """Per-item test predictions of the oracle and of each minimal set's probe.

    Parameters
    ----------
    sets : mapping ordering name -> MinimalSet
    X_test : array-like of shape (n_test, n_features)
        All neurons; each set's probe reads ``X_test[:, set.neurons]``.
    oracle : fitted probe on all n_features

    Returns
    -------
    predictions : dict
        ``"oracle"`` and each ordering name -> ndarray of shape (n_test,).
    """
    out = {"oracle": np.asarray(oracle.predict(X_test))}
    for name, ms in sets.items():
        out[name] = np.asarray(ms.probe.predict(np.asarray(X_test[:, ms.neurons])))
    return out


def minimal_set_table(
    sets: Mapping[str, MinimalSet],
    *,
    X_test: Any,
    y_test: Any,
    oracle: Any,
    n_total: int,
    oracle_dev: float,
    groups: Any = None,
    predictions: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    random_state: int = 0,
) -> pd.DataFrame:
    """Score minimal neuron sets and the oracle on the test split (read here, once), with 95% intervals.

    Every test score carries a percentile bootstrap interval over test items, resampling whole
    sentences when ``groups`` is given (``intervals.score_interval``). Comparisons are paired, on
    the same resamples (``intervals.paired_interval``): each set's score as a fraction of the
    oracle's (``ratio``), and LCA minus the random and bottom orderings' scores (``vs_random``,
    ``vs_bottom``). Real-valued targets (Pearson r) get an item bootstrap of the score only.

    Parameters
    ----------
    sets : mapping ordering name -> MinimalSet
    X_test : array-like of shape (n_test, n_features)
        All neurons; each set's probe reads ``X_test[:, set.neurons]``.
    y_test : array-like of shape (n_test,)
        Labels seen in training (drop others first, e.g. with ``probing.restrict_to_classes``).
    oracle : fitted probe on all n_features
    n_total : int
        The model's neuron count (denominator of ``pct_kept``).
    oracle_dev : float
        The oracle's dev score (the targets were derived from it).
    groups : array-like of shape (n_test,), optional
        Sentence of each test item (word-level tasks); None: items are resampled one by one.
    predictions : mapping, optional
        ``set_predictions(sets, X_test=..., oracle=...)``, when already computed (e.g. to save them).
    n_boot, random_state
        Bootstrap replicates and seed (one seed: every interval of the table uses the same resamples).

    Returns
    -------
    table : DataFrame
        Columns ``ordering, neurons_total, neurons_kept, pct_kept, score, oracle_score`` (test scores;
        ``pct_kept`` in percent), then ``score_low, score_high, oracle_low, oracle_high, ratio,
        ratio_low, ratio_high, vs_random, vs_random_low, vs_random_high, vs_bottom, vs_bottom_low,
        vs_bottom_high`` (NaN where not defined), ``dev_score, oracle_dev_score, target, reached``;
        for class labels also ``macro_f1, oracle_macro_f1, f1_ratio, f1_ratio_low, f1_ratio_high``
        (macro-F1 of the set and of the oracle, and their paired ratio: where one class dominates,
        accuracy rewards predicting it everywhere and macro-F1 does not).
    """
    y_test = np.asarray(y_test)
    preds = dict(predictions) if predictions is not None else set_predictions(sets, X_test=X_test, oracle=oracle)
    regression = is_regression_target(y_test)
    kw = dict(n_boot=n_boot, random_state=random_state)
    nan3 = (math.nan, math.nan, math.nan)

    def score(pred: np.ndarray) -> tuple[float, float, float]:
        if regression:
            ci = bootstrap_ci(y_test, pred, "pearson", **kw)
        else:
            ci = score_interval(y_test, pred, groups=groups, **kw)
        return ci.estimate, ci.low, ci.high

    def paired(a: str, b: str, compare: str) -> tuple[float, float, float]:
        if regression or a not in preds or b not in preds:
            return nan3
        ci = paired_interval(y_test, preds[a], preds[b], groups=groups, compare=compare, **kw)
        return ci.estimate, ci.low, ci.high

    oracle_score, oracle_low, oracle_high = score(preds["oracle"])
    oracle_f1 = math.nan if regression else macro_f1(y_test, preds["oracle"])
    rows = []
    for name, ms in sets.items():
        sc, lo, hi = score(preds[name])
        ratio = paired(name, "oracle", "ratio")
        vs_random = paired(name, "random", "difference") if name == "lca" else nan3
        vs_bottom = paired(name, "bottom", "difference") if name == "lca" else nan3
        rows.append(
            {
                "ordering": name,
                "neurons_total": int(n_total),
                "neurons_kept": int(ms.k),
                "pct_kept": 100.0 * ms.k / n_total,
                "score": sc,
                "oracle_score": oracle_score,
                "score_low": lo,
                "score_high": hi,
                "oracle_low": oracle_low,
                "oracle_high": oracle_high,
                "ratio": ratio[0],
                "ratio_low": ratio[1],
                "ratio_high": ratio[2],
                "vs_random": vs_random[0],
                "vs_random_low": vs_random[1],
                "vs_random_high": vs_random[2],
                "vs_bottom": vs_bottom[0],
                "vs_bottom_low": vs_bottom[1],
                "vs_bottom_high": vs_bottom[2],
                "dev_score": ms.score,
                "oracle_dev_score": oracle_dev,
                "target": ms.target,
                "reached": ms.reached,
            }
        )
        if not regression:
            f1 = paired_interval(
                y_test, preds[name], preds["oracle"], groups=groups, compare="ratio", metric="macro_f1", **kw
            )
            rows[-1] |= {
                "macro_f1": macro_f1(y_test, preds[name]),
                "oracle_macro_f1": oracle_f1,
                "f1_ratio": f1.estimate,
                "f1_ratio_low": f1.low,
                "f1_ratio_high": f1.high,
            }
    return pd.DataFrame(rows)

"""The efficient feature-based transfer pipeline: LayerSelector -> correlation clustering -> LCA.

Start at ``run_transfer``. For word- and sentence-level tasks alike it takes train / dev / test
activations of shape (n_items, n_layers, hidden) and labels, and follows Dalvi et al. (2020, §6):

1. **LayerSelector**: the smallest layer ``l`` whose incremental probe (layers 0..l) reaches
   ``oracle_dev * (1 - delta_layer / 100)`` on dev (``oracle`` = the probe on all layers). The
   incremental probes of the first quarter of the layers are trained first (``FIRST_LAYERS``); the
   others only when none of those reaches the grid's highest target, so a task decoded early (POS)
   does not pay for the 31 probes of a 31-layer model.
2. **Correlation clustering** of the neurons of layers 0..l at distance threshold ``t`` (or none):
   average linkage on ``1 - |r|``, one deterministic representative per cluster; a *base* probe is
   retrained on the representatives.
3. **LCA ranking** of the base probe's weights and the minimal neuron set: the first point of the
   authors' percentage grid whose retrained probe reaches ``base_dev * (1 - delta_neuron / 100)``.

The paper's grid ``(delta_layer, delta_neuron) in {(3,1), (2,1), (1,1)} x t in {none, 0.3}`` is
searched on dev only; among the configurations whose final dev score keeps ``keep_pct`` % of the
oracle's dev score, the one with the fewest neurons wins (ties: higher dev score). The test split is
read once, at the end, after every choice is fixed. The result (``TransferResult``) saves and
reloads, and carries a ``ReducedProbe`` that applies the kept neurons to new activations or text,
with the per-item test predictions of the reduced probe and of the oracle.

``run_transfer_seeds`` runs it once per probe seed on the same data, clustering each selected layer once.

Also here, because they compose clustering and probing:

- ``transfer_over_seeds``: the pipeline's runs over several seeds as mean and spread, with the
  reduced / oracle accuracy ratio as a paired bootstrap interval on the same test items;
- ``cc_sweep``: the authors' ``run_cc_all.py`` reading of general redundancy: a probe retrained on
  the cluster representatives at every threshold, with intervals and a paired ratio to the oracle;
- ``save_predictions`` / ``load_predictions``: per-item labels and predictions on disk (NPZ, no
  pickling), so any comparison can be redone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .clustering import cluster_neurons, correlation_linkage
from .probing import fit_layer_probes, make_probe, restrict_to_classes
from .ranking import PCT_GRID, lca_ordering, minimal_neuron_set
from .validation import is_regression_target, seen_mask

PAPER_GRID: tuple[tuple[float, float, float | None], ...] = (
    (3, 1, None),
    (2, 1, None),
    (1, 1, None),
    (3, 1, 0.3),
    (2, 1, 0.3),
    (1, 1, 0.3),
)
"""(delta_layer, delta_neuron, threshold) of the paper's search; ``None`` = no clustering."""

FIRST_LAYERS = 0.25
"""``run_transfer`` first trains the incremental probes of this fraction of the layers (a sixteenth of the
cost of all of them); only when none reaches the grid's highest target does it train the rest."""


def layer_selector(incremental_scores: Sequence[float], oracle_score: float, delta: float) -> int:
    """Smallest layer whose incremental dev score reaches ``oracle_score * (1 - delta / 100)``.

    Parameters
    ----------
    incremental_scores : sequence of float of shape (n_layers,)
        Dev score of the probe on layers 0..l, for each l.
    oracle_score : float
        Dev score of the probe on all layers.
    delta : float
        Tolerated loss in percent.

    Returns
    -------
    layer : int
        The last layer when no earlier one reaches the target.
    """
    scores = np.asarray(incremental_scores, dtype=float)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"incremental_scores must be a non-empty 1D sequence, got shape {scores.shape}")
    if delta < 0:
        raise ValueError(f"delta is a percentage loss and must be >= 0, got {delta}")
    hits = np.flatnonzero(reaches(scores, oracle_score, delta))
    return int(hits[0]) if len(hits) else len(scores) - 1


def reaches(scores: Any, oracle_score: float, delta: float) -> np.ndarray:
    """Which ``scores`` reach ``oracle_score * (1 - delta / 100)`` (the LayerSelector's test), as bools."""
    return np.asarray(scores, dtype=float) >= oracle_score * (1 - delta / 100)


# ---------------------------------------------------------------------------------------------
# the reduced model


@dataclass
class ReducedProbe:
    """A linear probe on a few neurons of the first ``layer + 1`` hidden states.

    Attributes
    ----------
    layer : int
        Highest hidden state needed (0 = embeddings): the model can stop after block ``layer``.
    hidden : int
        Width of a hidden state.
    neurons : ndarray of shape (n_kept,)
        Global neuron indices ``layer * hidden + unit``, ascending.
    coef_ : ndarray of shape (n_classes, n_kept) or (n_kept,)
        Weights on the raw activations (a regression probe has one row, stored flat).
    intercept_ : ndarray of shape (n_classes,) or ()
    classes_ : ndarray of shape (n_classes,) or None
        None for a regression probe.
    """

    layer: int
    hidden: int
    neurons: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray | None

    @classmethod
    def from_probe(cls, probe: Any, *, neurons: np.ndarray, hidden: int) -> ReducedProbe:
        """Wrap a fitted ``LinearProbe`` trained on ``X[:, neurons]``."""
        neurons = np.asarray(neurons, dtype=np.int64)
        return cls(
            int(neurons.max() // hidden),
            hidden,
            neurons,
            np.asarray(probe.coef_, dtype=np.float64),
            np.asarray(probe.intercept_, dtype=np.float64),
            getattr(probe, "classes_", None),
        )

    def features(self, activations: Any) -> np.ndarray:
        """The kept neurons of activations of shape (n_samples, >= layer + 1, hidden) -> (n_samples, n_kept)."""
        a = activations
        if a.ndim != 3 or a.shape[1] <= self.layer or a.shape[2] != self.hidden:
            raise ValueError(
                f"expected activations of shape (n_samples, >= {self.layer + 1}, {self.hidden}), got {a.shape}"
            )
        return np.asarray(a[:, self.neurons // self.hidden, self.neurons % self.hidden], dtype=np.float64)

    def decision_function(self, activations: Any) -> np.ndarray:
        """Logits (or regression outputs) for activations of shape (n_samples, >= layer + 1, hidden)."""
        return self.features(activations) @ self.coef_.T + self.intercept_

    def predict(self, activations: Any) -> np.ndarray:
        """Predicted labels, ndarray of shape (n_samples,)."""
        out = self.decision_function(activations)
        return out if self.classes_ is None else self.classes_[out.argmax(axis=1)]

    def predict_texts(
        self, loaded: Any, texts: Sequence, *, level: str, aggregation: str = "auto", batch_size: int = 32
    ) -> np.ndarray:
        """Run the model only up to ``layer`` on new text and predict: the reduced model end to end."""
        from .activations import extract
        from .models import truncated

        with truncated(loaded.model, self.layer):
            acts = extract(
                dataclasses.replace(loaded, n_layers=self.layer + 1),
                texts,
                level=level,
                aggregation=aggregation,
                batch_size=batch_size,
                progress=False,
            )
        return self.predict(acts)


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class TransferResult:
    """What the pipeline chose on dev and how it scored on test.

    Attributes
    ----------
    n_layers, hidden, neurons_total : int
        The model's shape; ``neurons_total = n_layers * hidden``.
    oracle_dev, oracle_test : float
    delta_layer, delta_neuron : float
    threshold : float or None
        Clustering threshold of the chosen configuration (None: no clustering).
    selected_layer : int
    neurons : ndarray of shape (n_kept,)
        Kept neurons as global indices into the full model.
    dev, test : float
        Scores of the final probe.
    grid : DataFrame
        One row per configuration tried (dev scores only).
    steps : DataFrame
        The chosen configuration step by step (oracle -> LS -> LS+CC -> LS+CC+FS): neurons,
        pct_kept, dev and test scores.
    reduced : ReducedProbe
    oracle : ReducedProbe
        The oracle probe (all neurons) in the same form, for comparisons on new data.
    test_predictions : ndarray of shape (n_test,)
        The final probe's predictions on the test items (after unseen-label items were dropped).
    oracle_test_predictions : ndarray of shape (n_test,)
        The oracle's predictions on the same items (for paired comparisons).
    test_labels : ndarray of shape (n_test,)
        The labels of those items.
    test_items : ndarray of shape (n_test,)
        Their row indices in the test split as passed (rows whose label never occurs in train are
        dropped): ``store.sentence_ids[test_items]`` gives the sentence of each scored word.
    info : dict
        Anything else worth keeping (dropped unseen-label items, model and task names).
    """

    n_layers: int
    hidden: int
    neurons_total: int
    oracle_dev: float
    oracle_test: float
    delta_layer: float
    delta_neuron: float
    threshold: float | None
    selected_layer: int
    neurons: np.ndarray
    dev: float
    test: float
    grid: pd.DataFrame = field(repr=False)
    steps: pd.DataFrame = field(repr=False)
    reduced: ReducedProbe = field(repr=False)
    oracle: ReducedProbe | None = field(repr=False, default=None)
    test_predictions: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    info: dict = field(default_factory=dict)
    oracle_test_predictions: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    test_labels: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    test_items: np.ndarray = field(repr=False, default_factory=lambda: np.array([], dtype=np.int64))

    @property
    def neurons_kept(self) -> int:
        return int(len(self.neurons))

    @property
    def pct_kept(self) -> float:
        return 100.0 * self.neurons_kept / self.neurons_total

    @property
    def pct_of_oracle(self) -> float:
        return 100.0 * self.test / self.oracle_test

    def summary(self) -> dict:
        """One row for the results table."""
        return {
            "oracle_test": self.oracle_test,
            "selected_layer": self.selected_layer,
            "threshold": self.threshold,
            "delta_layer": self.delta_layer,
            "delta_neuron": self.delta_neuron,
            "neurons_total": self.neurons_total,
            "neurons_kept": self.neurons_kept,
            "pct_kept": self.pct_kept,
            "test": self.test,
            "pct_of_oracle": self.pct_of_oracle,
            "oracle_dev": self.oracle_dev,
            "dev": self.dev,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to a folder (JSON + NPZ + CSV), atomically; return the folder."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        scalars = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("neurons", "grid", "steps", "reduced", "oracle", *_ITEM_ARRAYS)
        }
        (tmp / "result.json").write_text(
            json.dumps({**scalars, "reduced_layer": self.reduced.layer}, indent=1, default=_json_default)
        )
        r = self.reduced
        arrays = {
            "neurons": self.neurons,
            "reduced_neurons": r.neurons,
            "coef": r.coef_,
            "intercept": r.intercept_,
            **{name: _portable(getattr(self, name)) for name in _ITEM_ARRAYS},
        }
        if r.classes_ is not None:
            arrays["classes"] = np.asarray(r.classes_)
        if self.oracle is not None:
            arrays.update(oracle_coef=self.oracle.coef_, oracle_intercept=self.oracle.intercept_)
        np.savez(tmp / "arrays.npz", **arrays)
        self.grid.to_csv(tmp / "grid.csv", index=False)
        self.steps.to_csv(tmp / "steps.csv", index=False)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TransferResult:
        """Read a result written by ``save``."""
        path = Path(path)
        if not (path / "result.json").exists():
            raise FileNotFoundError(f"{path} holds no saved TransferResult (result.json missing)")
        meta = json.loads((path / "result.json").read_text())
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        reduced = ReducedProbe(
            meta.pop("reduced_layer"),
            meta["hidden"],
            arrays["reduced_neurons"],
            arrays["coef"],
            arrays["intercept"],
            arrays.get("classes"),
        )
        oracle = None
        if "oracle_coef" in arrays:
            oracle = ReducedProbe(
                meta["n_layers"] - 1,
                meta["hidden"],
                np.arange(meta["neurons_total"]),
                arrays["oracle_coef"],
                arrays["oracle_intercept"],
                arrays.get("classes"),
            )
        grid = pd.read_csv(path / "grid.csv")
        steps = pd.read_csv(path / "steps.csv")
        items = {name: arrays[name] for name in _ITEM_ARRAYS if name in arrays}  # older saves lack some
        return cls(**meta, neurons=arrays["neurons"], grid=grid, steps=steps, reduced=reduced, oracle=oracle, **items)


_ITEM_ARRAYS = ("test_predictions", "oracle_test_predictions", "test_labels", "test_items")
"""Per-test-item arrays of a ``TransferResult``, saved beside the probe."""


def _portable(a: Any) -> np.ndarray:
    """``a`` as an array ``np.save`` writes without pickling (object arrays of str become unicode)."""
    a = np.asarray(a)
    if a.dtype == object:
        a = np.asarray(a.tolist())
        if a.dtype == object:
            raise TypeError(
                "labels or predictions of mixed types cannot be saved without pickling; "
                "convert them to one type (str or int) first"
            )
    return a


def _json_default(x: Any) -> Any:
    """JSON for numpy scalars."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot serialise {type(x).__name__}")


# ---------------------------------------------------------------------------------------------
# the pipeline


def _flat(acts: Any, n_layers: int) -> np.ndarray:
    """Layers 0..n_layers-1 of (n, L, h) activations as a (n, n_layers * h) float32 array."""
    return np.ascontiguousarray(np.asarray(acts[:, :n_layers], dtype=np.float32).reshape(len(acts), -1))


@dataclass
class _Search:
    """What the pipeline found for one (selected layer, clustering threshold): kept candidates and minimal sets."""

    candidates: np.ndarray  # neurons of layers 0..layer left after clustering, shape (n_candidates,)
    base: Any  # probe on the candidates
    base_dev: float
    sets: dict[float, Any]  # delta_neuron -> MinimalSet over the candidates


def run_transfer(
    train: tuple[Any, Any],
    dev: tuple[Any, Any],
    test: tuple[Any, Any] | Callable[[], tuple[Any, Any]],
    *,
    grid: Sequence[tuple[float, float, float | None]] = PAPER_GRID,
    keep_pct: float = 97.0,
    probe_params: dict | None = None,
    pct_grid: Sequence[float] = PCT_GRID,
    progress: bool = True,
    info: dict | None = None,
    clusters: dict | None = None,
) -> TransferResult:
    """Run LayerSelector -> correlation clustering -> LCA minimal set, choose on dev, test once.

    Every distinct selected layer is flattened once; every distinct (layer, threshold) is clustered
    and gets one base probe and LCA ordering; every distinct (layer, threshold, delta_neuron) one
    minimal-set search. Configurations of the grid that share these steps share their results.

    Parameters
    ----------
    train, dev : (activations, labels)
        Activations of shape (n_items, n_layers, hidden) (memory maps are fine) and labels of shape
        (n_items,). Dev (and test) items whose class never occurs in train are dropped.
    test : (activations, labels) or callable returning them
        Read once, after every choice is made (a callable makes that visible: it is called once).
    grid : sequence of (delta_layer, delta_neuron, threshold)
        Configurations to try; ``threshold=None`` skips clustering. Defaults to the paper's.
    keep_pct : float
        A configuration qualifies when its final dev score is at least ``keep_pct`` % of the
        oracle's; the qualifying one with the fewest neurons is chosen. A parameter of the pipeline,
        set to the paper's 97% by default; whether a result meets the paper's claim is judged on test
        by ``report.PAPER_CLAIMS["transfer"]``.
    probe_params : dict, optional
        Parameters of every probe (``LinearProbe``); the solver defaults to ``"adam"`` (seeded,
        shuffled minibatches, early stopping on dev).
    pct_grid : sequence of float
        The minimal-set grid (fractions of the model's neuron count).
    progress : bool
    info : dict, optional
        Stored on the result (model and task names, ...).
    clusters : dict, optional
        Cluster representatives by ``(layer, threshold)``, filled here on first need and read back by
        later calls given the same dict. They depend on the train activations only, so runs over the
        same train rows that differ in the probes' seed can share them (``run_transfer_seeds``): the
        correlation and linkage, most of a run's time, are then computed once per selected layer.

    Returns
    -------
    result : TransferResult
    """
    A, y = train
    Ad, yd = dev
    y, yd = np.asarray(y), np.asarray(yd)
    if A.ndim != 3:
        raise ValueError(f"train activations must have shape (n_items, n_layers, hidden), got {A.shape}")
    n, L, h = A.shape
    if len(y) != n or len(yd) != len(Ad):
        raise ValueError(f"labels and activations differ in length: train {len(y)} vs {n}, dev {len(yd)} vs {len(Ad)}")
    if len(y) == 0 or len(yd) == 0:
        raise ValueError("train and dev must hold at least one item each")
    params = {"solver": "adam", **(probe_params or {})}
    info = dict(info or {})
    regression = is_regression_target(y)
    if not regression:
        Ad, yd, info["dropped_dev"] = restrict_to_classes(Ad, yd, np.unique(y))
    total = L * h

    grid = [(d_layer, d_neuron, t) for d_layer, d_neuron, t in grid]
    # the oracle and the incremental probes of the first quarter of the layers (dev only), from one read
    # and standardisation of the train rows; the selector reads no later layer when one of these already
    # reaches the grid's highest target, else the incremental probes of every layer are trained
    first = min(L, max(1, math.ceil(L * FIRST_LAYERS)))
    table, probes = fit_layer_probes(
        A,
        y,
        activations_dev=Ad,
        y_dev=yd,
        mode=["oracle", "incremental"],
        probe_params=params,
        return_probes=True,
        incremental_layers=first,
    )
    oracle_probes, inc_probes = probes[:1], probes[1:]
    oracle_dev = float(table["score"].iloc[0])
    inc_scores = table["score"].to_numpy()[1:]
    if first < L and not reaches(inc_scores, oracle_dev, min(c[0] for c in grid)).any():
        table, inc_probes = fit_layer_probes(
            A, y, activations_dev=Ad, y_dev=yd, mode="incremental", probe_params=params, return_probes=True
        )
        inc_scores = table["score"].to_numpy()
    info["incremental_layers"] = len(inc_scores)
    layer_of = {cfg: layer_selector(inc_scores, oracle_dev, cfg[0]) for cfg in grid}
    searches: dict[tuple[int, float | None], _Search] = {}
    bar = tqdm(
        total=len(set((layer_of[c], c[2], c[1]) for c in grid)), desc="transfer grid", disable=not progress, leave=False
    )
    clusters = {} if clusters is None else clusters
    for layer in dict.fromkeys(layer_of.values()):
        thresholds = list(dict.fromkeys(c[2] for c in grid if layer_of[c] == layer))
        missing = [t for t in thresholds if t is not None and (layer, t) not in clusters]
        if missing:  # before the flat copies, while the linkage holds two n² arrays
            abs_corr, tree = correlation_linkage(A[:, : layer + 1], progress=False)
            for t in missing:
                clusters[layer, t] = cluster_neurons(abs_corr, t, linkage=tree).representatives
            del abs_corr, tree
        X, Xd = _flat(A, layer + 1), _flat(Ad, layer + 1)  # once per selected layer
        for t in thresholds:
            if t is None:
                cand, Xs, Xsd = np.arange(X.shape[1]), X, Xd
            else:
                cand = clusters[layer, t]
                Xs, Xsd = X[:, cand], Xd[:, cand]
            base = make_probe(y, **params).fit(Xs, y, X_dev=Xsd, y_dev=yd)
            base_dev = float(base.score(Xsd, yd))
            ordering = lca_ordering(np.atleast_2d(base.standardized_coef_))
            sets = {}
            for d_neuron in dict.fromkeys(c[1] for c in grid if layer_of[c] == layer and c[2] == t):
                sets[d_neuron] = minimal_neuron_set(
                    Xs,
                    y,
                    Xsd,
                    yd,
                    ordering,
                    target=base_dev * (1 - d_neuron / 100),
                    probe_params=params,
                    pct_grid=pct_grid,
                    n_total=total,
                )
                bar.update(1)
            searches[layer, t] = _Search(cand, base, base_dev, sets)
        del X, Xd
    bar.close()

    rows = []
    for d_layer, d_neuron, t in grid:
        layer = layer_of[d_layer, d_neuron, t]
        found = searches[layer, t]
        ms = found.sets[d_neuron]
        rows.append(
            {
                "delta_layer": d_layer,
                "delta_neuron": d_neuron,
                "threshold": t,
                "selected_layer": layer,
                "neurons_after_ls": (layer + 1) * h,
                "neurons_after_cc": len(found.candidates),
                "neurons_kept": len(ms.neurons),
                "pct_kept": 100.0 * len(ms.neurons) / total,
                "ls_dev": float(inc_scores[layer]),
                "base_dev": found.base_dev,
                "dev": ms.score,
                "pct_of_oracle_dev": 100.0 * ms.score / oracle_dev,
                "reached": ms.reached,
            }
        )
    grid_table = pd.DataFrame(rows)
    chosen = _choose(grid_table, keep_pct)
    d_layer, d_neuron, t = grid[chosen]
    layer = layer_of[d_layer, d_neuron, t]
    found = searches[layer, t]
    ms = found.sets[d_neuron]
    cand, kept = found.candidates, found.candidates[ms.neurons]
    grid_table["chosen"] = np.arange(len(grid_table)) == chosen

    # the test split: read once, now that every choice is fixed
    At, yt = test() if callable(test) else test
    yt = np.asarray(yt)
    test_items = np.arange(len(yt))
    if not regression:
        test_items = np.flatnonzero(seen_mask(yt, np.unique(y)))
        At, yt, info["dropped_test"] = restrict_to_classes(At, yt, np.unique(y))
    X_oracle = _flat(At, L)
    oracle_test_predictions = oracle_probes[0].predict(X_oracle)
    oracle_test = float(oracle_probes[0].score(X_oracle, yt))
    del X_oracle
    Xt_sel = _flat(At, layer + 1)
    test_predictions = ms.probe.predict(Xt_sel[:, kept])
    steps = pd.DataFrame(
        [
            {"step": "oracle", "neurons": total, "dev": oracle_dev, "test": oracle_test},
            {
                "step": "LS",
                "neurons": (layer + 1) * h,
                "dev": float(inc_scores[layer]),
                "test": float(inc_probes[layer].score(Xt_sel, yt)),
            },
            {
                "step": "LS+CC",
                "neurons": len(cand),
                "dev": found.base_dev,
                "test": float(found.base.score(Xt_sel[:, cand], yt)),
            },
            {
                "step": "LS+CC+FS",
                "neurons": len(kept),
                "dev": ms.score,
                "test": float(ms.probe.score(Xt_sel[:, kept], yt)),
            },
        ]
    )
    steps["pct_kept"] = 100.0 * steps["neurons"] / total
    return TransferResult(
        n_layers=L,
        hidden=h,
        neurons_total=total,
        oracle_dev=oracle_dev,
        oracle_test=oracle_test,
        delta_layer=float(d_layer),
        delta_neuron=float(d_neuron),
        threshold=None if t is None else float(t),
        selected_layer=layer,
        neurons=kept,
        dev=ms.score,
        test=float(steps["test"].iloc[-1]),
        grid=grid_table,
        steps=steps,
        reduced=ReducedProbe.from_probe(ms.probe, neurons=kept, hidden=h),
        oracle=ReducedProbe.from_probe(oracle_probes[0], neurons=np.arange(total), hidden=h),
        test_predictions=np.asarray(test_predictions),
        info=info,
        oracle_test_predictions=np.asarray(oracle_test_predictions),
        test_labels=yt,
        test_items=test_items,
    )


def run_transfer_seeds(
    train: tuple[Any, Any],
    dev: tuple[Any, Any],
    test: tuple[Any, Any] | Callable[[], tuple[Any, Any]],
    *,
    seeds: Sequence[int],
    probe_params: dict | None = None,
    info: dict | None = None,
    **kwargs: Any,
) -> list[TransferResult]:
    """``run_transfer`` once per probe seed on the same data, clustering each selected layer once.

    Equal, run for run, to ``[run_transfer(train, dev, test, probe_params={**probe_params,
    "random_state": s}, info={**info, "seed": s}) for s in seeds]``: the seed moves the probes'
    minibatches only, so the cluster representatives of a (layer, threshold) are the same in every run
    and are computed by the first run that needs them (``run_transfer``'s ``clusters``).

    Parameters
    ----------
    train, dev, test
        As in ``run_transfer`` (a callable ``test`` is called once per run).
    seeds : sequence of int
        The probes' ``random_state`` of each run.
    probe_params, info : dict, optional
        As in ``run_transfer``; each run adds its seed (``random_state``, ``info["seed"]``).
    **kwargs
        Passed to every ``run_transfer`` (``grid``, ``keep_pct``, ``pct_grid``, ``progress``).

    Returns
    -------
    results : list of TransferResult
        One per seed, in the order of ``seeds``.
    """
    if len(seeds) == 0:
        raise ValueError("run_transfer_seeds needs at least one seed, e.g. seeds=[0, 1, 2]")
    clusters: dict = {}
    return [
        run_transfer(
            train,
            dev,
            test,
            probe_params={**(probe_params or {}), "random_state": int(s)},
            info={**(info or {}), "seed": int(s)},
            clusters=clusters,
            **kwargs,
        )
        for s in seeds
    ]


def _choose(grid_table: pd.DataFrame, keep_pct: float) -> int:
    """Row of the fewest-neuron configuration keeping ``keep_pct`` % of the oracle on dev (else the best dev)."""
    ok = grid_table["pct_of_oracle_dev"] >= keep_pct
    pool = grid_table[ok] if ok.any() else grid_table
    if not ok.any():
        return int(pool["dev"].idxmax())
    return int(pool.sort_values(["neurons_kept", "dev"], ascending=[True, False], kind="stable").index[0])


# ---------------------------------------------------------------------------------------------
# the pipeline over seeds, with intervals


def _interval_columns(
    y: np.ndarray, reduced: np.ndarray, oracle: np.ndarray, names: tuple[str, str, str], kw: dict
) -> tuple[dict[str, float], tuple[float, float]]:
    """Intervals of the reduced and the oracle predictions and their paired ratio, as table columns.

    ``names`` = (reduced, oracle, ratio) column prefixes; ``kw`` goes to ``intervals.score_interval`` and
    ``intervals.paired_interval`` (bootstrap size, seed, groups, metric).

    Returns
    -------
    columns : dict
        ``<reduced>_low``, ``<reduced>_high``, ``<oracle>_low``, ``<oracle>_high``, ``<ratio>``,
        ``<ratio>_low``, ``<ratio>_high``.
    estimates : (float, float)
        The reduced and the oracle score on the pooled predictions (the caller names them).
    """
    from .intervals import paired_interval, score_interval

    red, orc = score_interval(y, reduced, **kw), score_interval(y, oracle, **kw)
    ratio = paired_interval(y, reduced, oracle, compare="ratio", **kw)
    r, o, q = names
    columns = {
        f"{r}_low": red.low,
        f"{r}_high": red.high,
        f"{o}_low": orc.low,
        f"{o}_high": orc.high,
        q: ratio.estimate,
        f"{q}_low": ratio.low,
        f"{q}_high": ratio.high,
    }
    return columns, (red.estimate, orc.estimate)


def transfer_over_seeds(
    results: Sequence[TransferResult],
    *,
    test_groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    random_state: int = 0,
    macro_f1: bool | None = None,
) -> dict[str, float]:
    """Mean and spread of the pipeline's results over seeds, and the reduced/oracle ratio with its interval.

    The runs differ only in the probes' seed, so they score the same test items. The ratio is the
    seed-averaged accuracy of the reduced probes over the seed-averaged accuracy of the oracles, with a
    paired bootstrap over test items (whole sentences when ``test_groups`` is given): every seed's
    predictions are stacked and the items of one group share a group id across seeds, so a
    resample draws an item for all seeds at once (``intervals.paired_interval``).

    Parameters
    ----------
    results : sequence of TransferResult
        One per seed, of one model × task, each with its per-item test predictions.
    test_groups : array-like of shape (n_test_split,), optional
        Group (sentence) of each row of the test split as passed to ``run_transfer`` (e.g. the store's
        ``sentence_ids``); indexed with ``result.test_items``. None: each item is its own group.
    n_boot, level, random_state
        As in ``intervals.paired_interval``.
    macro_f1 : bool, optional
        Also the macro-F1 of the reduced probes and of the oracles (seeds pooled) and their ratio, on
        the same resamples. Default: for class labels (not for a real-valued target). On a task where
        one class dominates (NER: 95% ``O``) accuracy rewards a probe that predicts that class
        everywhere; macro-F1 does not.

    Returns
    -------
    summary : dict
        ``seeds``; ``<q>_mean``, ``<q>_sd`` (sample standard deviation over seeds), ``<q>_min`` and
        ``<q>_max`` for ``q`` in ``pct_kept, neurons_kept, selected_layer, test, oracle_test,
        pct_of_oracle``; ``test_low, test_high`` and ``oracle_low, oracle_high`` (intervals of the
        seed-averaged accuracies); ``ratio, ratio_low, ratio_high`` (reduced / oracle, as a fraction);
        ``n_test`` and ``n_test_groups``; with ``macro_f1``, ``macro_f1, macro_f1_low, macro_f1_high``
        (reduced), ``oracle_macro_f1, oracle_macro_f1_low, oracle_macro_f1_high`` and ``f1_ratio,
        f1_ratio_low, f1_ratio_high``.
    """
    results = list(results)
    if not results:
        raise ValueError("transfer_over_seeds needs at least one TransferResult")
    first = results[0]
    for r in results:
        if len(r.test_predictions) == 0 or len(r.oracle_test_predictions) != len(r.test_predictions):
            raise ValueError("a result lacks per-item test predictions (saved by an older run_transfer); rerun it")
        if not (np.array_equal(r.test_items, first.test_items) and np.array_equal(r.test_labels, first.test_labels)):
            raise ValueError("the results score different test items: pass the runs of one model × task, one per seed")
    n = len(first.test_labels)
    groups = np.arange(n) if test_groups is None else np.asarray(test_groups)[first.test_items]
    s = len(results)
    y = np.tile(first.test_labels, s)
    g = np.tile(groups, s)
    reduced = np.concatenate([r.test_predictions for r in results])
    oracle = np.concatenate([r.oracle_test_predictions for r in results])
    kw = dict(groups=g, n_boot=n_boot, level=level, random_state=random_state)
    out: dict[str, float] = {"seeds": s}
    per_seed = pd.DataFrame(
        [
            {
                "pct_kept": r.pct_kept,
                "neurons_kept": r.neurons_kept,
                "selected_layer": r.selected_layer,
                "test": r.test,
                "oracle_test": r.oracle_test,
                "pct_of_oracle": r.pct_of_oracle,
            }
            for r in results
        ]
    )
    for q in per_seed.columns:
        v = per_seed[q].to_numpy(float)
        out |= {
            f"{q}_mean": float(v.mean()),
            f"{q}_sd": float(v.std(ddof=1)) if s > 1 else 0.0,
            f"{q}_min": float(v.min()),
            f"{q}_max": float(v.max()),
        }
    acc, _ = _interval_columns(y, reduced, oracle, ("test", "oracle", "ratio"), kw)  # estimates: the seed means above
    out |= acc
    out |= {"n_test": n, "n_test_groups": int(len(np.unique(groups)))}
    if macro_f1 is None:
        macro_f1 = not is_regression_target(first.test_labels)
    if macro_f1:
        f1, (red_f1, orc_f1) = _interval_columns(
            y, reduced, oracle, ("macro_f1", "oracle_macro_f1", "f1_ratio"), kw | {"metric": "macro_f1"}
        )
        out |= {"macro_f1": red_f1, "oracle_macro_f1": orc_f1} | f1
    return out


# ---------------------------------------------------------------------------------------------
# general redundancy the authors' way: a probe on the cluster representatives at every threshold


@dataclass
class ClusterSweep:
    """Probes retrained on the cluster representatives at every threshold, against the oracle.

    Attributes
    ----------
    table : DataFrame
        One row per step: ``oracle`` (all neurons), ``constant`` (the neurons constant on train,
        removed trivially; no probe), then ``clustering`` at each threshold. Columns ``step,
        threshold, neurons_total, neurons_constant, neurons_kept, pct_kept, pct_removed,
        pct_removed_nonconstant, dev, dev_low, dev_high, test, test_low, test_high, ratio, ratio_low,
        ratio_high, n_test, n_test_groups`` (and ``test_macro_f1, test_macro_f1_low,
        test_macro_f1_high`` with ``macro_f1=True``). ``neurons_kept`` never counts a constant neuron;
        ``pct_removed = 100 - pct_kept`` counts them as removed; ``pct_removed_nonconstant`` is the
        share of the non-constant neurons that clustering removes (the evidence of redundancy);
        ``ratio`` is test accuracy over the oracle's on the same items (a fraction) with its paired
        interval.
    y_test : ndarray of shape (n_test,)
        Labels of the scored test items (unseen-label items dropped).
    test_items : ndarray of shape (n_test,)
        Their rows in the test split as passed.
    test_groups : ndarray of shape (n_test,)
        Their resampling groups (the items themselves when no groups were given).
    predictions : dict of str to ndarray of shape (n_test,)
        ``"oracle"`` and ``"t=<threshold>"``: per-item test predictions of each probe.
    """

    table: pd.DataFrame
    y_test: np.ndarray
    test_items: np.ndarray
    test_groups: np.ndarray
    predictions: dict[str, np.ndarray]


def _seen(A: Any, y: np.ndarray, groups: Any, classes: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose label occurs in ``classes``: activations, labels, row indices, groups (default: the rows)."""
    rows = np.arange(len(y))
    groups = rows if groups is None else np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(
            f"groups must give one group per item: {len(groups)} groups for {len(y)} items. "
            f"For word-level tasks pass the store's sentence_ids."
        )
    keep = seen_mask(y, classes)
    if keep.all():
        return A, y, rows, groups
    rows = np.flatnonzero(keep)
    return A[rows], y[rows], rows, groups[rows]


def cc_sweep(
    train: tuple[Any, Any],
    dev: tuple[Any, Any],
    test: tuple[Any, Any],
    clusterings: Sequence[Any],
    *,
    constant: Any = (),
    probe_params: dict | None = None,
    dev_groups: Any = None,
    test_groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    random_state: int = 0,
    macro_f1: bool = True,
    progress: bool = True,
) -> ClusterSweep:
    """Retrain the probe on the cluster representatives at every threshold (the authors' ``run_cc_all.py``).

    For each clustering (one per threshold, e.g. ``GeneralRedundancy.sweep`` of the train split) a
    probe is trained on its representatives, constant neurons left out, and scored on dev and test
    with a 95% bootstrap interval (by sentence when groups are given); the oracle (all neurons, the
    same probe parameters) is scored on the same items, and each threshold's test accuracy is
    compared with it as a paired ratio interval on the same resamples.

    Parameters
    ----------
    train, dev, test : (activations, labels)
        Activations of shape (n_items, n_layers, hidden) (memory maps are fine) and class labels of
        shape (n_items,). Dev and test items whose class never occurs in train are dropped.
    clusterings : sequence of clustering.NeuronClusters
        Over all ``n_layers * hidden`` neurons (neuron ``layer * hidden + unit``).
    constant : array-like of int
        Neurons constant over the train items (``GeneralRedundancy.constant_neurons``): reported on
        their own row and never counted as kept.
    probe_params : dict, optional
        Parameters of every probe (``LinearProbe``); the solver defaults to ``"adam"``.
    dev_groups, test_groups : array-like of shape (n_dev,) and (n_test,), optional
        Resampling group of each item (the sentence of each word for word-level tasks).
    n_boot, level, random_state
        Bootstrap settings (``intervals.score_interval``); every interval uses the same resamples.
    macro_f1 : bool, default True
        Also report test macro-F1 with its interval (``test_macro_f1``, ``_low``, ``_high``): beside
        accuracy for tasks where one class dominates (NER's ``O``).
    progress : bool

    Returns
    -------
    sweep : ClusterSweep
    """
    from .intervals import paired_interval, score_interval

    A, y = train[0], np.asarray(train[1])
    if getattr(A, "ndim", 0) != 3:
        raise ValueError(
            f"train activations must have shape (n_items, n_layers, hidden), got {getattr(A, 'shape', None)}"
        )
    if is_regression_target(y):
        raise ValueError("cc_sweep scores accuracy with bootstrap intervals: it needs class labels, got real values")
    n, L, h = A.shape
    total = L * h
    if len(y) != n:
        raise ValueError(f"train labels and activations differ in length: {len(y)} vs {n}")
    for c in clusterings:
        if c.n_features != total:
            raise ValueError(
                f"a clustering covers {c.n_features} neurons, the activations hold {total} "
                f"({L} layers x {h}); cluster the same store's neurons"
            )
    classes = np.unique(y)
    Ad, yd, _, gd = _seen(dev[0], np.asarray(dev[1]), dev_groups, classes)
    At, yt, items, gt = _seen(test[0], np.asarray(test[1]), test_groups, classes)
    constant = np.unique(np.asarray(constant, dtype=np.int64))
    params = {"solver": "adam", **(probe_params or {})}
    boot = dict(n_boot=n_boot, level=level, random_state=random_state)

    X, Xd, Xt = (a.reshape(len(a), total) for a in (A, Ad, At))
    sets: list[tuple[str, float, np.ndarray | None]] = [("oracle", float("nan"), None)]
    sets += [("clustering", float(c.threshold), np.setdiff1d(c.representatives, constant)) for c in clusterings]
    predictions: dict[str, np.ndarray] = {}
    rows = []
    for step, t, neurons in tqdm(sets, desc="probes on representatives", disable=not progress, leave=False):
        if neurons is None:  # all neurons: memory maps stay maps (the probe reads them in row chunks)
            Xs, Xsd, Xst = X, Xd, Xt
        else:
            Xs, Xsd, Xst = (np.asarray(x[:, neurons], dtype=np.float32) for x in (X, Xd, Xt))
        probe = make_probe(y, **params).fit(Xs, y, X_dev=Xsd, y_dev=yd)
        pred_dev, pred_test = probe.predict(Xsd), probe.predict(Xst)
        key = "oracle" if neurons is None else f"t={t:g}"
        predictions[key] = pred_test
        kept = total if neurons is None else len(neurons)
        dev_iv, test_iv = (
            score_interval(yd, pred_dev, groups=gd, **boot),
            score_interval(yt, pred_test, groups=gt, **boot),
        )
        ratio = paired_interval(yt, pred_test, predictions["oracle"], compare="ratio", groups=gt, **boot)
        rows.append(
            {
                "step": step,
                "threshold": t,
                "neurons_kept": kept,
                "dev": dev_iv.estimate,
                "dev_low": dev_iv.low,
                "dev_high": dev_iv.high,
                "test": test_iv.estimate,
                "test_low": test_iv.low,
                "test_high": test_iv.high,
                "ratio": ratio.estimate,
                "ratio_low": ratio.low,
                "ratio_high": ratio.high,
            }
        )
        if macro_f1:
            f1 = score_interval(yt, pred_test, metric="macro_f1", groups=gt, **boot)
            rows[-1] |= {"test_macro_f1": f1.estimate, "test_macro_f1_low": f1.low, "test_macro_f1_high": f1.high}
        if neurons is None:  # the constant neurons' own line, right after the oracle: no probe
            rows.append({"step": "constant", "threshold": float("nan"), "neurons_kept": total - len(constant)})
        del Xs, Xsd, Xst
    table = pd.DataFrame(rows)
    n_const = len(constant)
    table.insert(2, "neurons_total", total)
    table.insert(3, "neurons_constant", n_const)
    table["pct_kept"] = 100.0 * table["neurons_kept"] / total
    table["pct_removed"] = 100.0 - table["pct_kept"]
    nonconstant = total - n_const
    table["pct_removed_nonconstant"] = np.where(
        table["step"] == "clustering", 100.0 * (nonconstant - table["neurons_kept"]) / max(nonconstant, 1), 0.0
    )
    table["n_test"] = len(yt)
    table["n_test_groups"] = int(len(np.unique(gt)))
    first = [
        "step",
        "threshold",
        "neurons_total",
        "neurons_constant",
        "neurons_kept",
        "pct_kept",
        "pct_removed",
        "pct_removed_nonconstant",
    ]
    table = table[first + [c for c in table.columns if c not in first]]
    return ClusterSweep(table, yt, items, gt, predictions)


# ---------------------------------------------------------------------------------------------
# per-item predictions on disk


@dataclass
class SavedPredictions:
    """Per-item labels and predictions of several probes on the same test items (``load_predictions``).

    Attributes
    ----------
    y_true : ndarray of shape (n_items,)
    predictions : dict of str to ndarray of shape (n_items,)
    groups : ndarray of shape (n_items,) or None
        Resampling group of each item (the sentence of each word), when saved.
    meta : dict
        What made them (model, task, seed, ...).
    """

    y_true: np.ndarray
    predictions: dict[str, np.ndarray]
    groups: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


_PRED_PREFIX = "pred__"


def save_predictions(
    path: str | os.PathLike,
    *,
    y_true: Any,
    predictions: dict[str, Any],
    groups: Any = None,
    meta: dict | None = None,
) -> Path:
    """Write per-item test labels and predictions to one ``.npz`` file (atomically), without pickling.

    Any comparison (a paired interval, another metric) can be redone from the file:
    ``load_predictions(path)`` gives the arrays back with their dtypes (str or int labels).

    Parameters
    ----------
    path : path
        The file to write (``.npz`` is appended when missing).
    y_true : array-like of shape (n_items,)
    predictions : dict of str to array-like of shape (n_items,)
        One entry per probe (e.g. ``"oracle"``, ``"reduced_seed0"``).
    groups : array-like of shape (n_items,), optional
    meta : dict, optional
        JSON-serialisable facts about the run.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    y_true = _portable(y_true)
    arrays = {"y_true": y_true, "meta": np.asarray(json.dumps(meta or {}, default=_json_default))}
    if groups is not None:
        arrays["groups"] = _portable(groups)
    if not predictions:
        raise ValueError("predictions is empty: pass at least one {name: per-item predictions}")
    for name, pred in predictions.items():
        pred = _portable(pred)
        if pred.shape != y_true.shape:
            raise ValueError(f"predictions {name!r} have shape {pred.shape}, y_true {y_true.shape}: one per item")
        arrays[_PRED_PREFIX + str(name)] = pred
    if groups is not None and arrays["groups"].shape != y_true.shape:
        raise ValueError(f"groups have shape {arrays['groups'].shape}, y_true {y_true.shape}: one per item")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_predictions(path: str | os.PathLike) -> SavedPredictions:
    """Read a file written by ``save_predictions``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: save_predictions writes it (notebooks 02 and 04 do)")
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        if "y_true" not in files:
            raise ValueError(f"{path} holds no y_true: it was not written by save_predictions")
        preds = {k[len(_PRED_PREFIX) :]: z[k] for k in z.files if k.startswith(_PRED_PREFIX)}
        return SavedPredictions(
            z["y_true"],
            preds,
            z["groups"] if "groups" in files else None,
            json.loads(str(z["meta"])) if "meta" in files else {},
        )


# ---------------------------------------------------------------------------------------------
# what the reduction buys at inference time


def measure_speedup(
    loaded: Any,
    texts: Sequence,
    *,
    level: str,
    reduced: ReducedProbe,
    oracle: ReducedProbe,
    aggregation: str = "auto",
    batch_size: int = 32,
    repeats: int = 3,
) -> dict[str, float]:
    """Time the full model + oracle probe against the truncated model + reduced probe on the same texts.

    Both paths tokenize, run the model, pool the item vectors and predict; the reduced path stops
    after block ``reduced.layer``. The best of ``repeats`` runs of each is kept (interleaved).

    Returns
    -------
    timing : dict
        ``full_s``, ``reduced_s``, ``speedup`` (= full_s / reduced_s), ``items``.
    """

    def full() -> np.ndarray:
        return oracle.predict_texts(loaded, texts, level=level, aggregation=aggregation, batch_size=batch_size)

    def short() -> np.ndarray:
        return reduced.predict_texts(loaded, texts, level=level, aggregation=aggregation, batch_size=batch_size)

    times: dict[str, list[float]] = {"full": [], "reduced": []}
    n_items = len(full())  # warm-up
    short()
    for _ in range(repeats):
        for name, fn in (("full", full), ("reduced", short)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    f, r = min(times["full"]), min(times["reduced"])
    return {"full_s": f, "reduced_s": r, "speedup": f / r, "items": n_items}


def timed_speedup(
    model: str,
    task: Any,
    *,
    reduced: ReducedProbe,
    oracle: ReducedProbe,
    n_sentences: int = 64,
    seed: int = 0,
    recipe: Any = None,
    machine: str | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """``measure_speedup`` of model ``model`` (a name) on the first ``n_sentences`` test sentences of ``task``.

    Everything the timing depends on is an argument, so that a ``memo.ResultCache`` can keep it: a
    rerun with the caches in place reads the timing back instead of measuring it again, perhaps while
    another notebook competes for the cores.

    Parameters
    ----------
    model : str
        A model name (``"mpnet"``), or ``"<base>+ft"``: the encoder inside ``base`` fine-tuned on
        ``task`` with ``recipe`` and ``seed`` (``finetune.finetune``, read from its cache).
    task : data.Task
        Its test split is timed (``task.test.texts[:n_sentences]``), at ``task.level``.
    reduced, oracle : ReducedProbe
    n_sentences, repeats : int
    seed : int
        The data seed (and the fine-tune's).
    recipe : finetune.Recipe, optional
        The fine-tune's recipe for ``"<base>+ft"`` (default ``finetune.recipe_for(base)``).
    machine : str, optional
        Not used by the computation: it enters a cache key (``machine.machine_signature()``), so that a
        timing is never read back on another kind of machine.

    Returns
    -------
    timing : dict
        As ``measure_speedup``.
    """
    from . import finetune
    from .activations import _cached_model

    if finetune.is_finetuned_name(model):
        encoder = finetune.finetuned_for(model, task, seed=seed, recipe=recipe, progress=False).encoder()
    else:
        encoder = _cached_model(model, None)
    texts = task.test.texts[:n_sentences]
    return measure_speedup(encoder, texts, level=task.level, reduced=reduced, oracle=oracle, repeats=repeats)

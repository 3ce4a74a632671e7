"""Bootstrap intervals for scores and for paired comparisons, and the verdicts read from them.

Start reading at ``score_interval`` (one score with its 95% interval), then ``paired_interval``
(the difference or ratio of two scores of the same test items, on the same resamples) and
``verdict`` (holds / does not hold / inconclusive, from an interval and a bound).

Resampling unit. Test items of a word-level task are not independent: the words of one sentence
share its context. Pass ``groups`` (the sentence of each word) and whole sentences are resampled
(a cluster bootstrap, Davison & Hinkley 1997, section 3.8); without ``groups`` every item is its own
group. Each bootstrap replicate is a vector of group multiplicities ``counts`` (n_boot, n_groups),
drawn from Multinomial(n_groups, 1/n_groups), so every statistic is a weighted one and all
replicates are computed together as matrix products:

- accuracy: ``counts @ correct_per_group / counts @ items_per_group``;
- macro-F1: confusion counts ``counts @ M`` with ``M`` (n_groups, C * C) the per-group confusion
  counts (true class, predicted class), then F1 per class averaged over classes present.

A paired interval uses one ``counts`` matrix for both predictions, so what the two scores share
(the difficulty of the sampled items) cancels in their difference: it is narrower than the
interval of two independent samples whenever the predictions are positively correlated.

Quantities and shapes:

- ``y_true``, ``y_pred``: array-like of shape (n_items,);
- ``groups``: array-like of shape (n_items,) of group ids (any hashable values), or None;
- ``counts``: ndarray of shape (n_boot, n_groups), integers summing to n_groups per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

Metric = Literal["accuracy", "macro_f1"]
Verdict = Literal["holds", "does not hold", "inconclusive"]


class Interval(NamedTuple):
    """A point estimate with its percentile bootstrap interval at coverage ``level``."""

    estimate: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _check(y_true: Any, *preds: Any, groups: Any = None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Validate label vectors and return them with integer group codes of shape (n_items,)."""
    y_true = np.asarray(y_true)
    preds = [np.asarray(p) for p in preds]
    if y_true.ndim != 1 or any(p.shape != y_true.shape for p in preds):
        raise ValueError(
            f"y_true and every prediction must be 1D of one length; got shapes {y_true.shape} and "
            f"{[p.shape for p in preds]}."
        )
    if len(y_true) == 0:
        raise ValueError("y_true is empty: there is nothing to score. Check the split.")
    if groups is None:
        codes = np.arange(len(y_true))
    else:
        groups = np.asarray(groups)
        if groups.shape != y_true.shape:
            raise ValueError(
                f"groups must give one group id per item: expected shape {y_true.shape}, got "
                f"{groups.shape}. For word-level tasks pass the sentence index of each word."
            )
        codes = np.unique(groups, return_inverse=True)[1].ravel()
    return y_true, preds, codes


def bootstrap_counts(n_groups: int, *, n_boot: int = 1000, random_state: int = 0) -> np.ndarray:
    """Group multiplicities of ``n_boot`` bootstrap replicates: shape (n_boot, n_groups), rows sum to n_groups."""
    if n_groups < 1 or n_boot < 1:
        raise ValueError(f"need n_groups >= 1 and n_boot >= 1, got {n_groups} and {n_boot}")
    rng = np.random.default_rng(random_state)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)


def _scores(
    y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, counts: np.ndarray, metric: Metric
) -> tuple[float, np.ndarray]:
    """The metric on the sample and on each replicate of ``counts``: (estimate, shape (n_boot,))."""
    n_groups = counts.shape[1]
    if metric == "accuracy":
        correct = np.bincount(codes, weights=(y_true == y_pred).astype(np.float64), minlength=n_groups)
        size = np.bincount(codes, minlength=n_groups).astype(np.float64)
        return float(correct.sum() / size.sum()), (counts @ correct) / (counts @ size)
    if metric == "macro_f1":
        labels, joint = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
        c = len(labels)
        t, p = joint[: len(y_true)], joint[len(y_true) :]
        per_group = np.zeros((n_groups, c * c))
        np.add.at(per_group, (codes, t * c + p), 1.0)
        sample = _macro_f1(per_group.sum(axis=0)[None].reshape(1, c, c))[0]
        return float(sample), _macro_f1((counts @ per_group).reshape(-1, c, c))
    raise ValueError(f"unknown metric {metric!r}; expected 'accuracy' or 'macro_f1'")


def _macro_f1(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of each confusion matrix of shape (n, C, C) (rows true, columns predicted)."""
    tp = np.diagonal(conf, axis1=1, axis2=2)
    denom = conf.sum(axis=2) + conf.sum(axis=1)
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.where(present, denom, 1), 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _interval(estimate: float, stats: np.ndarray, level: float) -> Interval:
    """Percentile interval of ``stats`` around ``estimate``."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    alpha = (1 - level) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high), level)


def score_interval(
    y_true: Any,
    y_pred: Any,
    *,
    metric: Metric = "accuracy",
    groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    random_state: int = 0,
) -> Interval:
    """A score with its percentile bootstrap interval over test items (or over ``groups`` of them).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_items,)
    metric : {"accuracy", "macro_f1"}
    groups : array-like of shape (n_items,), optional
        Resampling unit of each item (the sentence of each word for word-level tasks).
    n_boot : int, default 1000
    level : float, default 0.95
    random_state : int, default 0

    Returns
    -------
    Interval
    """
    y_true, (y_pred,), codes = _check(y_true, y_pred, groups=groups)
    counts = bootstrap_counts(codes.max() + 1, n_boot=n_boot, random_state=random_state)
    return _interval(*_scores(y_true, y_pred, codes, counts, metric), level)


def paired_interval(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    metric: Metric = "accuracy",
    compare: Literal["difference", "ratio"] = "difference",
    groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    random_state: int = 0,
) -> Interval:
    """Interval of score(a) − score(b) (or score(a) / score(b)) on the same bootstrap resamples.

    Parameters
    ----------
    y_true, pred_a, pred_b : array-like of shape (n_items,)
        Labels and two predictions of the same test items (e.g. the reduced probe and the oracle).
    metric : {"accuracy", "macro_f1"}
    compare : {"difference", "ratio"}
        ``ratio`` reads "a keeps x% of b" (the paper's "% of the oracle", as a fraction).
    groups, n_boot, level, random_state
        As in ``score_interval``.

    Returns
    -------
    Interval
        Of the difference or ratio; the estimate is the one on the full sample.
    """
    y_true, (pred_a, pred_b), codes = _check(y_true, pred_a, pred_b, groups=groups)
    counts = bootstrap_counts(codes.max() + 1, n_boot=n_boot, random_state=random_state)
    (a, sa), (b, sb) = (_scores(y_true, p, codes, counts, metric) for p in (pred_a, pred_b))
    combine: Callable[[Any, Any], Any]
    if compare == "difference":
        combine = np.subtract
    elif compare == "ratio":

        def combine(x, y):
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.divide(x, y)
    else:
        raise ValueError(f"compare must be 'difference' or 'ratio', got {compare!r}")
    return _interval(float(combine(a, b)), combine(sa, sb), level)


def verdict(
    interval: Interval | tuple[float, float], bound: float, *, direction: Literal["at_least", "at_most"] = "at_least"
) -> Verdict:
    """Read a claim "quantity ≥ bound" (or ≤) from the quantity's interval.

    "holds" when the whole interval lies on the claimed side of ``bound``, "does not hold" when it
    lies wholly on the other side, "inconclusive" when it straddles the bound (touching it counts
    as straddling on the failing side only: an interval whose low end equals the bound holds).

    Parameters
    ----------
    interval : Interval or (low, high)
    bound : float
    direction : {"at_least", "at_most"}
    """
    low, high = (interval.low, interval.high) if isinstance(interval, Interval) else interval
    if low > high:
        raise ValueError(f"an interval needs low <= high, got ({low}, {high})")
    if direction == "at_most":
        low, high, bound = -high, -low, -bound
    elif direction != "at_least":
        raise ValueError(f"direction must be 'at_least' or 'at_most', got {direction!r}")
    if low >= bound:
        return "holds"
    if high < bound:
        return "does not hold"
    return "inconclusive"

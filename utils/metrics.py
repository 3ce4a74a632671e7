"""Scores of predictions and their bootstrap confidence intervals.

Start reading at ``METRICS`` (name -> function: ``accuracy`` and ``macro_f1`` for class labels,
``pearson`` and ``mse`` for real values), then ``bootstrap_ci`` (a percentile interval over test
items resampled with replacement, every resample scored at once for the built-in metrics).

Quantities and their shapes:

- ``y_true``, ``y_pred``: array-like of shape (n_samples,), labels or real values.
- resample indices: int array of shape (n_boot, n_samples); macro-F1 confusion counts of shape
  (n_boot, n_classes, n_classes), rows true, columns predicted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = ["METRICS", "ConfidenceInterval", "accuracy", "bootstrap_ci", "macro_f1", "mse", "pearson"]


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of items whose prediction equals the label.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)

    Returns
    -------
    score : float
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """F1 averaged over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's ``average="macro"``).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)

    Returns
    -------
    score : float
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_pair(y_true, y_pred)
    t, p, n_classes = _joint_codes(y_true, y_pred)
    return float(
        _macro_f1_counts(np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(1, n_classes, n_classes))[0]
    )


def pearson(y_true: Any, y_pred: Any) -> float:
    """Pearson correlation between real-valued targets and predictions (NaN when either is constant)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    _check_pair(y_true, y_pred)
    return float(_pearson_rows(y_true[None], y_pred[None])[0])


def mse(y_true: Any, y_pred: Any) -> float:
    """Mean squared error between real-valued targets and predictions."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    _check_pair(y_true, y_pred)
    return float(np.mean((y_true - y_pred) ** 2))


METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "pearson": pearson,
    "mse": mse,
}


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    """Raise when two label vectors are not 1D of one non-zero length."""
    if y_true.ndim != 1 or y_pred.ndim != 1 or len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred must be 1D of the same length, got shapes {y_true.shape} and {y_pred.shape}."
        )
    if len(y_true) == 0:
        raise ValueError("y_true is empty: there is nothing to score. Check the split.")


def _joint_codes(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of both label vectors over their joint set of labels."""
    labels, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    return codes[: len(y_true)], codes[len(y_true) :], len(labels)


def _macro_f1_counts(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of each confusion matrix in ``conf`` (n, C, C): rows true, columns predicted."""
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(np.float64)
    true_n, pred_n = conf.sum(axis=2), conf.sum(axis=1)
    denom = true_n + pred_n
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1.sum(axis=1) / present.sum(axis=1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (n, m) arrays."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=1) / denom, np.nan)


class ConfidenceInterval(NamedTuple):
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "accuracy",
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    random_state: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of a score, resampling test items with replacement.

    The built-in metrics are computed for all resamples at once (accuracy as a mean over a
    (n_boot, n_samples) index matrix; macro-F1 from (n_boot, C, C) confusion counts made by one
    ``bincount``; Pearson row-wise); a callable metric is applied to each resample in turn.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    metric : {"accuracy", "macro_f1", "pearson", "mse"} or callable
    n_boot : int
        Number of resamples.
    level : float
        Coverage of the interval, e.g. 0.95.
    random_state : int
        Seed of the resampling.

    Returns
    -------
    ci : ConfidenceInterval
        ``estimate`` is the metric on the full sample; ``low`` and ``high`` the percentiles.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_pair(y_true, y_pred)
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    fn = METRICS.get(metric) if isinstance(metric, str) else metric
    if fn is None:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)} or a callable")
    n = len(y_true)
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, n, size=(n_boot, n))
    if metric == "accuracy":
        stats = (y_true == y_pred)[idx].mean(axis=1)
    elif metric == "macro_f1":
        t, p, c = _joint_codes(y_true, y_pred)
        flat = (np.arange(n_boot)[:, None] * (c * c) + t[idx] * c + p[idx]).ravel()
        stats = _macro_f1_counts(np.bincount(flat, minlength=n_boot * c * c).reshape(n_boot, c, c))
    elif metric == "pearson":
        yt, yp = y_true.astype(np.float64), y_pred.astype(np.float64)
        stats = _pearson_rows(yt[idx], yp[idx])
    elif metric == "mse":
        stats = ((y_true.astype(np.float64) - y_pred.astype(np.float64)) ** 2)[idx].mean(axis=1)
    else:
        stats = np.array([fn(y_true[i], y_pred[i]) for i in idx])
    alpha = (1 - level) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha])
    return ConfidenceInterval(float(fn(y_true, y_pred)), float(low), float(high), level)

"""Linear probes: elastic-net logistic (and linear) regression in torch, layer probes, control tasks.

Start reading at ``LinearProbe`` (one probe, scikit-learn style), then ``fit_layer_probes`` (every
layer probe of a model trained at once) and ``control_labels`` / selectivity (Hewitt & Liang 2019).
``utils.ranking`` turns a fitted probe into neuron orderings.

The probe is the paper's (Dalvi et al. 2020, section "Task-specific redundancy"): a linear layer,
cross-entropy averaged over items, plus the elastic-net penalty ``l1 * ||W||_1 + l2 * ||W||_2``
where ``||W||_2`` is the Frobenius norm *without* a square (the authors' ``l2_penalty`` is
``sqrt(sum(W ** 2))``; ``l2_squared=True`` gives ridge ``||W||_2 ** 2`` instead). The bias is not
penalised. Two optimisers:

- ``solver="lbfgs"``: full-batch L-BFGS (strong-Wolfe line search), deterministic, for problems that
  fit a few passes over the data per second. The L1 term is not differentiable at 0, so L-BFGS
  minimises a smooth surrogate in which each ``|w|`` becomes ``sqrt(w ** 2 + eps ** 2) - eps`` with
  ``eps = 1e-4`` (in standardised units). The surrogate differs from ``|w|`` by less than ``eps``
  per weight and by an almost constant ``eps`` for weights far from 0, so only weights that the
  exact L1 solution would set to (near) zero move, and by at most about ``eps``.
- ``solver="adam"``: minibatch Adam on the exact penalty (subgradient 0 at 0, as the authors), with
  minibatches shuffled by a seeded ``torch.Generator``, and early stopping on a dev split (the
  weights of the best dev epoch are kept). ``lr="auto"`` scales the step with the number of
  features (``auto_lr``); ``precision="bfloat16"`` does the matrix products in bfloat16.
- ``solver="auto"`` (default) picks Adam when a dev split is given (early stopping is then the
  regulariser that matters: with penalties of 1e-5 the exact optimum of a probe on more neurons
  than tokens is an overfit one) or when ``n_samples * n_features`` (summed over all probes trained
  together) exceeds ``LBFGS_MAX_CELLS``; L-BFGS otherwise.

Weights start at zero (the problem is convex), so the only randomness is the minibatch order.
The weights of each class-logit are kept centred across classes (``coef_.sum(axis=0) == 0``):
softmax is blind to a shift shared by all classes, and without this constraint the weak penalty
leaves that shift, and so every |w| that LCA ranks by, to the whims of the optimiser.

Standardisation (``standardize=True``) uses each feature's train mean and standard deviation
(``mean_``, ``scale_``). Adam reads the train features once into a standardised in-memory copy
(up to 4 GiB; larger inputs are standardised batch by batch from the array or memmap) and
``fit_layer_probes`` shares that copy between all the modes it trains; L-BFGS standardises row
chunks. The penalty applies to the standardised weights ``standardized_coef_``; the fitted
``coef_`` and ``intercept_`` act on the original features (``X @ coef_.T + intercept_``).
**Neuron rankings use ``standardized_coef_``** (= ``coef_ * scale_``): a weight on a unit-variance
feature says how much the neuron's typical variation moves the logits, which is comparable across
neurons whose raw scales differ by orders of magnitude in transformers. The authors ranked raw
weights on unstandardised activations; pass ``coef_`` to ``lca_ordering`` to do the same.

Quantities and shapes:

- ``X``: array-like of shape (n_samples, n_features); np.memmap is read in row chunks.
- ``activations``: array-like of shape (n_samples, n_layers, hidden); neuron ``layer * hidden + unit``.
- ``coef_`` / ``standardized_coef_``: ndarray of shape (n_classes, n_features), one row per class
  even for two classes (multinomial); the regressor's are of shape (n_features,).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LBFGS_MAX_CELLS = 5e7
"""Without a dev split, ``solver="auto"`` uses L-BFGS up to this many ``n_samples * n_features`` cells."""

SMOOTH_L1_EPS = 1e-4
"""Smoothing of ``|w|`` in the L-BFGS objective: ``sqrt(w ** 2 + eps ** 2) - eps``."""

_CHUNK_ELEMENTS = 2**24  # rows per chunk = this / row width (64 MiB of float32 per chunk)
_MATERIALISE_BYTES = 4 * 2**30  # Adam keeps standardised train features in memory up to this size
_SINGLE_THREAD_WORK = 2**26  # multiply-adds per step below which torch runs on one thread

Solver = Literal["auto", "lbfgs", "adam"]
Mode = Literal["independent", "incremental", "oracle"]


# ---------------------------------------------------------------------------------------------
# validation at the public boundary


def _check_features(X: Any, *, name: str = "X", ndim: int = 2, n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as an ndarray (memmaps stay memmaps) after checking its dimensions and size."""
    what = "(n_samples, n_features)" if ndim == 2 else "(n_samples, n_layers, hidden)"
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        X = np.asarray(X, dtype=np.float32)
    if X.ndim != ndim:
        hint = ""
        if ndim == 2 and X.ndim == 1:
            hint = " Reshape with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample."
        elif ndim == 2 and X.ndim == 3:
            hint = " Flatten the layers with X.reshape(len(X), -1), or use fit_layer_probes for per-layer probes."
        raise ValueError(f"Expected {name} as a {ndim}D array of shape {what}, got a {X.ndim}D array of shape {X.shape}.{hint}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has 0 samples: the split is empty. Check the split's budget and the data it came from.")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {X.dtype}.")
    if n_features is not None and int(np.prod(X.shape[1:])) != n_features:
        raise ValueError(f"{name} has {int(np.prod(X.shape[1:]))} features per sample, but the probe was fitted on "
                         f"{n_features}. Pass the same neurons (columns, in the same order) as in fit.")
    return X


def _check_targets(y: Any, n_samples: int, *, name: str = "y", x_name: str = "X") -> np.ndarray:
    """Return ``y`` as a 1D ndarray of length ``n_samples``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"Expected {name} as a 1D array of shape (n_samples,), got shape {y.shape}. "
                         f"Use y.ravel() for a column vector.")
    if len(y) != n_samples:
        raise ValueError(f"{x_name} and {name} disagree in length: {x_name} has {n_samples} samples, {name} has "
                         f"{len(y)} labels. Pass one label per row of {x_name}.")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinity; drop those items or fix the labels.")
    return y


def _encode(y: np.ndarray, classes: np.ndarray, *, name: str) -> np.ndarray:
    """Indices of ``y`` in ``classes``; ValueError naming any labels the probe never saw."""
    idx = np.searchsorted(classes, y)
    idx_clipped = np.minimum(idx, len(classes) - 1)
    unseen = classes[idx_clipped] != y
    if unseen.any():
        bad = np.unique(y[unseen])
        shown = ", ".join(repr(b) for b in bad[:10].tolist()) + (" ..." if len(bad) > 10 else "")
        raise ValueError(f"{name} contains labels never seen in training: {shown} ({int(unseen.sum())} of {len(y)} "
                         f"items). Drop those items (mask = np.isin({name}, probe.classes_)) or train on data that "
                         f"includes them.")
    return idx_clipped.astype(np.int64)


def _chunks(n_rows: int, row_width: int) -> tuple[range, int]:
    """Row starts and chunk length for chunked passes over an (n_rows, row_width) array."""
    step = max(256, _CHUNK_ELEMENTS // max(1, row_width))
    return range(0, n_rows, step), step


def _as_tensor(a: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tensor of ``a`` in ``dtype`` (shares memory when possible, copies read-only or other-dtype arrays)."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    if a.dtype == np_dtype and a.flags.c_contiguous and a.flags.writeable:
        t = torch.from_numpy(a)
    else:
        t = torch.from_numpy(np.array(a, dtype=np_dtype, order="C", copy=True))
    return t.to(device)


def feature_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every feature, in float64, streamed over row chunks.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
        Any trailing shape; np.memmap is read in row chunks.

    Returns
    -------
    mean, std : ndarray of shape X.shape[1:], float64

    Raises
    ------
    ValueError
        When a feature holds NaN or infinity (names the first few features).
    """
    n = X.shape[0]
    width = int(np.prod(X.shape[1:]))
    starts, step = _chunks(n, width)
    shift = np.asarray(X[0], dtype=np.float64)  # one pass of shifted sums: no catastrophic cancellation
    total = np.zeros(X.shape[1:], dtype=np.float64)
    sq = np.zeros(X.shape[1:], dtype=np.float64)
    for s in starts:
        chunk = np.asarray(X[s : s + step], dtype=np.float64) - shift
        total += chunk.sum(axis=0)
        sq += np.einsum("i...,i...->...", chunk, chunk)
    mean_shifted = total / n
    mean = shift + mean_shifted
    with np.errstate(invalid="ignore"):
        var = np.maximum(sq / n - mean_shifted**2, 0.0)
    std = np.sqrt(var)
    _check_stats(mean, std)
    return mean, std


def _check_stats(mean: np.ndarray, std: np.ndarray) -> None:
    """ValueError naming the features whose statistics are not finite (they hold NaN or infinity)."""
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        where = np.argwhere(bad.reshape(-1)).ravel()
        raise ValueError(f"X contains NaN or infinity in {int(bad.sum())} feature(s) (flat indices "
                         f"{where[:10].tolist()}{' ...' if len(where) > 10 else ''}). Remove or impute them before "
                         f"probing (e.g. np.nan_to_num, or drop those items).")


def _check_finite_chunk(xb: torch.Tensor, name: str) -> None:
    """Raise a clear ValueError when a chunk of features holds NaN or infinity (one float64 sum)."""
    if not torch.isfinite(xb.sum(dtype=torch.float64)):
        raise ValueError(f"{name} contains NaN or infinity. Remove or impute them before probing "
                         f"(e.g. np.nan_to_num, or drop those items).")


# ---------------------------------------------------------------------------------------------
# metrics


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
    return float(_macro_f1_counts(np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(1, n_classes, n_classes))[0])


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


METRICS: dict[str, Callable[[Any, Any], float]] = {"accuracy": accuracy, "macro_f1": macro_f1, "pearson": pearson, "mse": mse}


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    """Raise when two label vectors are not 1D of one non-zero length."""
    if y_true.ndim != 1 or y_pred.ndim != 1 or len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must be 1D of the same length, got shapes {y_true.shape} and {y_pred.shape}.")
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


# ---------------------------------------------------------------------------------------------
# the engine: many linear heads over one batch of features, trained together


class _Bank:
    """P = n_targets * n_probes linear heads in standardised space, for one of three layouts.

    - ``flat``: X of shape (n, d); one probe per target on all d features (P = T).
    - ``independent``: X of shape (n, L, h); probe (t, l) reads layer l (P = T * L).
    - ``incremental``: X of shape (n, L, h); probe (t, l) reads layers 0..l (P = T * L).

    Probe index ``p = t * n_probes + l``. Weights are zero-initialised.
    """

    def __init__(self, kind: str, feat_shape: tuple[int, ...], n_targets: int, n_out: int,
                 mean: np.ndarray, scale: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32,
                 matmul_dtype: torch.dtype | None = None):
        self.kind, self.T, self.C = kind, n_targets, n_out
        self.dtype = dtype  # parameters, losses and the standardised inputs' arithmetic
        self.matmul_dtype = matmul_dtype or dtype  # inputs are stored and multiplied in this dtype
        K = n_targets * n_out
        z = dict(dtype=dtype, device=device)
        self.mean = torch.as_tensor(mean, **z)
        self.scale = torch.as_tensor(scale, **z)
        if kind == "flat":
            (d,) = feat_shape
            self.L = 1
            self.weights = [torch.zeros(d, K, **z)]
            self.bias = torch.zeros(1, K, **z)
        elif kind == "independent":
            L, h = feat_shape
            self.L = L
            self.weights = [torch.zeros(L, h, K, **z)]
            self.bias = torch.zeros(L, K, **z)
        elif kind == "incremental":
            L, h = feat_shape
            self.L = L
            self.weights = [torch.zeros(h, (L - k) * K, **z) for k in range(L)]
            self.bias = torch.zeros(L, K, **z)
        else:  # pragma: no cover - internal
            raise ValueError(kind)
        for p in self.params:
            p.requires_grad_(True)

    @property
    def params(self) -> list[torch.Tensor]:
        return [*self.weights, self.bias]

    @property
    def P(self) -> int:
        return self.T * self.L

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features (any float dtype) -> standardised features in ``matmul_dtype``."""
        if not hasattr(self, "_inv_scale"):
            self._inv_scale = 1.0 / self.scale
        return (x.to(self.dtype) - self.mean).mul_(self._inv_scale).to(self.matmul_dtype)

    def logits(self, xs: torch.Tensor) -> torch.Tensor:
        """Outputs of every probe for standardised inputs ``xs`` (see ``standardize``), shape (batch, P, n_out)."""
        b, K, mm = xs.shape[0], self.T * self.C, self.matmul_dtype
        if self.kind == "flat":
            out = (xs @ self.weights[0].to(mm)).to(self.dtype) + self.bias
            return out.view(b, self.T, self.C)
        if self.kind == "independent":
            out = torch.einsum("blh,lhk->blk", xs, self.weights[0].to(mm)).to(self.dtype) + self.bias
        else:
            out = self.bias.expand(b, self.L, K).clone()
            for k, w in enumerate(self.weights):
                out[:, k:, :] += (xs[:, k, :] @ w.to(mm)).to(self.dtype).view(b, self.L - k, K)
        # (b, L, T, C) -> (b, T, L, C) -> (b, P, C)
        return out.view(b, self.L, self.T, self.C).transpose(1, 2).reshape(b, self.P, self.C)

    def _per_probe(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Sum ``fn(w)`` elementwise over each probe's weights; shape (P,)."""
        T, C, L = self.T, self.C, self.L
        if self.kind == "flat":
            return fn(self.weights[0]).view(-1, T, C).sum(dim=(0, 2))
        if self.kind == "independent":
            per = fn(self.weights[0]).view(L, -1, T, C).sum(dim=(1, 3))  # (L, T)
        else:
            per = torch.zeros(L, T, dtype=self.bias.dtype, device=self.bias.device)
            for k, w in enumerate(self.weights):
                per = per + F.pad(fn(w).view(-1, L - k, T, C).sum(dim=(0, 3)), (0, 0, k, 0))
        return per.t().reshape(-1)

    def penalty(self, l1: float, l2: float, *, l2_squared: bool, smooth: bool) -> torch.Tensor:
        """Sum over probes of ``l1 * |W_p|_1 + l2 * |W_p|_F`` (or its square); smoothed L1 for L-BFGS."""
        total = torch.zeros((), dtype=self.bias.dtype, device=self.bias.device)
        if l1:
            if smooth:
                eps = SMOOTH_L1_EPS
                total = total + l1 * self._per_probe(lambda w: torch.sqrt(w * w + eps * eps) - eps).sum()
            else:
                total = total + l1 * self._per_probe(torch.abs).sum()
        if l2:
            sq = self._per_probe(lambda w: w * w)
            if l2_squared:
                total = total + l2 * sq.sum()
            else:  # the authors' sqrt(sum w^2), with gradient 0 at W = 0
                total = total + l2 * torch.where(sq > 0, sq, torch.ones_like(sq)).sqrt().mul(sq > 0).sum()
        return total

    def center_(self, *, grads: bool) -> None:
        """Subtract each probe's class mean from its weights and bias (or from their gradients), in place.

        Softmax outputs do not change when the same vector is added to every class's weights, so
        the multinomial model is identified only up to that shift; the weak penalty (1e-5) pins it
        down so slowly that two optimisation paths end at visibly different weights. Keeping the
        class-mean at zero (the usual identifiability constraint; predictions are unaffected)
        makes the weights, and the rankings read from them, depend on the data only.
        """
        if self.C < 2:
            return
        with torch.no_grad():
            for p in self.params:
                t = p.grad if grads else p
                if t is None:
                    continue
                v = t.view(*t.shape[:-1], -1, self.C)
                v.sub_(v.mean(dim=-1, keepdim=True))

    def n_features(self) -> torch.Tensor:
        """Number of input features of every probe, shape (P,)."""
        if self.kind == "flat":
            d = self.weights[0].shape[0]
            return torch.full((self.P,), d, dtype=torch.int64)
        h = self.weights[0].shape[-2] if self.kind == "independent" else self.weights[0].shape[0]
        per_layer = torch.full((self.L,), h) if self.kind == "independent" else h * torch.arange(1, self.L + 1)
        return per_layer.repeat(self.T)

    def masks(self, active: torch.Tensor) -> list[torch.Tensor]:
        """Tensors broadcastable to each of ``params`` holding every probe's entry of ``active`` (P,).

        With booleans: masks selecting the parameters of some probes; with floats: per-probe values
        such as learning rates.
        """
        T, C, L = self.T, self.C, self.L
        a = active.view(T, L).t()  # (L, T)
        per_col = a[:, :, None].expand(L, T, C).reshape(L, T * C)  # (L, K)
        if self.kind == "flat":
            return [per_col, per_col]
        if self.kind == "independent":
            return [per_col[:, None, :], per_col]
        return [per_col[k:].reshape(1, -1) for k in range(L)] + [per_col]

    def export(self, t: int, l: int) -> tuple[np.ndarray, np.ndarray]:
        """Standardised weights (n_out, n_features) and bias (n_out,) of probe (t, l)."""
        C = self.C
        with torch.no_grad():
            if self.kind == "flat":
                w = self.weights[0][:, t * C : (t + 1) * C]
                b = self.bias[0, t * C : (t + 1) * C]
            elif self.kind == "independent":
                w = self.weights[0][l, :, t * C : (t + 1) * C]
                b = self.bias[l, t * C : (t + 1) * C]
            else:
                K = self.T * C
                w = torch.cat([self.weights[k][:, (l - k) * K + t * C : (l - k) * K + (t + 1) * C] for k in range(l + 1)])
                b = self.bias[l, t * C : (t + 1) * C]
            return w.t().cpu().numpy().copy(), b.cpu().numpy().copy()


@dataclass
class _FitConfig:
    """Optimisation settings shared by every probe of one fit."""

    task: str
    solver: str
    l1: float
    l2: float
    l2_squared: bool
    lr: float | None
    batch_size: int
    max_epochs: int
    patience: int
    max_iter: int
    tol: float
    random_state: int
    progress: bool
    precision: str = "float32"


def _data_loss(out: torch.Tensor, yb: torch.Tensor, cw: torch.Tensor | None, task: str) -> torch.Tensor:
    """Per-probe summed loss over the batch, shape (P,): weighted cross-entropy or squared error."""
    b, P, C = out.shape
    if task == "classification":
        ce = F.cross_entropy(out.reshape(b * P, C), yb.reshape(b * P), reduction="none").view(b, P)
        if cw is not None:
            ce = ce * cw[torch.arange(P, device=out.device)[None, :], yb]
        return ce.sum(dim=0)
    return ((out[..., 0] - yb) ** 2).sum(dim=0)


def _rows(X: np.ndarray, idx: np.ndarray | slice, device: torch.device, name: str,
          dtype: torch.dtype = torch.float32, *, check: bool = True) -> torch.Tensor:
    """Tensor of some rows of ``X`` (memmap-friendly), checked for NaN/inf unless ``check`` is off."""
    xb = _as_tensor(np.asarray(X[idx]), device, dtype)
    if check:
        _check_finite_chunk(xb, name)
    return xb


def _standardized(bank: _Bank, X: np.ndarray, device: torch.device, name: str, *, check: bool) -> torch.Tensor:
    """All rows of X standardised into one tensor of ``bank.matmul_dtype``, built chunk by chunk."""
    starts, step = _chunks(X.shape[0], int(np.prod(X.shape[1:])))
    out = torch.empty(X.shape, dtype=bank.matmul_dtype, device=device)
    with torch.no_grad():
        for s in starts:
            out[s : s + step] = bank.standardize(_rows(X, slice(s, s + step), device, name, check=check))
    return out


def _prepare(X: np.ndarray, *, standardize: bool, matmul_dtype: torch.dtype, device: torch.device,
             materialise: bool) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
    """Train statistics and (with ``materialise``) the standardised features, from one read of X.

    Returns ``mean, scale`` (float64, shape X.shape[1:]; 0 and 1 without standardisation) and a
    tensor of X standardised in ``matmul_dtype`` (None when not materialised). The float32 copy is
    made once; each chunk's mean and sum of squared deviations (float32, two-pass inside the chunk)
    are merged across chunks in float64 (Chan, Golub & LeVeque's pairwise update).
    """
    itemsize = torch.finfo(matmul_dtype).bits // 8
    if not materialise or X.size * max(4, itemsize) > _MATERIALISE_BYTES:
        mean, std = feature_stats(X)
        Xt = None
    else:
        n = X.shape[0]
        starts, step = _chunks(n, int(np.prod(X.shape[1:])))
        raw = torch.empty(X.shape, dtype=torch.float32)
        raw_np = raw.numpy()
        count, mean64, m2 = 0, None, None
        for s in starts:  # per chunk: float32 mean and sum of squares about it; chunks merged in float64 (Chan et al.)
            raw_np[s : s + step] = X[s : s + step]  # one copy, straight from the (memory-mapped) array
            c = raw[s : s + step]
            var_c, mean_c = torch.var_mean(c, dim=0, correction=0)
            nb = c.shape[0]
            mean_c, m2_c = mean_c.double(), var_c.double() * nb
            if mean64 is None:
                count, mean64, m2 = nb, mean_c, m2_c
            else:
                delta = mean_c - mean64
                total = count + nb
                mean64 = mean64 + delta * (nb / total)
                m2 = m2 + m2_c + delta * delta * (count * nb / total)
                count = total
        mean = mean64.numpy()
        std = torch.sqrt(m2 / n).numpy()
        _check_stats(mean, std)
        Xt = raw
    if standardize:
        scale = np.where(std > 0, std, 1.0)
    else:
        mean, scale = np.zeros_like(mean), np.ones_like(std)
    if Xt is not None:
        inv32 = torch.as_tensor(1.0 / scale, dtype=torch.float32)
        shift32 = torch.as_tensor(-mean / scale, dtype=torch.float32)
        narrow = matmul_dtype != torch.float32
        # a narrower dtype is written into the front of the same buffer: chunk i's output ends before chunk
        # i's input starts for every chunk but the first, which goes through a copy (no second allocation)
        out = Xt.view(-1).view(matmul_dtype)[: Xt.numel()].view(X.shape) if narrow else Xt
        with torch.no_grad():
            for s in starts:  # x * (1 / scale) - mean / scale, in place
                chunk = Xt[s : s + step]
                torch.addcmul(shift32, chunk, inv32, out=chunk)
                if narrow:
                    out[s : s + step] = chunk.clone() if s == 0 else chunk
        Xt = out.to(device)
    return mean, scale, Xt


def _predict_bank(bank: _Bank, X: np.ndarray | torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    """Outputs of every probe for all rows of X (raw array, or a tensor from ``_standardized``); (n, P, n_out)."""
    starts, step = _chunks(X.shape[0], int(np.prod(X.shape[1:])))
    with torch.no_grad():
        if isinstance(X, torch.Tensor):
            return torch.cat([bank.logits(X[s : s + step]) for s in starts])
        return torch.cat([bank.logits(bank.standardize(_rows(X, slice(s, s + step), device, name, bank.dtype)))
                          for s in starts])


def _bank_scores(bank: _Bank, X: np.ndarray | torch.Tensor, Y: torch.Tensor, task: str, device: torch.device,
                 name: str) -> torch.Tensor:
    """Dev score of every probe (accuracy, or minus MSE for regression), shape (P,)."""
    out = _predict_bank(bank, X, device, name)
    if task == "classification":
        return (out.argmax(dim=2) == Y).double().mean(dim=0)
    return -((out[..., 0].double() - Y.double()) ** 2).mean(dim=0)


def _expand_targets(Y: np.ndarray, bank: _Bank, device: torch.device, task: str) -> torch.Tensor:
    """Targets (n, T) repeated for every probe of a target: shape (n, P)."""
    dtype = torch.int64 if task == "classification" else bank.dtype
    Yt = torch.as_tensor(Y, dtype=dtype, device=device)
    return Yt[:, :, None].expand(len(Y), bank.T, bank.L).reshape(len(Y), bank.P)


def _fit_bank(bank: _Bank, X: np.ndarray, Y: np.ndarray, *, X_dev: np.ndarray | None, Y_dev: np.ndarray | None,
              class_weight: np.ndarray | None, cfg: _FitConfig, device: torch.device,
              X_std: torch.Tensor | None = None, X_dev_std: torch.Tensor | None = None) -> dict[str, Any]:
    """Train every probe of ``bank`` on X -> Y (n, T); returns training facts (epochs, iterations).

    ``X_std`` / ``X_dev_std``: the same rows already standardised (``_prepare``), for Adam.
    """
    n_params = sum(p.numel() for p in bank.params)
    rows = X.shape[0] if cfg.solver == "lbfgs" else cfg.batch_size
    with _threads_for(float(rows) * n_params):
        return _fit_bank_inner(bank, X, Y, X_dev=X_dev, Y_dev=Y_dev, class_weight=class_weight, cfg=cfg, device=device,
                               X_std=X_std, X_dev_std=X_dev_std)


def _fit_bank_inner(bank: _Bank, X: np.ndarray, Y: np.ndarray, *, X_dev: np.ndarray | None, Y_dev: np.ndarray | None,
                    class_weight: np.ndarray | None, cfg: _FitConfig, device: torch.device,
                    X_std: torch.Tensor | None, X_dev_std: torch.Tensor | None) -> dict[str, Any]:
    """The training loops of ``_fit_bank``."""
    n = X.shape[0]
    Yp = _expand_targets(Y, bank, device, cfg.task)
    Ydp = _expand_targets(Y_dev, bank, device, cfg.task) if Y_dev is not None else None
    cw = None
    if class_weight is not None:
        cw = torch.as_tensor(class_weight, dtype=bank.dtype, device=device)  # (T, C)
        cw = cw[:, None, :].expand(bank.T, bank.L, bank.C).reshape(bank.P, bank.C)
    info: dict[str, Any] = {}
    if cfg.solver == "lbfgs":
        starts, step = _chunks(n, int(np.prod(X.shape[1:])))
        def chunk(s: int) -> torch.Tensor:
            with torch.no_grad():
                return bank.standardize(_rows(X, slice(s, s + step), device, "X", bank.dtype, check=False))

        cached = [chunk(s) for s in starts] if _fits_memory(X) else None
        max_eval = 2 * cfg.max_iter
        opt = torch.optim.LBFGS(bank.params, lr=1.0, max_iter=cfg.max_iter, max_eval=max_eval, tolerance_grad=cfg.tol,
                                tolerance_change=1e-12, history_size=10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            total = 0.0
            for i, s in enumerate(starts):
                xb = cached[i] if cached is not None else chunk(s)
                loss = _data_loss(bank.logits(xb), Yp[s : s + step], cw, cfg.task).sum() / n
                loss.backward()
                total += float(loss.detach())
            pen = bank.penalty(cfg.l1, cfg.l2, l2_squared=cfg.l2_squared, smooth=True)
            if pen.requires_grad:
                pen.backward()
            bank.center_(grads=True)  # iterates stay class-centred (they start at 0)
            return torch.tensor(total + float(pen.detach()), dtype=torch.float64)

        opt.step(closure)
        state = opt.state[opt._params[0]]
        info["n_iter"] = int(state.get("n_iter", 0))
        grad_max = max(float(p.grad.abs().max()) for p in bank.params if p.grad is not None)
        budget_spent = info["n_iter"] >= cfg.max_iter or int(state.get("func_evals", 0)) >= max_eval
        info["converged"] = grad_max <= cfg.tol or not budget_spent  # else it stalled at float64 precision
        if not info["converged"]:
            warnings.warn(f"L-BFGS did not converge in max_iter={cfg.max_iter} iterations (largest gradient "
                          f"{grad_max:.2e} > tol={cfg.tol:g}); raise max_iter, or use solver='adam' with a dev split.",
                          ConvergenceWarning, stacklevel=3)
    else:
        gen = torch.Generator().manual_seed(int(cfg.random_state))
        lrs = auto_lr(bank.n_features()) if cfg.lr is None else torch.full((bank.P,), cfg.lr, dtype=torch.float64)
        info["lr"] = lrs.numpy()
        if bool((lrs == lrs[0]).all()):  # one step size: torch's fused Adam
            opt = torch.optim.Adam(bank.params, lr=float(lrs[0]), fused=device.type in ("cpu", "cuda"))
        else:  # one per probe (incremental probes read different numbers of neurons)
            opt = _Adam(bank.params, bank.masks(lrs.to(device=device, dtype=bank.dtype)))
        itemsize = torch.finfo(bank.matmul_dtype).bits // 8
        # train features passed feature_stats (NaN / inf rejected there); dev ones are checked here
        Xt = X_std
        if Xt is None and X.size * itemsize <= _MATERIALISE_BYTES:
            Xt = _standardized(bank, X, device, "X", check=False)
        if X_dev_std is not None:
            X_dev = X_dev_std
        elif X_dev is not None and X_dev.size * itemsize <= _MATERIALISE_BYTES:
            X_dev = _standardized(bank, X_dev, device, "X_dev", check=True)
        history = []
        P = bank.P
        best = [p.detach().clone() for p in bank.params]
        best_score = torch.full((P,), -math.inf, dtype=torch.float64)
        bad = torch.zeros(P, dtype=torch.int64)
        active = torch.ones(P, dtype=torch.bool)
        best_epoch = torch.zeros(P, dtype=torch.int64)
        epochs = 0
        bar = tqdm(total=cfg.max_epochs * math.ceil(n / cfg.batch_size), desc="probe epochs", disable=not cfg.progress,
                   leave=False)
        for epoch in range(cfg.max_epochs):
            perm = torch.randperm(n, generator=gen).numpy()
            for s in range(0, n, cfg.batch_size):
                idx = np.sort(perm[s : s + cfg.batch_size])
                if Xt is not None:
                    xb = Xt.index_select(0, torch.from_numpy(idx).to(device))
                else:
                    xb = bank.standardize(_rows(X, idx, device, "X", bank.dtype, check=False))
                opt.zero_grad(set_to_none=True)
                loss = _data_loss(bank.logits(xb), Yp[torch.from_numpy(idx)], cw, cfg.task).sum() / len(idx)
                loss = loss + bank.penalty(cfg.l1, cfg.l2, l2_squared=cfg.l2_squared, smooth=False)
                loss.backward()
                opt.step()
                bank.center_(grads=False)  # projected Adam: back onto class-centred weights
                bar.update(1)
            epochs = epoch + 1
            if X_dev is None:
                continue
            score = _bank_scores(bank, X_dev, Ydp, cfg.task, device, "X_dev").cpu()
            history.append(score.numpy())
            improved = active & (score > best_score)
            if improved.any():
                for b, p, m in zip(best, bank.params, bank.masks(improved.to(device))):
                    b.copy_(torch.where(m, p.detach(), b))
                best_score = torch.where(improved, score, best_score)
                best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch + 1), best_epoch)
            bad = torch.where(improved, torch.zeros_like(bad), bad + active.long())
            active = active & (bad < cfg.patience)
            if not active.any():
                break
        bar.close()
        if X_dev is not None:
            with torch.no_grad():
                for b, p in zip(best, bank.params):
                    p.copy_(b)
            info["best_epoch"] = best_epoch.numpy()
            info["history"] = np.array(history)  # (epochs, P) dev scores
        info["n_epochs"] = epochs
    return info


AUTO_LR_SCALE = 3.0
"""``lr="auto"`` gives a probe on d standardised features the Adam step ``min(1e-2, AUTO_LR_SCALE / d)``."""


def auto_lr(n_features: torch.Tensor | np.ndarray | int) -> torch.Tensor:
    """Adam learning rate for probes on ``n_features`` standardised inputs: ``min(1e-2, 3 / n_features)``.

    Adam moves every weight by about ``lr`` per step, so on unit-variance inputs the logits move by
    about ``lr * d``; keeping that near 3 makes one step size fit probes of 384 and of 9,984
    neurons alike (tuned on MPNet POS: 4e-3 for 768 neurons, 3e-4 for 9,984).
    """
    d = torch.as_tensor(n_features, dtype=torch.float64)
    return torch.clamp(AUTO_LR_SCALE / d, max=1e-2)


class _Adam:
    """Adam (Kingma & Ba) with a learning rate per parameter entry (broadcast tensors), as torch's defaults.

    torch.optim.Adam takes one scalar rate per parameter group; batched probes need one per probe.
    """

    def __init__(self, params: list[torch.Tensor], lrs: list[torch.Tensor], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lrs, self.betas, self.eps, self.t = params, lrs, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, lr, m, v in zip(self.params, self.lrs, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.sub_(m.div(v.div(c2).sqrt_().add_(self.eps)).mul_(lr / c1))


@contextlib.contextmanager
def _threads_for(work: float):
    """Run small problems on one torch thread (thread start-up costs more than it saves there), then restore."""
    before = torch.get_num_threads()
    if work >= _SINGLE_THREAD_WORK or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fits_memory(X: np.ndarray) -> bool:
    """Whether a float64 copy of X is small enough to keep across L-BFGS iterations (<= 2 GiB)."""
    return X.size * 8 <= 2 * 2**30


def _bank_dtypes(cfg: _FitConfig) -> dict[str, torch.dtype]:
    """float64 for L-BFGS (its line search and stopping tests need the precision), float32 for Adam,
    whose inputs and matrix products may be bfloat16 (``precision="bfloat16"``)."""
    if cfg.solver == "lbfgs":
        return {"dtype": torch.float64}
    return {"dtype": torch.float32, "matmul_dtype": torch.bfloat16 if cfg.precision == "bfloat16" else torch.float32}


def _resolve_solver(solver: str, cells: float, has_dev: bool) -> str:
    """Resolve ``solver="auto"`` from the size of the problem and whether a dev split is given."""
    if solver not in ("auto", "lbfgs", "adam"):
        raise ValueError(f"solver must be 'auto', 'lbfgs' or 'adam', got {solver!r}")
    if solver == "auto":
        return "lbfgs" if cells <= LBFGS_MAX_CELLS and not has_dev else "adam"
    return solver


def _class_weights(class_weight: Any, Y: np.ndarray, n_classes: int, classes: np.ndarray) -> np.ndarray | None:
    """Per-target, per-class loss weights of shape (T, C), or None for unweighted."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced' or a dict label -> weight, got {class_weight!r}")
        counts = np.stack([np.bincount(Y[:, t], minlength=n_classes) for t in range(Y.shape[1])]).astype(np.float64)
        return np.where(counts > 0, len(Y) / (n_classes * np.maximum(counts, 1)), 0.0)
    if isinstance(class_weight, dict):
        unknown = set(class_weight) - set(classes.tolist())
        if unknown:
            raise ValueError(f"class_weight names labels not in y: {sorted(map(str, unknown))}")
        w = np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
        return np.tile(w, (Y.shape[1], 1))
    raise ValueError(f"class_weight must be None, 'balanced' or a dict label -> weight, got {type(class_weight).__name__}")


# ---------------------------------------------------------------------------------------------
# scikit-learn style estimators


class _BaseProbe(BaseEstimator):
    """Shared parameters, fitting and prediction of the classifier and regressor probes."""

    _task = "classification"

    def __init__(
        self,
        *,
        l1: float = 1e-5,
        l2: float = 1e-5,
        l2_squared: bool = False,
        solver: Solver = "auto",
        lr: float | Literal["auto"] = "auto",
        batch_size: int = 128,
        max_epochs: int = 10,
        patience: int = 2,
        max_iter: int = 300,
        tol: float = 1e-4,
        standardize: bool = True,
        class_weight: Any = None,
        random_state: int = 0,
        device: str | None = None,
        precision: Literal["float32", "bfloat16"] = "float32",
        progress: bool = False,
    ):
        self.l1 = l1
        self.l2 = l2
        self.l2_squared = l2_squared
        self.solver = solver
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.progress = progress

    # -- helpers shared with fit_layer_probes ------------------------------------------------

    def _config(self, cells: float, has_dev: bool) -> _FitConfig:
        """Validated optimisation settings for a problem of ``cells`` = n_samples * n_features."""
        for name in ("l1", "l2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        for name in ("batch_size", "max_epochs", "max_iter"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.patience, (int, np.integer)) and self.patience >= 1):
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if not (self.lr == "auto" or (isinstance(self.lr, (int, float)) and self.lr > 0)):
            raise ValueError(f"lr must be 'auto' or a positive number, got {self.lr!r}")
        return _FitConfig(task=self._task, solver=_resolve_solver(self.solver, cells, has_dev), l1=float(self.l1),
                          l2=float(self.l2), l2_squared=bool(self.l2_squared),
                          lr=None if self.lr == "auto" else float(self.lr),
                          batch_size=int(self.batch_size), max_epochs=int(self.max_epochs),
                          patience=int(self.patience), max_iter=int(self.max_iter), tol=float(self.tol),
                          random_state=int(self.random_state), progress=bool(self.progress),
                          precision=self.precision)

    def _device(self) -> torch.device:
        return torch.device(self.device or "cpu")

    def _prepare_data(self, X: np.ndarray, cfg: _FitConfig) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
        """Train mean and scale (zeros and ones when switched off) and, for Adam, the standardised features."""
        dtypes = _bank_dtypes(cfg)
        return _prepare(X, standardize=self.standardize, matmul_dtype=dtypes.get("matmul_dtype", dtypes["dtype"]),
                        device=self._device(), materialise=cfg.solver == "adam")

    def _targets(self, y: np.ndarray, *, fitting: bool, name: str = "y") -> np.ndarray:
        """Encoded targets: class indices (classifier) or float32 values (regressor)."""
        if self._task == "regression":
            if y.dtype.kind not in "fiub":
                raise ValueError(f"{name} must hold real numbers for a regression probe, got dtype {y.dtype}.")
            return y.astype(np.float32)
        if fitting:
            if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
                raise ValueError(f"{name} holds non-integer numbers; a classifier needs class labels. "
                                 f"Use LinearProbeRegressor for a real-valued target.")
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(f"{name} has a single class {self.classes_[0]!r}: a classifier needs at least two. "
                                 f"Check the split (a small budget can hold a single label).")
        return _encode(y, self.classes_, name=name)

    def _set_weights(self, w_std: np.ndarray, b_std: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
        """Store fitted weights in standardised and original feature space."""
        coef64 = w_std.astype(np.float64) / scale
        intercept = (b_std - coef64 @ mean).astype(np.float32)
        coef, w_std = coef64.astype(np.float32), w_std.astype(np.float32)
        self.mean_, self.scale_ = mean, scale
        self.n_features_in_ = int(w_std.shape[1])
        if self._task == "regression":
            self.standardized_coef_, self.coef_, self.intercept_ = w_std[0], coef[0], float(intercept[0])
        else:
            self.standardized_coef_, self.coef_, self.intercept_ = w_std, coef, intercept

    def _fit(self, X: Any, y: Any, X_dev: Any, y_dev: Any) -> "_BaseProbe":
        X = _check_features(X)
        y = _check_targets(y, X.shape[0])
        if (X_dev is None) != (y_dev is None):
            raise ValueError("pass both X_dev and y_dev for early stopping, or neither.")
        Y = self._targets(y, fitting=True)
        Yd = None
        if X_dev is not None:
            X_dev = _check_features(X_dev, name="X_dev", n_features=X.shape[1])
            y_dev = _check_targets(y_dev, X_dev.shape[0], name="y_dev", x_name="X_dev")
            Yd = self._targets(y_dev, fitting=False, name="y_dev")[:, None]
        cfg = self._config(float(X.shape[0]) * X.shape[1], X_dev is not None)
        mean, scale, Xt = self._prepare_data(X, cfg)
        n_out = 1 if self._task == "regression" else len(self.classes_)
        cw = None if self._task == "regression" else _class_weights(self.class_weight, Y[:, None], n_out, self.classes_)
        bank = _Bank("flat", (X.shape[1],), 1, n_out, mean, scale, self._device(), **_bank_dtypes(cfg))
        if self._task == "regression":
            with torch.no_grad():
                bank.bias.fill_(float(np.mean(Y)))
        info = _fit_bank(bank, X, Y[:, None], X_dev=X_dev, Y_dev=Yd, class_weight=cw, cfg=cfg, device=self._device(),
                         X_std=Xt)
        self._set_weights(*bank.export(0, 0), mean, scale)
        self._set_info(info, 0, cfg.solver)
        return self

    def _set_info(self, info: dict[str, Any], p: int, solver: str) -> None:
        """Store the training facts of probe ``p`` of a bank."""
        self.solver_ = solver
        self.n_iter_ = info.get("n_iter", info.get("n_epochs"))
        self.best_epoch_ = int(info["best_epoch"][p]) if "best_epoch" in info else None
        self.dev_history_ = info["history"][:, p].tolist() if "history" in info else None
        self.lr_ = float(info["lr"][p]) if "lr" in info else None

    def decision_function(self, X: Any) -> np.ndarray:
        """Linear outputs ``X @ coef_.T + intercept_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for the regressor
        """
        if not hasattr(self, "coef_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first.")
        X = _check_features(X, n_features=self.n_features_in_)
        dev = self._device()
        coef = torch.as_tensor(np.atleast_2d(self.coef_), device=dev)
        intercept = torch.as_tensor(np.atleast_1d(np.asarray(self.intercept_, dtype=np.float32)), device=dev)
        starts, step = _chunks(X.shape[0], X.shape[1])
        with torch.no_grad():
            out = torch.cat([_rows(X, slice(s, s + step), dev, "X") @ coef.t() + intercept for s in starts])
        out = out.cpu().numpy()
        return out[:, 0] if self._task == "regression" else out


class LinearProbe(ClassifierMixin, _BaseProbe):
    """Multinomial logistic-regression probe with the authors' elastic-net penalty, trained in torch.

    Parameters
    ----------
    l1, l2 : float
        Penalty weights: ``l1 * ||W||_1 + l2 * ||W||_F`` on the standardised weights (bias free).
        Defaults 1e-5 and 1e-5 as in the paper.
    l2_squared : bool
        Use ``l2 * ||W||_F ** 2`` (ridge) instead of the authors' unsquared norm.
    solver : {"auto", "lbfgs", "adam"}
        See the module docstring. "auto": Adam with a dev split or above ``LBFGS_MAX_CELLS``
        cells, else L-BFGS.
    lr : "auto" or float
        Adam step. "auto" (default) is ``auto_lr(n_features) = min(1e-2, 3 / n_features)``: on
        standardised inputs Adam's per-weight steps add up over the features, so the authors' 1e-3
        (tuned for raw activations) is 3x too large for 9,984 neurons and 4x too small for 768.
    batch_size, max_epochs, patience : Adam settings; ``patience`` epochs without a better dev
        accuracy stop training (only when ``X_dev`` is given), and the best epoch's weights are kept.
    max_iter, tol : L-BFGS iterations and tolerance on the largest gradient entry.
    standardize : bool
        Standardise features with train statistics (folded into the weights).
    class_weight : None, "balanced" or dict label -> weight
        Per-class loss weights; "balanced" uses ``n / (n_classes * count)``.
    random_state : int
        Seed of the minibatch order (weights start at zero).
    device : str, optional
        Torch device; defaults to the CPU (bit-for-bit reproducible).
    precision : {"float32", "bfloat16"}
        Adam only: keep the standardised inputs and do the matrix products in bfloat16 (weights,
        losses and accumulation stay float32). About 4x faster matrix products on CPUs with
        AVX512-BF16 (and on GPUs), at 3 significant digits per standardised input.
    progress : bool
        Show a tqdm bar over Adam steps.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (n_classes, n_features)
        Weights on the original features.
    intercept_ : ndarray of shape (n_classes,)
    standardized_coef_ : ndarray of shape (n_classes, n_features)
        Weights on standardised features (``coef_ * scale_``); what neuron rankings use.
    mean_, scale_ : ndarray of shape (n_features,)
        Train mean and standard deviation (0 and 1 when ``standardize=False``).
    solver_ : str
    n_iter_ : int
        L-BFGS iterations or Adam epochs run.
    best_epoch_ : int or None
        Adam epoch whose weights were kept (with a dev split).
    dev_history_ : list of float or None
        Adam: dev accuracy after each epoch (with a dev split).
    lr_ : float or None
        Adam step used.
    """

    _task = "classification"

    def fit(self, X: Any, y: Any, *, X_dev: Any = None, y_dev: Any = None) -> "LinearProbe":
        """Fit the probe.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (strings or integers).
        X_dev, y_dev : optional
            Dev split for early stopping (Adam); its labels must occur in ``y``.

        Returns
        -------
        self : LinearProbe
        """
        return self._fit(X, y, X_dev, y_dev)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ndarray of shape (n_samples, n_classes), columns in ``classes_`` order."""
        z = torch.from_numpy(self.decision_function(X))
        return torch.softmax(z, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class of each sample, ndarray of shape (n_samples,)."""
        return self.classes_[self.decision_function(X).argmax(axis=1)]

    def score(self, X: Any, y: Any, metric: str = "accuracy") -> float:
        """Accuracy (or ``metric="macro_f1"``) on X, y; refuses labels never seen in training."""
        X = _check_features(X, n_features=getattr(self, "n_features_in_", None))
        y = _check_targets(y, X.shape[0])
        if not hasattr(self, "classes_"):
            raise ValueError("this LinearProbe is not fitted yet; call fit(X, y) first.")
        _encode(y, self.classes_, name="y")
        if metric not in ("accuracy", "macro_f1"):
            raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {metric!r}")
        return METRICS[metric](y, self.predict(X))


class LinearProbeRegressor(RegressorMixin, _BaseProbe):
    """Linear-regression probe (squared error) with the same penalty, solvers and attributes.

    Parameters are those of ``LinearProbe`` (``class_weight`` is ignored). ``coef_`` and
    ``standardized_coef_`` have shape (n_features,), ``intercept_`` is a float. ``score`` is the
    Pearson correlation of predictions and targets; ``mse`` is in ``METRICS``.
    """

    _task = "regression"

    def fit(self, X: Any, y: Any, *, X_dev: Any = None, y_dev: Any = None) -> "LinearProbeRegressor":
        """Fit the probe on real-valued targets ``y`` of shape (n_samples,); dev for early stopping."""
        return self._fit(X, y, X_dev, y_dev)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values, ndarray of shape (n_samples,)."""
        return self.decision_function(X)

    def score(self, X: Any, y: Any, metric: str = "pearson") -> float:
        """Pearson r (or ``metric="mse"``) of predictions on X against y."""
        X = _check_features(X, n_features=getattr(self, "n_features_in_", None))
        y = _check_targets(y, X.shape[0])
        if metric not in ("pearson", "mse"):
            raise ValueError(f"metric must be 'pearson' or 'mse', got {metric!r}")
        return METRICS[metric](y.astype(np.float64), self.predict(X))


def is_regression_target(y: Any) -> bool:
    """True when ``y`` holds real numbers that are not all whole (a regression target)."""
    y = np.asarray(y)
    return y.dtype.kind == "f" and not bool(np.all(np.mod(y, 1) == 0))


def make_probe(y: Any, **params: Any) -> "LinearProbe | LinearProbeRegressor":
    """A ``LinearProbe`` for class labels or a ``LinearProbeRegressor`` for a real-valued ``y``, with ``params``."""
    return (LinearProbeRegressor if is_regression_target(y) else LinearProbe)(**params)


def _probe_from_weights(template: _BaseProbe, w_std: np.ndarray, b_std: np.ndarray, mean: np.ndarray,
                        scale: np.ndarray, classes: np.ndarray | None, info: dict[str, Any], p: int,
                        solver: str) -> _BaseProbe:
    """A fitted probe with the parameters of ``template``, the given standardised weights, and probe p's facts."""
    probe = type(template)(**template.get_params())
    if classes is not None:
        probe.classes_ = classes
    probe._set_weights(w_std, b_std, mean, scale)
    probe._set_info(info, p, solver)
    return probe


# ---------------------------------------------------------------------------------------------
# control tasks (Hewitt & Liang 2019)


def control_labels(words: Sequence[str], y: Any, *, random_state: int = 0) -> np.ndarray:
    """Control-task labels: every word type gets one fixed random label.

    Each type's label is drawn from the empirical label distribution of ``y`` by inverse-CDF
    sampling of a uniform number derived from a keyed hash of the type (``pandas.util.hash_array``
    with a key made from ``random_state``). The label of a type therefore does not depend on which
    other words are in the call: train, dev and test splits labelled in separate calls agree, as
    Hewitt & Liang's control tasks require.

    Parameters
    ----------
    words : sequence of str of length n_items
        The word (word-level tasks) or text (sentence-level tasks) of each item.
    y : array-like of shape (n_labels,)
        Labels whose empirical distribution the control labels follow; usually the train labels.
        Need not be aligned with ``words``.
    random_state : int
        Seed: different seeds give independent control tasks.

    Returns
    -------
    labels : ndarray of shape (n_items,)
        Drawn from the values of ``y``; equal for equal words.
    """
    words_arr = np.asarray(list(words), dtype=object)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be a non-empty 1D array of labels, got shape {y.shape}")
    if words_arr.ndim != 1:
        raise ValueError("words must be a flat sequence of strings, one per item")
    if len(words_arr) == 0:
        return y[:0].copy()
    classes, counts = np.unique(y, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    key = f"ctl{int(random_state) % 10**13:013d}"
    h = pd.util.hash_array(words_arr.astype(str).astype(object), hash_key=key, categorize=True)
    u = (h >> np.uint64(11)).astype(np.float64) / float(2**53)  # uniform in [0, 1)
    return classes[np.minimum(np.searchsorted(cdf, u, side="right"), len(classes) - 1)]


# ---------------------------------------------------------------------------------------------
# layer probes


def fit_layer_probes(
    activations: Any,
    y: Any,
    *,
    activations_dev: Any,
    y_dev: Any,
    mode: Mode | Sequence[Mode] = "independent",
    words: Sequence[str] | None = None,
    words_dev: Sequence[str] | None = None,
    probe_params: dict | None = None,
    control_random_state: int = 0,
    return_probes: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, list[_BaseProbe]]:
    """Train one probe per layer (or the oracle) in one batched model and score it on dev.

    Layer probes share the data, so they are trained together: the independent probes as a
    weight tensor of shape (n_layers, hidden, n_classes) applied with one ``einsum``; the
    incremental ones (layers 0..l) block by block, so each layer's activations are multiplied
    once for every probe that reads them. Probes do not interact (the loss is a sum of per-probe
    losses and penalties, Adam is elementwise, early stopping is tracked per probe), so the result
    equals training them one by one (L-BFGS: to its tolerance). With ``words`` a control task
    (``control_labels``) is trained alongside and selectivity = score - control score is reported.

    Parameters
    ----------
    activations : array-like of shape (n_samples, n_layers, hidden)
        Train activations (np.memmap is fine).
    y : array-like of shape (n_samples,)
        Labels: class labels, or real values for a regression probe (float dtype).
    activations_dev : array-like of shape (n_dev, n_layers, hidden)
    y_dev : array-like of shape (n_dev,)
        Dev split: scores are dev scores, and Adam early-stops on it.
    mode : {"independent", "incremental", "oracle"} or a list of them
        One layer at a time; layers 0..l concatenated; all layers (one probe). With a list, the
        activations are read and standardised once and each mode is trained in turn.
    words, words_dev : sequence of str, optional
        Word (or text) of each item; when given, control-task probes are trained too.
    probe_params : dict, optional
        Parameters of ``LinearProbe`` / ``LinearProbeRegressor``.
    control_random_state : int
        Seed of the control task.
    return_probes : bool
        Also return the fitted task probes (one per row of the table).

    Returns
    -------
    table : DataFrame
        Columns ``layer, mode, n_features, score, control_score, selectivity``; ``score`` is dev
        accuracy (Pearson r for regression); the oracle's row has ``layer = n_layers - 1``.
        Control columns are NaN without ``words``.
    probes : list of LinearProbe, optional
        With ``return_probes``; probe ``i`` reads layer ``i`` (independent), layers ``0..i``
        (incremental) or all layers (oracle), with features in ``layer * hidden + unit`` order.
    """
    for m in [mode] if isinstance(mode, str) else mode:
        if m not in ("independent", "incremental", "oracle"):
            raise ValueError(f"mode must be 'independent', 'incremental' or 'oracle' (or a list of them), got {m!r}")
    A = _check_features(activations, name="activations", ndim=3)
    y = _check_targets(y, A.shape[0], x_name="activations")
    n, L, h = A.shape
    Ad = _check_features(activations_dev, name="activations_dev", ndim=3, n_features=L * h)
    y_dev = _check_targets(y_dev, Ad.shape[0], name="y_dev", x_name="activations_dev")
    regression = is_regression_target(y)
    template: _BaseProbe = make_probe(y, **(probe_params or {}))
    control = words is not None or words_dev is not None
    if control:
        if words is None or words_dev is None:
            raise ValueError("pass both words and words_dev for a control task, or neither.")
        if regression:
            raise ValueError("control tasks are defined for class labels; drop words for a regression target.")
        if len(words) != n or len(words_dev) != Ad.shape[0]:
            raise ValueError(f"words and words_dev must have one entry per item: got {len(words)} and "
                             f"{len(words_dev)} for {n} and {Ad.shape[0]} items.")
    Y = template._targets(y, fitting=True)
    Yd = template._targets(y_dev, fitting=False, name="y_dev")
    if control:
        Y = np.stack([Y, template._targets(control_labels(words, y, random_state=control_random_state), fitting=False)], 1)
        Yd = np.stack([Yd, template._targets(control_labels(words_dev, y, random_state=control_random_state),
                                             fitting=False, name="control y_dev")], 1)
    else:
        Y, Yd = Y[:, None], Yd[:, None]
    T = Y.shape[1]
    modes = [mode] if isinstance(mode, str) else list(mode)
    per_probe_features = {"independent": h * L, "incremental": h * L * (L + 1) // 2, "oracle": h * L}
    cfgs = {m: template._config(float(n) * per_probe_features[m] * T, True) for m in modes}
    dev = template._device()
    # one read of the train activations for every mode: statistics and (Adam) standardised copy
    cfg0 = next((c for c in cfgs.values() if c.solver == "adam"), cfgs[modes[0]])
    mean, scale, At = template._prepare_data(A, cfg0)
    classes = getattr(template, "classes_", None)
    n_out = 1 if regression else len(classes)
    cw = None if regression else _class_weights(template.class_weight, Y, n_out, classes)
    rows, probes = [], []
    Adt = None
    for m in modes:
        cfg = cfgs[m]
        if m == "oracle":
            Xf, Xdf = A.reshape(n, L * h), Ad.reshape(Ad.shape[0], L * h)
            bank = _Bank("flat", (L * h,), T, n_out, mean.reshape(-1), scale.reshape(-1), dev, **_bank_dtypes(cfg))
        else:
            Xf, Xdf = A, Ad
            bank = _Bank(m, (L, h), T, n_out, mean, scale, dev, **_bank_dtypes(cfg))
        if regression:
            with torch.no_grad():
                bank.bias.fill_(float(np.mean(Y)))
        X_std = Xdev_std = None
        if cfg.solver == "adam" and At is not None:
            if Adt is None:
                Adt = _standardized(bank, Ad.reshape(Xdf.shape), dev, "activations_dev", check=True)
            X_std, Xdev_std = At.view(Xf.shape), Adt.view(Xdf.shape)
        info = _fit_bank(bank, Xf, Y, X_dev=Xdf, Y_dev=Yd, class_weight=cw, cfg=cfg, device=dev, X_std=X_std,
                         X_dev_std=Xdev_std)
        # final dev predictions of every probe
        out = _predict_bank(bank, Xdev_std if Xdev_std is not None else Xdf, dev, "activations_dev").cpu().numpy()
        layers = [L - 1] if m == "oracle" else list(range(L))
        n_probes = len(layers)
        for i, layer in enumerate(layers):
            if regression:
                score = pearson(y_dev.astype(np.float64), out[:, i, 0])
            else:
                score = accuracy(Yd[:, 0], out[:, i].argmax(axis=1))
            ctl = accuracy(Yd[:, 1], out[:, n_probes + i].argmax(axis=1)) if control else np.nan
            n_feat = {"independent": h, "incremental": (layer + 1) * h, "oracle": L * h}[m]
            rows.append({"layer": layer, "mode": m, "n_features": n_feat, "score": score, "control_score": ctl,
                         "selectivity": score - ctl})
            if return_probes:
                if m == "oracle":
                    mu, sd = mean.reshape(-1), scale.reshape(-1)
                elif m == "independent":
                    mu, sd = mean[layer], scale[layer]
                else:
                    mu, sd = mean[: layer + 1].reshape(-1), scale[: layer + 1].reshape(-1)
                w, b = bank.export(0, 0 if m == "oracle" else layer)
                probes.append(_probe_from_weights(template, w, b, mu, sd, classes, info, 0 if m == "oracle" else layer,
                                                  cfg.solver))
    table = pd.DataFrame(rows, columns=["layer", "mode", "n_features", "score", "control_score", "selectivity"])
    return (table, probes) if return_probes else table


def layer_probe_table(
    activations: Any,
    y: Any,
    *,
    activations_dev: Any,
    y_dev: Any,
    words: Sequence[str] | None = None,
    words_dev: Sequence[str] | None = None,
    probe_params: dict | None = None,
    control_random_state: int = 0,
) -> tuple[pd.DataFrame, _BaseProbe]:
    """Independent and incremental layer probes and the oracle, in one tidy table, plus the oracle probe.

    One call of ``fit_layer_probes`` with three modes (one batched model each, one read of the data).

    Parameters
    ----------
    activations, y, activations_dev, y_dev, words, words_dev, probe_params, control_random_state
        As in ``fit_layer_probes``.

    Returns
    -------
    table : DataFrame
        Rows of modes ``independent`` and ``incremental`` (one per layer) and ``oracle`` (one row,
        ``layer = n_layers - 1``); columns as in ``fit_layer_probes``.
    oracle : LinearProbe
        The oracle probe, on features ``layer * hidden + unit``.
    """
    table, probes = fit_layer_probes(activations, y, activations_dev=activations_dev, y_dev=y_dev,
                                     mode=["independent", "incremental", "oracle"], words=words, words_dev=words_dev,
                                     probe_params=probe_params, control_random_state=control_random_state,
                                     return_probes=True)
    return table, probes[-1]


def restrict_to_classes(X: Any, y: Any, classes: Sequence) -> tuple[Any, np.ndarray, int]:
    """Drop the items whose label is not in ``classes`` (e.g. dev tags never seen in train).

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
    y : array-like of shape (n_samples,)
    classes : sequence of labels

    Returns
    -------
    X_kept, y_kept, n_dropped
        ``X`` is returned as is (no copy) when nothing is dropped.
    """
    y = np.asarray(y)
    keep = np.isin(y, np.asarray(classes))
    if keep.all():
        return X, y, 0
    return X[np.flatnonzero(keep)], y[keep], int((~keep).sum())

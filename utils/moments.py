"""Streaming passes over rows: the chunk-size rule and running per-feature moments.

Start reading at ``RunningMoments``, the baukit ``runningstats`` recipe:

1. create ``m = RunningMoments()``;
2. ``m.add(batch)`` for every row chunk of the data (or ``m.add_moments(count, mean, m2)`` with a
   chunk's own moments, when they were computed elsewhere, e.g. in torch);
3. read out ``m.mean()``, ``m.var()``, ``m.std()``; ``state_dict()`` / ``load_state_dict()`` to resume.

``feature_stats`` is that recipe over an array or memmap in ``row_chunks``; the probes'
standardisation (``training.prepare``) and the streaming Gram (``similarity.GramAccumulator``)
feed the same object. ``constant_features`` says which features are constant (dead neurons) for
standardisation: their scale is 1 and a probe's weight on them is 0, so that dividing by a
vanishing standard deviation (1e-33 for some MPNet units) never inflates a weight.

Quantities and their shapes:

- ``batch``: array-like of shape (n_chunk, *feature_shape), any real dtype; rows are items.
- ``mean``, ``var``, ``std``: ndarray of shape feature_shape, float64.
- ``m2``: the sum of squared deviations from the mean, shape feature_shape, float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .validation import check_finite_stats

__all__ = [
    "CHUNK_ELEMENTS",
    "CONSTANT_RTOL",
    "RunningMoments",
    "constant_features",
    "feature_stats",
    "row_chunks",
    "standardizing_scale",
]

CHUNK_ELEMENTS = 2**24
"""Values per row chunk (64 MiB of float32): rows per chunk = this / row width, at least 256."""

CONSTANT_RTOL = 1e-6
"""A feature whose std is at most this times the median std of the non-zero-std features is constant."""


def row_chunks(n_rows: int, row_width: int) -> tuple[range, int]:
    """Row starts and chunk length for a chunked pass over an array of shape (n_rows, row_width).

    Parameters
    ----------
    n_rows : int
    row_width : int
        Values per row (``prod(shape[1:])``).

    Returns
    -------
    starts : range
        First row of every chunk.
    step : int
        Rows per chunk: ``max(256, CHUNK_ELEMENTS // row_width)``.
    """
    step = max(256, CHUNK_ELEMENTS // max(1, int(row_width)))
    return range(0, int(n_rows), step), step


class RunningMoments:
    """Count, mean and sum of squared deviations of every feature over a stream of row batches.

    Update rule (Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise algorithm for
    computing sample variances"): a batch of ``n_b`` rows with mean ``mean_b`` and squared-deviation
    sum ``m2_b`` merges into the running ``(n, mean, m2)`` as::

        delta = mean_b - mean
        mean += delta * n_b / (n + n_b)
        m2   += m2_b + delta² * n * n_b / (n + n_b)
        n    += n_b

    Each batch's own moments are taken two-pass in float64 (``add``), so no sum of squares is ever
    differenced against a large mean: exact to float64 rounding whatever the features' offsets.

    Attributes
    ----------
    count : int
        Rows seen so far.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, batch: Any) -> RunningMoments:
        """Add a batch of rows, array-like of shape (n_chunk, *feature_shape); returns self."""
        b = np.array(batch, dtype=np.float64)  # a copy: centred in place below, the caller's array untouched
        if len(b) == 0:
            return self
        mean_b = b.mean(axis=0)
        b -= mean_b
        return self.add_moments(len(b), mean_b, np.einsum("i...,i...->...", b, b))

    def add_moments(self, count: int, mean: Any, m2: Any) -> RunningMoments:
        """Merge a batch given by its moments: ``count`` rows, their ``mean`` and ``m2`` (shape feature_shape)."""
        count = int(count)
        if count == 0:
            return self
        mean = np.asarray(mean, dtype=np.float64)
        m2 = np.asarray(m2, dtype=np.float64)
        if self._mean is None:
            self.count, self._mean, self._m2 = count, mean.copy(), m2.copy()
            return self
        if mean.shape != self._mean.shape:
            raise ValueError(f"Expected batches with features of shape {self._mean.shape}, got {mean.shape}.")
        total = self.count + count
        delta = mean - self._mean
        self._mean += delta * (count / total)
        self._m2 += m2 + delta * delta * (self.count * count / total)
        self.count = total
        return self

    def _ready(self) -> None:
        if self._mean is None:
            raise ValueError("No rows added yet; call add(batch) first.")

    def mean(self) -> np.ndarray:
        """Mean of every feature, float64."""
        self._ready()
        return self._mean.copy()

    def var(self, *, ddof: int = 0) -> np.ndarray:
        """Variance of every feature, ``m2 / (count - ddof)``, float64."""
        self._ready()
        if self.count <= ddof:
            raise ValueError(f"Need more than ddof={ddof} rows for a variance, got {self.count}.")
        return self._m2 / (self.count - ddof)

    def std(self, *, ddof: int = 0) -> np.ndarray:
        """Standard deviation of every feature, float64."""
        return np.sqrt(self.var(ddof=ddof))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as a flat dict of arrays (``np.savez``-ready)."""
        state = {"count": np.asarray(self.count)}
        if self._mean is not None:
            state.update(mean=self._mean, m2=self._m2)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> RunningMoments:
        """Restore from ``state_dict()``; returns self."""
        self.count = int(state["count"])
        self._mean = np.array(state["mean"], dtype=np.float64) if "mean" in state else None
        self._m2 = np.array(state["m2"], dtype=np.float64) if "m2" in state else None
        return self


def feature_stats(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every feature, in float64, streamed over row chunks.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
        Any trailing shape; np.memmap is read in ``row_chunks``.

    Returns
    -------
    mean, std : ndarray of shape X.shape[1:], float64

    Raises
    ------
    ValueError
        When a feature holds NaN or infinity (names the first few features).
    """
    starts, step = row_chunks(X.shape[0], int(np.prod(X.shape[1:])))
    moments = RunningMoments()
    with np.errstate(invalid="ignore"):  # inf - inf in a chunk with infinities: reported below
        for s in starts:
            moments.add(X[s : s + step])
        mean, std = moments.mean(), moments.std()
    check_finite_stats(mean, std)
    return mean, std


def constant_features(std: Any, mean: Any = None, *, rtol: float = CONSTANT_RTOL) -> np.ndarray:
    """Which features are constant (dead neurons), to be left out of standardisation and rankings.

    A feature is constant when its standard deviation is

    - zero, or at most ``rtol`` times the median std of the features whose std is not zero
      (a unit that varies a million times less than a typical one carries no usable signal, and
      dividing by its std would blow its values up to unit scale); or
    - within float32 rounding of its mean, ``std <= eps32 * |mean|`` (``eps32 = 2**-23``): what is
      left is the noise of storing a constant in float32.

    Parameters
    ----------
    std : array-like of any shape
        Standard deviation of every feature (e.g. ``feature_stats(X)[1]``).
    mean : array-like of the same shape, optional
        Mean of every feature, for the float32-rounding rule.
    rtol : float
        Relative threshold against the median std (default ``CONSTANT_RTOL`` = 1e-6).

    Returns
    -------
    constant : ndarray of bool, shape of ``std``
    """
    std = np.asarray(std, dtype=np.float64)
    if not rtol >= 0:
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")
    positive = std[std > 0]
    typical = float(np.median(positive)) if positive.size else 0.0
    constant = std <= rtol * typical
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float64)
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have one shape, got {mean.shape} and {std.shape}")
        constant |= std <= np.finfo(np.float32).eps * np.abs(mean)
    return constant


def standardizing_scale(std: Any, mean: Any = None, *, rtol: float = CONSTANT_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """The divisor of standardisation: each feature's std, 1 for a constant feature (``constant_features``).

    Parameters
    ----------
    std, mean, rtol
        As in ``constant_features``.

    Returns
    -------
    scale : ndarray of float64, shape of ``std``
    constant : ndarray of bool, shape of ``std``
    """
    std = np.asarray(std, dtype=np.float64)
    constant = constant_features(std, mean, rtol=rtol)
    return np.where(constant, 1.0, std), constant

"""Layer-level similarity: linear CKA, and the streaming Gram accumulator it is read from.

Start reading at ``linear_cka`` (two matrices in memory), then ``GramAccumulator`` (one pass over a
store in row chunks) and ``layer_similarity`` (every pair of layers from that one pass).

The small functions compose like Kornblith et al.'s CKA demo (google-research
``representation_similarity``): ``gram_linear`` -> ``center_gram`` -> ``cka`` is the kernel (example
space) form, for small ``n_samples`` only; ``linear_cka`` is the feature-space form that never builds
an ``n_samples x n_samples`` matrix. Both agree (the tests check it, and check the invariances).

Quantities and their shapes (scikit-learn's words):

- ``X``, ``Y``: array-like of shape (n_samples, n_features_x) and (n_samples, n_features_y); the
  same samples (words, sentences) in the same order.
- ``gram``: the kernel matrix ``X Xᵀ`` of shape (n_samples, n_samples) (kernel form only).
- ``G``: the centred feature-space Gram ``(X - mean)ᵀ (X - mean)`` of shape
  (n_features, n_features); ``G / (n_samples - 1)`` is the covariance matrix.
- ``activations``: array-like of shape (n_items, n_layers, hidden), flattened per chunk to
  (n_chunk, n_layers * hidden) with neuron index ``layer * hidden + unit``.
- a *block*: a contiguous range of features (a layer); ``layer_similarity`` returns the
  (n_blocks, n_blocks) matrix of linear CKA between blocks.

Linear CKA (Kornblith et al., ICML 2019), with ``X`` and ``Y`` centred::

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)

The debiased form replaces each ``||·||²_F`` (a biased HSIC estimate) by the unbiased HSIC estimator
of Song et al. (2012), as in Nguyen, Raghu & Kornblith (ICLR 2021); in feature space::

    hsic_u(X, Y) ∝ ||Yᵀ X||²_F - n/(n-2) Σ_i ||x_i||² ||y_i||² + ||X||²_F ||Y||²_F / ((n-1)(n-2))

(up to a factor that cancels in the ratio). The streaming pass keeps what this needs exactly: the
Gram blocks, and per block the row squared norms' cross moments (see ``GramAccumulator``).

All means and reductions are taken in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from .moments import RunningMoments
from .validation import as_array

__all__ = [
    "gram_linear",
    "center_gram",
    "cka",
    "linear_cka",
    "GramAccumulator",
    "ConstantFeatureWarning",
    "gram_statistics",
    "layer_similarity",
    "cross_model_similarity",
    "CROSS_MAX_BYTES",
    "cka_by_layer_distance",
    "adjacent_layer_summary",
    "standardized_layer_cka",
    "LayerCKA",
    "layer_cka_variants",
    "DEFAULT_CHUNK_SIZE",
]

DEFAULT_CHUNK_SIZE = 2048
DEFAULT_BLOCK = 1024  # block width used when the features have no layer structure
_EPS32 = float(np.finfo(np.float32).eps)


class ConstantFeatureWarning(UserWarning):
    """Some features (neurons) did not vary over the samples; their correlations were set to 0."""


# ---------------------------------------------------------------------------------------------
# validation helpers


def _as_2d(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a finite float64 array of shape (n_samples, n_features) or raise ValueError."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"Expected {name} as a 2D array of shape (n_samples, n_features), got an array of shape "
            f"{x.shape} instead. Flatten layers with `a.reshape(len(a), -1)` or select one layer."
        )
    x = x.astype(np.float64, copy=False)
    _check_finite(x, name)
    return x


def _check_finite(x: np.ndarray, name: str, *, row_offset: int = 0) -> None:
    """Raise ValueError naming the first rows with NaN or infinity in ``x``."""
    if np.isfinite(x).all():
        return
    bad_rows = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)) + row_offset
    raise ValueError(
        f"{name} contains NaN or infinity (in rows {bad_rows[:10].tolist()}"
        f"{' ...' if len(bad_rows) > 10 else ''}). Correlation and CKA are undefined for such values: "
        f"check the extraction (e.g. float16 overflow) or drop those rows before calling."
    )


# ---------------------------------------------------------------------------------------------
# kernel (example-space) form: small n only


def gram_linear(X: Any) -> np.ndarray:
    """Linear kernel matrix ``X Xᵀ``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)

    Returns
    -------
    gram : ndarray of shape (n_samples, n_samples), float64
    """
    X = _as_2d(X, "X")
    return X @ X.T


def center_gram(gram: Any, *, unbiased: bool = False) -> np.ndarray:
    """Double-centre a symmetric kernel matrix, ``H K H`` with ``H = I - 11ᵀ/n``.

    Parameters
    ----------
    gram : array-like of shape (n_samples, n_samples)
        A symmetric kernel matrix.
    unbiased : bool, default=False
        Use the U-centring of Székely & Rizzo (2014) (diagonal zeroed), whose inner products give the
        unbiased HSIC estimator of Song et al. (2012); needs ``n_samples > 3``.

    Returns
    -------
    centred : ndarray of shape (n_samples, n_samples), float64
    """
    gram = np.array(gram, dtype=np.float64)  # a copy: centring is done in place
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or not np.allclose(gram, gram.T):
        raise ValueError(f"Expected a symmetric square kernel matrix, got shape {gram.shape}.")
    n = gram.shape[0]
    if unbiased:
        if n < 4:
            raise ValueError(f"The unbiased centring needs at least 4 samples, got {n}.")
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0.0)
    else:
        means = gram.mean(axis=0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka(gram_x: Any, gram_y: Any, *, debiased: bool = False) -> float:
    """CKA between two kernel matrices on the same samples (Kornblith et al. 2019, eq. 4).

    Parameters
    ----------
    gram_x, gram_y : array-like of shape (n_samples, n_samples)
    debiased : bool, default=False
        Use the unbiased HSIC estimator (U-centring) instead of the biased one.

    Returns
    -------
    cka : float
    """
    gx = center_gram(gram_x, unbiased=debiased)
    gy = center_gram(gram_y, unbiased=debiased)
    hsic_xy = gx.ravel() @ gy.ravel()
    return float(hsic_xy / (np.linalg.norm(gx) * np.linalg.norm(gy)))


# ---------------------------------------------------------------------------------------------
# feature-space form


def _debias(dot: Any, row_products: Any, trace_x: Any, trace_y: Any, n: int) -> Any:
    """Unbiased-HSIC numerator from ||YᵀX||², Σ||x_i||²||y_i||² and the traces (Kornblith demo)."""
    return dot - n / (n - 2.0) * row_products + trace_x * trace_y / ((n - 1.0) * (n - 2.0))


def linear_cka(X: Any, Y: Any, *, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same samples, in feature space.

    ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)`` after centring each feature (float64). Invariant to
    orthogonal transforms and isotropic scaling of either input, not to arbitrary linear maps.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_x)
    Y : array-like of shape (n_samples, n_features_y)
    debiased : bool, default=False
        Use the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021) in place of the biased
        one; needs ``n_samples > 3``. Less inflated for few samples and many features.

    Returns
    -------
    cka : float
        In [0, 1] for the biased form; the debiased form can be slightly negative.
    """
    X = _as_2d(X, "X")
    Y = _as_2d(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same samples: got {X.shape[0]} rows in X and {Y.shape[0]} in Y.")
    n = X.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f"linear_cka needs at least {4 if debiased else 2} samples, got {n}.")
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    xy = np.linalg.norm(Y.T @ X) ** 2
    xx = np.linalg.norm(X.T @ X) ** 2
    yy = np.linalg.norm(Y.T @ Y) ** 2
    if debiased:
        rx = np.einsum("ij,ij->i", X, X)  # squared row norms
        ry = np.einsum("ij,ij->i", Y, Y)
        xy = _debias(xy, rx @ ry, rx.sum(), ry.sum(), n)
        xx = _debias(xx, rx @ rx, rx.sum(), rx.sum(), n)
        yy = _debias(yy, ry @ ry, ry.sum(), ry.sum(), n)
    return float(xy / np.sqrt(xx * yy))


# ---------------------------------------------------------------------------------------------
# streaming statistics


class GramAccumulator:
    """Running mean and centred Gram matrix of a stream of (n_chunk, n_features) batches.

    The baukit ``runningstats`` shape: ``add(batch)`` as often as needed, then read out ``mean()``,
    ``gram()``, ``covariance()``, ``correlation()`` or ``block_similarity()`` (linear CKA between
    blocks, e.g. layers); ``state_dict()`` / ``load_state_dict()`` to save and resume.

    Update rule (the "shifted data" algorithm; Chan, Golub & LeVeque 1983): the first batch fixes a
    shift ``c`` (its column means, float64). Every batch is shifted, ``z = x - c``; ``Σ z zᵀ`` is added
    to the totals and the batch's column moments are merged into ``moments_`` (a
    ``moments.RunningMoments``, Chan et al.'s pairwise merge). At readout, with ``u = mean(x) - c``::

        G = Σ (x - mean)(x - mean)ᵀ = Σ z zᵀ - n u uᵀ

    Because ``c`` is already close to the mean, the subtraction cancels almost nothing, so the
    per-batch products can be float32 GEMMs (``compute_dtype``), accumulated into float64 totals:
    relative error ~1e-6 on correlations at the speed of the bare float32 GEMM. Pass
    ``compute_dtype=np.float64`` for ~1e-12.

    Storage: only the upper block triangle of ``Σ z zᵀ`` is kept, one float64 strip per block
    (``block_sizes``), about ``n_features² / 2`` float64 values — the memory of one
    ``n_features x n_features`` float32 matrix. Each batch costs one float32 GEMM per strip (the same
    flops as a symmetric rank-k update) plus a float64 add.

    For the debiased CKA between blocks, the per-row squared norm of each block, ``q_i``, is also
    tracked: ``Σ q qᵀ`` (n_blocks²), ``Σ q`` and ``Σ q_i z_i`` (n_blocks x n_features); from these
    ``Σ_i ||x_i^a - mean^a||² ||x_i^b - mean^b||²`` follows exactly (see ``_row_norm_moments``).

    Parameters
    ----------
    block_sizes : sequence of int, optional
        Widths of the contiguous feature blocks (e.g. ``[hidden] * n_layers``); they must sum to
        ``n_features``. Defaults to blocks of at most 1,024 features, fixed at the first batch.
    compute_dtype : {np.float32, np.float64}, default=np.float32
        Precision of the per-batch products; totals are always float64.

    Attributes
    ----------
    n_samples_ : int
        Rows seen so far.
    n_features_ : int or None
        Set by the first batch.
    block_sizes_ : ndarray of shape (n_blocks,) or None
    moments_ : RunningMoments
        Column count, mean and variance of the rows added (set by the first batch).
    """

    def __init__(self, *, block_sizes: Sequence[int] | None = None, compute_dtype: Any = np.float32) -> None:
        self.compute_dtype = np.dtype(compute_dtype)
        if self.compute_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"compute_dtype must be float32 or float64, got {self.compute_dtype}.")
        self._requested_blocks = None if block_sizes is None else [int(b) for b in block_sizes]
        if self._requested_blocks is not None and min(self._requested_blocks, default=0) < 1:
            raise ValueError(f"block_sizes must be positive integers, got {block_sizes}.")
        self.n_samples_ = 0
        self.n_features_: int | None = None
        self.block_sizes_: np.ndarray | None = None
        self._work: dict[str, np.ndarray] = {}  # reused per-batch buffers (no page faults per chunk)

    # -- setup ---------------------------------------------------------------------------------

    def _init(self, first: np.ndarray) -> None:
        """Allocate totals for ``first.shape[1]`` features; take the shift from ``first``."""
        n_features = first.shape[1]
        if self._requested_blocks is None:
            n_blocks = -(-n_features // DEFAULT_BLOCK)
            sizes = np.full(n_blocks, n_features // n_blocks)
            sizes[: n_features % n_blocks] += 1
        else:
            sizes = np.asarray(self._requested_blocks, dtype=np.int64)
            if sizes.sum() != n_features:
                raise ValueError(
                    f"block_sizes sum to {sizes.sum()} but the batches have {n_features} features; "
                    f"pass block sizes that cover every feature (e.g. [hidden] * n_layers)."
                )
        self.n_features_ = n_features
        self.block_sizes_ = sizes.astype(np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self.block_sizes_)])
        # the shift as applied (rounded to compute_dtype), so that mean = shift + Σz / n exactly
        self.shift_ = first.mean(axis=0, dtype=np.float64).astype(self.compute_dtype).astype(np.float64)
        self.moments_ = RunningMoments()  # column means (Chan et al. merge of the batches' moments)
        self._strips = [np.zeros((int(b), n_features - int(s))) for b, s in zip(sizes, self._starts[:-1])]
        nb = len(sizes)
        self._q_outer = np.zeros((nb, nb))
        self._q_sum = np.zeros(nb)
        self._q_cross = np.zeros((nb, n_features))

    # -- update --------------------------------------------------------------------------------

    def add(self, batch: Any) -> GramAccumulator:
        """Add a batch of rows.

        Parameters
        ----------
        batch : array-like of shape (n_chunk, n_features)
            Read once; any float dtype (cast to ``compute_dtype``), including a memmap slice.

        Returns
        -------
        self : GramAccumulator
        """
        batch = np.asarray(batch)
        if batch.ndim != 2:
            raise ValueError(
                f"Expected a batch of shape (n_chunk, n_features), got shape {batch.shape}; reshape "
                f"(n, n_layers, hidden) activations with `a.reshape(len(a), -1)`."
            )
        if len(batch) == 0:
            return self
        if self.n_features_ is not None and batch.shape[1] != self.n_features_:
            raise ValueError(f"Expected batches with {self.n_features_} features, got {batch.shape[1]}.")
        z = self._buffer("z", batch.shape)  # our own copy, shifted in place below
        np.copyto(z, batch, casting="same_kind")
        if self.n_features_ is None:
            if not np.isfinite(z.sum(axis=0, dtype=np.float64)).all():
                _check_finite(z, "the activations", row_offset=self.n_samples_)
            self._init(z)
        z -= self.shift_.astype(self.compute_dtype)
        column_sums = z.sum(axis=0, dtype=np.float64)
        if not np.isfinite(column_sums).all():  # NaN and inf survive the sum: scan rows only then
            _check_finite(z, "the activations", row_offset=self.n_samples_)
        for strip, start, stop in zip(self._strips, self._starts[:-1], self._starts[1:]):
            product = self._buffer("product", strip.shape)
            np.matmul(z[:, start:stop].T, z[:, start:], out=product)
            strip += product
        # per-block squared row norms (for the debiased CKA) and per-column sums of squares (for the moments)
        q = np.empty((len(z), len(self.block_sizes_)))
        column_sq = np.empty(self.n_features_)
        for k, (a, b) in enumerate(zip(self._starts[:-1], self._starts[1:])):
            sq = np.square(z[:, a:b])
            q[:, k] = sq.sum(axis=1, dtype=np.float64)
            column_sq[a:b] = sq.sum(axis=0, dtype=np.float64)
        mean_z = column_sums / len(z)
        self.moments_.add_moments(len(z), self.shift_ + mean_z, np.maximum(column_sq - len(z) * mean_z**2, 0.0))
        self._q_outer += q.T @ q
        self._q_sum += q.sum(axis=0)
        self._q_cross += q.T.astype(self.compute_dtype) @ z
        self.n_samples_ += len(z)
        return self

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A contiguous ``compute_dtype`` work array of ``shape``, reusing the memory of earlier batches."""
        size = int(np.prod(shape))
        flat = self._work.get(name)
        if flat is None or flat.size < size:
            flat = self._work[name] = np.empty(size, dtype=self.compute_dtype)
        return flat[:size].reshape(shape)

    def release_buffers(self) -> None:
        """Free the per-batch work arrays (about one chunk); ``add`` makes them again when needed."""
        self._work = {}

    # -- readouts ------------------------------------------------------------------------------

    def _check_ready(self, min_samples: int = 2) -> None:
        """Raise ValueError when fewer than ``min_samples`` rows were added."""
        if self.n_samples_ < min_samples:
            raise ValueError(f"Need at least {min_samples} samples, got {self.n_samples_}; add() more batches.")

    def _u(self) -> np.ndarray:
        """Mean minus shift, shape (n_features,)."""
        return self.moments_.mean() - self.shift_

    def mean(self) -> np.ndarray:
        """Column means, ndarray of shape (n_features,), float64."""
        self._check_ready(1)
        return self.moments_.mean()

    def _centred_tiles(self):
        """Yield (rows, cols, tile) for the upper block triangle of the centred Gram (float64 tiles).

        ``tile = Σ z_a z_bᵀ - n u_a u_bᵀ`` for blocks a <= b; diagonal tiles are symmetrised (the
        GEMM makes them symmetric only up to rounding). One tile at a time keeps temporaries small.
        """
        u, n, starts = self._u(), self.n_samples_, self._starts
        for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            for c, d in zip(starts[i:-1], starts[i + 1 :]):
                tile = np.multiply.outer(u[a:b], u[c:d])
                tile *= -n
                tile += self._strips[i][:, c - a : d - a]
                if c == a:
                    tile = (tile + tile.T) / 2
                yield slice(a, b), slice(c, d), tile

    def diag(self) -> np.ndarray:
        """Diagonal of the centred Gram, Σ (x_j - mean_j)², ndarray of shape (n_features,)."""
        self._check_ready(1)
        u = self._u()
        d = np.concatenate([np.diagonal(s[:, : s.shape[0]]) for s in self._strips])
        return np.maximum(d - self.n_samples_ * u * u, 0.0)

    def gram(self) -> np.ndarray:
        """Centred Gram matrix ``Σ (x - mean)(x - mean)ᵀ``.

        Returns
        -------
        G : ndarray of shape (n_features, n_features), float64
            Assembled from the stored upper strips (8 bytes x n_features²: 800 MB at 9,984 features).
        """
        self._check_ready(1)
        G = np.empty((self.n_features_, self.n_features_))
        for rows, cols, tile in self._centred_tiles():
            G[rows, cols] = tile
            G[cols, rows] = tile.T
        return G

    def covariance(self, *, ddof: int = 1) -> np.ndarray:
        """Covariance matrix ``G / (n_samples - ddof)``, ndarray of shape (n_features, n_features), float64."""
        self._check_ready(ddof + 1)
        return self.gram() / (self.n_samples_ - ddof)

    def constant_features(self) -> np.ndarray:
        """Indices of features that did not vary.

        A feature counts as constant when its standard deviation is at most ``8 eps32`` times its
        root mean square (variation at the level of float32 rounding of its own values), which
        includes exactly constant and all-zero features.

        Returns
        -------
        indices : ndarray of shape (n_constant,), int64
        """
        self._check_ready(1)
        var = self.diag() / self.n_samples_
        rms2 = var + self.mean() ** 2
        return np.flatnonzero(var <= (8 * _EPS32) ** 2 * rms2)

    def correlation(self, *, dtype: Any = np.float32, warn: bool = True) -> np.ndarray:
        """Pearson correlation matrix of the features.

        Parameters
        ----------
        dtype : dtype, default=np.float32
            Dtype of the result (computed in float64 strip by strip).
        warn : bool, default=True
            Emit a ``ConstantFeatureWarning`` naming the constant features, if any.

        Returns
        -------
        corr : ndarray of shape (n_features, n_features)
            Symmetric, diagonal 1, entries clipped to [-1, 1]. A constant feature has correlation 0
            with every other feature (not NaN).
        """
        self._check_ready(2)
        constant = self.constant_features()
        d = self.diag()
        inv_std = 1.0 / np.sqrt(np.where(d > 0, d, 1.0))
        inv_std[constant] = 0.0
        if warn and len(constant):
            shown = constant[:20].tolist()
            warnings.warn(
                f"{len(constant)} constant neuron{'s' if len(constant) > 1 else ''} (no variation over "
                f"{self.n_samples_} samples) got correlation 0 with every other neuron: indices {shown}"
                f"{' ...' if len(constant) > 20 else ''}.",
                ConstantFeatureWarning,
                stacklevel=2,
            )
        corr = np.empty((self.n_features_, self.n_features_), dtype=dtype)
        for rows, cols, tile in self._centred_tiles():
            tile *= inv_std[rows, None]
            tile *= inv_std[None, cols]
            np.clip(tile, -1.0, 1.0, out=tile)
            corr[rows, cols] = tile
            corr[cols, rows] = tile.T
        np.fill_diagonal(corr, 1.0)
        return corr

    def _block_frobenius2(self) -> np.ndarray:
        """||G_ab||²_F for every pair of blocks, shape (n_blocks, n_blocks)."""
        nb = len(self.block_sizes_)
        index = {int(a): k for k, a in enumerate(self._starts[:-1])}
        out = np.zeros((nb, nb))
        for rows, cols, tile in self._centred_tiles():
            i, j = index[rows.start], index[cols.start]
            out[i, j] = out[j, i] = np.einsum("ij,ij->", tile, tile)
        return out

    def _row_norm_moments(self) -> np.ndarray:
        """Σ_i r_i^a r_i^b with r_i^a = ||x_i^a - mean^a||², from the tracked moments (n_blocks²).

        With z = x - c, u = mean - c, q_i^a = ||z_i^a||², p_i^a = z_i^a · u^a, m^a = ||u^a||²:
        r^a = q^a - 2 p^a + m^a, hence
        Σ r^a r^b = Σq^a q^b - 2(B_ab + B_ba) + 4 P_ab + m^b Σq^a + m^a Σq^b - 3 n m^a m^b,
        where B_ab = Σ q^a p^b = (Σ q^a z^b)·u^b, P_ab = Σ p^a p^b = u^aᵀ (Σ z^a z^bᵀ) u^b
        and Σ p^a = n m^a.
        """
        n, u, starts = self.n_samples_, self._u(), self._starts
        m = np.add.reduceat(u * u, starts[:-1])
        B = np.add.reduceat(self._q_cross * u, starts[:-1], axis=1)
        nb = len(m)
        P = np.zeros((nb, nb))
        for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            v = u[a:b] @ self._strips[i]  # u^aᵀ Σ z^a zᵀ, columns from block i on
            P[i, i:] = np.add.reduceat(v * u[a:], starts[i:-1] - a)
        P = np.triu(P) + np.triu(P, 1).T
        return (
            self._q_outer
            - 2 * (B + B.T)
            + 4 * P
            + np.outer(self._q_sum, m)
            + np.outer(m, self._q_sum)
            - 3 * n * np.outer(m, m)
        )

    def block_similarity(self, *, debiased: bool = False) -> np.ndarray:
        """Linear CKA between every pair of feature blocks (layers).

        Parameters
        ----------
        debiased : bool, default=False
            Use the unbiased HSIC estimator; exact from the streamed moments; needs ``n_samples > 3``.

        Returns
        -------
        cka : ndarray of shape (n_blocks, n_blocks), float64
            Symmetric with unit diagonal (``nan`` where a block is entirely constant).
        """
        self._check_ready(4 if debiased else 2)
        hsic = self._block_frobenius2()
        if debiased:
            n = self.n_samples_
            traces = np.add.reduceat(self.diag(), self._starts[:-1])
            hsic = _debias(hsic, self._row_norm_moments(), traces[:, None], traces[None, :], n)
        norms = np.sqrt(np.diagonal(hsic))
        with np.errstate(invalid="ignore", divide="ignore"):
            return hsic / np.outer(norms, norms)

    # -- persistence ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as a flat dict of arrays (``np.savez``-ready)."""
        state: dict[str, np.ndarray] = {
            "n_samples": np.asarray(self.n_samples_),
            "compute_dtype": np.asarray(self.compute_dtype.name),
        }
        if self.n_features_ is None:
            return state
        state.update(
            block_sizes=self.block_sizes_,
            shift=self.shift_,
            q_outer=self._q_outer,
            q_sum=self._q_sum,
            q_cross=self._q_cross,
        )
        state.update({f"moments_{k}": v for k, v in self.moments_.state_dict().items()})
        state.update({f"strip_{i}": s for i, s in enumerate(self._strips)})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> GramAccumulator:
        """Restore from ``state_dict()`` (e.g. ``dict(np.load(path))``); returns self."""
        self.compute_dtype = np.dtype(str(state["compute_dtype"]))
        self.n_samples_ = int(state["n_samples"])
        if "block_sizes" not in state:
            self.n_features_ = None
            self.block_sizes_ = None
            return self
        sizes = np.asarray(state["block_sizes"], dtype=np.int64)
        self._requested_blocks = sizes.tolist()
        self.block_sizes_ = sizes
        self.n_features_ = int(sizes.sum())
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        strips = [np.array(state[f"strip_{i}"], dtype=np.float64) for i in range(len(sizes))]
        for i, s in enumerate(strips):
            expected = (int(sizes[i]), self.n_features_ - int(self._starts[i]))
            if s.shape != expected:
                raise ValueError(f"state strip_{i} has shape {s.shape}, expected {expected}.")
        self._strips = strips
        self.shift_ = np.array(state["shift"], dtype=np.float64)
        self.moments_ = RunningMoments().load_state_dict(
            {k.removeprefix("moments_"): v for k, v in state.items() if k.startswith("moments_")}
        )
        self._q_outer = np.array(state["q_outer"], dtype=np.float64)
        self._q_sum = np.array(state["q_sum"], dtype=np.float64)
        self._q_cross = np.array(state["q_cross"], dtype=np.float64)
        return self


# ---------------------------------------------------------------------------------------------
# one pass over activations


def _chunks_2d(array: Any, chunk_size: int) -> tuple[int, Any]:
    """Validate an (n, F) or (n, L, h) array-like; return n_rows and a generator of (c, F) chunks."""
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) not in (2, 3):
        raise ValueError(
            f"Expected activations of shape (n_items, n_layers, hidden) or (n_samples, n_features), "
            f"got {'shape ' + str(tuple(shape)) if shape is not None else type(array).__name__}."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
    n = shape[0]

    def gen():
        for start in range(0, n, chunk_size):
            chunk = np.asarray(array[start : start + chunk_size])  # rows only: a memmap stays lazy
            yield chunk.reshape(len(chunk), -1)

    return n, gen()


def gram_statistics(
    activations: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_sizes: Sequence[int] | None = None,
    compute_dtype: Any = np.float32,
    progress: bool = True,
) -> GramAccumulator:
    """One streaming pass over activations: column means and the centred Gram, in row chunks.

    Parameters
    ----------
    activations : array-like of shape (n_items, n_layers, hidden) or (n_samples, n_features)
        A numpy array, ``np.memmap`` or ``ActivationStore``; only ``chunk_size`` rows are read at a
        time (one chunk in memory beyond the memory map).
    chunk_size : int, default=2048
    block_sizes : sequence of int, optional
        Feature blocks; defaults to ``[hidden] * n_layers`` for 3D input (one block per layer).
    compute_dtype : {np.float32, np.float64}, default=np.float32
    progress : bool, default=True
        Show a tqdm bar over chunks.

    Returns
    -------
    acc : GramAccumulator
    """
    array = as_array(activations)
    n, chunks = _chunks_2d(array, chunk_size)
    if block_sizes is None and len(array.shape) == 3:
        block_sizes = [array.shape[2]] * array.shape[1]
    acc = GramAccumulator(block_sizes=block_sizes, compute_dtype=compute_dtype)
    for chunk in tqdm(
        chunks, total=-(-n // chunk_size), desc="Gram pass", unit="chunk", disable=not progress, leave=False
    ):
        acc.add(chunk)
    acc.release_buffers()
    return acc


def _as_layers(activations: Any, name: str) -> Any:
    """Return the (n_items, n_layers, hidden) array behind ``activations`` or raise ValueError."""
    array = as_array(activations)
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(
            f"Expected {name} of shape (n_items, n_layers, hidden), got "
            f"{'shape ' + str(tuple(shape)) if shape is not None else type(array).__name__}. "
            f"For one matrix per layer use linear_cka."
        )
    return array


def layer_similarity(
    activations: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    debiased: bool = False,
    compute_dtype: Any = np.float32,
    progress: bool = True,
) -> np.ndarray:
    """Linear CKA between every pair of layers, from one streaming pass.

    Parameters
    ----------
    activations : array-like of shape (n_items, n_layers, hidden), or an ``ActivationStore``
    chunk_size : int, default=2048
    debiased : bool, default=False
        Unbiased-HSIC CKA (exact from the streamed moments).
    compute_dtype : {np.float32, np.float64}, default=np.float32
    progress : bool, default=True

    Returns
    -------
    cka : ndarray of shape (n_layers, n_layers), float64
        Entry (i, j) equals ``linear_cka(activations[:, i], activations[:, j])``.
    """
    array = _as_layers(activations, "activations")
    acc = gram_statistics(array, chunk_size=chunk_size, compute_dtype=compute_dtype, progress=progress)
    return acc.block_similarity(debiased=debiased)


CROSS_MAX_BYTES = 512 * 2**20
"""Memory of the float64 cross-model Gram block ``cross_model_similarity`` fills at once."""


def _column_means(array: Any, chunk_size: int, name: str) -> np.ndarray:
    """Float64 column means of an (n, L, h) array read in row chunks, shape (L * h,); ValueError on NaN/inf."""
    total = np.zeros(int(np.prod(array.shape[1:])))
    for start in range(0, array.shape[0], chunk_size):
        chunk = np.asarray(array[start : start + chunk_size]).reshape(-1, total.size)
        sums = chunk.sum(axis=0, dtype=np.float64)
        if not np.isfinite(sums).all():
            _check_finite(chunk, name, row_offset=start)
        total += sums
    return total / array.shape[0]


def cross_model_similarity(
    activations_a: Any,
    activations_b: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    debiased: bool = False,
    compute_dtype: Any = np.float32,
    max_bytes: int = CROSS_MAX_BYTES,
    progress: bool = True,
) -> np.ndarray:
    """Linear CKA between every layer of one model and every layer of another, on the same items.

    Only what the ratio needs is accumulated: the cross Gram ``Σ (a - mean_a)ᵀ (b - mean_b)`` between
    the two models (each layer pair's block gives ``||B_mᵀ A_l||²_F``) and each layer's own Gram
    (``||A_lᵀ A_l||_F``), not the Gram of both models' neurons together (which would also hold every
    within-model pair: 3.6 GB in float64 for SmolLM2 + Gemma 3, against 1.7 GB for the cross block).
    A first pass takes the column means, so every later product is of centred float32 rows
    (``compute_dtype``) added into float64 totals, the precision of ``GramAccumulator``. The cross block
    is filled for a group of the first model's layers at a time, at most ``max_bytes`` of float64 (one
    pass over both stores per group), so memory stays bounded whatever the two widths.

    Parameters
    ----------
    activations_a : array-like of shape (n_items, n_layers_a, hidden_a), or an ``ActivationStore``
    activations_b : array-like of shape (n_items, n_layers_b, hidden_b)
        The same items in the same order (e.g. the same words of the same task split); when both
        are stores, their ``words`` must match.
    chunk_size : int, default=2048
        Rows read at a time.
    debiased : bool, default=False
        Unbiased-HSIC CKA (exact: the per-row squared norms of every layer are kept, n x layers).
    compute_dtype : {np.float32, np.float64}, default=np.float32
        Precision of the per-chunk products; totals are float64.
    max_bytes : int, default=``CROSS_MAX_BYTES`` (512 MiB)
        Largest float64 cross block held at once (at least one layer of the first model is).
    progress : bool, default=True

    Returns
    -------
    cka : ndarray of shape (n_layers_a, n_layers_b), float64
        Entry (l, m) equals ``linear_cka(activations_a[:, l], activations_b[:, m])`` (NaN where a
        layer is constant).
    """
    words_a, words_b = getattr(activations_a, "words", None), getattr(activations_b, "words", None)
    if words_a is not None and words_b is not None and list(words_a) != list(words_b):
        raise ValueError(
            "The two stores hold different items (their words differ); cross-model CKA needs the same "
            "items in the same order: build both from the same task, split, budget and seed."
        )
    a = _as_layers(activations_a, "activations_a")
    b = _as_layers(activations_b, "activations_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"Both models must be run on the same items: got {a.shape[0]} rows and {b.shape[0]} rows. "
            f"Build both stores from the same task, split, budget and seed."
        )
    dtype = np.dtype(compute_dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"compute_dtype must be float32 or float64, got {dtype}.")
    n, la, ha = (int(x) for x in a.shape)
    lb, hb = int(b.shape[1]), int(b.shape[2])
    if n < (4 if debiased else 2):
        raise ValueError(f"cross_model_similarity needs at least {4 if debiased else 2} items, got {n}.")
    mean_a = _column_means(a, chunk_size, "activations_a").reshape(la, ha).astype(dtype)
    mean_b = _column_means(b, chunk_size, "activations_b").reshape(lb * hb).astype(dtype)
    per_layer = ha * lb * hb * 8
    group = max(1, min(la, int(max_bytes) // per_layer))
    groups = [range(g, min(g + group, la)) for g in range(0, la, group)]
    cross_f2 = np.zeros((la, lb))  # ||B_mᵀ A_l||²_F
    gram_a, gram_b = np.zeros((la, ha, ha)), np.zeros((lb, hb, hb))
    q_a, q_b = np.zeros((n, la)), np.zeros((n, lb))  # squared norms of the centred rows, per layer
    bar = tqdm(
        total=len(groups) * -(-n // chunk_size),
        desc="Gram pass (two models)",
        unit="chunk",
        disable=not progress,
        leave=False,
    )
    for gi, layers in enumerate(groups):
        cross = np.zeros((len(layers), ha, lb * hb))
        product = np.empty((ha, lb * hb), dtype=dtype)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            za = np.asarray(a[start:stop, layers.start : layers.stop], dtype=dtype) - mean_a[layers.start : layers.stop]
            zb = np.asarray(b[start:stop], dtype=dtype).reshape(stop - start, lb * hb) - mean_b
            for k, layer in enumerate(layers):
                np.matmul(za[:, k].T, zb, out=product)
                cross[k] += product
                gram_a[layer] += za[:, k].T @ za[:, k]
                q_a[start:stop, layer] = np.einsum("ij,ij->i", za[:, k], za[:, k], dtype=np.float64)
            if gi == 0:
                zb3 = zb.reshape(stop - start, lb, hb)
                for m in range(lb):
                    gram_b[m] += zb3[:, m].T @ zb3[:, m]
                    q_b[start:stop, m] = np.einsum("ij,ij->i", zb3[:, m], zb3[:, m], dtype=np.float64)
            bar.update()
        cross_f2[layers.start : layers.stop] = np.einsum(
            "khmj,khmj->km", *(2 * [cross.reshape(len(layers), ha, lb, hb)])
        )
        del cross
    bar.close()
    self_a = np.einsum("lij,lij->l", gram_a, gram_a)
    self_b = np.einsum("mij,mij->m", gram_b, gram_b)
    if debiased:
        tr_a, tr_b = q_a.sum(axis=0), q_b.sum(axis=0)
        cross_f2 = _debias(cross_f2, q_a.T @ q_b, tr_a[:, None], tr_b[None, :], n)
        self_a = _debias(self_a, (q_a * q_a).sum(axis=0), tr_a, tr_a, n)
        self_b = _debias(self_b, (q_b * q_b).sum(axis=0), tr_b, tr_b, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross_f2 / np.sqrt(np.outer(self_a, self_b))


# ---------------------------------------------------------------------------------------------
# reading a layer x layer similarity matrix


def cka_by_layer_distance(cka_matrix: Any) -> np.ndarray:
    """Mean similarity of layer pairs at each distance ``|i - j|`` (NaN entries ignored).

    Parameters
    ----------
    cka_matrix : array-like of shape (n_layers, n_layers)

    Returns
    -------
    means : ndarray of shape (n_layers,)
        ``means[d]`` is the mean over pairs with ``|i - j| = d`` (``means[0]`` is the diagonal).
    """
    m = np.asarray(cka_matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"Expected a square (n_layers, n_layers) matrix, got shape {m.shape}.")
    return np.array([_nanmean(np.diagonal(m, d)) for d in range(m.shape[0])])


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none (no warning)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def adjacent_layer_summary(cka_matrix: Any) -> dict[str, Any]:
    """How much of a layer x layer similarity matrix is "adjacent layers are most alike".

    Layers whose self-similarity is NaN (constant over the items, e.g. the embedding layer at a
    sentence's first token) are left out of every statistic and listed in ``undefined_layers``.

    Parameters
    ----------
    cka_matrix : array-like of shape (n_layers, n_layers)

    Returns
    -------
    summary : dict
        ``frac_nearest_adjacent``: share of layers whose most similar other layer is a neighbour;
        ``mean_adjacent`` / ``mean_non_adjacent``: mean similarity at distance 1 / distance >= 2;
        ``min_adjacent`` and ``min_adjacent_pair`` (the lower layer of the least similar neighbours);
        ``lower_adjacent`` / ``upper_adjacent``: mean neighbour similarity in the lower / upper half;
        ``undefined_layers``: list of layers left out.
    """
    m = np.array(cka_matrix, dtype=np.float64)
    n_layers = m.shape[0]
    if m.ndim != 2 or n_layers != m.shape[1] or n_layers < 3:
        raise ValueError(f"Expected a square matrix of at least 3 layers, got shape {m.shape}.")
    off = np.where(np.isfinite(m), m, -np.inf)
    np.fill_diagonal(off, -np.inf)
    rows = np.flatnonzero(off.max(axis=1) > -np.inf)
    nearest = np.argmax(off[rows], axis=1)
    adjacent = np.diagonal(m, 1)
    finite_adjacent = np.where(np.isfinite(adjacent), adjacent, np.inf)
    half = len(adjacent) // 2
    return {
        "frac_nearest_adjacent": float(np.mean(np.abs(nearest - rows) == 1)) if len(rows) else float("nan"),
        "mean_adjacent": _nanmean(adjacent),
        "mean_non_adjacent": _nanmean(m[np.triu_indices(n_layers, 2)]),
        "min_adjacent": float(finite_adjacent.min()) if np.isfinite(finite_adjacent).any() else float("nan"),
        "min_adjacent_pair": int(np.argmin(finite_adjacent)),
        "lower_adjacent": _nanmean(adjacent[:half]),
        "upper_adjacent": _nanmean(adjacent[half:]),
        "undefined_layers": np.flatnonzero(~np.isfinite(np.diagonal(m))).tolist(),
    }


def standardized_layer_cka(corr: Any, block_sizes: Sequence[int], *, constant: Any = ()) -> np.ndarray:
    """Linear CKA between feature blocks after standardising every feature, from the correlation matrix.

    With each feature scaled to unit variance, the centred Gram is the correlation matrix R, so
    CKA(a, b) = ‖R_ab‖²_F / (‖R_aa‖_F ‖R_bb‖_F). This is the variant of the paper's group
    (dimension-standardised activations): no single high-variance neuron can dominate, which matters
    for models with outlier dimensions (SmolLM2).

    Parameters
    ----------
    corr : array-like of shape (n_features, n_features)
        Pearson correlation, e.g. ``GramAccumulator.correlation()``.
    block_sizes : sequence of int
        Features per block (layer), summing to ``n_features``.
    constant : array-like of int, optional
        Constant features: left out (a block of only constant features gets ``nan``).

    Returns
    -------
    cka : ndarray of shape (n_blocks, n_blocks), float64
    """
    corr = np.asarray(corr)
    starts = np.r_[0, np.cumsum(block_sizes)]
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1] or starts[-1] != corr.shape[0]:
        raise ValueError(f"corr must be square with {starts[-1]} rows (the sum of block_sizes), got {corr.shape}")
    live = np.ones(corr.shape[0], dtype=np.float64)
    live[np.asarray(constant, dtype=np.int64)] = 0.0
    hsic = np.zeros((len(block_sizes), len(block_sizes)))
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        band = np.square(corr[a:b], dtype=np.float64) * live[a:b, None] * live[None, :]
        hsic[i] = np.add.reduceat(band.sum(axis=0), starts[:-1])
    norms = np.sqrt(np.diagonal(hsic))
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic / np.outer(norms, norms)


class LayerCKA(NamedTuple):
    """The three layer x layer CKA matrices of one store, each of shape (n_layers, n_layers)."""

    biased: np.ndarray
    """Linear CKA (the paper's)."""
    debiased: np.ndarray
    """Linear CKA with the unbiased HSIC estimator."""
    standardized: np.ndarray
    """Linear CKA on dimension-standardised activations (constant neurons left out)."""


def layer_cka_variants(acc: GramAccumulator, *, corr: Any = None) -> LayerCKA:
    """Biased, debiased and standardised linear CKA between the blocks (layers) of one accumulator.

    Parameters
    ----------
    acc : GramAccumulator
        Filled with one block per layer (e.g. by ``gram_statistics`` on (n_items, n_layers, hidden)).
    corr : array-like of shape (n_features, n_features), optional
        ``acc.correlation()`` when the caller already has it (it is the largest readout).

    Returns
    -------
    cka : LayerCKA
    """
    corr = acc.correlation() if corr is None else corr
    return LayerCKA(
        biased=acc.block_similarity(),
        debiased=acc.block_similarity(debiased=True),
        standardized=standardized_layer_cka(corr, acc.block_sizes_, constant=acc.constant_features()),
    )

"""Neuron clustering without the dense n x n matrix: thresholded tiles, components, exact linkage per component.

Start reading at ``cluster_neurons_tiled`` (the whole recipe, one call), then its three steps:

1. ``column_moments``: one pass over the rows for every neuron's mean and standard deviation (float64).
2. ``thresholded_correlation``: the correlation matrix in column tiles, each tile the product of two
   standardised column panels streamed over row chunks (float32 products accumulated in float64);
   only the pairs with ``|r| >= 1 - t_max`` are kept, as a ``scipy.sparse`` matrix. From the same
   tiles come the layer-pair CKA terms (optional). Torch does the products, on the GPU when there is
   one; with a ``dask.distributed.Client`` (or a dask array) the tile products are dask tasks instead.
3. ``cluster_components``: connected components of the thresholded graph
   (``scipy.sparse.csgraph.connected_components``); exact average linkage (scipy) on each component's
   dense block (a second pass over the rows, for the components only); cuts at every ``t <= t_max``;
   the same labels and deterministic representatives as ``utils.clustering.cluster_neurons``.

Why it is exact. With average (also single or complete) linkage cut at distance ``t``, two clusters
merge at a height ``h <= t`` only if some pair across them has distance ``<= h``: an average over pairs
is at least their minimum. So every final cluster lies inside one connected component of the graph
whose edges are the pairs with ``1 - |r| <= t`` (a subgraph of the one at ``t_max``), and merges inside
one component never change distances in another (the Lance-Williams update only touches the merged
pair). Average linkage per component, cut at ``t``, is therefore the dense path's partition.

Memory: one tile (``tile_size²`` float64) + a row chunk of two panels + the kept edges + the largest
component's dense block. When a component is too large for ``memory_budget``, ``GiantComponentError``
says so (or, with ``on_giant="approximate"``, scikit-learn's connectivity-constrained average linkage
runs on it and the result is marked ``exact=False``): never silently.

Quantities and their shapes:

- ``activations``: array-like of shape (n_rows, n_features) or (n_rows, n_layers, hidden), a memmap, an
  ``ActivationStore``, a ``ColumnConcat`` of several stores, or a ``dask.array`` with the same shape;
  neuron index ``layer * hidden + unit`` (then the next store's neurons, for a ``ColumnConcat``).
- ``ThresholdedCorrelation.edges``: ``scipy.sparse.csr_matrix`` of shape (n_features, n_features),
  upper triangle (``i < j``), float32 Pearson ``r`` of every kept pair.
- ``TiledClusters.clusterings``: list of ``utils.clustering.NeuronClusters``, one per threshold.
- ``layer_cka``, ``layer_cka_standardized``: ndarray of shape (n_layers, n_layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.cluster.hierarchy import fcluster
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from .clustering import NeuronClusters, _condensed_distance, _relabel
from .clustering import _average_linkage as clustering_average_linkage

__all__ = [
    "ColumnConcat",
    "ColumnMoments",
    "GiantComponentError",
    "ThresholdedCorrelation",
    "TiledClusters",
    "cluster_components",
    "cluster_neurons_tiled",
    "clusters_across_blocks",
    "column_moments",
    "dense_block_bytes",
    "residual_stream_activations",
    "thresholded_correlation",
]

DEFAULT_TILE = 4096
DEFAULT_CHUNK = 4096
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes for the largest component's dense block
_EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# inputs


class ColumnConcat:
    """Several (n_rows, ...) arrays side by side, read lazily: ``x[r0:r1, c0:c1]`` reads only those columns.

    For neurons of several models on the same items (e.g. the same words): neuron ``j`` of part ``k``
    is column ``offsets[k] + j``.

    Parameters
    ----------
    parts : sequence of array-like of shape (n_rows, n_layers_k, hidden_k) or (n_rows, n_features_k)
        Memmaps or ``ActivationStore`` objects with the same number of rows.
    names : sequence of str, optional
        One name per part (defaults to ``part0, part1, ...``).

    Attributes
    ----------
    shape : tuple (n_rows, n_features)
    offsets : ndarray of shape (n_parts + 1,)
    layer_sizes : list of int
        The layer widths of every part in order (a 2D part counts as one layer).
    """

    def __init__(self, parts: Sequence[Any], names: Sequence[str] | None = None) -> None:
        self.sources = list(parts)
        flats, sizes = [], []
        for p in parts:
            flat, layer_sizes = _as_matrix(p)
            flats.append(flat)
            sizes.append(layer_sizes)
        rows = {int(f.shape[0]) for f in flats}
        if len(rows) != 1:
            raise ValueError(
                f"All parts must hold the same rows (items); got row counts {[int(f.shape[0]) for f in flats]}. "
                f"Build every store from the same task, split, budget and seed."
            )
        self.parts = flats
        self.names = list(names) if names is not None else [f"part{k}" for k in range(len(flats))]
        if len(self.names) != len(flats):
            raise ValueError(f"Got {len(self.names)} names for {len(flats)} parts.")
        self.offsets = np.r_[0, np.cumsum([f.shape[1] for f in flats])]
        self.layer_sizes = [s for part in sizes for s in part]
        self.part_layers = [len(s) for s in sizes]
        self.shape = (rows.pop(), int(self.offsets[-1]))
        self.dtype = np.result_type(*[f.dtype for f in flats])
        self.ndim = 2

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        c0, c1, step = cols.indices(self.shape[1]) if isinstance(cols, slice) else (None, None, None)
        if step not in (1, None) or c0 is None:
            raise IndexError("ColumnConcat supports x[row_slice, column_slice] with unit steps only.")
        pieces = []
        for k, part in enumerate(self.parts):
            a, b = max(c0, self.offsets[k]), min(c1, self.offsets[k + 1])
            if a < b:
                pieces.append(np.asarray(part[rows, a - self.offsets[k] : b - self.offsets[k]]))
        return np.concatenate(pieces, axis=1)

    def cache_identity(self) -> tuple:
        """What identifies these columns to ``memo.ResultCache``: the names and the parts as given (stores
        by their checksums, memory maps by their files), not the bytes of every column."""
        return ("ColumnConcat", tuple(self.names), tuple(self.sources))

    def origin(self) -> pd.DataFrame:
        """Where every column comes from: ``part, layer, unit`` and ``depth`` (layer / (n_layers - 1)).

        Returns
        -------
        table : DataFrame of n_features rows, in column order
        """
        frames, k = [], 0
        for name, n_layers in zip(self.names, self.part_layers):
            for layer in range(n_layers):
                width = self.layer_sizes[k]
                frames.append(
                    pd.DataFrame(
                        {"part": name, "layer": layer, "unit": np.arange(width), "depth": layer / max(1, n_layers - 1)}
                    )
                )
                k += 1
        return pd.concat(frames, ignore_index=True)

    def to_dask(self, chunks: tuple[int, int]) -> Any:
        """The same columns as one ``dask.array`` with ``chunks`` (row chunk, column tile) per part."""
        import dask.array as da

        return da.concatenate([da.from_array(p, chunks=chunks) for p in self.parts], axis=1)


def _is_dask(x: Any) -> bool:
    """True for a ``dask.array.Array``."""
    return type(x).__module__.startswith("dask.array")


def _as_matrix(activations: Any) -> tuple[Any, list[int]]:
    """(n_rows, n_features) view of the input (lazy for memmaps and dask) and its layer widths."""
    array = getattr(activations, "activations", activations)
    if isinstance(array, ColumnConcat):
        return array, list(array.layer_sizes)
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) not in (2, 3):
        raise ValueError(
            f"Expected activations of shape (n_rows, n_features) or (n_rows, n_layers, hidden), got "
            f"{'shape ' + str(tuple(shape)) if shape is not None else type(array).__name__}. Pass an "
            f"ActivationStore, a (memory-mapped) array, a ColumnConcat of stores or a dask array."
        )
    if len(shape) == 3:
        n, n_layers, hidden = (int(s) for s in shape)
        return array.reshape(n, n_layers * hidden), [hidden] * n_layers  # a view for a C-contiguous memmap
    return array, [int(shape[1])]


def _device(device: Any) -> torch.device:
    """The torch device to use: the given one, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _read(flat: Any, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0:r1 and columns c0:c1 as a float32 array (only those bytes are read from a memmap)."""
    return np.array(flat[r0:r1, c0:c1], dtype=np.float32)  # a copy: memmap slices are read-only


# ---------------------------------------------------------------------------------------------
# step 1: moments


@dataclass(frozen=True)
class ColumnMoments:
    """Mean and standard deviation of every neuron, from one pass.

    Attributes
    ----------
    n_samples : int
    mean, std : ndarray of shape (n_features,), float64
        ``std`` is the population standard deviation (``ddof=0``; it cancels in correlations).
    constant : ndarray of shape (n_constant,), int64
        Neurons that did not vary (same rule as ``GramAccumulator.constant_features``): they get
        correlation 0 with every other neuron, hence no edges.
    """

    n_samples: int
    mean: np.ndarray
    std: np.ndarray
    constant: np.ndarray

    @property
    def inv_std(self) -> np.ndarray:
        """``1 / std``, 0 for constant neurons, shape (n_features,), float64."""
        inv = 1.0 / np.where(self.std > 0, self.std, 1.0)
        inv[self.constant] = 0.0
        return inv


def _moments_from_sums(n: int, shift: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> ColumnMoments:
    """Moments from the shifted sums Σz and Σz², z = x - shift (Chan, Golub & LeVeque's shifted data).

    As in ``GramAccumulator``: ``z`` and ``z²`` in float32, sums in float64, so a neuron whose values
    are at the scale of float32 underflow (|x| ~ 1e-32, seen in MiniLM) is constant on both paths.
    """
    if n < 2:
        raise ValueError(f"Need at least 2 rows to correlate neurons, got {n}.")
    if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
        bad = np.flatnonzero(~(np.isfinite(s1) & np.isfinite(s2)))
        raise ValueError(
            f"The activations contain NaN or infinity (in neurons {bad[:10].tolist()}"
            f"{' ...' if len(bad) > 10 else ''}); correlation is undefined for such values: check the "
            f"extraction (e.g. float16 overflow) or drop those rows."
        )
    u = s1 / n
    var = np.maximum(s2 / n - u * u, 0.0)
    mean = shift + u
    constant = np.flatnonzero(var <= (8 * _EPS32) ** 2 * (var + mean**2))
    return ColumnMoments(int(n), mean, np.sqrt(var), constant)


def column_moments(
    activations: Any, *, chunk_size: int = DEFAULT_CHUNK, tile_size: int = 16384, progress: bool = True
) -> ColumnMoments:
    """Mean and standard deviation of every neuron in one pass over the rows (float64 totals).

    Parameters
    ----------
    activations : array-like of shape (n_rows, n_features) or (n_rows, n_layers, hidden)
        Also an ``ActivationStore`` or ``ColumnConcat``; for a dask array use ``thresholded_correlation``
        with a client (it runs the same pass as dask tasks).
    chunk_size : int, default=4096
        Rows read at a time.
    tile_size : int, default=16384
        Columns read at a time (bounds the memory of one read to ``chunk_size * tile_size`` floats).
    progress : bool, default=True

    Returns
    -------
    moments : ColumnMoments
    """
    flat, _ = _as_matrix(activations)
    n, d = (int(s) for s in flat.shape)
    if chunk_size < 1 or tile_size < 1:
        raise ValueError(f"chunk_size and tile_size must be positive, got {chunk_size} and {tile_size}.")
    shift = np.empty(d)
    s1, s2 = np.zeros(d), np.zeros(d)
    for c0 in range(0, d, tile_size):  # the shift: the first chunk's means, rounded to float32
        c1 = min(d, c0 + tile_size)
        shift[c0:c1] = _read(flat, 0, min(n, chunk_size), c0, c1).mean(axis=0, dtype=np.float64)
    shift32 = shift.astype(np.float32)
    shift = shift32.astype(np.float64)
    for r0 in tqdm(range(0, n, chunk_size), desc="moments", unit="chunk", disable=not progress, leave=False):
        r1 = min(n, r0 + chunk_size)
        for c0 in range(0, d, tile_size):
            c1 = min(d, c0 + tile_size)
            z = _read(flat, r0, r1, c0, c1)
            z -= shift32[c0:c1]
            s1[c0:c1] += z.sum(axis=0, dtype=np.float64)
            s2[c0:c1] += np.square(z).sum(axis=0, dtype=np.float64)
    return _moments_from_sums(n, shift, s1, s2)


# ---------------------------------------------------------------------------------------------
# step 2: thresholded correlation in tiles


@dataclass
class ThresholdedCorrelation:
    """The neuron pairs with ``|r| >= 1 - t_max``, kept sparse, and what came from the same pass.

    Attributes
    ----------
    edges : scipy.sparse.csr_matrix of shape (n_features, n_features), float32
        Pearson ``r`` of every kept pair ``i < j`` (upper triangle; the diagonal is not stored).
    t_max : float
        Distance threshold: a pair is kept when ``1 - |r| <= t_max`` (with ``r`` rounded to float32,
        as in ``utils.clustering``).
    moments : ColumnMoments
    layer_sizes : list of int
        Width of each layer (block) of neurons.
    layer_cka : ndarray of shape (n_layers, n_layers) or None
        Linear CKA between layers (biased, as ``GramAccumulator.block_similarity()``), when asked for.
    layer_cka_standardized : ndarray of shape (n_layers, n_layers) or None
        Linear CKA on standardised neurons (as ``similarity.standardized_layer_cka``), when asked for.
    """

    edges: sp.csr_matrix
    t_max: float
    moments: ColumnMoments
    layer_sizes: list[int]
    layer_cka: np.ndarray | None = None
    layer_cka_standardized: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return int(self.edges.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edges.nnz)

    def graph(self, t: float | None = None) -> sp.csr_matrix:
        """Symmetric adjacency (bool) of the pairs with ``1 - |r| <= t`` (``t <= t_max``), shape (n, n)."""
        t = self.t_max if t is None else float(t)
        if t > self.t_max + 1e-12:
            raise ValueError(f"Only pairs with 1 - |r| <= t_max = {self.t_max} were kept; got t = {t}.")
        e = self.edges.tocoo()
        keep = 1.0 - np.abs(e.data.astype(np.float64)) <= t
        g = sp.coo_matrix((np.ones(int(keep.sum()), dtype=bool), (e.row[keep], e.col[keep])), shape=e.shape)
        return (g + g.T).tocsr()


def _min_abs_float32(t_max: float) -> np.float32:
    """Smallest float32 ``x >= 0`` with ``1 - float64(x) <= t_max``: the tile mask is then ``|r32| >= x``."""
    x = np.float32(max(0.0, 1.0 - t_max))
    while x > 0 and 1.0 - float(np.nextafter(x, np.float32(0))) <= t_max:
        x = np.nextafter(x, np.float32(0))
    while 1.0 - float(x) > t_max:
        x = np.nextafter(x, np.float32(2))
    return x


def _layer_index(layer_sizes: Sequence[int]) -> np.ndarray:
    """Layer of every neuron, shape (n_features,), int64."""
    return np.repeat(np.arange(len(layer_sizes)), layer_sizes)


class _Work:
    """Reusable torch buffers by name: ``get(name, shape, dtype)`` returns a contiguous view of one
    allocation that only grows, so a loop over tiles does not allocate (and fragment) memory per tile."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        flat = self._buffers.get(name)
        if flat is None or flat.numel() < size or flat.dtype != dtype:
            flat = self._buffers[name] = torch.empty(size, dtype=dtype, device=self.device)
        return flat[:size].view(shape)


def _tile_result(
    acc: Any,
    r0: int,
    c0: int,
    min_abs: np.float32,
    diagonal: bool,
    rows_layer: Any = None,
    cols_layer: Any = None,
    rows_var: Any = None,
    cols_var: Any = None,
    n_layers: int = 0,
    work: _Work | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Edges (and CKA terms) of one correlation tile.

    ``acc`` (float64, shape (rows, cols), torch or numpy) holds ``Σ z_i z_j`` of standardised neurons,
    i.e. ``r``. Returns global row and column indices, float32 ``r`` of the kept pairs, and, when
    ``n_layers`` > 0, the tile's contribution to ``Σ r²`` and ``Σ r² var_i var_j`` per layer pair.
    ``work`` lends reusable buffers (the local engine), so the loop allocates no tile-sized arrays.
    """
    acc = torch.as_tensor(acc)
    work = work or _Work(acc.device)
    r32 = work.get("r32", acc.shape, torch.float32).copy_(acc)
    absr = torch.abs(r32, out=work.get("abs", acc.shape, torch.float32))
    idx = torch.ge(absr, float(min_abs), out=work.get("mask", acc.shape, torch.bool)).nonzero()
    if diagonal:
        idx = idx[idx[:, 0] < idx[:, 1]]  # i < j only
    vals = r32[idx[:, 0], idx[:, 1]].clamp_(-1.0, 1.0).cpu().numpy()  # row-major order
    rows = idx[:, 0].cpu().numpy().astype(np.int64) + r0
    cols = idx[:, 1].cpu().numpy().astype(np.int64) + c0
    hsic_std = hsic_raw = None
    if n_layers:
        sq = torch.square(acc, out=work.get("sq", acc.shape, acc.dtype))
        dev = acc.device
        rl = torch.as_tensor(rows_layer, device=dev)
        cl = torch.as_tensor(cols_layer, device=dev)

        def grouped(m: torch.Tensor) -> np.ndarray:
            by_row = torch.zeros((n_layers, m.shape[1]), dtype=m.dtype, device=dev).index_add_(0, rl, m)
            out = torch.zeros((n_layers, n_layers), dtype=m.dtype, device=dev).index_add_(1, cl, by_row)
            return out.cpu().numpy()

        hsic_std = grouped(sq)
        sq *= torch.as_tensor(rows_var, device=dev)[:, None]
        sq *= torch.as_tensor(cols_var, device=dev)[None, :]
        hsic_raw = grouped(sq)
    return rows, cols, vals, hsic_std, hsic_raw


def _cka_from_hsic(hsic: np.ndarray) -> np.ndarray:
    """CKA matrix ``hsic_ab / sqrt(hsic_aa hsic_bb)`` (NaN where a layer is constant)."""
    norms = np.sqrt(np.diagonal(hsic))
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic / np.outer(norms, norms)


def thresholded_correlation(
    activations: Any,
    *,
    t_max: float = 0.3,
    tile_size: int = DEFAULT_TILE,
    chunk_size: int = DEFAULT_CHUNK,
    layer_cka: bool = False,
    layer_sizes: Sequence[int] | None = None,
    moments: ColumnMoments | None = None,
    device: Any = None,
    client: Any = None,
    progress: bool = True,
) -> ThresholdedCorrelation:
    """Correlation of every pair of neurons, in tiles, keeping only the pairs with ``1 - |r| <= t_max``.

    Each neuron is standardised with the moments of one pass (``column_moments``); tile ``(a, b)`` of
    the correlation matrix is ``Σ_chunks z_aᵀ z_b / n`` with ``z`` a row chunk of standardised float32
    columns, the products accumulated in float64. Only the upper tile triangle is computed. Memory: one
    tile of float64 + two panels of one row chunk + the kept edges.

    Parameters
    ----------
    activations : array-like of shape (n_rows, n_features) or (n_rows, n_layers, hidden)
        An ``ActivationStore``, a (memory-mapped) array, a ``ColumnConcat``, or a ``dask.array``.
    t_max : float, default=0.3
        Largest distance ``1 - |r|`` kept (clustering can then be cut at any ``t <= t_max``).
    tile_size : int, default=4096
        Columns per tile (a float64 tile takes ``8 tile_size²`` bytes: 128 MiB at 4,096).
    chunk_size : int, default=4096
        Rows per chunk (with dask: the row chunks of the dask array that is made from a numpy input).
    layer_cka : bool, default=False
        Also accumulate, from the same tiles, the linear CKA between layers, biased and standardised.
    layer_sizes : sequence of int, optional
        Widths of the layers (blocks) for ``layer_cka``; defaults to ``[hidden] * n_layers`` for 3D
        input (and to each part's layers for a ``ColumnConcat``).
    moments : ColumnMoments, optional
        Reuse the moments of an earlier pass (else one pass computes them).
    device : str or torch.device, optional
        Where the tile products run (local engine); CUDA when available, else the CPU.
    client : dask.distributed.Client, optional
        Run the moments and tile products as dask tasks on this client's workers (the input becomes a
        dask array with chunks (chunk_size, tile_size)). A dask array input without a client uses
        dask's default scheduler. On a real cluster, pass a dask array that the workers read from
        shared storage (e.g. ``da.from_zarr`` or ``da.from_npy_stack``): an in-memory or memory-mapped
        numpy input is shipped to the workers through the scheduler.
    progress : bool, default=True

    Returns
    -------
    corr : ThresholdedCorrelation
    """
    if not 0.0 <= float(t_max) < 1.0:
        raise ValueError(f"t_max is a distance 1 - |r| and must lie in [0, 1), got {t_max}.")
    if tile_size < 1 or chunk_size < 1:
        raise ValueError(f"tile_size and chunk_size must be positive, got {tile_size} and {chunk_size}.")
    flat, default_sizes = _as_matrix(activations)
    sizes = list(default_sizes if layer_sizes is None else [int(s) for s in layer_sizes])
    d = int(flat.shape[1])
    if sum(sizes) != d:
        raise ValueError(f"layer_sizes sum to {sum(sizes)}, but there are {d} neurons; pass one width per layer.")
    min_abs = _min_abs_float32(float(t_max))
    if client is not None or _is_dask(flat):
        moments, parts, hsic = _dask_tiles(
            flat,
            t_max=float(t_max),
            min_abs=min_abs,
            tile_size=tile_size,
            chunk_size=chunk_size,
            sizes=sizes if layer_cka else None,
            moments=moments,
            client=client,
            progress=progress,
        )
    else:
        if moments is None:
            moments = column_moments(flat, chunk_size=chunk_size, progress=progress)
        parts, hsic = _local_tiles(
            flat,
            moments,
            min_abs=min_abs,
            tile_size=tile_size,
            chunk_size=chunk_size,
            sizes=sizes if layer_cka else None,
            device=_device(device),
            progress=progress,
        )
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    edges = sp.csr_matrix((vals, (rows, cols)), shape=(d, d), dtype=np.float32)
    out = ThresholdedCorrelation(edges, float(t_max), moments, sizes)
    if layer_cka:
        out.layer_cka = _cka_from_hsic(hsic[1])
        out.layer_cka_standardized = _cka_from_hsic(hsic[0])
    return out


def _tile_starts(d: int, tile_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each column tile."""
    return [(c, min(d, c + tile_size)) for c in range(0, d, tile_size)]


def _local_tiles(
    flat: Any,
    moments: ColumnMoments,
    *,
    min_abs: np.float32,
    tile_size: int,
    chunk_size: int,
    sizes: list[int] | None,
    device: torch.device,
    progress: bool,
) -> tuple[list, tuple[np.ndarray, np.ndarray] | None]:
    """The tile loop with torch: (edge parts, (Σr² and Σr²var var per layer pair) or None)."""
    n, d = (int(s) for s in flat.shape)
    # float32 as in GramAccumulator (z = x - shift in float32): Σ z_i z_j = r directly
    mean = torch.as_tensor(moments.mean.astype(np.float32), device=device)
    scale = torch.as_tensor((moments.inv_std / math.sqrt(n)).astype(np.float32), device=device)
    tiles = _tile_starts(d, tile_size)
    row_chunks = [(r, min(n, r + chunk_size)) for r in range(0, n, chunk_size)]
    layer = _layer_index(sizes) if sizes else None
    var = moments.std**2
    nl = len(sizes) if sizes else 0
    hsic = (np.zeros((nl, nl)), np.zeros((nl, nl))) if sizes else None

    work = _Work(device)
    host = np.empty(min(n, chunk_size) * tile_size, dtype=np.float32)  # one read buffer, reused

    def panel(r0: int, r1: int, c0: int, c1: int, name: str) -> torch.Tensor:
        """Standardised float32 panel of rows r0:r1, columns c0:c1, in the work buffer ``name``."""
        view = host[: (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
        np.copyto(view, flat[r0:r1, c0:c1], casting="same_kind")
        x = work.get(name, view.shape, torch.float32)
        x.copy_(torch.from_numpy(view))
        return x.sub_(mean[c0:c1]).mul_(scale[c0:c1])

    # keep the standardised panel of tile a over all rows when it is small (it is reused for every b)
    cache_a = n * tile_size * 4 <= 512 * 2**20
    parts = []
    bar = tqdm(
        total=len(tiles) * (len(tiles) + 1) // 2,
        desc="correlation tiles",
        unit="tile",
        disable=not progress,
        leave=False,
    )
    for ia, (a0, a1) in enumerate(tiles):
        panels_a = [panel(r0, r1, a0, a1, f"a{k}") for k, (r0, r1) in enumerate(row_chunks)] if cache_a else None
        for b0, b1 in tiles[ia:]:
            shape = (a1 - a0, b1 - b0)
            acc = work.get("acc", shape, torch.float64)
            product = work.get("product", shape, torch.float32)
            for k, (r0, r1) in enumerate(row_chunks):
                za = panels_a[k] if cache_a else panel(r0, r1, a0, a1, "a")
                zb = za if b0 == a0 else panel(r0, r1, b0, b1, "b")
                torch.matmul(za.T, zb, out=product)  # float32 GEMM
                if k == 0:
                    acc.copy_(product)  # float64 totals
                else:
                    acc.add_(product)
            if a0 == b0:  # the GEMM is symmetric only up to rounding
                acc.add_(work.get("accT", shape, torch.float64).copy_(acc.T)).mul_(0.5)
            extra = (layer[a0:a1], layer[b0:b1], var[a0:a1], var[b0:b1], nl) if sizes else ()
            rows, cols, vals, h_std, h_raw = _tile_result(acc, a0, b0, min_abs, a0 == b0, *extra, work=work)
            parts.append((rows, cols, vals))
            if sizes:
                for h, t in zip(hsic, (h_std, h_raw)):
                    h += t if a0 == b0 else t + t.T
            bar.update()
    bar.close()
    return parts, hsic


# -- dask engine --------------------------------------------------------------------------------


def _chunk_product(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """One row chunk's tile product, float32 GEMM cast to float64, with a leading axis of 1."""
    return (za.T @ zb).astype(np.float64)[None]


def _dask_tile_task(block: np.ndarray, *args: Any) -> tuple:
    """``_tile_result`` on a computed float64 tile (symmetrised on the diagonal)."""
    if args[3]:  # diagonal
        block = (block + block.T) / 2
    return _tile_result(np.ascontiguousarray(block), *args)


def _dask_array(flat: Any, chunk_size: int, tile_size: int) -> Any:
    """``flat`` as a dask array with chunks (chunk_size, tile_size) (a dask input is rechunked)."""
    import dask.array as da

    if isinstance(flat, ColumnConcat):
        x = flat.to_dask((chunk_size, tile_size))
    elif _is_dask(flat):
        x = flat
    else:
        x = da.from_array(flat, chunks=(chunk_size, tile_size))
    return x.rechunk((chunk_size, tile_size))


def _compute(objs: list, client: Any, progress: bool, desc: str) -> list:
    """Compute dask objects on ``client`` (as they complete, with a progress bar) or the default scheduler."""
    import dask

    if client is None:
        return list(dask.compute(*objs))
    from distributed import as_completed

    futures = client.compute(objs)
    position = {f.key: i for i, f in enumerate(futures)}
    out: list = [None] * len(futures)
    for fut in tqdm(
        as_completed(futures, loop=client.loop), total=len(futures), desc=desc, disable=not progress, leave=False
    ):
        out[position[fut.key]] = fut.result()
        fut.release()
    return out


def _dask_standardised(
    flat: Any, moments: ColumnMoments | None, chunk_size: int, tile_size: int, client: Any, progress: bool
) -> tuple[Any, ColumnMoments]:
    """Dask array of standardised float32 neurons (scaled so that Σ z_i z_j = r) and the moments."""
    x = _dask_array(flat, chunk_size, tile_size)
    n = int(x.shape[0])
    if moments is None:
        first = _compute([x[: min(n, chunk_size)].mean(axis=0, dtype=np.float64)], client, False, "shift")[0]
        shift = np.asarray(first).astype(np.float32).astype(np.float64)
        z = x.astype(np.float32) - shift.astype(np.float32)
        s1, s2 = _compute(
            [z.sum(axis=0, dtype=np.float64), (z * z).sum(axis=0, dtype=np.float64)], client, progress, "moments"
        )
        moments = _moments_from_sums(n, shift, np.asarray(s1), np.asarray(s2))
    scale = (moments.inv_std / math.sqrt(n)).astype(np.float32)
    s = (x.astype(np.float32) - moments.mean.astype(np.float32)) * scale
    return s, moments


def _dask_tiles(
    flat: Any,
    *,
    t_max: float,
    min_abs: np.float32,
    tile_size: int,
    chunk_size: int,
    sizes: list[int] | None,
    moments: ColumnMoments | None,
    client: Any,
    progress: bool,
) -> tuple[ColumnMoments, list, tuple[np.ndarray, np.ndarray] | None]:
    """The tile products as dask tasks: blockwise chunk products, a float64 sum over row chunks per tile."""
    import dask
    import dask.array as da

    s, moments = _dask_standardised(flat, moments, chunk_size, tile_size, client, progress)
    prod = da.blockwise(_chunk_product, "rij", s, "ri", s, "rj", dtype=np.float64, adjust_chunks={"r": 1})
    gram = prod.sum(axis=0)  # (d, d) lazily, chunks (tile, tile); only the tiles asked for are computed
    blocks = gram.to_delayed()
    starts = np.r_[0, np.cumsum(s.chunks[1])]
    layer = _layer_index(sizes) if sizes else None
    var = moments.std**2
    nl = len(sizes) if sizes else 0
    tasks, diagonal = [], []
    for i in range(len(starts) - 1):
        for j in range(i, len(starts) - 1):
            a0, a1, b0, b1 = starts[i], starts[i + 1], starts[j], starts[j + 1]
            extra = (layer[a0:a1], layer[b0:b1], var[a0:a1], var[b0:b1], nl) if sizes else ()
            tasks.append(dask.delayed(_dask_tile_task)(blocks[i, j], int(a0), int(b0), min_abs, i == j, *extra))
            diagonal.append(i == j)
    results = _compute(tasks, client, progress, "correlation tiles")
    hsic = (np.zeros((nl, nl)), np.zeros((nl, nl))) if sizes else None
    parts = []
    for (rows, cols, vals, h_std, h_raw), diag in zip(results, diagonal):
        parts.append((rows, cols, vals))
        if sizes:
            for h, t in zip(hsic, (h_std, h_raw)):
                h += t if diag else t + t.T
    return moments, parts, hsic


# ---------------------------------------------------------------------------------------------
# step 3: components and exact linkage


class GiantComponentError(MemoryError):
    """A connected component of the thresholded graph is too large for a dense block in the budget."""


def dense_block_bytes(size: int) -> int:
    """Memory for exact average linkage on one component of ``size`` neurons.

    The float64 correlation block (8 s²) + scipy's float64 condensed distances and its working copy
    (2 × 4 s²) + the float32 block (4 s²): about 20 s² bytes.
    """
    return 20 * int(size) ** 2


@dataclass
class TiledClusters:
    """Clusterings at several thresholds from the tiled path, and how they were made.

    Attributes
    ----------
    clusterings : list of NeuronClusters
        One per threshold, in the order asked for; the same as ``clustering.cluster_sweep`` on the
        dense matrix when ``exact``.
    thresholds : list of float
    correlation : ThresholdedCorrelation
    component_sizes : ndarray of shape (n_components,)
        Sizes of the connected components of the graph at ``t_max`` (singletons included), descending.
    exact : bool
        False when a component over ``memory_budget`` was clustered approximately (``on_giant="approximate"``).
    approximate_components : list of ndarray
        Members of those components (empty when ``exact``).
    """

    clusterings: list[NeuronClusters]
    thresholds: list[float]
    correlation: ThresholdedCorrelation
    component_sizes: np.ndarray
    exact: bool = True
    approximate_components: list[np.ndarray] = field(default_factory=list)

    @property
    def largest_component(self) -> int:
        return int(self.component_sizes[0]) if len(self.component_sizes) else 0

    def at(self, threshold: float) -> NeuronClusters:
        """The clustering at ``threshold``."""
        for t, c in zip(self.thresholds, self.clusterings):
            if np.isclose(t, threshold):
                return c
        raise KeyError(f"No clustering at threshold {threshold}; have {self.thresholds}.")


def _plan_batches(components: list[np.ndarray], budget: int, max_columns: int) -> list[list[int]]:
    """Group components (indices into ``components``) into passes whose blocks fit ``budget`` bytes."""
    order = sorted(range(len(components)), key=lambda k: len(components[k]))
    batches, current, used, cols = [], [], 0, 0
    for k in order:
        s = len(components[k])
        cost = 8 * s * s
        if current and (used + cost > budget or cols + s > max_columns):
            batches.append(current)
            current, used, cols = [], 0, 0
        current.append(k)
        used += cost
        cols += s
    if current:
        batches.append(current)
    return batches


def _by_size(components: list[np.ndarray], batch: list[int]) -> dict[int, list[int]]:
    """Components of a batch grouped by size (blocks of one size are computed as one batched product)."""
    groups: dict[int, list[int]] = {}
    for k in batch:
        groups.setdefault(len(components[k]), []).append(k)
    return groups


def _local_blocks(
    flat: Any,
    moments: ColumnMoments,
    components: list[np.ndarray],
    batch: list[int],
    *,
    chunk_size: int,
    tile_size: int,
    device: torch.device,
) -> dict[int, np.ndarray]:
    """Dense float64 correlation blocks of the components in ``batch``, from one pass over the rows."""
    n, d = (int(s) for s in flat.shape)
    groups = _by_size(components, batch)
    cols = np.concatenate([np.concatenate([components[k] for k in ks]) for ks in groups.values()])
    order = np.argsort(cols, kind="stable")
    sorted_cols = cols[order]
    mean = torch.as_tensor(moments.mean[sorted_cols].astype(np.float32), device=device)
    scale = torch.as_tensor((moments.inv_std[sorted_cols] / math.sqrt(n)).astype(np.float32), device=device)
    rows_per_read = max(1, min(chunk_size, (256 * 2**20) // (4 * max(1, len(cols)))))
    acc = {s: torch.zeros((len(ks), s, s), dtype=torch.float64, device=device) for s, ks in groups.items()}
    inverse = torch.as_tensor(np.argsort(order, kind="stable"), device=device)
    for r0 in range(0, n, rows_per_read):
        r1 = min(n, r0 + rows_per_read)
        pieces = []
        for c0, c1 in _tile_starts(d, tile_size):  # read only the column tiles that hold wanted neurons
            lo, hi = np.searchsorted(sorted_cols, [c0, c1])
            if lo < hi:
                pieces.append(_read(flat, r0, r1, c0, c1)[:, sorted_cols[lo:hi] - c0])
        x = torch.from_numpy(np.concatenate(pieces, axis=1)).to(device)
        del pieces
        zt = x.sub_(mean).mul_(scale).T[inverse].contiguous()  # (columns in group order, rows)
        del x  # only zt is read below: the two row chunks would sit beside the float64 blocks
        off = 0
        for s, ks in groups.items():
            zg = zt[off : off + s * len(ks)].view(len(ks), s, r1 - r0)
            acc[s].add_(torch.bmm(zg, zg.transpose(1, 2)))
            off += s * len(ks)
    out = {}
    for s, ks in groups.items():
        blocks = acc[s].cpu().numpy()
        for k, block in zip(ks, blocks):
            out[k] = block
    return out


def _batched_gram(z: np.ndarray, m: int, s: int) -> np.ndarray:
    """(1, m, s, s) float64 Grams of m groups of s columns of one row chunk ``z`` of shape (rows, m*s)."""
    zg = z.reshape(len(z), m, s).transpose(1, 2, 0)
    return np.matmul(zg, zg.transpose(0, 2, 1)).astype(np.float64)[None]


def _dask_blocks(
    flat: Any,
    moments: ColumnMoments,
    components: list[np.ndarray],
    batch: list[int],
    *,
    chunk_size: int,
    tile_size: int,
    client: Any,
) -> dict[int, np.ndarray]:
    """As ``_local_blocks``, with the batched products as dask tasks over row chunks."""
    import dask.array as da

    s_arr, _ = _dask_standardised(flat, moments, chunk_size, tile_size, client, False)
    groups = _by_size(components, batch)
    lazy, keys = [], []
    for s, ks in groups.items():
        cols = np.concatenate([components[k] for k in ks])
        sub = s_arr[:, cols].rechunk((chunk_size, -1))
        m = len(ks)
        prod = da.blockwise(
            _batched_gram,
            "rmij",
            sub,
            "rc",
            m=m,
            s=s,
            new_axes={"m": m, "i": s, "j": s},
            adjust_chunks={"r": 1},
            dtype=np.float64,
            concatenate=True,
        )
        lazy.append(prod.sum(axis=0))
        keys.append(ks)
    out = {}
    for ks, blocks in zip(keys, _compute(lazy, client, False, "component blocks")):
        for k, block in zip(ks, np.asarray(blocks)):
            out[k] = block
    return out


def _average_linkage(r32: np.ndarray) -> np.ndarray:
    """scipy's average-linkage tree on ``1 - |r|`` of one component's float32 block (shape (s, s)).

    The condensed distances are built band by band (``clustering._condensed_distance``), so beside
    the block only they and scipy's copy of them are held: no float64 square.
    """
    if len(r32) == 2:  # the commonest component: one merge, as scipy writes it
        return np.array([[0.0, 1.0, 1.0 - abs(float(r32[0, 1])), 2.0]])
    return clustering_average_linkage(_condensed_distance(r32))


def _exact_batch(
    members: list[np.ndarray], blocks: list[np.ndarray], thresholds: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact clusters of a batch of components from their float64 correlation blocks.

    One average-linkage tree per component; the trees are joined (at height 2, above any distance)
    into one scipy linkage over the batch's neurons, so that each threshold is one ``fcluster`` call.
    Representatives follow ``utils.clustering``: the member with the largest within-cluster Σ|r|
    (self included), ties to the lowest index. Returns, per threshold, labels and a representative mask
    over ``np.concatenate(members)``. Each entry of ``blocks`` is set to None once it has been read, so
    that a large block is freed before its linkage runs.
    """
    sizes = np.array([len(m) for m in members])
    offsets = np.r_[0, np.cumsum(sizes)]
    m_total = int(offsets[-1])
    rows, absr, roots, row_off = [], [], [], 0
    for c in range(len(blocks)):
        s = int(sizes[c])
        block, blocks[c] = blocks[c], None  # the float64 block is freed once its float32 copy exists
        sym = block + block.T
        del block
        sym *= 0.5
        np.clip(sym, -1.0, 1.0, out=sym)
        r32 = sym.astype(np.float32)
        del sym
        np.fill_diagonal(r32, 1.0)
        tree = _average_linkage(r32)
        ids = tree[:, :2].astype(np.int64)
        mapped = np.where(ids < s, offsets[c] + ids, m_total + row_off + ids - s)
        rows.append(np.column_stack([mapped.astype(np.float64), tree[:, 2:]]))
        row_off += s - 1
        roots.append(m_total + row_off - 1)
        absr.append(np.abs(r32))
    if len(roots) > 1:  # join the components above every threshold
        prev = np.r_[roots[0], m_total + row_off + np.arange(len(roots) - 2)]
        rows.append(np.column_stack([prev, roots[1:], np.full(len(roots) - 1, 2.0), np.cumsum(sizes)[1:]]))
    tree = np.concatenate(rows)
    out = []
    for t in thresholds:
        labels = fcluster(tree, t=float(t), criterion="distance")
        score = np.empty(m_total)
        for c, a in enumerate(absr):
            lab = labels[offsets[c] : offsets[c + 1]]
            score[offsets[c] : offsets[c + 1]] = (a * (lab[:, None] == lab[None, :])).sum(axis=1, dtype=np.float64)
        order = np.lexsort((np.arange(m_total), -score, labels))
        first = np.r_[True, labels[order][1:] != labels[order][:-1]]
        rep = np.zeros(m_total, dtype=bool)
        rep[order[first]] = True
        out.append((labels, rep))
    return out


def _approximate_component(
    edges: sp.csr_matrix, members: np.ndarray, thresholds: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's connectivity-constrained average linkage on a component too large for a dense block.

    Only the kept pairs (``|r| >= 1 - t_max``) are known; scikit-learn averages over them (not over
    all pairs), so the partition is an approximation. Representatives: the member with the largest
    Σ|r| over kept pairs inside its cluster (ties to the lowest index).
    """
    from sklearn.cluster import AgglomerativeClustering

    sub = edges[members][:, members].tocoo()
    s = len(members)
    keys = sub.row.astype(np.int64) * s + sub.col
    order = np.argsort(keys)
    keys, dist = keys[order], 1.0 - np.abs(sub.data[order].astype(np.float64))

    def metric(u: np.ndarray, v: np.ndarray) -> float:
        i, j = int(u[0]), int(v[0])
        k = min(i, j) * s + max(i, j)
        return float(dist[np.searchsorted(keys, k)])

    conn = sp.coo_matrix((np.ones(len(keys)), (sub.row, sub.col)), shape=(s, s))
    conn = (conn + conn.T).tocsr()
    index = np.arange(s, dtype=np.float64)[:, None]
    absr = np.abs(sub.data.astype(np.float64))
    out = []
    for t in thresholds:
        model = AgglomerativeClustering(
            n_clusters=None,
            distance_threshold=float(t),
            linkage="average",
            metric=metric,
            connectivity=conn,
            compute_full_tree=True,
        )
        labels = _relabel(model.fit_predict(index))
        same = labels[sub.row] == labels[sub.col]
        score = (
            1.0
            + np.bincount(sub.row[same], weights=absr[same], minlength=s)
            + np.bincount(sub.col[same], weights=absr[same], minlength=s)
        )
        order = np.lexsort((np.arange(s), -score, labels))
        rep = np.zeros(s, dtype=bool)
        rep[order[np.r_[True, labels[order][1:] != labels[order][:-1]]]] = True
        out.append((labels, rep))
    return out


def cluster_components(
    activations: Any,
    corr: ThresholdedCorrelation,
    thresholds: Sequence[float],
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    on_giant: str = "raise",
    chunk_size: int = DEFAULT_CHUNK,
    tile_size: int = DEFAULT_TILE,
    device: Any = None,
    client: Any = None,
    progress: bool = True,
) -> TiledClusters:
    """Exact average-linkage clusters from the thresholded graph: components, then one dense block each.

    Parameters
    ----------
    activations : array-like
        The same activations ``corr`` was computed from (the component blocks are read from them).
    corr : ThresholdedCorrelation
    thresholds : sequence of float
        Distance cuts, each ``<= corr.t_max``.
    memory_budget : int, default=2 GiB
        Bytes allowed for one component's dense block (``dense_block_bytes``); also bounds the blocks
        computed in one pass over the rows.
    on_giant : {"raise", "approximate"}, default="raise"
        What to do with a component over the budget: raise ``GiantComponentError`` (asking for a
        smaller ``t_max`` or a larger budget), or cluster it with scikit-learn's connectivity-
        constrained average linkage and mark the result ``exact=False``.
    chunk_size, tile_size : int
        Rows and columns read at a time in the block pass.
    device, client
        As in ``thresholded_correlation``.
    progress : bool, default=True

    Returns
    -------
    result : TiledClusters

    Raises
    ------
    GiantComponentError
        With ``on_giant="raise"``, when a component needs more than ``memory_budget``.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("Pass at least one threshold.")
    bad = [t for t in thresholds if not 0.0 <= t <= corr.t_max + 1e-12]
    if bad:
        raise ValueError(
            f"Thresholds {bad} lie outside [0, t_max = {corr.t_max}]: only pairs with 1 - |r| <= t_max were "
            f"kept. Recompute thresholded_correlation with t_max >= {max(thresholds)}."
        )
    if on_giant not in ("raise", "approximate"):
        raise ValueError(f"on_giant must be 'raise' or 'approximate', got {on_giant!r}.")
    flat, _ = _as_matrix(activations)
    d = corr.n_features
    if int(flat.shape[1]) != d:
        raise ValueError(f"The activations have {flat.shape[1]} neurons, the correlation {d}: pass the same data.")
    n_comp, comp = connected_components(corr.graph(), directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    order = np.argsort(comp, kind="stable")
    members_all = np.split(order, np.cumsum(sizes)[:-1])
    multi = [m for m in members_all if len(m) >= 2]
    giant = [m for m in multi if dense_block_bytes(len(m)) > memory_budget]
    if giant and on_giant == "raise":
        s = max(len(m) for m in giant)
        raise GiantComponentError(
            f"The graph of neuron pairs with |r| >= {1 - corr.t_max:.3g} (t_max = {corr.t_max:g}) has a connected "
            f"component of {s:,} neurons ({len(giant)} component(s) over the budget); exact average linkage "
            f"on it needs a dense block of about {dense_block_bytes(s) / 2**30:.1f} GiB, over memory_budget = "
            f"{memory_budget / 2**30:.1f} GiB. Use a smaller t_max (fewer, smaller components), raise "
            f"memory_budget, or pass on_giant='approximate' for scikit-learn's connectivity-constrained "
            f"average linkage on that component (the result is then marked exact=False)."
        )
    exact_comps = [m for m in multi if dense_block_bytes(len(m)) <= memory_budget]
    labels = [np.arange(d, dtype=np.int64) for _ in thresholds]  # singletons label themselves
    reps = [np.ones(d, dtype=bool) for _ in thresholds]  # representative mask
    next_label = d

    def place(members: np.ndarray, per_t: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Write labels (unique across calls) and representative masks of ``members`` for every threshold."""
        nonlocal next_label
        for k, (lab, rep) in enumerate(per_t):
            labels[k][members] = next_label + lab
            reps[k][members] = rep
        next_label += len(members) + 1

    dev = _device(device)
    use_dask = client is not None or _is_dask(flat)
    batches = _plan_batches(exact_comps, budget=max(memory_budget // 2, 8 * 2**20), max_columns=1 << 20)
    for batch in tqdm(batches, desc="component blocks", unit="pass", disable=not progress or not batches, leave=False):
        if use_dask:
            blocks = _dask_blocks(
                flat, corr.moments, exact_comps, batch, chunk_size=chunk_size, tile_size=tile_size, client=client
            )
        else:
            blocks = _local_blocks(
                flat, corr.moments, exact_comps, batch, chunk_size=chunk_size, tile_size=tile_size, device=dev
            )
        place(
            np.concatenate([exact_comps[k] for k in batch]),
            _exact_batch([exact_comps[k] for k in batch], [blocks.pop(k) for k in batch], thresholds),
        )
    for members in giant:
        place(members, _approximate_component(corr.edges, members, thresholds))
    clusterings = [
        NeuronClusters(t, _relabel(lab), np.flatnonzero(rep)) for t, lab, rep in zip(thresholds, labels, reps)
    ]
    return TiledClusters(
        clusterings, thresholds, corr, np.sort(sizes)[::-1], exact=not giant, approximate_components=giant
    )


def cluster_neurons_tiled(
    activations: Any,
    thresholds: Sequence[float],
    *,
    t_max: float | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    on_giant: str = "raise",
    tile_size: int = DEFAULT_TILE,
    chunk_size: int = DEFAULT_CHUNK,
    layer_cka: bool = False,
    layer_sizes: Sequence[int] | None = None,
    device: Any = None,
    client: Any = None,
    progress: bool = True,
) -> TiledClusters:
    """Average-linkage neuron clusters at several thresholds without the dense n x n matrix.

    The same partitions and representatives as ``clustering.cluster_sweep(neuron_correlation(x),
    thresholds)`` (see the module docstring for why), in memory of one tile + the kept edges + the
    largest component's dense block.

    Parameters
    ----------
    activations : array-like of shape (n_rows, n_features) or (n_rows, n_layers, hidden)
        An ``ActivationStore``, (memory-mapped) array, ``ColumnConcat`` or dask array.
    thresholds : sequence of float
        Distance cuts ``t`` (clusters whose halves average ``|r| >= 1 - t``).
    t_max : float, optional
        Largest distance kept in the sparse graph; defaults to ``max(thresholds)``.
    memory_budget, on_giant
        As in ``cluster_components``.
    tile_size, chunk_size, layer_cka, layer_sizes, device, client, progress
        As in ``thresholded_correlation``.

    Returns
    -------
    result : TiledClusters
    """
    thresholds = [float(t) for t in thresholds]
    t_max = max(thresholds) if t_max is None else float(t_max)
    corr = thresholded_correlation(
        activations,
        t_max=t_max,
        tile_size=tile_size,
        chunk_size=chunk_size,
        layer_cka=layer_cka,
        layer_sizes=layer_sizes,
        device=device,
        client=client,
        progress=progress,
    )
    return cluster_components(
        activations,
        corr,
        thresholds,
        memory_budget=memory_budget,
        on_giant=on_giant,
        chunk_size=chunk_size,
        tile_size=tile_size,
        device=device,
        client=client,
        progress=progress,
    )


def compare_with_dense(
    activations: Any,
    thresholds: Sequence[float],
    *,
    tiled: TiledClusters | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    label: str = "",
) -> dict[str, Any]:
    """Check the tiled path against the dense one (``clustering.neuron_correlation`` + ``cluster_sweep``).

    Parameters
    ----------
    activations : array-like of shape (n_rows, n_features) or (n_rows, n_layers, hidden)
        Small enough for the dense n x n matrix.
    thresholds : sequence of float
    tiled : TiledClusters, optional
        The tiled result to check, at ``thresholds``; default ``cluster_neurons_tiled(activations,
        thresholds, memory_budget=memory_budget)``.
    memory_budget : int
    label : str
        Names the data in the returned row and in the error.

    Returns
    -------
    row : dict
        ``data``, ``neurons``, ``identical at every t`` (True) and ``kept t=<t>``, the number of
        clusters at each threshold.

    Raises
    ------
    AssertionError
        When the labels or representatives differ at any threshold.
    """
    from .clustering import cluster_sweep, neuron_correlation

    dense = cluster_sweep(neuron_correlation(activations, progress=False), thresholds)
    if tiled is None:
        tiled = cluster_neurons_tiled(activations, thresholds, memory_budget=memory_budget, progress=False)
    for a, b in zip(dense, tiled.clusterings, strict=True):
        same = np.array_equal(a.labels, b.labels) and np.array_equal(a.representatives, b.representatives)
        if not same:
            raise AssertionError(
                f"dense and tiled clusterings of {label or 'the data'} differ at t = {a.threshold:g}: "
                f"{a.n_clusters} vs {b.n_clusters} clusters. The tiled path must give the dense partition; "
                f"report this with the data's shape ({dense[0].n_features} neurons)."
            )
    return {
        "data": label,
        "neurons": dense[0].n_features,
        "identical at every t": True,
        **{f"kept t={c.threshold:g}": c.n_clusters for c in dense},
    }


# ---------------------------------------------------------------------------------------------
# summaries


def clusters_across_blocks(clusters: NeuronClusters, names: Sequence[str], sizes: Sequence[int]) -> pd.DataFrame:
    """Which blocks of neurons (e.g. models) each multi-neuron cluster draws its members from.

    Parameters
    ----------
    clusters : NeuronClusters
    names : sequence of str
        One name per block (e.g. the models of a ``ColumnConcat``), in column order.
    sizes : sequence of int
        Neurons per block, summing to ``clusters.n_features``.

    Returns
    -------
    table : DataFrame
        One row per cluster of 2+ neurons: ``cluster, size, n_blocks, blocks`` (names joined by "+")
        and one member-count column per block name.
    """
    if sum(sizes) != clusters.n_features or len(names) != len(sizes):
        raise ValueError(
            f"Expected one size per name summing to {clusters.n_features} neurons; got names {list(names)} "
            f"and sizes {list(sizes)}."
        )
    block = np.repeat(np.arange(len(sizes)), sizes)
    counts = np.zeros((clusters.n_clusters, len(sizes)), dtype=np.int64)
    np.add.at(counts, (clusters.labels, block), 1)
    multi = np.flatnonzero(counts.sum(axis=1) >= 2)
    table = pd.DataFrame(counts[multi], columns=list(names))
    table.insert(0, "cluster", multi)
    table.insert(1, "size", counts[multi].sum(axis=1))
    table.insert(2, "n_blocks", (counts[multi] > 0).sum(axis=1))
    table.insert(3, "blocks", ["+".join(n for n, c in zip(names, row) if c) for row in counts[multi]])
    return table


# ---------------------------------------------------------------------------------------------
# a synthetic store shaped like a large model


def residual_stream_activations(
    out: Any,
    *,
    n_layers: int,
    hidden: int,
    n_factors: int = 64,
    factor_scale: float = 0.35,
    write_scale: float = 0.6,
    duplicate_share: float = 0.02,
    chunk_size: int = 1024,
    random_state: int = 0,
    progress: bool = True,
) -> Any:
    """Fill ``out`` with activations that have the correlation structure of a decoder's residual stream.

    Layer ``l``'s hidden state is the residual stream ``h_l = h_{l-1} + w_l * Δ_l``: each unit carries
    its value forward and every layer writes new content ``Δ_l`` (independent noise plus a weak mix of
    ``n_factors`` shared latent features, scaled per unit and layer by ``w_l`` drawn around
    ``write_scale``). So one unit is strongly correlated with itself a few layers up and the units of a
    layer share weak low-rank structure, as in real models. A share ``duplicate_share`` of units copy
    another unit of the embedding (plus noise): redundancy across units, as in the paper's clusters.

    Parameters
    ----------
    out : array-like of shape (n_rows, n_layers, hidden), writable
        E.g. ``np.lib.format.open_memmap(path, "w+", np.float32, shape)``; written in row chunks.
    n_layers, hidden : int
    n_factors : int, default=64
    factor_scale : float, default=0.35
    write_scale : float, default=0.6
    duplicate_share : float, default=0.02
    chunk_size : int, default=1024
    random_state : int, default=0
    progress : bool, default=True

    Returns
    -------
    out : the filled array
    """
    n = int(out.shape[0])
    if tuple(out.shape[1:]) != (n_layers, hidden):
        raise ValueError(f"out has shape {out.shape}, expected (n_rows, {n_layers}, {hidden}).")
    rng = np.random.default_rng(random_state)
    loadings = (rng.standard_normal((n_layers, n_factors, hidden)) * factor_scale / math.sqrt(n_factors)).astype(
        np.float32
    )
    weights = (write_scale * rng.lognormal(0.0, 0.6, (n_layers, hidden))).astype(np.float32)
    weights[0] = 1.0
    n_dup = int(duplicate_share * hidden)
    dup_src = rng.choice(hidden, n_dup, replace=False)
    dup_dst = rng.choice(np.setdiff1d(np.arange(hidden), dup_src), n_dup, replace=False)
    for r0 in tqdm(range(0, n, chunk_size), desc="synthetic rows", unit="chunk", disable=not progress, leave=False):
        r1 = min(n, r0 + chunk_size)
        crng = np.random.default_rng([random_state, r0])
        h = np.zeros((r1 - r0, hidden), dtype=np.float32)
        for layer in range(n_layers):
            factors = crng.standard_normal((r1 - r0, n_factors), dtype=np.float32)
            delta = crng.standard_normal((r1 - r0, hidden), dtype=np.float32) + factors @ loadings[layer]
            if layer == 0:
                delta[:, dup_dst] = delta[:, dup_src] + 0.3 * crng.standard_normal((r1 - r0, n_dup), dtype=np.float32)
            h += weights[layer] * delta
            out[r0:r1, layer] = h
    if hasattr(out, "flush"):
        out.flush()
    return out

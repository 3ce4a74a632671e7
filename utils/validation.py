"""Input checks at the public boundary, shared by every analysis module.

Start reading at ``check_features`` and ``check_targets``: every public function that takes arrays
passes them through these (as scikit-learn's ``check_array``), so a wrong shape, an empty split,
NaN or a label/row mismatch fails with one message saying what was expected, what came and how to
fix it. ``is_regression_target`` is the one rule for "are these labels real values or classes?";
``as_array`` the one way to reach the array behind an ``ActivationStore``.

Quantities and their shapes:

- ``X``: array-like of shape (n_samples, n_features), or (n_samples, n_layers, hidden) with
  ``ndim=3``; np.memmap stays a memmap (nothing is copied here).
- ``y``: array-like of shape (n_samples,): class labels (strings or numbers) or real values.
- ``classes``: sorted ndarray of shape (n_classes,), e.g. a fitted probe's ``classes_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_array",
    "check_features",
    "check_finite_stats",
    "check_targets",
    "encode_labels",
    "is_regression_target",
    "seen_mask",
]


def as_array(activations: Any) -> Any:
    """The array behind an ``ActivationStore`` (anything with ``.activations``), else the input itself."""
    return getattr(activations, "activations", activations)


def is_regression_target(y: Any) -> bool:
    """True when ``y`` holds real numbers that are not all whole (a regression target).

    Float labels that are all whole numbers (``0.0, 1.0, 2.0``, as a CSV reader may give class ids)
    are class labels; integers and strings are always class labels.

    Parameters
    ----------
    y : array-like of shape (n_samples,)

    Returns
    -------
    regression : bool
    """
    y = np.asarray(y)
    return y.dtype.kind == "f" and not bool(np.all(np.mod(y, 1) == 0))


def check_features(X: Any, *, name: str = "X", ndim: int = 2, n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as an ndarray (memmaps stay memmaps) after checking its dimensions and size.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features), or (n_samples, n_layers, hidden) with ``ndim=3``
    name : str
        How the error messages call ``X``.
    ndim : {2, 3}
    n_features : int, optional
        Required number of features per sample (``n_layers * hidden`` for 3D input).

    Returns
    -------
    X : ndarray (or np.memmap) of real numbers

    Raises
    ------
    ValueError
        Wrong number of dimensions (with a reshape hint), no samples, non-real dtype, or a feature
        count other than ``n_features``.
    """
    what = "(n_samples, n_features)" if ndim == 2 else "(n_samples, n_layers, hidden)"
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        X = np.asarray(X, dtype=np.float32)
    if X.ndim != ndim:
        hint = ""
        if ndim == 2 and X.ndim == 1:
            hint = " Reshape with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample."
        elif ndim == 2 and X.ndim == 3:
            hint = " Flatten the layers with X.reshape(len(X), -1), or use fit_layer_probes for per-layer probes."
        raise ValueError(
            f"Expected {name} as a {ndim}D array of shape {what}, got a {X.ndim}D array of shape {X.shape}.{hint}"
        )
    if X.shape[0] == 0:
        raise ValueError(
            f"{name} has 0 samples: the split is empty. Check the split's budget and the data it came from."
        )
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {X.dtype}.")
    if n_features is not None and int(np.prod(X.shape[1:])) != n_features:
        raise ValueError(
            f"{name} has {int(np.prod(X.shape[1:]))} features per sample, but the probe was fitted on "
            f"{n_features}. Pass the same neurons (columns, in the same order) as in fit."
        )
    return X


def check_targets(y: Any, n_samples: int, *, name: str = "y", x_name: str = "X") -> np.ndarray:
    """Return ``y`` as a 1D ndarray of length ``n_samples`` (finite when it holds floats).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
    n_samples : int
        Rows of the matching features.
    name, x_name : str
        How the error messages call ``y`` and its features.

    Returns
    -------
    y : ndarray of shape (n_samples,)
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"Expected {name} as a 1D array of shape (n_samples,), got shape {y.shape}. Use y.ravel() for a column vector."
        )
    if len(y) != n_samples:
        raise ValueError(
            f"{x_name} and {name} disagree in length: {x_name} has {n_samples} samples, {name} has "
            f"{len(y)} labels. Pass one label per row of {x_name}."
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinity; drop those items or fix the labels.")
    return y


def seen_mask(y: Any, classes: Any) -> np.ndarray:
    """Boolean mask of shape (n_samples,): which labels of ``y`` occur in ``classes``."""
    return np.isin(np.asarray(y), np.asarray(classes))


def encode_labels(y: np.ndarray, classes: np.ndarray, *, name: str) -> np.ndarray:
    """Indices of ``y`` in the sorted ``classes``, shape (n_samples,), int64.

    Raises
    ------
    ValueError
        Naming the labels never seen in training, with how to drop them.
    """
    idx = np.searchsorted(classes, y)
    idx_clipped = np.minimum(idx, len(classes) - 1)
    unseen = classes[idx_clipped] != y
    if unseen.any():
        bad = np.unique(y[unseen])
        shown = ", ".join(repr(b) for b in bad[:10].tolist()) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"{name} contains labels never seen in training: {shown} ({int(unseen.sum())} of {len(y)} "
            f"items). Drop those items (probing.restrict_to_classes(X, {name}, probe.classes_)) "
            f"or train on data that includes them."
        )
    return idx_clipped.astype(np.int64)


def check_finite_stats(mean: np.ndarray, std: np.ndarray, *, name: str = "X") -> None:
    """ValueError naming the features whose mean or standard deviation is not finite (NaN or infinity)."""
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        where = np.argwhere(bad.reshape(-1)).ravel()
        raise ValueError(
            f"{name} contains NaN or infinity in {int(bad.sum())} feature(s) (flat indices "
            f"{where[:10].tolist()}{' ...' if len(where) > 10 else ''}). Remove or impute them before "
            f"probing (e.g. np.nan_to_num, or drop those items)."
        )

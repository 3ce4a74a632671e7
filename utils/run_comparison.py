"""How two runs' tables differ: which agree byte for byte, how far the numbers moved, which words changed.

Start reading at ``compare_runs(a, b)``: given two ``figures/`` folders (the committed run and one made
on another machine, with other code or at another precision) it returns one row per CSV table. Below it,
``compare_tables(a, b)`` compares two tables read into pandas, and ``verdict_changes`` lists the cells of
the verdict columns that differ. ``python -m utils.tutorial compare OTHER/figures`` prints both against
the committed ``figures/``.

Why: the analyses are deterministic on one machine, but a float32 matrix product need not round the same
way on another CPU (another instruction set, another BLAS kernel), and an iterative fit (a probe, a
fine-tune) can carry a last-bit difference into a different neuron ranking. This says whether such a
rerun reproduces what a reader sees: numbers close, verdicts the same.

Quantities:

- a **table**: a CSV under ``figures/`` (subfolders included), named by its path relative to the folder;
- ``status``: ``"identical"`` (the same bytes), ``"numbers"`` (the same shape and columns; only numeric
  cells differ), ``"text"`` (a text cell differs too), ``"shape"`` (rows or columns differ), ``"only in a"``
  or ``"only in b"``;
- ``max_abs`` / ``max_rel``: the largest ``|a - b|`` and ``|a - b| / max(|a|, |b|)`` over the numeric
  cells of a table (NaN on both sides counts as equal, NaN on one side as a text change).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["VERDICT_COLUMNS", "compare_runs", "compare_tables", "verdict_changes"]

VERDICT_COLUMNS: tuple[str, ...] = ("verdict", "seed_verdicts", "bound_verdict", "macro_f1_verdict", "reached")
"""Columns whose values are verdicts (``task_claim_verdicts.csv``, the minimal-set and transfer grids):
a change there changes what the reproduction concludes, not only a number."""


def compare_tables(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Compare two tables cell by cell.

    Parameters
    ----------
    a, b : DataFrame
        Two versions of one table (as ``pandas.read_csv`` reads it).

    Returns
    -------
    dict
        ``status`` (``"identical"``, ``"numbers"``, ``"text"`` or ``"shape"``), ``cells`` (how many cells
        differ), ``columns`` (the columns with a differing cell, in ``a``'s order), ``max_abs`` and
        ``max_rel`` (over numeric cells; 0.0 when none differ, NaN for ``"shape"``).
    """
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        return {"status": "shape", "cells": np.nan, "columns": [], "max_abs": np.nan, "max_rel": np.nan}
    cells, columns, max_abs, max_rel, text = 0, [], 0.0, 0.0, False
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            u, v = x.to_numpy(dtype=np.float64), y.to_numpy(dtype=np.float64)
            both_nan = np.isnan(u) & np.isnan(v)
            one_nan = np.isnan(u) ^ np.isnan(v)
            differ = ~both_nan & (one_nan | (u != v))
            if one_nan.any():
                text = True
            finite = differ & ~one_nan
            if finite.any():
                gap = np.abs(u[finite] - v[finite])
                scale = np.maximum(np.abs(u[finite]), np.abs(v[finite]))
                max_abs = max(max_abs, float(gap.max()))
                max_rel = max(max_rel, float((gap / scale).max()))  # scale > 0 where the two differ
        else:
            differ = ~((x == y) | (x.isna() & y.isna())).to_numpy()
            text = text or bool(differ.any())
        if differ.any():
            cells += int(differ.sum())
            columns.append(column)
    status = "identical" if not cells else ("text" if text else "numbers")
    return {"status": status, "cells": cells, "columns": columns, "max_abs": max_abs, "max_rel": max_rel}


def _tables(folder: Path) -> set[str]:
    """Paths of the CSV tables under ``folder``, relative to it, with forward slashes."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.csv")}


def compare_runs(a: str | Path, b: str | Path) -> pd.DataFrame:
    """Compare every CSV table of two runs' figure folders.

    Parameters
    ----------
    a, b : path
        Two ``figures/`` folders (e.g. the committed one and another run's).

    Returns
    -------
    DataFrame
        One row per table in either folder, sorted by name: ``table``, ``status``, ``cells``,
        ``columns`` (comma-separated), ``max_abs``, ``max_rel`` (see ``compare_tables``).

    Raises
    ------
    FileNotFoundError
        When a folder does not exist.
    """
    a, b = Path(a), Path(b)
    for folder in (a, b):
        if not folder.is_dir():
            raise FileNotFoundError(f"Expected a run's figures folder, got {folder}, which is not a directory.")
    in_a, in_b = _tables(a), _tables(b)
    rows = []
    for name in sorted(in_a | in_b):
        if name not in in_b or name not in in_a:
            status = "only in a" if name in in_a else "only in b"
            rows.append(
                {"table": name, "status": status, "cells": np.nan, "columns": "", "max_abs": np.nan, "max_rel": np.nan}
            )
            continue
        if (a / name).read_bytes() == (b / name).read_bytes():
            rows.append(
                {"table": name, "status": "identical", "cells": 0, "columns": "", "max_abs": 0.0, "max_rel": 0.0}
            )
            continue
        result = compare_tables(pd.read_csv(a / name), pd.read_csv(b / name))
        rows.append({"table": name, **result, "columns": ", ".join(map(str, result["columns"]))})
    return pd.DataFrame(rows, columns=["table", "status", "cells", "columns", "max_abs", "max_rel"])


def verdict_changes(a: str | Path, b: str | Path, *, columns: Sequence[str] = VERDICT_COLUMNS) -> pd.DataFrame:
    """The cells of verdict columns that differ between two runs.

    Parameters
    ----------
    a, b : path
        Two ``figures/`` folders.
    columns : sequence of str, default=VERDICT_COLUMNS
        The columns read as verdicts, wherever a table has them.

    Returns
    -------
    DataFrame
        One row per differing cell: ``table``, ``row`` (0-based), ``column``, ``a``, ``b``; rows of a
        table whose shape differs are compared up to the shorter one's length, and each table holding a
        verdict column that is missing on one side gives a row with ``column`` set to that column and
        ``a`` / ``b`` saying which side lacks it.
    """
    a, b = Path(a), Path(b)
    rows = []
    for name in sorted(_tables(a) & _tables(b)):
        if (a / name).read_bytes() == (b / name).read_bytes():  # nothing to compare: skip parsing it
            continue
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        for column in columns:
            if column not in x.columns and column not in y.columns:
                continue
            if column not in x.columns or column not in y.columns:
                rows.append(
                    {"table": name, "row": -1, "column": column, "a": column in x.columns, "b": column in y.columns}
                )
                continue
            n = min(len(x), len(y))
            u, v = x[column].iloc[:n].astype(str).to_numpy(), y[column].iloc[:n].astype(str).to_numpy()
            for i in np.flatnonzero(u != v):
                rows.append({"table": name, "row": int(i), "column": column, "a": u[i], "b": v[i]})
    return pd.DataFrame(rows, columns=["table", "row", "column", "a", "b"])

"""Comparing two runs' tables: statuses, largest changes and verdict cells, against hand-made folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.run_comparison import compare_runs, compare_tables, verdict_changes
from utils.tutorial import comparison_report


def _write(folder, name, frame):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


@pytest.fixture
def runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    same = pd.DataFrame({"model": ["m", "n"], "x": [1.0, 2.0]})
    _write(a, "same.csv", same)
    _write(b, "same.csv", same)
    _write(a, "sub/moved.csv", pd.DataFrame({"k": [1, 2, 3], "v": [0.5, -4.0, np.nan]}))
    _write(b, "sub/moved.csv", pd.DataFrame({"k": [1, 2, 3], "v": [0.5, -3.0, np.nan]}))
    _write(
        a, "verdicts.csv", pd.DataFrame({"task": ["pos", "ner"], "verdict": ["holds", "inconclusive"], "r": [0.9, 0.8]})
    )
    _write(
        b,
        "verdicts.csv",
        pd.DataFrame({"task": ["pos", "ner"], "verdict": ["holds", "does not hold"], "r": [0.9, 0.8]}),
    )
    _write(a, "longer.csv", pd.DataFrame({"x": [1, 2]}))
    _write(b, "longer.csv", pd.DataFrame({"x": [1, 2, 3]}))
    _write(a, "gone.csv", same)
    _write(b, "new.csv", same)
    return a, b


def test_compare_tables_measures_the_largest_change_by_hand():
    a = pd.DataFrame({"u": [1.0, 2.0, np.nan, 10.0], "w": ["x", "y", "z", "t"]})
    b = pd.DataFrame({"u": [1.0, 2.5, np.nan, 9.0], "w": ["x", "y", "z", "t"]})
    result = compare_tables(a, b)
    assert result["status"] == "numbers"
    assert result["cells"] == 2
    assert result["columns"] == ["u"]
    assert result["max_abs"] == pytest.approx(1.0)
    assert result["max_rel"] == pytest.approx(max(0.5 / 2.5, 1.0 / 10.0))


def test_compare_tables_text_nan_and_shape():
    a = pd.DataFrame({"u": [1.0, 2.0], "w": ["x", "y"]})
    assert compare_tables(a, a.copy())["status"] == "identical"
    assert compare_tables(a, a.assign(w=["x", "z"])) == {
        "status": "text",
        "cells": 1,
        "columns": ["w"],
        "max_abs": 0.0,
        "max_rel": 0.0,
    }
    one_nan = compare_tables(a, a.assign(u=[1.0, np.nan]))
    assert (one_nan["status"], one_nan["cells"]) == ("text", 1)
    assert compare_tables(a, a.iloc[:1])["status"] == "shape"
    assert compare_tables(a, a.rename(columns={"w": "v"}))["status"] == "shape"


def test_compare_runs_gives_every_table_its_status(runs):
    a, b = runs
    table = compare_runs(a, b).set_index("table")
    assert table["status"].to_dict() == {
        "gone.csv": "only in a",
        "longer.csv": "shape",
        "new.csv": "only in b",
        "same.csv": "identical",
        "sub/moved.csv": "numbers",
        "verdicts.csv": "text",
    }
    assert table.loc["sub/moved.csv", "max_abs"] == pytest.approx(1.0)
    assert table.loc["sub/moved.csv", "max_rel"] == pytest.approx(0.25)
    assert table.loc["verdicts.csv", "columns"] == "verdict"
    with pytest.raises(FileNotFoundError, match="not a directory"):
        compare_runs(a, a / "missing")


def test_verdict_changes_lists_the_changed_cell(runs):
    a, b = runs
    changes = verdict_changes(a, b)
    assert changes.to_dict("records") == [
        {"table": "verdicts.csv", "row": 1, "column": "verdict", "a": "inconclusive", "b": "does not hold"}
    ]
    assert len(verdict_changes(a, a)) == 0


def test_comparison_report_says_whether_a_verdict_changed(runs):
    a, b = runs
    report = comparison_report(a, b)
    assert report.splitlines()[0].startswith("6 tables: ")
    assert "1 identical" in report.splitlines()[0]
    assert report.splitlines()[-1] == "1 verdict cell(s) changed"
    assert comparison_report(a, a).splitlines()[-1] == "no verdict changed"

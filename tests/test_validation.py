"""Tests for utils.validation: one rule for regression targets, clear errors at the public boundary."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from utils.validation import (
    as_array,
    check_features,
    check_targets,
    encode_labels,
    is_regression_target,
    seen_mask,
)


@pytest.mark.parametrize(
    ("y", "regression"),
    [
        (np.array([0.0, 1.0, 2.0]), False),  # whole numbers in a float array: class ids (e.g. read from CSV)
        (np.array([0.5, 1.0]), True),
        (np.array([0, 1, 2]), False),
        (np.array(["a", "b"]), False),
        (np.array([0.1, 0.2], dtype=np.float32), True),
    ],
)
def test_regression_target_rule(y, regression):
    assert is_regression_target(y) is regression


def test_as_array_unwraps_a_store_only():
    arr = np.zeros((2, 3, 4))
    assert as_array(SimpleNamespace(activations=arr)) is arr
    assert as_array(arr) is arr


def test_checks_say_what_was_expected_and_how_to_fix():
    with pytest.raises(ValueError, match=r"Expected X as a 2D array.*Reshape with X.reshape\(-1, 1\)"):
        check_features(np.zeros(5))
    with pytest.raises(ValueError, match="Flatten the layers"):
        check_features(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="must hold real numbers"):
        check_features(np.array([["a"]]))
    with pytest.raises(ValueError, match="12 features per sample, but the probe was fitted on 10"):
        check_features(np.zeros((2, 3, 4)), ndim=3, n_features=10)
    mm = check_features(np.zeros((2, 3), dtype=np.float16))
    assert mm.dtype == np.float16  # no copy, no cast
    with pytest.raises(ValueError, match="Use y.ravel"):
        check_targets(np.zeros((3, 1)), 3)
    with pytest.raises(ValueError, match="y contains NaN"):
        check_targets(np.array([1.0, np.nan]), 2)


def test_encode_labels_and_seen_mask_agree():
    classes = np.array(["a", "b", "c"])
    y = np.array(["c", "a", "b", "a"])
    np.testing.assert_array_equal(encode_labels(y, classes, name="y"), [2, 0, 1, 0])
    y_dev = np.array(["a", "z", "c"])
    np.testing.assert_array_equal(seen_mask(y_dev, classes), [True, False, True])
    with pytest.raises(ValueError, match=r"never seen in training: 'z' \(1 of 3 items\).*restrict_to_classes"):
        encode_labels(y_dev, classes, name="y_dev")

"""Tests for utils.moments: the streaming moments against numpy on the whole array, the chunk rule."""

from __future__ import annotations

import numpy as np
import pytest

from utils.moments import (
    CHUNK_ELEMENTS,
    RunningMoments,
    constant_features,
    feature_stats,
    row_chunks,
    standardizing_scale,
)


def test_running_moments_equal_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(1000, 3, 4)) * rng.uniform(0.1, 10, size=(3, 4)) + 1e4).astype(np.float32)
    m = RunningMoments()
    for a, b in [(0, 1), (1, 250), (250, 251), (251, 999), (999, 1000)]:
        m.add(X[a:b])
    ref = X.astype(np.float64)
    assert m.count == 1000
    np.testing.assert_allclose(m.mean(), ref.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m.var(), ref.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(m.std(ddof=1), ref.std(axis=0, ddof=1), rtol=1e-9)


def test_merging_moments_is_the_chan_update():
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 2, size=(40, 5)), rng.normal(-1, 0.5, size=(7, 5))
    merged = RunningMoments().add_moments(len(a), a.mean(0), ((a - a.mean(0)) ** 2).sum(0))
    merged.add_moments(len(b), b.mean(0), ((b - b.mean(0)) ** 2).sum(0))
    both = np.vstack([a, b])
    np.testing.assert_allclose(merged.mean(), both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.var(), both.var(0), rtol=1e-12)


def test_state_dict_resumes_and_errors_are_clear(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 6))
    before = X.copy()
    first = RunningMoments().add(X[:25])
    np.testing.assert_array_equal(X, before)  # the caller's float64 array is not centred in place
    np.savez(tmp_path / "m.npz", **first.state_dict())
    resumed = RunningMoments().load_state_dict(dict(np.load(tmp_path / "m.npz"))).add(X[25:])
    np.testing.assert_allclose(resumed.mean(), X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(resumed.var(), X.var(0), rtol=1e-12)
    with pytest.raises(ValueError, match="No rows added yet"):
        RunningMoments().mean()
    with pytest.raises(ValueError, match=r"features of shape \(6,\), got \(5,\)"):
        resumed.add(X[:3, :5])
    with pytest.raises(ValueError, match="more than ddof=1 rows"):
        RunningMoments().add(X[:1]).var(ddof=1)


def test_feature_stats_streams_a_memmap_and_names_bad_features(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(5, 2, size=(700, 9)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    mean, std = feature_stats(np.load(tmp_path / "X.npy", mmap_mode="r"))
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, X.astype(np.float64).std(0), rtol=1e-10)
    X[10, 4] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinity in 1 feature\(s\) \(flat indices \[4\]\)"):
        feature_stats(X)


def test_row_chunks_cover_every_row_once():
    starts, step = row_chunks(10_000, CHUNK_ELEMENTS // 1000)
    assert step == 1000 and list(starts) == list(range(0, 10_000, 1000))
    starts, step = row_chunks(300, 10**9)  # very wide rows: still 256 rows per chunk
    assert step == 256 and list(starts) == [0, 256]


def test_constant_features_finds_dead_and_float32_noise_neurons():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 1.0, 3.0])
    X[:, 1] = 1e-33 * rng.normal(size=500)  # a dead neuron (MPNet 12:555): varies, but at 1e-33
    X[:, 3] = 7.0  # exactly constant
    X[:, 4] = np.float32(1000.0) + np.float32(1e-4) * rng.integers(0, 2, size=500)  # a constant stored in float32
    X = X.astype(np.float32)
    mean, std = feature_stats(X)
    constant = constant_features(std, mean)
    assert constant.tolist() == [False, True, False, True, True, False]
    # without the mean only the relative rule applies: the float32-noise feature is not below 1e-6 x median
    assert constant_features(std).tolist() == [False, True, False, True, False, False]
    scale, mask = standardizing_scale(std, mean)
    assert np.array_equal(mask, constant)
    np.testing.assert_array_equal(scale[constant], 1.0)
    np.testing.assert_array_equal(scale[~constant], std[~constant])
    with pytest.raises(ValueError, match="mean and std must have one shape"):
        constant_features(std, mean[:3])

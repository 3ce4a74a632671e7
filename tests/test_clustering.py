"""utils.clustering against independent computations: numpy.corrcoef, scipy's linkage + fcluster,
a plain-Python average-linkage loop, and reference loops over clusters and layers."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from utils.clustering import (
    ConstantFeatureWarning,
    NeuronClusters,
    cluster_layer_spans,
    cluster_neurons,
    cluster_sweep,
    layer_duplication,
    layer_pair_counts,
    layer_redundancy,
    linkage_tree,
    neuron_correlation,
    redundancy_by_threshold,
    same_unit_share,
)
from utils.similarity import gram_statistics


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def acts(rng):
    """(n=120, L=4, h=6) activations with groups of correlated neurons across and within layers."""
    n, n_layers, hidden = 120, 4, 6
    sources = rng.standard_normal((n, 5))
    mix = rng.standard_normal((5, n_layers * hidden)) * (rng.random((5, n_layers * hidden)) < 0.3)
    X = sources @ mix + 0.6 * rng.standard_normal((n, n_layers * hidden)) + 2.0
    return X.reshape(n, n_layers, hidden).astype(np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label vectors define the same partition (up to relabelling)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def naive_average_linkage(dist: np.ndarray, t: float) -> np.ndarray:
    """Textbook agglomerative clustering: merge the closest pair (mean pairwise distance) while <= t."""
    clusters = [[i] for i in range(len(dist))]
    while len(clusters) > 1:
        best, pair = np.inf, None
        for p, q in itertools.combinations(range(len(clusters)), 2):
            d = np.mean([dist[i, j] for i in clusters[p] for j in clusters[q]])
            if d < best:
                best, pair = d, (p, q)
        if best > t:
            break
        p, q = pair
        clusters[p] = clusters[p] + clusters[q]
        del clusters[q]
    labels = np.empty(len(dist), dtype=int)
    for k, members in enumerate(clusters):
        labels[members] = k
    return labels


# ---------------------------------------------------------------------------------------------
# correlation


@pytest.mark.parametrize("chunk_size", [1, 7, 120])
def test_neuron_correlation_equals_corrcoef(acts, chunk_size):
    X = acts.reshape(len(acts), -1).astype(np.float64)
    corr = neuron_correlation(acts, chunk_size=chunk_size, progress=False)
    assert corr.dtype == np.float32 and corr.shape == (24, 24)
    np.testing.assert_allclose(corr, np.corrcoef(X, rowvar=False), atol=1e-5)
    np.testing.assert_array_equal(corr, corr.T)


def test_neuron_correlation_reuses_an_accumulator(acts):
    acc = gram_statistics(acts, chunk_size=50, progress=False)
    np.testing.assert_array_equal(neuron_correlation(acc), neuron_correlation(acts, chunk_size=50, progress=False))


def test_constant_neuron_gets_zero_correlation_and_a_warning(acts):
    X = acts.reshape(len(acts), -1).copy()
    X[:, 5] = 3.25  # constant
    X[:, 17] = 0.0  # constant zero
    with pytest.warns(ConstantFeatureWarning, match=r"2 constant neurons .* indices \[5, 17\]"):
        corr = neuron_correlation(X, chunk_size=16, progress=False)
    assert not np.isnan(corr).any()
    for j in (5, 17):
        assert corr[j, j] == 1.0
        np.testing.assert_array_equal(np.delete(corr[j], j), 0.0)
        np.testing.assert_array_equal(np.delete(corr[:, j], j), 0.0)
    keep = np.setdiff1d(np.arange(24), [5, 17])
    np.testing.assert_allclose(
        corr[np.ix_(keep, keep)], np.corrcoef(X[:, keep].astype(np.float64), rowvar=False), atol=1e-5
    )


def test_no_warning_without_constant_neurons(acts):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neuron_correlation(acts, progress=False)


def test_nan_input_raises_a_clear_error(acts):
    bad = acts.copy()
    bad[9, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN or infinity \(in rows \[9\]\)"):
        neuron_correlation(bad, chunk_size=4, progress=False)


def test_wrong_shape_raises(acts):
    with pytest.raises(
        ValueError, match=r"Expected activations of shape \(n_items, n_layers, hidden\) or \(n_samples, n_features\)"
    ):
        neuron_correlation(acts[:, 0, 0], progress=False)


# ---------------------------------------------------------------------------------------------
# clustering


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_cluster_neurons_matches_scipy_and_a_plain_loop(acts, threshold):
    corr = neuron_correlation(acts, progress=False)
    dist = 1.0 - np.abs(corr.astype(np.float64))
    np.fill_diagonal(dist, 0.0)
    scipy_labels = fcluster(
        linkage(squareform(dist, checks=False), method="average"), t=threshold, criterion="distance"
    )
    result = cluster_neurons(corr, threshold)
    assert same_partition(result.labels, scipy_labels)
    assert same_partition(result.labels, naive_average_linkage(dist, threshold))
    assert result.n_clusters == len(np.unique(scipy_labels))
    assert 1 < result.n_clusters < 24  # the case is not trivial


def test_labels_are_numbered_by_lowest_member(acts):
    result = cluster_neurons(neuron_correlation(acts, progress=False), 0.6)
    first_members = [np.flatnonzero(result.labels == k).min() for k in range(result.n_clusters)]
    assert first_members == sorted(first_members)
    np.testing.assert_array_equal(np.unique(result.labels), np.arange(result.n_clusters))


def test_representatives_have_highest_mean_abs_correlation(acts):
    corr = neuron_correlation(acts, progress=False)
    result = cluster_neurons(corr, 0.7)
    expected = []
    for k in range(result.n_clusters):
        members = np.flatnonzero(result.labels == k)
        mean_abs = np.abs(corr[np.ix_(members, members)]).astype(np.float64).mean(axis=1)
        expected.append(members[np.argmax(mean_abs)])  # argmax returns the first (lowest) on ties
    np.testing.assert_array_equal(result.representatives, np.sort(expected))
    assert result.redundant().sum() == 24 - result.n_clusters


def test_representative_ties_go_to_the_lowest_index(rng):
    base = rng.standard_normal((50, 3))
    X = np.column_stack([base[:, 0], base[:, 1], base[:, 0], base[:, 2], base[:, 0]])  # 0, 2, 4 identical
    corr = neuron_correlation(X, progress=False)
    result = cluster_neurons(corr, 0.05)
    assert result.labels[0] == result.labels[2] == result.labels[4]
    assert 0 in result.representatives and 2 not in result.representatives and 4 not in result.representatives


def test_sweep_reuses_one_tree_and_is_deterministic(acts):
    corr = neuron_correlation(acts, progress=False)
    tree = linkage_tree(corr)
    sweep = cluster_sweep(corr, [0.9, 0.1, 0.5], linkage=tree)
    assert [c.threshold for c in sweep] == [0.9, 0.1, 0.5]  # order of the request, not sorted
    for c in sweep:
        again = cluster_neurons(corr, c.threshold)
        np.testing.assert_array_equal(c.labels, again.labels)
        np.testing.assert_array_equal(c.representatives, again.representatives)


def test_cluster_neurons_validates(acts):
    corr = neuron_correlation(acts, progress=False)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        cluster_neurons(corr, 1.5)
    with pytest.raises(ValueError, match=r"Expected a square correlation matrix .* got shape \(24, 23\)"):
        cluster_neurons(corr[:, :-1], 0.3)
    with pytest.raises(ValueError, match=r"linkage has shape \(3, 4\), expected \(23, 4\)"):
        cluster_neurons(corr, 0.3, linkage=np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------
# summaries


def test_redundancy_by_threshold(acts):
    corr = neuron_correlation(acts, progress=False)
    sweep = cluster_sweep(corr, [0.9, 0.3, 0.6])
    table = redundancy_by_threshold(sweep)
    assert list(table.columns) == ["threshold", "neurons_total", "neurons_kept", "pct_kept"]
    assert table["threshold"].tolist() == [0.3, 0.6, 0.9]
    by_t = {c.threshold: len(np.unique(c.labels)) for c in sweep}
    assert table["neurons_kept"].tolist() == [by_t[0.3], by_t[0.6], by_t[0.9]]
    np.testing.assert_allclose(table["pct_kept"], 100 * table["neurons_kept"] / 24)
    assert table["neurons_kept"].is_monotonic_decreasing


def test_layer_redundancy_matches_a_loop(acts):
    corr = neuron_correlation(acts, progress=False)
    c = cluster_neurons(corr, 0.7)
    table = layer_redundancy(c, n_layers=4, hidden=6)
    for layer in range(4):
        neurons = range(layer * 6, layer * 6 + 6)
        dropped = sum(1 for i in neurons if i not in set(c.representatives.tolist()))
        row = table[table["layer"] == layer].iloc[0]
        assert row["redundant"] == dropped
        assert row["pct_redundant"] == pytest.approx(100 * dropped / 6)
    with pytest.raises(ValueError, match="does not match 24 neurons"):
        layer_redundancy(c, n_layers=3, hidden=6)


@pytest.mark.parametrize("include_singletons", [False, True])
def test_cluster_layer_spans_match_a_loop(include_singletons):
    # 3 layers x 2 neurons; clusters {0, 5} (span 3), {1, 2} (span 2), {3} and {4} singletons
    labels = np.array([0, 1, 1, 2, 3, 0])
    c = NeuronClusters(0.3, labels, np.array([0, 1, 3, 4]))
    table = cluster_layer_spans(c, n_layers=3, hidden=2, include_singletons=include_singletons)
    expected = {1: 2 if include_singletons else 0, 2: 1, 3: 1}
    assert dict(zip(table["span"], table["n_clusters"])) == expected


def test_layer_pair_counts_match_a_loop(acts):
    corr = neuron_correlation(acts, progress=False)
    counts = layer_pair_counts(corr, 4, 6, min_abs_corr=0.5)
    expected = np.zeros((4, 4), dtype=int)
    for i, j in itertools.combinations(range(24), 2):
        if abs(corr[i, j]) >= 0.5:
            a, b = i // 6, j // 6
            expected[a, b] += 1
            if a != b:
                expected[b, a] += 1
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() > 0


def test_layer_duplication_matches_a_loop(acts):
    corr = neuron_correlation(acts, progress=False)
    dup = layer_duplication(corr, 4, 6)
    expected = np.zeros((4, 4))
    for a in range(4):
        for b in range(4):
            best = [
                max(abs(float(corr[i, j])) for j in range(b * 6, b * 6 + 6) if j != i) for i in range(a * 6, a * 6 + 6)
            ]
            expected[a, b] = np.mean(best)
    np.testing.assert_allclose(dup, expected, atol=1e-7)


def test_same_unit_share_matches_a_loop():
    # 3 layers x 3 units: {0, 3, 6} is unit 0 in every layer; {1, 5} mixes units 1 and 2; the rest singletons
    labels = np.array([0, 1, 2, 0, 3, 1, 0, 4, 5])
    c = NeuronClusters(0.3, labels, np.array([0, 1, 2, 4, 7, 8]))
    assert same_unit_share(c, hidden=3) == pytest.approx(0.5)
    assert np.isnan(same_unit_share(NeuronClusters(0.3, np.arange(9), np.arange(9)), hidden=3))


# ---------------------------------------------------------------------------------------------
# the one-store driver


def test_general_redundancy_agrees_with_the_separate_steps(acts):
    from utils.clustering import general_redundancy
    from utils.similarity import layer_similarity

    result = general_redundancy(
        acts, thresholds=[0.8, 0.5], reference_threshold=0.6, min_abs_corr=0.5, chunk_size=32, progress=False
    )
    corr = neuron_correlation(acts, chunk_size=32, progress=False)
    assert (result.n_items, result.n_layers, result.hidden) == (120, 4, 6)
    np.testing.assert_allclose(result.cka, layer_similarity(acts, chunk_size=32, progress=False), atol=1e-12)
    np.testing.assert_allclose(result.cka_debiased, layer_similarity(acts, debiased=True, progress=False), atol=1e-5)
    z = acts.reshape(120, -1)
    z = (z - z.mean(0)) / z.std(0)
    want = layer_similarity(z.reshape(acts.shape), chunk_size=32, progress=False)
    np.testing.assert_allclose(result.cka_standardized, want, atol=1e-5)
    assert result.kept["threshold"].tolist() == [0.5, 0.6, 0.8]  # the reference threshold is added
    reference = cluster_neurons(corr, 0.6)
    np.testing.assert_array_equal(result.clusters.labels, reference.labels)
    pd.testing.assert_frame_equal(
        result.spans.drop(columns="threshold"), cluster_layer_spans(reference, n_layers=4, hidden=6)
    )
    np.testing.assert_array_equal(result.pair_counts, layer_pair_counts(corr, 4, 6, min_abs_corr=0.5))
    np.testing.assert_allclose(result.duplication, layer_duplication(corr, 4, 6))
    assert len(result.constant_neurons) == 0
    assert result.same_unit == same_unit_share(reference, hidden=6)


def test_general_redundancy_keeps_every_threshold_for_the_probe_sweep(acts):
    from utils.clustering import general_redundancy

    result = general_redundancy(acts, thresholds=[0.8, 0.5], reference_threshold=0.6, progress=False)
    corr = neuron_correlation(acts, progress=False)
    assert [c.threshold for c in result.sweep] == [0.5, 0.6, 0.8]
    for c in result.sweep:
        labels = fcluster(
            linkage(squareform(1 - np.abs(corr), checks=False), "average"), c.threshold, criterion="distance"
        )
        assert same_partition(c.labels, labels)
        np.testing.assert_array_equal(c.representatives, cluster_neurons(corr, c.threshold).representatives)


def test_layer_duplication_of_an_all_constant_layer_is_undefined(acts):
    """A constant layer (layer 0 at [CLS]) is NaN in its row and column, like the layer CKA, not 0."""
    with_constant = np.array(acts, dtype=np.float64, copy=True).reshape(len(acts), 4, 6)
    with_constant[:, 1, :] = 3.0  # layer 1: every neuron constant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neuron_correlation warns about the constant neurons
        corr = neuron_correlation(with_constant.reshape(len(acts), -1), progress=False)
    dup = layer_duplication(corr, 4, 6)
    assert np.isnan(dup[1]).all() and np.isnan(dup[:, 1]).all()
    others = [0, 2, 3]
    reference = layer_duplication(neuron_correlation(np.asarray(acts), progress=False), 4, 6)
    np.testing.assert_allclose(dup[np.ix_(others, others)], reference[np.ix_(others, others)], atol=1e-7)


def test_abs_corr_from_condensed_inverts_the_distances_exactly(acts):
    """general_redundancy frees the square matrix during the linkage and rebuilds |r| from the distances:
    the rebuilt matrix equals |r| bit for bit (n odd and even), and scipy's squareform agrees."""
    from utils.clustering import _abs_corr_from_condensed, _condensed_distance

    corr = neuron_correlation(acts, progress=False)  # 24 neurons
    r = np.random.default_rng(0).uniform(-1, 1, (1100, 1100)).astype(np.float32)  # three row bands of 512
    big = np.triu(r, 1) + np.triu(r, 1).T + np.eye(1100, dtype=np.float32)
    for c in (corr, corr[:-1, :-1], big):
        dist = _condensed_distance(c)
        np.testing.assert_allclose(dist, squareform(1 - np.abs(c), checks=False), atol=1e-7)
        back = _abs_corr_from_condensed(dist)
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, np.abs(c))
    with pytest.raises(ValueError, match="not n\\(n-1\\)/2"):
        _abs_corr_from_condensed(np.zeros(4))


def test_correlation_linkage_equals_the_two_step_path(acts):
    """run_transfer's memory-saving path: the same tree as linkage_tree(neuron_correlation(...)), |r| equal to
    np.abs of that correlation bit for bit, and so the same clusters and representatives at every cut."""
    from utils.clustering import correlation_linkage

    corr = neuron_correlation(acts, progress=False)
    abs_corr, tree = correlation_linkage(acts, progress=False)
    np.testing.assert_array_equal(abs_corr, np.abs(corr))
    np.testing.assert_array_equal(tree, linkage_tree(corr))
    for t in (0.1, 0.3, 0.6):
        a, b = cluster_neurons(abs_corr, t, linkage=tree), cluster_neurons(corr, t)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.representatives, b.representatives)

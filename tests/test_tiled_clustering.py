"""utils.tiled_clustering against the dense path (utils.clustering), numpy, and its own engines.

The reference everywhere is the dense path: ``neuron_correlation`` (the full matrix) and
``cluster_sweep`` (scipy's average linkage on every pair). The tiled path must give the same labels and
representatives at every threshold, on planted clusters and on a real MiniLM store, whatever the tile
and chunk sizes and whether the tiles run in torch or as dask tasks on one or two workers.
"""

from __future__ import annotations

import numpy as np
import pytest

from utils.clustering import cluster_sweep, neuron_correlation
from utils.similarity import gram_statistics, standardized_layer_cka
from utils.tiled_clustering import (
    ColumnConcat,
    GiantComponentError,
    cluster_components,
    cluster_neurons_tiled,
    clusters_across_blocks,
    column_moments,
    compare_with_dense,
    dense_block_bytes,
    residual_stream_activations,
    thresholded_correlation,
)

THRESHOLDS = [0.05, 0.15, 0.3, 0.45]


def planted(n: int = 400, n_layers: int = 5, hidden: int = 48, seed: int = 0) -> np.ndarray:
    """(n, n_layers, hidden) float32: planted groups of 2-7 neurons (one source + noise each, signs
    flipped at random, anywhere in the network) among independent neurons, offsets and scales varied."""
    rng = np.random.default_rng(seed)
    d = n_layers * hidden
    X = rng.standard_normal((n, d))
    perm = rng.permutation(d)
    pos = 0
    while pos < d * 0.7:
        size = int(rng.integers(2, 8))
        members = perm[pos : pos + size]
        source = rng.standard_normal(n)
        noise = rng.uniform(0.1, 0.9)
        for j in members:
            X[:, j] = rng.choice([-1.0, 1.0]) * source + noise * rng.standard_normal(n)
        pos += size
    X = X * rng.uniform(0.1, 20.0, d) + rng.uniform(-50, 50, d)
    return X.reshape(n, n_layers, hidden).astype(np.float32)


def assert_same_clusterings(dense, tiled) -> None:
    """Equal labels (both numbered by lowest member) and representatives at every threshold."""
    assert [c.threshold for c in dense] == [c.threshold for c in tiled]
    for a, b in zip(dense, tiled):
        np.testing.assert_array_equal(a.labels, b.labels, err_msg=f"partitions differ at t = {a.threshold}")
        np.testing.assert_array_equal(a.representatives, b.representatives, err_msg=f"t = {a.threshold}")


@pytest.fixture(scope="module")
def acts() -> np.ndarray:
    return planted()


@pytest.fixture(scope="module")
def dense_planted(acts):
    corr = neuron_correlation(acts, progress=False)
    return corr, cluster_sweep(corr, THRESHOLDS)


@pytest.fixture(scope="module")
def minilm_store():
    """A real store: MiniLM-L6 on 1,500 PTB training words (2,688 neurons)."""
    from utils.activations import get_activations

    return get_activations("minilm", "pos", "train", budget=1500, seed=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def dask_clients():
    """Two in-process dask clusters: one worker, and two workers of one thread each."""
    from distributed import Client, LocalCluster

    one = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    two = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
    c1, c2 = Client(one, set_as_default=False), Client(two, set_as_default=False)
    assert len(c2.scheduler_info()["workers"]) == 2
    yield c1, c2
    for x in (c1, c2, one, two):
        x.close()


# ---------------------------------------------------------------------------------------------
# moments and edges


def test_column_moments_equal_numpy(acts):
    X = acts.reshape(len(acts), -1).astype(np.float64)
    m = column_moments(acts, chunk_size=37, tile_size=50, progress=False)
    np.testing.assert_allclose(
        m.mean, X.mean(axis=0), rtol=1e-6, atol=1e-6 * X.std(axis=0).max()
    )  # float32 z = x - shift, as the dense path
    np.testing.assert_allclose(m.std, X.std(axis=0), rtol=1e-6)
    assert m.n_samples == len(X) and len(m.constant) == 0


def test_constant_neurons_get_no_edges(acts):
    X = acts.reshape(len(acts), -1).copy()
    X[:, [3, 100]] = 7.25  # constant
    m = column_moments(X, progress=False)
    np.testing.assert_array_equal(m.constant, [3, 100])
    corr = thresholded_correlation(X, t_max=0.5, tile_size=64, progress=False)
    touched = np.union1d(corr.edges.tocoo().row, corr.edges.tocoo().col)
    assert 3 not in touched and 100 not in touched


@pytest.mark.parametrize("tile_size, chunk_size", [(240, 400), (50, 64), (17, 1000)])
def test_edges_equal_dense_entries_over_threshold(acts, dense_planted, tile_size, chunk_size):
    corr_dense, _ = dense_planted
    t_max = 0.3
    corr = thresholded_correlation(acts, t_max=t_max, tile_size=tile_size, chunk_size=chunk_size, progress=False)
    d = corr_dense.shape[0]
    upper = np.triu(np.ones((d, d), dtype=bool), 1)
    dist = 1.0 - np.abs(corr_dense.astype(np.float64))
    expected = upper & (dist <= t_max)
    e = corr.edges.tocoo()
    got = np.zeros((d, d), dtype=bool)
    got[e.row, e.col] = True
    assert (e.row < e.col).all()
    # same pairs, except (at most) pairs whose |r| lies within float32 rounding of the threshold
    borderline = np.abs(dist - t_max) < 1e-6
    assert not ((got != expected) & ~borderline).any()
    assert expected.sum() > 100  # the planted groups give real work
    np.testing.assert_allclose(e.data, corr_dense[e.row, e.col], atol=2e-6)


def test_graph_at_smaller_threshold_is_a_subgraph(acts):
    corr = thresholded_correlation(acts, t_max=0.4, tile_size=64, progress=False)
    g_small, g_big = corr.graph(0.1), corr.graph()
    assert (g_small - g_small.multiply(g_big)).nnz == 0 and g_small.nnz < g_big.nnz
    assert (g_big != g_big.T).nnz == 0
    with pytest.raises(ValueError, match="t_max = 0.4"):
        corr.graph(0.5)


# ---------------------------------------------------------------------------------------------
# tiled clustering = dense clustering


@pytest.mark.parametrize("tile_size, chunk_size", [(4096, 4096), (64, 100), (33, 37)])
def test_tiled_equals_dense_on_planted_clusters(acts, dense_planted, tile_size, chunk_size):
    _, dense = dense_planted
    res = cluster_neurons_tiled(acts, THRESHOLDS, tile_size=tile_size, chunk_size=chunk_size, progress=False)
    assert res.exact and res.largest_component >= 2
    assert_same_clusterings(dense, res.clusterings)
    assert res.at(0.3) is res.clusterings[2]


def test_tiled_on_memmap_and_small_block_passes(acts, dense_planted, tmp_path):
    """A memory-mapped input, and a budget that forces several passes over the rows for the blocks."""
    _, dense = dense_planted
    path = tmp_path / "acts.npy"
    np.save(path, acts)
    x = np.load(path, mmap_mode="r")
    res = cluster_neurons_tiled(x, THRESHOLDS, tile_size=70, memory_budget=dense_block_bytes(12), progress=False)
    assert_same_clusterings(dense, res.clusterings)


def test_tiled_equals_dense_on_minilm_store(minilm_store):
    thresholds = [0.1, 0.2, 0.3]
    corr = neuron_correlation(minilm_store, progress=False)
    dense = cluster_sweep(corr, thresholds)
    res = cluster_neurons_tiled(minilm_store, thresholds, tile_size=1000, chunk_size=512, progress=False)
    assert res.correlation.n_features == 2688
    assert res.largest_component > 2
    assert_same_clusterings(dense, res.clusterings)


def test_layer_cka_from_the_same_tiles(acts):
    res = thresholded_correlation(acts, t_max=0.3, tile_size=70, chunk_size=150, layer_cka=True, progress=False)
    acc = gram_statistics(acts, progress=False)
    np.testing.assert_allclose(res.layer_cka, acc.block_similarity(), atol=1e-6)
    np.testing.assert_allclose(
        res.layer_cka_standardized, standardized_layer_cka(acc.correlation(), [48] * 5), atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# dask


def test_dask_one_and_two_workers_equal_local(acts, dense_planted, dask_clients):
    _, dense = dense_planted
    c1, c2 = dask_clients
    local = thresholded_correlation(acts, t_max=0.45, tile_size=64, chunk_size=150, progress=False)
    runs = [
        cluster_neurons_tiled(acts, THRESHOLDS, tile_size=64, chunk_size=150, client=c, progress=False)
        for c in (c1, c2)
    ]
    for res in runs:
        assert_same_clusterings(dense, res.clusterings)
        assert (abs(res.correlation.edges - local.edges) > 1e-6).nnz == 0
        np.testing.assert_allclose(res.correlation.moments.std, local.moments.std, rtol=1e-9)
    assert (runs[0].correlation.edges != runs[1].correlation.edges).nnz == 0  # bitwise: same task graph


def test_dask_on_minilm_store_two_workers(minilm_store, dask_clients):
    thresholds = [0.1, 0.3]
    dense = cluster_sweep(neuron_correlation(minilm_store, progress=False), thresholds)
    res = cluster_neurons_tiled(
        minilm_store, thresholds, tile_size=700, chunk_size=500, client=dask_clients[1], progress=False
    )
    assert_same_clusterings(dense, res.clusterings)


def test_dask_array_input_uses_default_scheduler(acts, dense_planted):
    import dask.array as da

    _, dense = dense_planted
    x = da.from_array(acts.reshape(len(acts), -1), chunks=(128, 100))
    res = cluster_neurons_tiled(x, THRESHOLDS, tile_size=100, chunk_size=128, progress=False)
    assert_same_clusterings(dense, res.clusterings)


# ---------------------------------------------------------------------------------------------
# the giant-component guard


@pytest.fixture(scope="module")
def giant():
    """One chain of 60 neurons (each shares two of its three sources with the next: r ~ 0.65) among 60 free ones."""
    rng = np.random.default_rng(3)
    n = 300
    base = rng.standard_normal((n, 62))
    chain = np.stack([base[:, j : j + 3].sum(axis=1) + 0.3 * rng.standard_normal(n) for j in range(60)], axis=1)
    return np.concatenate([chain, rng.standard_normal((n, 60))], axis=1).astype(np.float32)


def test_giant_component_raises_and_says_so(giant):
    corr = thresholded_correlation(giant, t_max=0.6, progress=False)
    with pytest.raises(GiantComponentError, match=r"component of 60 neurons.*smaller t_max.*on_giant='approximate'"):
        cluster_components(giant, corr, [0.3, 0.6], memory_budget=dense_block_bytes(40), progress=False)
    ok = cluster_components(giant, corr, [0.3, 0.6], memory_budget=dense_block_bytes(60), progress=False)
    assert ok.exact and ok.largest_component == 60
    assert_same_clusterings(cluster_sweep(neuron_correlation(giant, progress=False), [0.3, 0.6]), ok.clusterings)


def test_giant_component_approximate_is_marked(giant):
    corr = thresholded_correlation(giant, t_max=0.6, progress=False)
    res = cluster_components(
        giant, corr, [0.3, 0.6], memory_budget=dense_block_bytes(40), on_giant="approximate", progress=False
    )
    assert not res.exact
    assert [len(m) for m in res.approximate_components] == [60]
    dense = cluster_sweep(neuron_correlation(giant, progress=False), [0.3, 0.6])
    for a, b in zip(dense, res.clusterings):
        # every approximate cluster stays inside the component; the free neurons are exact singletons
        assert (b.labels[:60, None] != b.labels[None, 60:]).all()
        np.testing.assert_array_equal(a.labels[60:] - a.labels[60], b.labels[60:] - b.labels[60])
        assert set(b.representatives[b.representatives >= 60]) == set(range(60, 120))


def test_thresholds_over_t_max_are_refused(acts):
    corr = thresholded_correlation(acts, t_max=0.2, progress=False)
    with pytest.raises(ValueError, match=r"t_max >= 0.3"):
        cluster_components(acts, corr, [0.1, 0.3], progress=False)
    with pytest.raises(ValueError, match="layer_sizes sum to 10"):
        thresholded_correlation(acts, layer_sizes=[5, 5], progress=False)


# ---------------------------------------------------------------------------------------------
# several models side by side, and the synthetic large-model store


def test_column_concat_reads_like_numpy_and_clusters_across_blocks(acts):
    a, b = acts[:, :2], acts[:, 2:].reshape(len(acts), -1)
    cat = ColumnConcat([a, b], names=["a", "b"])
    full = np.concatenate([a.reshape(len(a), -1), b], axis=1)
    assert cat.shape == full.shape and cat.layer_sizes == [48, 48, 144]
    np.testing.assert_array_equal(cat[5:40, 30:150], full[5:40, 30:150])
    res = cluster_neurons_tiled(cat, [0.3], tile_size=50, progress=False)
    dense = cluster_sweep(neuron_correlation(full, progress=False), [0.3])
    assert_same_clusterings(dense, res.clusterings)
    table = clusters_across_blocks(res.clusterings[0], ["a", "b"], [96, 144])
    labels = res.clusterings[0].labels
    for row in table.itertuples():  # reference: count members per block by hand
        members = np.flatnonzero(labels == row.cluster)
        assert row.a == (members < 96).sum() and row.b == (members >= 96).sum() and row.size == len(members) >= 2
        assert row.blocks == "+".join(n for n, c in (("a", row.a), ("b", row.b)) if c)
    assert len(table) == (np.bincount(labels) >= 2).sum()
    origin = cat.origin()
    assert len(origin) == 240 and origin["part"].tolist() == ["a"] * 96 + ["b"] * 144
    assert origin["layer"].tolist()[90:100] == [1] * 6 + [0] * 4 and origin["depth"].iloc[95] == 1.0
    with pytest.raises(ValueError, match="same rows"):
        ColumnConcat([a, b[:10]])


def test_compare_with_dense_counts_the_dense_clusters_and_refuses_another_partition(acts, dense_planted):
    row = compare_with_dense(acts, THRESHOLDS, label="planted")
    dense = dense_planted[1]
    assert row["data"] == "planted" and row["neurons"] == acts.shape[1] * acts.shape[2]
    assert row["identical at every t"] is True
    assert [row[f"kept t={t:g}"] for t in THRESHOLDS] == [c.n_clusters for c in dense]
    same = cluster_neurons_tiled(acts, THRESHOLDS, progress=False)
    assert compare_with_dense(acts, THRESHOLDS, tiled=same) == {**row, "data": ""}
    other = cluster_neurons_tiled(planted(seed=1), THRESHOLDS, progress=False)  # another data set's partition
    with pytest.raises(AssertionError, match="differ at t = 0.05"):
        compare_with_dense(acts, THRESHOLDS, tiled=other, label="planted")


def test_column_concat_is_keyed_by_its_parts_not_by_reading_its_columns(acts, tmp_path, monkeypatch):
    from utils import memo

    paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
    np.save(paths[0], acts[:, :2])
    np.save(paths[1], acts[:, 2:])

    def cat(names=("a", "b")):
        return ColumnConcat([np.load(p, mmap_mode="r") for p in paths], names=list(names))

    monkeypatch.setattr(ColumnConcat, "__getitem__", lambda *a: pytest.fail("the key read the columns"))
    key = memo.fingerprint(cat())
    assert memo.fingerprint(cat()) == key  # the same files opened again
    assert memo.fingerprint(cat(("x", "b"))) != key  # another name
    swapped = ColumnConcat([np.load(p, mmap_mode="r") for p in paths[::-1]], names=["a", "b"])
    assert memo.fingerprint(swapped) != key  # other parts in that place
    np.save(paths[1], acts[:, 2:] + 1)  # a part rewritten
    assert memo.fingerprint(cat()) != key


def test_residual_stream_activations_structure():
    out = np.zeros((1500, 6, 64), dtype=np.float32)
    residual_stream_activations(out, n_layers=6, hidden=64, random_state=1, progress=False)
    X = out.reshape(1500, -1).astype(np.float64)
    r = np.corrcoef(X, rowvar=False)
    same_unit_next = np.mean([r[l * 64 + u, (l + 1) * 64 + u] for l in range(5) for u in range(64)])
    other_units = np.abs(r[:64, 64:128] - np.diag(np.diag(r[:64, 64:128]))).mean()
    assert same_unit_next > 0.7 and other_units < 0.15
    again = np.zeros_like(out)
    residual_stream_activations(again, n_layers=6, hidden=64, random_state=1, progress=False)
    np.testing.assert_array_equal(out, again)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mpnet", "smollm2"])
def test_tiled_equals_dense_on_full_run_stores(model):
    """The stores of the full configuration (POS train, 10,000 tokens): MPNet 9,984 and SmolLM2 17,856 neurons."""
    from utils.activations import task_stores

    store = task_stores(model, "pos", token_budget=10_000, splits=("train",), progress=False)["train"]
    thresholds = [0.1, 0.2, 0.3]
    dense = cluster_sweep(neuron_correlation(store, progress=False), thresholds)
    res = cluster_neurons_tiled(store, thresholds, progress=False)
    assert_same_clusterings(dense, res.clusterings)

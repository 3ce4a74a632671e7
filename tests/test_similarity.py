"""utils.similarity against independent computations: the kernel form written out with the centring
matrix H, the unbiased HSIC of Song et al. (2012) written out term by term, numpy's mean/cov, and
the in-memory result for every chunking of the streaming pass."""

from __future__ import annotations

import numpy as np
import pytest

from utils.similarity import (
    GramAccumulator,
    adjacent_layer_summary,
    cka,
    cka_by_layer_distance,
    cross_model_similarity,
    gram_linear,
    gram_statistics,
    layer_similarity,
    linear_cka,
)

# ---------------------------------------------------------------------------------------------
# independent references (plain numpy, n x n kernels)


def hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """tr(K H L H) / (n - 1)², H = I - 11ᵀ/n (Gretton et al. 2005)."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), eq. 5: K̃, L̃ are K, L with zero diagonal."""
    n = len(K)
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    term = (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    )
    return float(term / (n * (n - 3)))


def cka_reference(X: np.ndarray, Y: np.ndarray, *, debiased: bool = False) -> float:
    """CKA from n x n linear kernels and the HSIC estimators above."""
    K, L = X @ X.T, Y @ Y.T
    hsic = hsic_unbiased if debiased else hsic_biased
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def pair(rng):
    """Two related representations of 60 samples (10 and 7 features), not centred."""
    X = rng.standard_normal((60, 10)) + 3.0
    Y = X[:, :7] @ rng.standard_normal((7, 7)) + 0.5 * rng.standard_normal((60, 7)) - 1.0
    return X, Y


@pytest.fixture
def layered(rng):
    """Activations (n=150, L=5, h=8) where each layer mixes the one below: banded similarity."""
    n, n_layers, hidden = 150, 5, 8
    acts = np.empty((n, n_layers, hidden))
    acts[:, 0] = rng.standard_normal((n, hidden))
    for layer in range(1, n_layers):
        acts[:, layer] = acts[:, layer - 1] @ rng.standard_normal((hidden, hidden)) / 3 + rng.standard_normal(
            (n, hidden)
        )
    acts[:, 2, 0] += 40.0  # a large offset: the streaming centring must cope
    return acts


# ---------------------------------------------------------------------------------------------
# linear CKA


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_equals_kernel_form(pair, debiased):
    X, Y = pair
    expected = cka_reference(X, Y, debiased=debiased)
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(expected, abs=1e-10)
    # and the library's own kernel path (gram_linear -> center_gram -> cka) agrees too
    assert cka(gram_linear(X), gram_linear(Y), debiased=debiased) == pytest.approx(expected, abs=1e-10)


def test_debiased_differs_from_biased_for_unrelated_data(rng):
    # few samples, many features: the biased CKA of independent data is inflated, the debiased one is ~0
    X, Y = rng.standard_normal((30, 50)), rng.standard_normal((30, 50))
    assert linear_cka(X, Y) > 0.5
    assert abs(linear_cka(X, Y, debiased=True)) < 0.1


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_x_with_itself_is_one(pair, debiased):
    X, _ = pair
    assert linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(pair, rng, debiased):
    X, Y = pair
    Q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    base = linear_cka(X, Y, debiased=debiased)
    assert linear_cka(X @ Q, Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * X, 0.2 * Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(X + 5.0, Y, debiased=debiased) == pytest.approx(base, abs=1e-10)  # centring


def test_not_invariant_to_arbitrary_invertible_linear_map(pair, rng):
    X, Y = pair
    A = rng.standard_normal((10, 10)) + np.diag(np.linspace(0.1, 10, 10))  # invertible, far from orthogonal
    assert abs(np.linalg.det(A)) > 1e-3
    assert abs(linear_cka(X @ A, Y) - linear_cka(X, Y)) > 1e-2


def test_linear_cka_validates_input(pair):
    X, Y = pair
    with pytest.raises(ValueError, match="same samples: got 60 rows in X and 59 in Y"):
        linear_cka(X, Y[:-1])
    with pytest.raises(ValueError, match=r"Expected X as a 2D array .* got an array of shape \(60,\)"):
        linear_cka(X[:, 0], Y)
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(in rows \[4\]\)"):
        linear_cka(bad, Y)
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(X[:3], Y[:3], debiased=True)


# ---------------------------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("chunk_size", [1, 7, 150])
@pytest.mark.parametrize("debiased", [False, True])
def test_layer_similarity_equals_pairwise_linear_cka(layered, chunk_size, debiased):
    n_layers = layered.shape[1]
    expected = np.array(
        [
            [linear_cka(layered[:, i], layered[:, j], debiased=debiased) for j in range(n_layers)]
            for i in range(n_layers)
        ]
    )
    exact = layer_similarity(
        layered, chunk_size=chunk_size, debiased=debiased, compute_dtype=np.float64, progress=False
    )
    np.testing.assert_allclose(exact, expected, atol=1e-10)
    fast = layer_similarity(layered.astype(np.float32), chunk_size=chunk_size, debiased=debiased, progress=False)
    np.testing.assert_allclose(fast, expected, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 150])
def test_streaming_moments_equal_numpy(layered, chunk_size):
    X = layered.reshape(len(layered), -1)
    acc = gram_statistics(X, chunk_size=chunk_size, block_sizes=[8, 13, 19], compute_dtype=np.float64, progress=False)
    np.testing.assert_allclose(acc.mean(), X.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(acc.covariance(), np.cov(X, rowvar=False), atol=1e-10)
    np.testing.assert_allclose(acc.correlation(dtype=np.float64), np.corrcoef(X, rowvar=False), atol=1e-12)
    centred = X - X.mean(axis=0)
    np.testing.assert_allclose(acc.gram(), centred.T @ centred, atol=1e-8)


def test_memmap_input_equals_in_memory(layered, tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, layered.astype(np.float32))
    mm = np.load(path, mmap_mode="r")
    from_disk = layer_similarity(mm, chunk_size=16, progress=False)
    in_memory = layer_similarity(np.asarray(mm), chunk_size=150, progress=False)
    np.testing.assert_allclose(from_disk, in_memory, atol=1e-6)


def test_store_like_object_is_accepted(layered):
    class Store:
        activations = layered

    np.testing.assert_allclose(layer_similarity(Store(), progress=False), layer_similarity(layered, progress=False))


def test_state_dict_round_trip_resumes_exactly(layered, tmp_path):
    X = layered.reshape(len(layered), -1)
    whole = GramAccumulator(compute_dtype=np.float64).add(X)
    first = GramAccumulator(block_sizes=[8] * 5, compute_dtype=np.float64).add(X[:70])
    np.savez(tmp_path / "state.npz", **first.state_dict())
    resumed = GramAccumulator().load_state_dict(dict(np.load(tmp_path / "state.npz")))
    resumed.add(X[70:])
    assert resumed.n_samples_ == len(X)
    np.testing.assert_allclose(resumed.gram(), whole.gram(), atol=1e-9)
    np.testing.assert_allclose(
        resumed.block_similarity(debiased=True),
        layer_similarity(layered, debiased=True, compute_dtype=np.float64, progress=False),
        atol=1e-10,
    )


def test_accumulator_validates_batches(layered):
    acc = GramAccumulator(block_sizes=[10, 10])
    with pytest.raises(ValueError, match="block_sizes sum to 20 but the batches have 40 features"):
        acc.add(layered.reshape(len(layered), -1))
    acc = GramAccumulator().add(np.ones((3, 4)))
    with pytest.raises(ValueError, match="Expected batches with 4 features, got 5"):
        acc.add(np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"Expected a batch of shape \(n_chunk, n_features\)"):
        acc.add(np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match="Need at least 2 samples, got 0"):
        GramAccumulator().correlation()


def test_nan_in_a_later_chunk_names_the_global_row(layered):
    bad = layered.copy()
    bad[123, 1, 3] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinity \(in rows \[123\]\)"):
        layer_similarity(bad, chunk_size=50, progress=False)


def test_cross_model_similarity_equals_pairwise_linear_cka(layered, rng):
    other = np.concatenate([layered[:, ::2], rng.standard_normal((len(layered), 1, 8))], axis=1)[..., :6]  # (n, 4, 6)
    expected = np.array(
        [[linear_cka(layered[:, i], other[:, j]) for j in range(other.shape[1])] for i in range(layered.shape[1])]
    )
    got = cross_model_similarity(layered, other, chunk_size=11, compute_dtype=np.float64, progress=False)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    with pytest.raises(ValueError, match="same items: got 150 rows and 149 rows"):
        cross_model_similarity(layered, other[:-1], progress=False)


def test_cross_model_similarity_in_layer_groups_debiased_and_float32(layered, rng):
    other = rng.standard_normal((len(layered), 3, 7)) + 0.5 * layered[:, :3, :1]  # (n, 3, 7), related to layered
    other[:, 1] *= 40.0  # a layer on another scale
    h = layered.shape[2]

    def pairs(fn):
        return np.array([[fn(layered[:, i], other[:, j]) for j in range(3)] for i in range(layered.shape[1])])

    biased = pairs(linear_cka)
    unbiased = pairs(lambda x, y: linear_cka(x, y, debiased=True))
    one_pass = cross_model_similarity(layered, other, chunk_size=40, compute_dtype=np.float64, progress=False)
    # max_bytes below one layer's block: one layer at a time (five passes); two layers a pass: three
    for max_bytes in (1, 2 * h * 3 * 7 * 8):
        got = cross_model_similarity(
            layered, other, chunk_size=40, compute_dtype=np.float64, max_bytes=max_bytes, progress=False
        )
        np.testing.assert_allclose(got, biased, atol=1e-10)
        np.testing.assert_array_equal(got, one_pass)
        deb = cross_model_similarity(
            layered, other, chunk_size=17, debiased=True, compute_dtype=np.float64, max_bytes=max_bytes, progress=False
        )
        np.testing.assert_allclose(deb, unbiased, atol=1e-10)
    assert not np.allclose(biased, unbiased, atol=1e-3)  # the two estimators differ on 150 items
    # float32 products (the default) stay within float32 rounding of the float64 answer
    np.testing.assert_allclose(cross_model_similarity(layered + 100.0, other, progress=False), biased, atol=1e-5)
    # a constant layer: NaN in its row, the rest finite
    const = layered.copy()
    const[:, 2] = 3.0
    with np.errstate(all="raise"):
        got = cross_model_similarity(const, other, progress=False)
    assert np.isnan(got[2]).all() and np.isfinite(np.delete(got, 2, axis=0)).all()
    bad = other.copy()
    bad[77, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(in rows \[77\]\)"):
        cross_model_similarity(layered, bad, chunk_size=50, progress=False)


def test_layer_similarity_rejects_2d_input(layered):
    with pytest.raises(ValueError, match=r"Expected activations of shape \(n_items, n_layers, hidden\)"):
        layer_similarity(layered[:, 0], progress=False)


# ---------------------------------------------------------------------------------------------
# reading a similarity matrix


def test_cka_by_layer_distance_and_adjacent_summary():
    m = np.array([[1.0, 0.9, 0.5, 0.2], [0.9, 1.0, 0.8, 0.4], [0.5, 0.8, 1.0, 0.7], [0.2, 0.4, 0.7, 1.0]])
    np.testing.assert_allclose(cka_by_layer_distance(m), [1.0, 0.8, 0.45, 0.2])
    s = adjacent_layer_summary(m)
    assert s["frac_nearest_adjacent"] == 1.0
    assert s["mean_adjacent"] == pytest.approx(0.8)
    assert s["mean_non_adjacent"] == pytest.approx((0.5 + 0.2 + 0.4) / 3)
    assert (s["min_adjacent"], s["min_adjacent_pair"]) == (0.7, 2)
    # a matrix where layer 0 resembles layer 3 most: not every nearest layer is adjacent
    m2 = m.copy()
    m2[0, 3] = m2[3, 0] = 0.95
    assert adjacent_layer_summary(m2)["frac_nearest_adjacent"] == pytest.approx(0.5)


def test_adjacent_summary_leaves_out_constant_layers():
    m = np.array([[1.0, 0.9, 0.5, 0.2], [0.9, 1.0, 0.8, 0.4], [0.5, 0.8, 1.0, 0.7], [0.2, 0.4, 0.7, 1.0]])
    m[0, :] = m[:, 0] = np.nan  # layer 0 constant over the items: CKA undefined
    s = adjacent_layer_summary(m)
    assert s["undefined_layers"] == [0]
    assert s["frac_nearest_adjacent"] == 1.0  # layers 1, 2, 3 only
    assert s["mean_adjacent"] == pytest.approx(0.75)
    assert s["mean_non_adjacent"] == pytest.approx(0.4)
    assert (s["min_adjacent"], s["min_adjacent_pair"]) == (0.7, 2)
    np.testing.assert_allclose(cka_by_layer_distance(m), [1.0, 0.75, 0.4, np.nan])


def test_constant_layer_gives_nan_similarity_not_an_error(layered):
    acts = layered.copy()
    acts[:, 0] = 2.5  # like the embedding layer at [CLS]: the same vector for every sentence
    with np.errstate(all="raise"):
        cka_matrix = layer_similarity(acts, progress=False)
    assert np.isnan(cka_matrix[0]).all() and np.isnan(cka_matrix[:, 0]).all()
    assert np.isfinite(cka_matrix[1:, 1:]).all()


def test_cross_model_similarity_refuses_stores_of_different_items(layered):
    class Store:
        def __init__(self, acts, words):
            self.activations, self.words = acts, words

    words = [f"w{i}" for i in range(len(layered))]
    same = cross_model_similarity(Store(layered, words), Store(layered[:, :3], words), progress=False)
    np.testing.assert_allclose(np.diagonal(same), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="hold different items"):
        cross_model_similarity(Store(layered, words), Store(layered, words[::-1]), progress=False)


def test_standardized_layer_cka_equals_cka_of_standardized_layers():
    from utils.similarity import linear_cka, standardized_layer_cka

    rng = np.random.default_rng(3)
    acts = rng.normal(size=(200, 3, 5))
    acts[:, 1] = acts[:, 0] @ rng.normal(size=(5, 5)) + 0.1 * rng.normal(size=(200, 5))
    acts[:, 2, 0] *= 1000.0  # an outlier dimension: raw CKA would be dominated by it
    flat = acts.reshape(200, -1)
    z = (flat - flat.mean(0)) / flat.std(0)
    corr = np.corrcoef(flat, rowvar=False)
    got = standardized_layer_cka(corr, [5, 5, 5])
    for i in range(3):
        for j in range(3):
            want = linear_cka(z[:, 5 * i : 5 * i + 5], z[:, 5 * j : 5 * j + 5])
            np.testing.assert_allclose(got[i, j], want, atol=1e-10)
    assert not np.isclose(got[0, 2], linear_cka(flat[:, :5], flat[:, 10:]))
    # a block of only constant features is undefined, not 0
    partial = standardized_layer_cka(corr, [5, 5, 5], constant=np.arange(5))
    assert np.isnan(partial[0]).all() and np.isfinite(partial[1:, 1:]).all()
    with pytest.raises(ValueError, match="sum of block_sizes"):
        standardized_layer_cka(corr, [5, 5])


def test_layer_cka_variants_match_cka_of_each_layer_pair(layered):
    from utils.similarity import layer_cka_variants

    acc = gram_statistics(layered, compute_dtype=np.float64, progress=False)
    got = layer_cka_variants(acc)
    n_layers = layered.shape[1]
    z = (layered - layered.mean(0)) / layered.std(0)
    for i in range(n_layers):
        for j in range(n_layers):
            a, b = layered[:, i], layered[:, j]
            assert got.biased[i, j] == pytest.approx(linear_cka(a, b), abs=1e-10)
            assert got.debiased[i, j] == pytest.approx(linear_cka(a, b, debiased=True), abs=1e-10)
            # read from the float32 correlation matrix: float32 precision
            assert got.standardized[i, j] == pytest.approx(linear_cka(z[:, i], z[:, j]), abs=1e-6)
    # the mean comes from the streamed moments
    np.testing.assert_allclose(acc.mean(), layered.reshape(len(layered), -1).mean(0), atol=1e-12)


def test_gram_strips_equal_a_plain_float32_accumulation(rng):
    """The strips are Σ (x - shift)ᵀ(x - shift) over chunks, each strip's product float32 and added in
    float64, bit for bit (chunks of 37 rows; the first chunk's column means are the shift)."""
    n_layers, hidden = 3, 160
    X = (rng.standard_normal((300, n_layers * hidden)) + 5).astype(np.float32)
    acc = GramAccumulator(block_sizes=[hidden] * n_layers)
    chunk = 37
    for s in range(0, len(X), chunk):
        acc.add(X[s : s + chunk])
    shift = X[:chunk].mean(axis=0, dtype=np.float64).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum([hidden] * n_layers)])
    for strip, a, b in zip(acc._strips, starts[:-1], starts[1:]):
        expected = np.zeros(strip.shape)
        for s in range(0, len(X), chunk):
            z = X[s : s + chunk] - shift
            expected += (z[:, a:b].T @ z[:, a:]).astype(np.float64)
        np.testing.assert_array_equal(strip, expected)

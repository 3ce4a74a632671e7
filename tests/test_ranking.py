"""Tests for utils.ranking: LCA against a plain loop over the p-grid, baselines, minimal neuron sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_selection import f_classif
from sklearn.metrics import f1_score

from utils.intervals import paired_interval, score_interval
from utils.probing import LinearProbe
from utils.ranking import (
    GROUP_COLUMNS,
    PCT_GRID,
    _fit_top,
    _groups,
    accuracy_curve,
    bottom_ordering,
    f_statistic,
    lca_entry_steps,
    lca_ordering,
    mean_difference_ordering,
    minimal_neuron_set,
    minimal_set_table,
    neuron_orderings,
    neurons_per_layer,
    random_ordering,
    set_predictions,
)

pytestmark = pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")

KNOWN = [5, 23, 41]


def three_neuron_problem(n: int = 1600, d: int = 60, seed: int = 0):
    """Features on very different scales; the label (3 classes) depends on neurons 5, 23 and 41 only."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.05, 20.0, size=d)
    X = (rng.standard_normal((n, d)) * scales + rng.normal(0, 5, size=d)).astype(np.float32)
    z = (X[:, KNOWN] - X[:, KNOWN].mean(0)) / X[:, KNOWN].std(0)
    y = np.array(["DET", "NOUN", "VERB"])[
        np.argmax(np.c_[z[:, 0] + z[:, 1], z[:, 2] - z[:, 1], -z[:, 0] - z[:, 2]], axis=1)
    ]
    return X, y


def reference_lca_steps(coef: np.ndarray, search_stride: int) -> list[set]:
    """The authors' get_top_neurons / get_neuron_ordering loop, with ties broken by lower index.

    Returns the set of neurons that enter at each p = i / search_stride, i = 0 .. search_stride.
    """
    weights = np.abs(coef)
    considered, steps = set(), []
    for i in range(search_stride + 1):
        percentage = i / search_stride
        selected = set()
        for c in range(weights.shape[0]):
            total_mass = np.sum(weights[c, :])
            sort_idx = np.argsort(-weights[c, :], kind="stable")
            cum_sums = np.cumsum(weights[c, sort_idx])
            unselected = np.where(cum_sums >= total_mass * percentage)[0]
            chosen = np.arange(cum_sums.shape[0]) if unselected.shape[0] == 0 else np.arange(unselected[0] + 1)
            selected.update(sort_idx[chosen].tolist())
        new = selected - considered
        considered |= new
        steps.append(new)
    return steps


def random_coef(kind: str, dtype, seed: int) -> np.ndarray:
    """Weight matrices that exercise the corners: heavy tails, ties, zero rows and columns, one class."""
    rng = np.random.default_rng(seed)
    coef = rng.standard_normal((6, 250)) * rng.exponential(1.0, size=(1, 250))
    if kind == "ties":
        coef = np.round(coef, 1)
    elif kind == "zeros":
        coef[:, :15] = 0.0
        coef[3] = 0.0
    elif kind == "one_class":
        coef = coef[:1]
    return coef.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["plain", "ties", "zeros", "one_class"])
@pytest.mark.parametrize("step", [0.001, 0.01])
def test_lca_equals_the_plain_loop_over_the_authors_p_grid(kind, dtype, step):
    coef = random_coef(kind, dtype, seed=["plain", "ties", "zeros", "one_class"].index(kind) + int(step * 1000))
    K = int(round(1 / step))
    steps = reference_lca_steps(coef, K)
    entry = lca_entry_steps(coef, step=step)
    for i, new in enumerate(steps):
        assert set(np.flatnonzero(entry == i).tolist()) == new, f"p = {i}/{K}"
    never = set(range(coef.shape[1])) - set().union(*steps)
    assert set(np.flatnonzero(entry == K + 1).tolist()) == never
    # the ordering lists the neurons step by step (never-entering ones last)
    order = lca_ordering(coef, step=step)
    assert sorted(order.tolist()) == list(range(coef.shape[1]))
    assert np.all(np.diff(entry[order]) >= 0)


def test_lca_breaks_ties_within_a_step_by_total_weight_then_index():
    coef = np.array([[4.0, 1.0, 1.0, 0.5, 3.0], [0.1, 2.0, 2.0, 0.5, 0.2]])
    # coarse steps put several neurons into one step; inside it larger total |w| first, then lower index
    entry = lca_entry_steps(coef, step=0.5)
    order = lca_ordering(coef, step=0.5)
    total = np.abs(coef).sum(0)
    expected = sorted(range(5), key=lambda j: (entry[j], -total[j], j))
    assert order.tolist() == expected
    assert bottom_ordering(coef, step=0.5).tolist() == expected[::-1]


def test_lca_ranks_the_three_informative_neurons_first():
    X, y = three_neuron_problem()
    probe = LinearProbe().fit(X[:1200], y[:1200])
    assert probe.score(X[1200:], y[1200:]) > 0.95
    assert set(lca_ordering(probe.standardized_coef_)[:3]) == set(KNOWN)
    # the probe-free ranking (class-conditional mean differences) finds them too
    assert set(mean_difference_ordering(X, y)[:3]) == set(KNOWN)


def test_lca_refuses_bad_inputs():
    with pytest.raises(ValueError, match="1 / step must be a whole number"):
        lca_ordering(np.ones((2, 3)), step=0.003)
    with pytest.raises(ValueError, match="NaN or infinity"):
        lca_ordering(np.array([[1.0, np.nan]]))


def test_f_statistic_matches_sklearn_and_streams_memmaps(tmp_path):
    X, y = three_neuron_problem(n=500)
    X[:, 7] = 3.0  # a constant neuron
    np.save(tmp_path / "X.npy", X)
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    with np.errstate(divide="ignore", invalid="ignore"), pytest.warns(UserWarning, match="constant"):
        ref, _ = f_classif(X.astype(np.float64), y)
    ours = f_statistic(mm, y)
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-6)
    assert np.isnan(ours[7])
    assert mean_difference_ordering(X, y)[-1] == 7  # constant neurons go last


def test_random_ordering_is_a_seeded_permutation():
    a, b, c = (
        random_ordering(100, random_state=1),
        random_ordering(100, random_state=1),
        random_ordering(100, random_state=2),
    )
    assert sorted(a.tolist()) == list(range(100)) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_neurons_per_layer_counts_global_indices():
    neurons = np.array([0, 5, 383, 384, 1000, 2687])
    np.testing.assert_array_equal(
        neurons_per_layer(neurons, hidden=384, n_layers=7), np.histogram(neurons // 384, bins=np.arange(8))[0]
    )
    with pytest.raises(ValueError, match="must lie in"):
        neurons_per_layer([2688], hidden=384, n_layers=7)


def test_pct_grid_is_the_authors():
    assert PCT_GRID[:5] == (0.001, 0.002, 0.003, 0.004, 0.005)
    assert PCT_GRID[5:15] == tuple(round(0.01 * i, 2) for i in range(1, 11))
    assert PCT_GRID[15:23] == tuple(round(0.05 * i, 2) for i in range(3, 11))
    assert PCT_GRID[23:] == (0.6, 0.7, 0.8, 0.9)


# ------------------------------------------------------------------------------------------
# minimal neuron sets


def test_minimal_set_stops_at_the_first_grid_point_reaching_the_target():
    X, y = three_neuron_problem(n=1200, d=300)
    Xtr, ytr, Xd, yd = X[:900], y[:900], X[900:], y[900:]
    oracle = LinearProbe().fit(Xtr, ytr)
    target = oracle.score(Xd, yd) * 0.99
    ordering = lca_ordering(oracle.standardized_coef_)
    result = minimal_neuron_set(Xtr, ytr, Xd, yd, ordering, target=target)
    assert result.reached and result.score >= target
    assert set(KNOWN) <= set(result.neurons.tolist()) and result.k <= 9  # 3% of 300 neurons at most
    # every grid point before the last fell short; k follows the authors' int(pct * n)
    assert (result.curve.score.iloc[:-1] < target).all()
    assert result.curve.k.tolist() == [int(p * 300 + 1e-9) for p in result.curve.pct]
    assert result.k == result.curve.k.iloc[-1] and result.pct == result.curve.pct.iloc[-1]
    # the returned probe is the one trained on those columns (trained beside its grid neighbours: equal up
    # to the order of floating-point operations)
    again = LinearProbe().fit(Xtr[:, result.neurons], ytr, X_dev=Xd[:, result.neurons], y_dev=yd)
    np.testing.assert_allclose(again.coef_, result.probe.coef_, rtol=1e-5, atol=1e-7)
    assert again.n_iter_ == result.probe.n_iter_ and again.best_epoch_ == result.probe.best_epoch_
    assert result.probe.score(Xd[:, result.neurons], yd) == result.score


def test_minimal_set_percentages_refer_to_n_total_and_skip_points_beyond_the_features():
    X, y = three_neuron_problem(n=600, d=60)
    order = random_ordering(60, random_state=0)
    # as in the pipeline: X holds 60 of a 1,000-neuron model; 10% of 1,000 > 60 is skipped
    with pytest.warns(UserWarning, match="no grid point reached the target"):
        result = minimal_neuron_set(
            X[:400], y[:400], X[400:], y[400:], order, target=1.01, n_total=1000, pct_grid=(0.01, 0.05, 0.1)
        )
    assert result.curve.k.tolist() == [10, 50, 60] and not result.reached
    assert result.k == 60 and result.pct == pytest.approx(0.06)


def test_accuracy_curve_lca_beats_random_and_bottom_at_small_k():
    X, y = three_neuron_problem(n=1000, d=200)
    Xtr, ytr, Xd, yd = X[:700], y[:700], X[700:], y[700:]
    probe = LinearProbe().fit(Xtr, ytr)
    orderings = {
        "lca": lca_ordering(probe.standardized_coef_),
        "random": random_ordering(200, random_state=0),
        "bottom": bottom_ordering(probe.standardized_coef_),
    }
    curve = accuracy_curve(Xtr, ytr, Xd, yd, orderings=orderings, pcts=(0.015, 0.05, 0.5))
    assert list(curve.columns) == ["ordering", "pct", "k", "score"] and len(curve) == 9
    at = curve.pivot(index="k", columns="ordering", values="score")
    assert at.loc[3, "lca"] > 0.9 > max(at.loc[3, "random"], at.loc[3, "bottom"])


def test_minimal_set_refuses_bad_orderings():
    X, y = three_neuron_problem(n=200, d=50)
    with pytest.raises(ValueError, match="ordering repeats neurons"):
        minimal_neuron_set(X, y, X, y, np.array([1, 1, 2]), target=0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 50\)"):
        minimal_neuron_set(X, y, X, y, np.array([50, 2]), target=0.5)
    with pytest.raises(ValueError, match="X_dev has 9 features per sample"):
        minimal_neuron_set(X, y, X[:, :9], y, np.arange(50), target=0.5)


def test_neuron_orderings_and_the_test_table():
    X, y = three_neuron_problem(n=1200, d=100)
    Xtr, ytr, Xd, yd, Xte, yte = X[:700], y[:700], X[700:950], y[700:950], X[950:], y[950:]
    oracle = LinearProbe().fit(Xtr, ytr)
    orderings = neuron_orderings(oracle.standardized_coef_, Xtr, ytr, random_state=3)
    assert list(orderings) == ["lca", "random", "bottom", "mean_difference"]
    assert np.array_equal(orderings["lca"], lca_ordering(oracle.standardized_coef_))
    assert np.array_equal(orderings["bottom"], orderings["lca"][::-1])
    assert np.array_equal(orderings["random"], random_ordering(100, random_state=3))
    target = oracle.score(Xd, yd) * 0.99
    with pytest.warns(UserWarning, match="no grid point reached the target"):  # bottom: the 3 neurons come last
        sets = {
            name: minimal_neuron_set(Xtr, ytr, Xd, yd, o, target=target, pct_grid=(0.03, 0.1, 0.5, 0.9))
            for name, o in orderings.items()
            if name in ("lca", "bottom")
        }
    table = minimal_set_table(
        sets, X_test=Xte, y_test=yte, oracle=oracle, n_total=100, oracle_dev=oracle.score(Xd, yd), n_boot=200
    )
    assert list(table.columns[:6]) == ["ordering", "neurons_total", "neurons_kept", "pct_kept", "score", "oracle_score"]
    lca = table.set_index("ordering").loc["lca"]
    assert lca.neurons_kept == 3 and lca.pct_kept == 3.0
    assert lca.score == pytest.approx(sets["lca"].probe.score(Xte[:, sets["lca"].neurons], yte))
    assert lca.oracle_score == pytest.approx(oracle.score(Xte, yte))
    assert lca.score_low <= lca.score <= lca.score_high
    bottom = table.set_index("ordering").loc["bottom"]
    assert bottom.neurons_kept == 100 and not bottom.reached


def test_dead_neuron_is_never_ranked_first_regression_mpnet_12_555():
    """A neuron at ~1e-33 that copies the label would lead every ranking if divided by its own std."""
    X, y = three_neuron_problem(n=1200, d=60)
    codes = np.unique(y, return_inverse=True)[1]
    X[:, 0] = (1e-33 * (codes + 0.01 * np.random.default_rng(1).standard_normal(len(y)))).astype(np.float32)
    probe = LinearProbe().fit(X[:900], y[:900])
    lca = lca_ordering(probe.standardized_coef_)
    assert set(lca[:3]) == set(KNOWN) and lca[-1] == 0  # zero weight: it never enters, so it comes last
    F = f_statistic(X, y)
    assert np.isnan(F[0]) and mean_difference_ordering(X, y)[-1] == 0


@pytest.mark.filterwarnings("ignore:no grid point reached the target")  # the random set may miss it
def test_test_table_intervals_are_the_paired_bootstrap_by_sentence():
    X, y = three_neuron_problem(n=1200, d=100)
    Xtr, ytr, Xd, yd, Xte, yte = X[:700], y[:700], X[700:950], y[700:950], X[950:], y[950:]
    groups = np.repeat(np.arange(50), 5)  # 250 test items in 50 "sentences"
    oracle = LinearProbe().fit(Xtr, ytr)
    orderings = neuron_orderings(oracle.standardized_coef_, Xtr, ytr, random_state=1)
    target = oracle.score(Xd, yd) * 0.95
    sets = {
        name: minimal_neuron_set(Xtr, ytr, Xd, yd, orderings[name], target=target, pct_grid=(0.03, 0.1, 0.5, 0.9))
        for name in ("lca", "random")
    }
    preds = set_predictions(sets, X_test=Xte, oracle=oracle)
    assert list(preds) == ["oracle", "lca", "random"]
    np.testing.assert_array_equal(preds["lca"], sets["lca"].probe.predict(Xte[:, sets["lca"].neurons]))
    table = minimal_set_table(
        sets,
        X_test=Xte,
        y_test=yte,
        oracle=oracle,
        n_total=100,
        oracle_dev=oracle.score(Xd, yd),
        groups=groups,
        n_boot=300,
        random_state=4,
    ).set_index("ordering")
    lca = table.loc["lca"]
    s = score_interval(yte, preds["lca"], groups=groups, n_boot=300, random_state=4)
    assert (lca.score, lca.score_low, lca.score_high) == pytest.approx((s.estimate, s.low, s.high))
    o = score_interval(yte, preds["oracle"], groups=groups, n_boot=300, random_state=4)
    assert (lca.oracle_score, lca.oracle_low, lca.oracle_high) == pytest.approx((o.estimate, o.low, o.high))
    r = paired_interval(yte, preds["lca"], preds["oracle"], compare="ratio", groups=groups, n_boot=300, random_state=4)
    assert (lca.ratio, lca.ratio_low, lca.ratio_high) == pytest.approx((r.estimate, r.low, r.high))
    assert lca.ratio == pytest.approx(lca.score / lca.oracle_score)
    v = paired_interval(yte, preds["lca"], preds["random"], groups=groups, n_boot=300, random_state=4)
    assert (lca.vs_random, lca.vs_random_low, lca.vs_random_high) == pytest.approx((v.estimate, v.low, v.high))
    assert np.isnan(lca.vs_bottom) and np.isnan(table.loc["random", "vs_random"])  # no bottom set; LCA rows only
    # macro-F1 beside accuracy, against scikit-learn, and its paired ratio on the same resamples
    assert lca.macro_f1 == pytest.approx(f1_score(yte, preds["lca"], average="macro"))
    assert lca.oracle_macro_f1 == pytest.approx(f1_score(yte, preds["oracle"], average="macro"))
    f = paired_interval(
        yte,
        preds["lca"],
        preds["oracle"],
        compare="ratio",
        metric="macro_f1",
        groups=groups,
        n_boot=300,
        random_state=4,
    )
    assert (lca.f1_ratio, lca.f1_ratio_low, lca.f1_ratio_high) == pytest.approx((f.estimate, f.low, f.high))
    assert lca.f1_ratio == pytest.approx(lca.macro_f1 / lca.oracle_macro_f1)
    # resampling sentences differs from resampling items
    items = minimal_set_table(
        sets, X_test=Xte, y_test=yte, oracle=oracle, n_total=100, oracle_dev=0.9, n_boot=300, random_state=4
    ).set_index("ordering")
    assert (items.loc["lca", "score_low"], items.loc["lca", "score_high"]) != (lca.score_low, lca.score_high)


def test_grid_points_are_grouped_while_the_padded_width_stays_within_the_budget():
    ks = [9, 19, 29, 39, 49, 99, 199, 299, 399, 499, 599, 698, 798, 898, 998, 1497, 2995]
    groups = _groups(ks, max_columns=2048)
    assert [i for g in groups for i in g] == list(range(len(ks)))  # every point once, in order
    assert all(len(g) * ks[g[-1]] <= 2048 or len(g) == 1 for g in groups)
    assert [len(g) for g in groups] == [7, 3, 2, 2, 1, 1, 1]  # 9..199 | 299..499 | 599, 698 | 798, 898 | ...
    assert _groups([5000], max_columns=GROUP_COLUMNS) == [[0]]  # wider than the budget: alone


def test_grouped_minimal_set_and_curve_equal_fitting_each_grid_point_alone():
    """The grid points trained together give the scores, sizes and stopping point of one fit per point."""
    X, y = three_neuron_problem(n=1000, d=400)
    Xtr, ytr, Xd, yd = X[:700], y[:700], X[700:], y[700:]
    order = random_ordering(400, random_state=1)
    params = {"random_state": 2}
    one_by_one = [_fit_top(Xtr, ytr, Xd, yd, np.sort(order[:k]), params)[0] for k in (4, 8, 12, 16, 20, 40)]
    target = sorted(one_by_one)[-2]  # reached at some grid point after the first
    grid = [0.01, 0.02, 0.03, 0.04, 0.05, 0.1]  # k = 4, 8, 12, 16, 20, 40 of 400: one group
    result = minimal_neuron_set(Xtr, ytr, Xd, yd, order, target=target, probe_params=params, pct_grid=grid)
    n = len(result.curve)
    assert result.curve.k.tolist() == [4, 8, 12, 16, 20, 40][:n]
    np.testing.assert_allclose(result.curve.score, one_by_one[:n], atol=1e-9)
    assert result.reached and result.score >= target and all(sc < target for sc in one_by_one[: n - 1])
    curve = accuracy_curve(
        Xtr, ytr, Xd, yd, orderings={"random": order}, pcts=[0.01, 0.02, 0.03, 0.1], probe_params=params
    )
    np.testing.assert_allclose(curve.score, [one_by_one[i] for i in (0, 1, 2, 5)], atol=1e-9)

import os

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import f1_score

from utils import memo
from utils.activations import extract
from utils.data import Split, Task
from utils.machine import machine_signature
from utils.selection import (
    PAPER_GRID,
    ReducedProbe,
    TransferResult,
    cc_sweep,
    layer_selector,
    load_predictions,
    measure_speedup,
    run_transfer,
    run_transfer_seeds,
    save_predictions,
    timed_speedup,
    transfer_over_seeds,
)

N_LAYERS, HIDDEN, SIGNAL_LAYER = 5, 16, 2
SIGNAL_UNITS = np.array([1, 5, 9])
FAST = {"solver": "lbfgs", "max_iter": 200}


def _synthetic(n, rng):
    """Only three neurons of layer 2 carry the label: y = argmax of them; the rest is noise."""
    acts = rng.normal(size=(n, N_LAYERS, HIDDEN)).astype(np.float32)
    y = np.array(["a", "b", "c"])[acts[:, SIGNAL_LAYER, SIGNAL_UNITS].argmax(axis=1)]
    return acts, y


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    return _synthetic(1200, rng), _synthetic(400, rng), _synthetic(400, rng)


@pytest.fixture(scope="module")
def result(splits):
    train, dev, test = splits
    return run_transfer(train, dev, test, probe_params=FAST, progress=False)


def test_layer_selector_picks_the_first_layer_within_delta():
    scores = [0.5, 0.8, 0.95, 0.97, 0.96]
    assert layer_selector(scores, 0.97, 3) == 2  # 0.97 * 0.97 = 0.9409
    assert layer_selector(scores, 0.97, 0) == 3
    assert layer_selector([0.1, 0.2], 0.9, 1) == 1  # nothing reaches: the last layer
    with pytest.raises(ValueError, match="delta is a percentage"):
        layer_selector(scores, 0.9, -1)


def test_pipeline_finds_the_signal_layer_and_keeps_few_neurons(result):
    assert result.selected_layer == SIGNAL_LAYER
    assert result.oracle_test > 0.9
    assert result.test >= 0.97 * result.oracle_test
    assert result.neurons_kept <= 8  # of 80
    # the three signal neurons are among those kept
    signal = SIGNAL_LAYER * HIDDEN + SIGNAL_UNITS
    assert set(signal) <= set(result.neurons.tolist())
    assert list(result.steps["step"]) == ["oracle", "LS", "LS+CC", "LS+CC+FS"]
    assert len(result.grid) == len(PAPER_GRID) and result.grid["chosen"].sum() == 1


def test_selection_never_reads_the_test_split(splits):
    train, dev, (At, yt) = splits
    calls = []

    def sealed_test():
        calls.append(1)
        return At, yt

    a = run_transfer(train, dev, sealed_test, probe_params=FAST, progress=False)
    # a test split with scrambled labels changes nothing that was chosen, only the test score
    scrambled = np.random.default_rng(1).permutation(yt)
    b = run_transfer(train, dev, (At, scrambled), probe_params=FAST, progress=False)
    assert calls == [1]
    pd.testing.assert_frame_equal(a.grid, b.grid)
    np.testing.assert_array_equal(a.neurons, b.neurons)
    assert a.selected_layer == b.selected_layer and a.dev == b.dev
    assert b.test < a.test - 0.3


def test_saved_result_reloads_identically(result, tmp_path):
    path = result.save(tmp_path / "res")
    again = TransferResult.load(path)
    assert again.summary() == result.summary()
    np.testing.assert_array_equal(again.neurons, result.neurons)
    np.testing.assert_array_equal(again.test_predictions, result.test_predictions)
    pd.testing.assert_frame_equal(again.steps, result.steps)
    pd.testing.assert_frame_equal(again.grid.drop(columns="threshold"), result.grid.drop(columns="threshold"))
    np.testing.assert_array_equal(again.reduced.coef_, result.reduced.coef_)
    np.testing.assert_array_equal(again.oracle.coef_, result.oracle.coef_)
    with pytest.raises(FileNotFoundError, match="no saved TransferResult"):
        TransferResult.load(tmp_path)


def test_reduced_probe_reproduces_the_pipeline_test_predictions(result, splits, tmp_path):
    At, yt = splits[2]
    np.testing.assert_array_equal(result.reduced.predict(At), result.test_predictions)
    reloaded = TransferResult.load(result.save(tmp_path / "r")).reduced
    np.testing.assert_array_equal(reloaded.predict(At), result.test_predictions)
    assert np.mean(result.test_predictions == yt) == pytest.approx(result.test)
    assert np.mean(result.oracle.predict(At) == yt) == pytest.approx(result.oracle_test)


def test_reduced_probe_on_text_runs_a_truncated_model(minilm):
    rng = np.random.default_rng(0)
    neurons = np.sort(rng.choice(3 * 384, size=10, replace=False))  # layers 0..2 of 7
    probe = ReducedProbe(
        int(neurons.max() // 384), 384, neurons, rng.normal(size=(3, 10)), np.zeros(3), np.array(["x", "y", "z"])
    )
    texts = [["The", "cat", "sat."], ["Stocks", "fell", "sharply", "on", "Monday."]]
    full = extract(minilm, texts, level="word", progress=False)
    np.testing.assert_array_equal(probe.predict_texts(minilm, texts, level="word"), probe.predict(full))
    np.testing.assert_allclose(
        probe.decision_function(full), full.reshape(len(full), -1)[:, neurons] @ probe.coef_.T, rtol=1e-6
    )
    with pytest.raises(ValueError, match="expected activations of shape"):
        probe.predict(full[:, :1])


def _probes_on(hidden: int, n_layers: int, rng: np.random.Generator) -> tuple[ReducedProbe, ReducedProbe]:
    """A reduced probe on 10 neurons of layers 0..2 and an oracle on every neuron, random weights."""
    classes = np.array(["x", "y", "z"])
    neurons = np.sort(rng.choice(3 * hidden, size=10, replace=False))
    reduced = ReducedProbe(
        int(neurons.max() // hidden), hidden, neurons, rng.normal(size=(3, 10)), np.zeros(3), classes
    )
    everything = np.arange(n_layers * hidden)
    oracle = ReducedProbe(n_layers - 1, hidden, everything, rng.normal(size=(3, everything.size)), np.zeros(3), classes)
    return reduced, oracle


def test_speedup_times_both_paths_on_the_test_sentences_and_is_kept_per_machine(minilm, tmp_path):
    reduced, oracle = _probes_on(384, 7, np.random.default_rng(0))
    words = [["The", "cat", "sat."], ["Stocks", "fell", "sharply", "on", "Monday."], ["It", "rained", "."]]
    split = Split(words, [["x"] * len(w) for w in words])
    task = Task("toy", "word", split, split, split, classes=("x", "y", "z"))
    timing = timed_speedup("minilm", task, reduced=reduced, oracle=oracle, n_sentences=2, repeats=1)
    assert timing["items"] == 3 + 5  # the words of the first two test sentences
    assert timing["full_s"] > 0 and timing["reduced_s"] > 0
    assert timing["speedup"] == pytest.approx(timing["full_s"] / timing["reduced_s"])
    direct = measure_speedup(minilm, words[:2], level="word", reduced=reduced, oracle=oracle, repeats=1)
    assert direct.keys() == timing.keys() and direct["items"] == timing["items"]
    # through a ResultCache: read back on the same machine, measured again on another
    cache = memo.ResultCache(tmp_path / "results")
    args = dict(reduced=reduced, oracle=oracle, n_sentences=2, repeats=1)
    first = cache(timed_speedup, "minilm", task, machine=machine_signature(), **args)
    assert cache(timed_speedup, "minilm", task, machine=machine_signature(), **args) == first
    assert (cache.hits, cache.misses) == (1, 1)
    cache(timed_speedup, "minilm", task, machine="another machine", **args)
    assert (cache.hits, cache.misses) == (1, 2)
    assert str(os.cpu_count()) in machine_signature()


def test_mismatched_inputs_are_refused(splits):
    (A, y), dev, test = splits
    with pytest.raises(ValueError, match="differ in length"):
        run_transfer((A, y[:-1]), dev, test, progress=False)


# ---------------------------------------------------------------------------------------------
# per-item predictions, seeds with intervals, and the clustering sweep


def test_result_keeps_per_item_oracle_predictions_and_the_scored_rows(splits, tmp_path):
    train, dev, (At, yt) = splits
    yt = yt.copy()
    yt[[3, 10]] = "never-in-train"  # dropped from scoring: test_items must skip them
    r = run_transfer(train, dev, (At, yt), probe_params=FAST, progress=False)
    keep = np.setdiff1d(np.arange(len(yt)), [3, 10])
    np.testing.assert_array_equal(r.test_items, keep)
    np.testing.assert_array_equal(r.test_labels, yt[keep])
    assert np.mean(r.oracle_test_predictions == yt[keep]) == pytest.approx(r.oracle_test)
    np.testing.assert_array_equal(r.oracle.predict(At[keep]), r.oracle_test_predictions)
    again = TransferResult.load(r.save(tmp_path / "r"))
    for name in ("oracle_test_predictions", "test_labels", "test_items"):
        np.testing.assert_array_equal(getattr(again, name), getattr(r, name))


@pytest.mark.parametrize("labels", [np.array(["NN", "VB", "NA", "."]), np.array([0, 1, 1, 0])])
def test_predictions_round_trip_with_their_dtype(labels, tmp_path):
    rng = np.random.default_rng(0)
    y = labels[rng.integers(0, len(labels), 50)]
    preds = {"oracle": labels[rng.integers(0, len(labels), 50)], "t=0.3": y.astype(object)}
    groups = np.repeat(np.arange(10), 5)
    path = save_predictions(tmp_path / "p", y_true=y, predictions=preds, groups=groups, meta={"seed": np.int64(2)})
    assert path.suffix == ".npz" and not list(tmp_path.glob("*.tmp*"))
    back = load_predictions(path)
    np.testing.assert_array_equal(back.y_true, y)
    assert back.y_true.dtype.kind == y.dtype.kind
    assert set(back.predictions) == {"oracle", "t=0.3"}
    for k, v in preds.items():
        np.testing.assert_array_equal(back.predictions[k], np.asarray(v.tolist()))
    np.testing.assert_array_equal(back.groups, groups)
    assert back.meta == {"seed": 2}
    with pytest.raises(ValueError, match="one per item"):
        save_predictions(tmp_path / "q", y_true=y, predictions={"a": y[:-1]})
    with pytest.raises(FileNotFoundError, match="save_predictions"):
        load_predictions(tmp_path / "missing.npz")


def _seed_results(splits, seeds=(0, 1, 2)):
    train, dev, test = splits
    adam = {"solver": "adam", "max_epochs": 5}
    return [
        run_transfer(train, dev, test, grid=[(3, 1, None)], probe_params={**adam, "random_state": s}, progress=False)
        for s in seeds
    ]


def test_transfer_seeds_equal_separate_runs_and_cluster_each_layer_once(splits, monkeypatch):
    from utils import selection

    train, dev, test = splits
    adam = {"solver": "adam", "max_epochs": 4}
    grid = [(3, 1, None), (3, 1, 0.3), (1, 1, 0.3), (1, 1, 0.6)]
    alone = [
        run_transfer(
            train, dev, test, grid=grid, probe_params={**adam, "random_state": s}, info={"seed": s}, progress=False
        )
        for s in (0, 1)
    ]
    layers = []
    real = selection.correlation_linkage
    monkeypatch.setattr(selection, "correlation_linkage", lambda A, **kw: layers.append(A.shape[1]) or real(A, **kw))
    shared = run_transfer_seeds(train, dev, test, seeds=[0, 1], grid=grid, probe_params=adam, progress=False)
    # one correlation + linkage per distinct selected layer, not per run (both thresholds from one tree)
    clustered = {int(r.selected_layer) for a in alone for r in a.grid.itertuples() if pd.notna(r.threshold)}
    assert sorted(layers) == sorted(layer + 1 for layer in clustered)  # each layer once, not once per run
    for a, b in zip(alone, shared):
        assert b.info == a.info
        pd.testing.assert_frame_equal(b.grid, a.grid)
        pd.testing.assert_frame_equal(b.steps, a.steps)
        np.testing.assert_array_equal(b.neurons, a.neurons)
        np.testing.assert_array_equal(b.test_predictions, a.test_predictions)
    with pytest.raises(ValueError, match="at least one seed"):
        run_transfer_seeds(train, dev, test, seeds=[])


@pytest.mark.parametrize("first, trained", [(0.6, 3), (0.25, N_LAYERS)])
def test_incremental_probes_of_later_layers_are_trained_only_when_the_selector_needs_them(
    splits, monkeypatch, first, trained
):
    # the signal sits in layer 2: with the first 3 layers trained the selector finds it there and stops;
    # with the first 2 (ceil(5 / 4)) no layer reaches the target and all 5 are trained. Either way the
    # result is that of training every incremental probe (FIRST_LAYERS = 1)
    from utils import selection

    train, dev, test = splits
    adam = {"solver": "adam", "max_epochs": 4}
    monkeypatch.setattr(selection, "FIRST_LAYERS", 1.0)
    every = run_transfer(train, dev, test, probe_params=adam, progress=False)
    monkeypatch.setattr(selection, "FIRST_LAYERS", first)
    fast = run_transfer(train, dev, test, probe_params=adam, progress=False)
    assert every.info["incremental_layers"] == N_LAYERS and fast.info["incremental_layers"] == trained
    assert fast.selected_layer == SIGNAL_LAYER
    pd.testing.assert_frame_equal(fast.grid, every.grid)
    pd.testing.assert_frame_equal(fast.steps, every.steps)
    np.testing.assert_array_equal(fast.test_predictions, every.test_predictions)


def test_transfer_over_seeds_pools_seeds_on_shared_resamples(splits):
    results = _seed_results(splits)
    yt = splits[2][1]
    groups = np.arange(len(yt)) // 4  # "sentences" of four items
    s = transfer_over_seeds(results, test_groups=groups, n_boot=400)
    tests = np.array([r.test for r in results])
    oracles = np.array([r.oracle_test for r in results])
    assert s["seeds"] == 3
    assert s["test_mean"] == pytest.approx(tests.mean())
    assert s["test_sd"] == pytest.approx(tests.std(ddof=1))
    assert s["pct_kept_max"] == pytest.approx(max(r.pct_kept for r in results))
    assert s["ratio"] == pytest.approx(tests.mean() / oracles.mean())  # ratio of the seed-averaged accuracies
    assert s["ratio_low"] <= s["ratio"] <= s["ratio_high"]
    assert s["n_test_groups"] == len(np.unique(groups))
    # the same bootstrap by hand: resample groups, every seed's items of a group together
    counts = np.random.default_rng(0).multinomial(
        len(np.unique(groups)), np.full(len(np.unique(groups)), 1 / len(np.unique(groups))), size=400
    )
    w = counts[:, groups]  # weight of each item in each replicate
    red = np.mean([w @ (r.test_predictions == yt) for r in results], axis=0)
    ora = np.mean([w @ (r.oracle_test_predictions == yt) for r in results], axis=0)
    low, high = np.nanquantile(red / ora, [0.025, 0.975])
    assert (s["ratio_low"], s["ratio_high"]) == pytest.approx((low, high))
    # macro-F1 of the pooled predictions (sklearn), and the same columns as the accuracy block
    pooled_y = np.tile(yt, 3)
    red_pred = np.concatenate([r.test_predictions for r in results])
    ora_pred = np.concatenate([r.oracle_test_predictions for r in results])
    assert s["macro_f1"] == pytest.approx(f1_score(pooled_y, red_pred, average="macro"))
    assert s["oracle_macro_f1"] == pytest.approx(f1_score(pooled_y, ora_pred, average="macro"))
    assert s["macro_f1_low"] <= s["macro_f1"] <= s["macro_f1_high"]
    assert s["f1_ratio_low"] <= s["f1_ratio"] <= s["f1_ratio_high"]
    acc = {"test_low", "test_high", "oracle_low", "oracle_high", "ratio", "ratio_low", "ratio_high"}
    f1 = {"macro_f1_low", "macro_f1_high", "oracle_macro_f1_low", "oracle_macro_f1_high"}
    f1 |= {"f1_ratio", "f1_ratio_low", "f1_ratio_high", "macro_f1", "oracle_macro_f1"}
    assert acc | f1 <= set(s) and not {"test_estimate", "oracle_estimate"} & set(s)
    with pytest.raises(ValueError, match="different test items"):
        other = run_transfer(
            splits[0], splits[1], (splits[2][0][:-5], yt[:-5]), grid=[(3, 1, None)], probe_params=FAST, progress=False
        )
        transfer_over_seeds([results[0], other])


def test_transfer_over_seeds_reads_macro_f1_where_one_class_dominates(splits):
    """A reduced probe that predicts the majority class everywhere keeps most of the oracle's accuracy
    on a 95%-majority label set but little of its macro-F1 (as on NER)."""
    import dataclasses

    n = 400
    y = np.array(["O"] * 380 + ["B"] * 20)
    rng = np.random.default_rng(1)
    results = []
    for s in range(3):
        oracle = y.copy()
        oracle[rng.choice(n, 6, replace=False)] = "B"  # a few mistakes
        base = _seed_results(splits, seeds=(s,))[0] if s == 0 else results[0]
        results.append(
            dataclasses.replace(
                base,
                test_labels=y,
                test_items=np.arange(n),
                test_predictions=np.full(n, "O"),
                oracle_test_predictions=oracle,
                test=0.95,
                oracle_test=float(np.mean(oracle == y)),
            )
        )
    s = transfer_over_seeds(results, n_boot=300)
    pooled_y = np.tile(y, 3)
    reduced = np.concatenate([r.test_predictions for r in results])
    oracle = np.concatenate([r.oracle_test_predictions for r in results])
    assert s["macro_f1"] == pytest.approx(f1_score(pooled_y, reduced, average="macro"))
    assert s["oracle_macro_f1"] == pytest.approx(f1_score(pooled_y, oracle, average="macro"))
    assert s["f1_ratio"] == pytest.approx(s["macro_f1"] / s["oracle_macro_f1"])
    assert s["ratio"] > 0.95 and s["ratio_low"] > 0.9 and s["f1_ratio_high"] < 0.6  # accuracy keeps, macro-F1 not
    assert s["macro_f1_low"] <= s["macro_f1"] <= s["macro_f1_high"]
    assert "f1_ratio" not in transfer_over_seeds(results, n_boot=50, macro_f1=False)


@pytest.fixture(scope="module")
def planted():
    """Layer 0: four independent sources (unit 0 carries the label), two exact-ish copies each in layer 1,
    plus one constant neuron; a sweep must keep ~4 neurons at a loose cut and the label throughout."""
    rng = np.random.default_rng(3)

    def make(n):
        src = rng.normal(size=(n, 4))
        layer0 = np.c_[src, rng.normal(size=(n, 1)), np.full((n, 1), 2.5)]  # 4 sources, noise, constant
        layer1 = np.c_[
            src + 0.05 * rng.normal(size=(n, 4)), -src[:, 1] + 0.05 * rng.normal(size=n), src[:, 0] + rng.normal(size=n)
        ]  # |r| ~ 0.7 with unit 0: merges only at looser cuts
        acts = np.stack([layer0, layer1], axis=1).astype(np.float32)  # (n, 2, 6)
        y = np.where(src[:, 0] + 0.3 * src[:, 1] > 0, "pos", "neg")
        return acts, y

    return make(600), make(300), make(300)


def test_cc_sweep_matches_clusters_and_probes_computed_separately(planted):
    from utils.clustering import cluster_sweep, neuron_correlation
    from utils.intervals import paired_interval, score_interval
    from utils.probing import LinearProbe

    (A, y), (Ad, yd), (At, yt) = planted
    with pytest.warns(Warning):  # the constant neuron is announced
        corr = neuron_correlation(A, progress=False)
    thresholds = [0.1, 0.5, 0.9]
    clusterings = cluster_sweep(corr, thresholds)
    groups = np.arange(len(yt)) // 3
    sweep = cc_sweep(
        (A, y),
        (Ad, yd),
        (At, yt),
        clusterings,
        constant=[5],
        probe_params=FAST,
        test_groups=groups,
        n_boot=300,
        progress=False,
    )
    t = sweep.table
    assert list(t["step"]) == ["oracle", "constant", "clustering", "clustering", "clustering"]
    const = t[t.step == "constant"].iloc[0]
    assert const.neurons_kept == 11 and const.neurons_constant == 1 and np.isnan(const.test)
    X, Xd, Xt = (a.reshape(len(a), -1) for a in (A, Ad, At))
    oracle_pred = LinearProbe(**FAST).fit(X, y, X_dev=Xd, y_dev=yd).predict(Xt)
    for c, row in zip(clusterings, t[t.step == "clustering"].itertuples()):
        # kept = scipy's clusters minus the constant singleton
        labels = fcluster(
            linkage(1 - np.abs(corr[np.triu_indices(12, 1)]), "average"), c.threshold, criterion="distance"
        )
        assert row.neurons_kept == len(np.unique(labels)) - 1
        assert row.pct_removed_nonconstant == pytest.approx(100 * (11 - row.neurons_kept) / 11)
        reps = np.setdiff1d(c.representatives, [5])
        pred = LinearProbe(**FAST).fit(X[:, reps], y, X_dev=Xd[:, reps], y_dev=yd).predict(Xt[:, reps])
        np.testing.assert_array_equal(sweep.predictions[f"t={c.threshold:g}"], pred)
        iv = score_interval(yt, pred, groups=groups, n_boot=300)
        ratio = paired_interval(yt, pred, oracle_pred, compare="ratio", groups=groups, n_boot=300)
        assert (row.test, row.test_low, row.test_high) == pytest.approx((iv.estimate, iv.low, iv.high))
        assert (row.ratio, row.ratio_low, row.ratio_high) == pytest.approx((ratio.estimate, ratio.low, ratio.high))
        assert row.test_macro_f1 == pytest.approx(f1_score(yt, pred, average="macro"))
        assert row.test_macro_f1_low <= row.test_macro_f1 <= row.test_macro_f1_high
    loose = t[t.step == "clustering"].iloc[-1]
    assert loose.neurons_kept <= 5 and loose.test > 0.9  # the copies are gone, the label is not
    assert list(t[t.step == "clustering"]["neurons_kept"]) == [6, 5, 5]
    assert 5 not in set(np.concatenate([np.setdiff1d(c.representatives, [5]) for c in clusterings]))


def test_cc_sweep_refuses_a_clustering_of_another_store(planted):
    from utils.clustering import NeuronClusters

    (A, y), dev, test = planted
    wrong = NeuronClusters(0.3, np.arange(5), np.arange(5))
    with pytest.raises(ValueError, match="covers 5 neurons"):
        cc_sweep((A, y), dev, test, [wrong], probe_params=FAST, progress=False)
    with pytest.raises(ValueError, match="needs class labels"):
        cc_sweep((A, np.linspace(0, 1, len(A))), dev, test, [wrong], progress=False)

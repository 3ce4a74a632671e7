import numpy as np
import pandas as pd
import pytest

from utils.activations import extract
from utils.selection import PAPER_GRID, ReducedProbe, TransferResult, layer_selector, run_transfer

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
    probe = ReducedProbe(int(neurons.max() // 384), 384, neurons, rng.normal(size=(3, 10)), np.zeros(3),
                         np.array(["x", "y", "z"]))
    texts = [["The", "cat", "sat."], ["Stocks", "fell", "sharply", "on", "Monday."]]
    full = extract(minilm, texts, level="word", progress=False)
    np.testing.assert_array_equal(probe.predict_texts(minilm, texts, level="word"), probe.predict(full))
    np.testing.assert_allclose(probe.decision_function(full),
                               full.reshape(len(full), -1)[:, neurons] @ probe.coef_.T, rtol=1e-6)
    with pytest.raises(ValueError, match="expected activations of shape"):
        probe.predict(full[:, :1])


def test_mismatched_inputs_are_refused(splits):
    (A, y), dev, test = splits
    with pytest.raises(ValueError, match="differ in length"):
        run_transfer((A, y[:-1]), dev, test, progress=False)

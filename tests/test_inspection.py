"""Inspection functions (utils.inspection) and the explorer's callbacks (utils.explorer), against hand computations."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform

from utils import activations as act
from utils import inspection
from utils.activations import ActivationStore
from utils.clustering import cluster_neurons
from utils.ranking import lca_ordering
from utils.selection import ReducedProbe, TransferResult
from utils.similarity import linear_cka

RNG = np.random.default_rng(0)


def _sentences(n_sentences: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Words w<i>, sentence ids of 3..7 words each, labels from a 4-tag set."""
    lengths = rng.integers(3, 8, size=n_sentences)
    sids = np.repeat(np.arange(n_sentences), lengths)
    words = [f"w{i}" for i in range(len(sids))]
    labels = rng.choice(np.array(["NN", "VB", "DT", "JJ"]), size=len(sids))
    return words, sids, labels


def _grouped_activations(n: int, n_layers: int, hidden: int, rng: np.random.Generator) -> np.ndarray:
    """Activations (n, n_layers, hidden) whose neurons come in correlated groups across layers."""
    base = rng.normal(size=(n, hidden // 2))
    acts = np.empty((n, n_layers, hidden), dtype=np.float32)
    for layer in range(n_layers):
        mix = base[:, rng.integers(0, hidden // 2, size=hidden)]
        acts[:, layer] = mix + (0.2 + 0.4 * layer) * rng.normal(size=(n, hidden))
    return acts


def _memory_store(
    acts: np.ndarray, words: list, sids: np.ndarray, labels: np.ndarray, level: str = "word", path: Path = Path(".")
) -> ActivationStore:
    return ActivationStore(path, acts, labels, words, sids, {"level": level})


@pytest.fixture
def store() -> ActivationStore:
    rng = np.random.default_rng(1)
    words, sids, labels = _sentences(40, rng)
    acts = _grouped_activations(len(words), 3, 8, rng)
    acts[5, 1, 2] = acts[9, 1, 2] = acts[:, 1, 2].max() + 1  # a tie at the top: the earlier item first
    return _memory_store(acts, words, sids, labels)


# ---------------------------------------------------------------------------------------------
# top items


@pytest.mark.parametrize("bottom", [False, True])
def test_top_items_equal_numpy_argsort(store, bottom):
    for layer, unit in [(0, 0), (1, 2), (2, 7)]:
        v = np.asarray(store.activations[:, layer, unit], dtype=np.float64)
        expected = np.argsort(v if bottom else -v, kind="stable")[:7]
        items = inspection.top_items(store, layer, unit, k=7, bottom=bottom)
        np.testing.assert_array_equal(items["row"].to_numpy(), expected)
        np.testing.assert_array_equal(items["activation"].to_numpy(), v[expected])
        np.testing.assert_array_equal(items["label"].to_numpy(), store.labels[expected])
        assert items["text"].tolist() == [store.words[i] for i in expected]
        assert items["rank"].tolist() == list(range(1, 8))
    assert inspection.top_items(store, 1, 2, k=2)["row"].tolist() == [5, 9]


def test_context_shows_the_word_inside_its_own_sentence(store):
    items = inspection.top_items(store, 0, 3, k=len(store.words), context=2)
    sids = store.sentence_ids
    for row, ctx in zip(items["row"], items["context"]):
        same = [i for i in range(max(0, row - 2), min(len(sids), row + 3)) if sids[i] == sids[row]]
        words = [f"[[{store.words[i]}]]" if i == row else store.words[i] for i in same]
        assert ctx.replace("… ", "").replace(" …", "") == " ".join(words)
        assert ctx.startswith("…") == (row - 2 > np.flatnonzero(sids == sids[row])[0])


def test_sentence_level_items_have_no_context_and_bad_neurons_are_refused(store):
    sentence_store = _memory_store(
        store.activations[:20], [f"text {i}" for i in range(20)], np.arange(20), store.labels[:20], level="sentence"
    )
    items = inspection.top_items(sentence_store, 2, 1, k=3)
    assert "context" not in items.columns and items["text"].str.startswith("text ").all()
    with pytest.raises(ValueError, match="unit must lie in"):
        inspection.top_items(store, 0, 8)
    with pytest.raises(ValueError, match="layer must lie in"):
        inspection.top_items(store, 3, 0)
    with pytest.raises(TypeError, match="ActivationStore"):
        inspection.top_items(np.zeros((3, 2, 2)), 0, 0)


# ---------------------------------------------------------------------------------------------
# clusters


def test_cluster_members_equal_the_clustering_labels():
    rng = np.random.default_rng(2)
    acts = _grouped_activations(400, 3, 16, rng).reshape(400, -1)
    corr = np.corrcoef(acts, rowvar=False).astype(np.float32)
    t = 0.5
    # the partition, independently: scipy's average linkage on 1 - |r|, cut at t
    d = 1.0 - np.abs(corr.astype(np.float64))
    np.fill_diagonal(d, 0.0)
    ref = fcluster(scipy_linkage(squareform(d, checks=False), method="average"), t, criterion="distance")
    clusters = cluster_neurons(corr, t)
    sizes = []
    for neuron in range(corr.shape[0]):
        view = inspection.cluster_members(corr, neuron, hidden=16, clusters=clusters)
        members = view.members["neuron"].to_numpy()
        assert set(members) == set(np.flatnonzero(ref == ref[neuron]))
        assert set(members) == set(np.flatnonzero(clusters.labels == clusters.labels[neuron]))
        np.testing.assert_array_equal(view.members["layer"], members // 16)
        np.testing.assert_array_equal(view.members["unit"], members % 16)
        np.testing.assert_allclose(view.abs_r, np.abs(corr[np.ix_(members, members)]), rtol=0, atol=1e-7)
        np.testing.assert_allclose(view.members["abs_r"], np.abs(corr[members, neuron]), atol=1e-7)
        rep = int(np.intersect1d(members, clusters.representatives)[0])
        assert view.representative == rep and view.members["representative"].sum() == 1
        assert view.members["neuron"].iloc[0] == rep  # the representative first
        if len(members) > 1:
            i = int(np.flatnonzero(members == neuron)[0])
            others = np.abs(corr[neuron, members[members != neuron]]).astype(np.float64)
            assert view.members["mean_abs_r"][view.members.neuron == neuron].iloc[0] == pytest.approx(others.mean())
            assert i >= 0
        sizes.append(len(members))
    assert max(sizes) > 1 and min(sizes) >= 1  # the data do make clusters
    by_threshold = inspection.cluster_members(corr, 5, hidden=16, threshold=t)
    pd.testing.assert_frame_equal(
        by_threshold.members, inspection.cluster_members(corr, 5, hidden=16, clusters=clusters).members
    )
    with pytest.raises(ValueError, match="threshold"):
        inspection.cluster_members(corr, 5, hidden=16)


# ---------------------------------------------------------------------------------------------
# profiles and LCA


def test_class_profile_against_hand_computation():
    values = np.array([1.0, 2.0, 3.0, 10.0, 12.0, -1.0])
    labels = np.array(["a", "a", "a", "b", "b", "c"])
    t = inspection.class_profile(values, labels).set_index("class")
    assert list(t.index) == ["b", "a", "c"]  # highest mean first
    assert t.loc["a", "mean"] == 2.0 and t.loc["a", "std"] == pytest.approx(np.std([1, 2, 3]))
    assert t.loc["b", "count"] == 2 and t.loc["b", "median"] == 11.0 and t.loc["c", "std"] == 0.0
    assert t.loc["a", "q25"] == pytest.approx(np.quantile([1, 2, 3], 0.25))


def test_lca_table_ranks_classes_and_weights():
    rng = np.random.default_rng(3)
    coef = rng.normal(size=(3, 30)) * (rng.random(30) > 0.3)
    coef[:, 4] = [0.0, 9.0, 0.0]  # only class "b" uses neuron 4, heavily
    t = inspection.lca_table(coef, classes=["a", "b", "c"])
    order = lca_ordering(coef)
    np.testing.assert_array_equal(t["rank"].to_numpy()[order], np.arange(1, 31))
    np.testing.assert_allclose(t["weight"], np.abs(coef).sum(axis=0))
    assert t.loc[4, "classes"] == ("b",) and t.loc[4, "rank"] == 1 and t.loc[4, "strongest"][0] == "b"
    unused = int(np.flatnonzero(np.abs(coef).sum(axis=0) == 0)[0])
    assert t.loc[unused, "classes"] == ()  # an all-zero neuron is selected for no class


def test_neuron_profile_collects_class_profile_lca_and_cluster(store):
    flat = np.asarray(store.activations).reshape(len(store.words), -1)
    corr = np.corrcoef(flat, rowvar=False).astype(np.float32)
    clusters = cluster_neurons(corr, 0.6)
    coef = np.random.default_rng(4).normal(size=(4, flat.shape[1]))
    lca = inspection.lca_table(coef, classes=["DT", "JJ", "NN", "VB"])
    p = inspection.neuron_profile(store, 2, 5, lca=lca, corr=corr, clusters=clusters)
    assert p.neuron == 2 * 8 + 5 and p.lca_rank == int(lca.loc[21, "rank"])
    assert p.cluster.members["neuron"].isin(np.flatnonzero(clusters.labels == clusters.labels[21])).all()
    pd.testing.assert_frame_equal(p.by_class, inspection.class_profile(store.activations[:, 2, 5], store.labels))
    bare = inspection.neuron_profile(store, 2, 5)
    assert bare.lca_rank is None and bare.cluster is None and bare.classes == ()


# ---------------------------------------------------------------------------------------------
# neuron lists as CSV


def test_neuron_lists_round_trip_through_csv(tmp_path):
    classes = [("NN", "NA"), (), ("``", "''"), (",",), ("-NONE-", "#", "$"), ("None",)]
    table = inspection.neuron_list(
        [17, 3, 40, 41, 0, 9],
        model="mpnet",
        task="pos",
        hidden=8,
        ranks=[2, 1, 3, 6, 5, 4],
        classes=classes,
        weights=[0.5, 1 / 3, np.nan, 2e-9, 7.0, 1e300],
    )
    assert table["rank"].tolist() == [1, 2, 3, 4, 5, 6] and table.columns.tolist() == list(
        inspection.NEURON_LIST_COLUMNS
    )
    assert table.loc[0, ["layer", "unit"]].tolist() == [0, 3] and table.loc[1, ["layer", "unit"]].tolist() == [2, 1]
    path = inspection.write_neuron_list(table, tmp_path / "lists" / "mpnet-pos-lca.csv")
    back = inspection.read_neuron_list(path)
    pd.testing.assert_frame_equal(back, table, check_exact=True)
    assert back.loc[back["rank"] == 2, "classes"].iloc[0] == "NN|NA"
    with pytest.raises(ValueError, match="separator"):
        inspection.neuron_list([1], model="m", task="t", hidden=8, classes=[("a|b",)])
    with pytest.raises(ValueError, match="missing"):
        inspection.write_neuron_list(table.drop(columns="weight"), tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="no neuron list"):
        inspection.read_neuron_list(tmp_path / "absent.csv")


def test_lca_and_minimal_set_lists_round_trip(tmp_path):
    coef = np.random.default_rng(5).normal(size=(3, 24))
    lca = inspection.lca_table(coef, classes=["x", "y", "z"])
    full = inspection.lca_neuron_list(coef, model="m", task="t", hidden=8, classes=["x", "y", "z"])
    np.testing.assert_array_equal(full["layer"] * 8 + full["unit"], lca_ordering(coef))
    pd.testing.assert_frame_equal(
        inspection.read_neuron_list(inspection.write_neuron_list(full, tmp_path / "a.csv")), full, check_exact=True
    )
    minimal = inspection.minimal_set_neuron_list([20, 2, 11], lca, model="m", task="t", hidden=8)
    assert sorted(minimal["layer"] * 8 + minimal["unit"]) == [2, 11, 20]
    assert minimal["rank"].is_monotonic_increasing
    assert set(minimal["rank"]) == set(lca.loc[[20, 2, 11], "rank"])
    pd.testing.assert_frame_equal(
        inspection.read_neuron_list(inspection.write_neuron_list(minimal, tmp_path / "m.csv")),
        minimal,
        check_exact=True,
    )


def _transfer_result(n_layers: int, hidden: int, kept: np.ndarray, classes: list[str], rng) -> TransferResult:
    n = n_layers * hidden
    reduced = ReducedProbe(
        int(kept.max() // hidden),
        hidden,
        kept,
        rng.normal(size=(len(classes), len(kept))),
        rng.normal(size=len(classes)),
        np.array(classes),
    )
    oracle = ReducedProbe(
        n_layers - 1,
        hidden,
        np.arange(n),
        rng.normal(size=(len(classes), n)),
        rng.normal(size=len(classes)),
        np.array(classes),
    )
    return TransferResult(
        n_layers=n_layers,
        hidden=hidden,
        neurons_total=n,
        oracle_dev=0.9,
        oracle_test=0.9,
        delta_layer=3.0,
        delta_neuron=1.0,
        threshold=0.3,
        selected_layer=int(kept.max() // hidden),
        neurons=kept,
        dev=0.88,
        test=0.87,
        grid=pd.DataFrame({"a": [1]}),
        steps=pd.DataFrame({"step": ["oracle"]}),
        reduced=reduced,
        oracle=oracle,
        test_predictions=np.array(classes[:1]),
        info={"model": "minilm", "task": "pos"},
    )


def test_transfer_neuron_list_round_trips_from_a_saved_result(tmp_path):
    rng = np.random.default_rng(6)
    kept = np.array([1, 5, 9, 30, 33])
    folder = _transfer_result(7, 8, kept, ["NN", "VB", "DT"], rng).save(tmp_path / "transfer" / "minilm-pos")
    result = TransferResult.load(folder)
    scale = rng.random(56) + 0.5
    table = inspection.transfer_neuron_list(result, scale=scale)
    assert sorted(table["layer"] * 8 + table["unit"]) == kept.tolist()
    assert table["model"].eq("minilm").all() and table["task"].eq("pos").all()
    order = lca_ordering(result.reduced.coef_ * scale[kept])
    np.testing.assert_array_equal((table["layer"] * 8 + table["unit"]).to_numpy(), kept[order])
    np.testing.assert_allclose(table["weight"], np.abs(result.reduced.coef_ * scale[kept]).sum(axis=0)[order])
    back = inspection.read_neuron_list(inspection.write_neuron_list(table, tmp_path / "kept.csv"))
    pd.testing.assert_frame_equal(back, table, check_exact=True)


@pytest.mark.skipif(
    not (Path(__file__).parents[1] / "figures/transfer/mpnet-pos-seed0/result.json").exists(),
    reason="the committed figures/transfer/mpnet-pos-seed0 result is absent",
)
def test_transfer_neuron_list_of_the_committed_mpnet_result():
    result = TransferResult.load(Path(__file__).parents[1] / "figures/transfer/mpnet-pos-seed0")
    table = inspection.transfer_neuron_list(result)
    assert len(table) == result.neurons_kept and sorted(table["rank"]) == list(range(1, result.neurons_kept + 1))
    np.testing.assert_array_equal(np.sort(table["layer"] * result.hidden + table["unit"]), np.sort(result.neurons))
    assert (table["layer"] <= result.selected_layer).all()


# ---------------------------------------------------------------------------------------------
# the explorer: missing inputs and widget callbacks


def _write_store(
    root: Path, model: str, task: str, acts: np.ndarray, words: list, sids: np.ndarray, labels: np.ndarray
) -> Path:
    """A finished train store on disk in the layout of activations.store_path (no model needed)."""
    path = root / model / f"{task}-train-auto-encoder-float32-b{len(words)}-s0"
    path.mkdir(parents=True)
    np.save(path / "activations.npy", acts.astype(np.float32))
    np.save(path / "labels.npy", labels)
    np.save(path / "sentence_ids.npy", sids)
    (path / "words.json").write_text(json.dumps(words))
    n, L, h = acts.shape
    meta = {
        "store_version": act.STORE_VERSION,
        "model": model,
        "model_sha256": None,
        "task": task,
        "split": "train",
        "level": "word",
        "aggregation": "last",
        "dtype": "float32",
        "n_items": n,
        "n_sentences": int(sids.max()) + 1,
        "n_layers": L,
        "hidden": h,
        "data_sha256": "",
        "files": {name: act._file_record(path / name) for name in act.STORE_FILES},
        "complete": True,
    }
    meta["meta_sha256"] = act._meta_digest(meta)
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_missing_store_and_transfer_name_the_notebooks_that_make_them(tmp_path):
    pytest.importorskip("ipywidgets")
    from utils import explorer

    with pytest.raises(explorer.MissingInput, match=r"notebooks/01_activation_extraction\.ipynb \(make quick"):
        explorer.prepare("minilm", "pos", root=tmp_path / "empty", cache_root=tmp_path / "cache")
    app = explorer.Explorer(root=tmp_path / "empty", cache_root=tmp_path / "cache")
    assert "notebooks/01_activation_extraction.ipynb" in html.unescape(app.status.value)
    assert "notebooks/01_activation_extraction.ipynb" in html.unescape(app.render_card())
    # a store without a transfer result: the card says which notebook makes the LCA ranks
    rng = np.random.default_rng(7)
    words, sids, labels = _sentences(30, rng)
    _write_store(tmp_path / "acts", "minilm", "pos", _grouped_activations(len(words), 3, 8, rng), words, sids, labels)
    app = explorer.Explorer(root=tmp_path / "acts", cache_root=tmp_path / "cache", figures_dirs=[tmp_path / "figs"])
    assert "notebooks/04_feature_selected_transfer.ipynb" in html.unescape(app.render_card())
    assert "notebooks/04_feature_selected_transfer.ipynb" in html.unescape(app.status.value)


@pytest.fixture
def app(tmp_path):
    """An explorer over a small store (3 layers x 8 units) with a saved transfer result."""
    pytest.importorskip("ipywidgets")
    from utils import explorer

    rng = np.random.default_rng(8)
    words, sids, labels = _sentences(60, rng)
    acts = _grouped_activations(len(words), 3, 8, rng)
    _write_store(tmp_path / "acts", "minilm", "pos", acts, words, sids, labels)
    _transfer_result(3, 8, np.array([2, 9, 17]), ["DT", "JJ", "NN", "VB"], rng).save(
        tmp_path / "figs" / "transfer" / "minilm-pos"
    )
    a = explorer.Explorer(root=tmp_path / "acts", cache_root=tmp_path / "cache", figures_dirs=[tmp_path / "figs"])
    a.test_acts = acts
    return a


def test_widget_callbacks_answer_control_changes(app):
    acts = app.test_acts
    assert app.model.value == "minilm" and app.task.value == "pos" and app.layer.max == 2 and app.unit.max == 7
    # the CKA cell: choose column 2; the panel reports CKA(0, 2) computed here independently
    app.layer_j.value = 2
    expected = linear_cka(acts[:, 0].astype(np.float64), acts[:, 2].astype(np.float64))
    assert f"CKA(layer 0, layer 2) = {expected:.3f}" in app.pair_html.value
    assert app.cka_image.value[:4] == b"\x89PNG" and app.pair_image.value[:4] == b"\x89PNG"
    # the neuron card: choose unit 5 of layer 1; its top word and its LCA rank appear
    app.layer.value = 1
    app.unit.value = 5
    v = acts[:, 1, 5].astype(np.float64)
    top_row = int(np.argsort(-v, kind="stable")[0])
    card = app.card_html.value
    assert "neuron 1:5" in card and f"[[{app.data.store.words[top_row]}]]" in card and f"{v[top_row]:.3f}" in card
    std = acts.reshape(len(v), -1).std(axis=0)
    oracle = app.data.transfer.oracle
    lca = inspection.lca_table(oracle.coef_ * std, classes=oracle.classes_)
    assert f"LCA rank <b>{int(lca.loc[13, 'rank']):,}</b>" in card
    # the cluster browser: one entry per cluster with a member in layer 1 at t
    app.threshold.value = 0.6
    flat = acts.reshape(len(v), -1)
    clusters = cluster_neurons(np.corrcoef(flat, rowvar=False).astype(np.float32), 0.6)
    assert len(app.cluster.options) == len(np.unique(clusters.labels[8:16]))
    chosen = app.cluster.options[-1][1]
    app.cluster.value = chosen
    members = np.flatnonzero(app.data.clusters(0.6).labels == chosen)
    assert f"This cluster: {len(members)} neuron(s)" in app.cluster_html.value
    # bad neuron text in the sentence tab is answered, not raised
    app.extra.value = "1:99"
    assert "could not read neuron" in html.unescape(app.render_sentence())


def test_sentence_callback_runs_the_model(tmp_path, minilm):
    """The sentence tab against a direct extraction with MiniLM (the store's model)."""
    pytest.importorskip("ipywidgets")
    from utils import explorer
    from utils.activations import extract

    rng = np.random.default_rng(9)
    words, sids, labels = _sentences(50, rng)
    _write_store(
        tmp_path / "acts",
        "minilm",
        "pos",
        rng.normal(size=(len(words), 7, 384)).astype(np.float32),
        words,
        sids,
        labels,
    )
    app = explorer.Explorer(root=tmp_path / "acts", cache_root=tmp_path / "cache", figures_dirs=[tmp_path / "none"])
    app._loaded_model = ("minilm", minilm)  # the session's model, loaded once
    app.layer.value, app.unit.value = 4, 100
    app.sentence.value = "Markets fell sharply on Friday ."
    app.extra.value = "6:3"
    out = app.render_sentence()
    ref = extract(minilm, [app.sentence.value.split()], level="word", aggregation="last", progress=False)
    for layer, unit in [(4, 100), (6, 3)]:
        row = out.split(f"<tr><th>{layer}:{unit}</th>")[1].split("</tr>")[0]
        shown = [float(x.split(">")[-1]) for x in row.split("</td>")[:-1]]
        np.testing.assert_allclose(shown, ref[:, layer, unit], atol=0.006)
    assert "<th>sharply</th>" in out
    app.sentence.value = "   "
    assert "type a sentence" in app.render_sentence()


def test_explorer_writes_the_neuron_lists_it_knows(app, tmp_path):
    from utils import explorer

    lca_path, transfer_path = explorer.write_neuron_lists(app.data, tmp_path / "neurons")
    assert lca_path.name == "minilm-pos-lca.csv" and transfer_path.name == "minilm-pos-transfer.csv"
    lca = inspection.read_neuron_list(lca_path)
    flat = app.test_acts.reshape(len(app.test_acts), -1)
    order = lca_ordering(app.data.transfer.oracle.coef_ * flat.std(axis=0))
    np.testing.assert_array_equal((lca["layer"] * 8 + lca["unit"]).to_numpy(), order)
    kept = inspection.read_neuron_list(transfer_path)
    assert sorted(kept["layer"] * 8 + kept["unit"]) == [2, 9, 17]


def test_explorer_finds_the_seed_folders_notebook_04_writes(tmp_path):
    """Notebook 04 saves ``transfer/<model>-<task>-seed<s>``; the explorer reads seed 0 (the old name as a fallback)."""
    pytest.importorskip("ipywidgets")
    from utils import explorer

    rng = np.random.default_rng(9)
    seed0 = _transfer_result(3, 8, np.array([2, 9, 17]), ["DT", "NN"], rng)
    seed0.save(tmp_path / "figs" / "transfer" / "minilm-pos-seed0")
    _transfer_result(3, 8, np.array([1, 4]), ["DT", "NN"], rng).save(tmp_path / "figs" / "transfer" / "minilm-pos")
    found, note = explorer._find_transfer("minilm", "pos", 24, [tmp_path / "figs"])
    assert found is not None and "minilm-pos-seed0" in note
    np.testing.assert_array_equal(np.sort(found.neurons), [2, 9, 17])
    # only the old layout: still found; a result of another width: not used
    (tmp_path / "old" / "transfer").mkdir(parents=True)
    _transfer_result(3, 8, np.array([1, 4]), ["DT", "NN"], rng).save(tmp_path / "old" / "transfer" / "minilm-pos")
    found, _ = explorer._find_transfer("minilm", "pos", 24, [tmp_path / "old"])
    np.testing.assert_array_equal(np.sort(found.neurons), [1, 4])
    missing, note = explorer._find_transfer("minilm", "pos", 99, [tmp_path / "figs"])
    assert missing is None and "notebooks/04_feature_selected_transfer.ipynb" in note

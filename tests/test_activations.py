import json
import warnings

import numpy as np
import pytest
import torch

from utils import activations as act
from utils.activations import ActivationStore, build_store, extract, get_activations
from utils.data import Split, Task

SENTENCES = [
    ["Unbelievably,", "Pierre", "Vinken's", "nonexecutive", "directorship", "ended."],
    ["The", "cat", "sat."],
    ["Stocks", "of", "Elsevier", "N.V.", "tumbled", "12%", "yesterday", "in", "Amsterdam."],
    ["Hi"],
]


def _reference_word_vectors(loaded, words, mode):
    """Hand computation: one sentence alone, BERT's word_ids for the split words, then pick/average."""
    enc = loaded.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        hs = loaded.model(**enc, output_hidden_states=True).hidden_states
    hs = torch.stack(hs)[:, 0].numpy()  # (n_layers, n_tokens, hidden)
    word_ids = enc.word_ids(0)
    out = []
    for w in range(len(words)):
        toks = [i for i, wid in enumerate(word_ids) if wid == w]
        piece = hs[:, toks]
        out.append({"first": piece[:, 0], "last": piece[:, -1], "mean": piece.mean(axis=1)}[mode])
    return np.stack(out)  # (n_words, n_layers, hidden)


@pytest.mark.parametrize("mode", ["first", "last", "mean"])
def test_word_aggregation_matches_hand_computation(minilm, mode):
    # every piece of each whitespace word (glued punctuation included: split_glued=False)
    got = extract(minilm, SENTENCES[:1], level="word", aggregation=mode, split_glued=False, progress=False)
    want = _reference_word_vectors(minilm, SENTENCES[0], mode)
    assert got.shape == (len(SENTENCES[0]), 7, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_first_last_mean_differ_for_multi_piece_words(minilm):
    f, l = (extract(minilm, SENTENCES[:1], level="word", aggregation=m, progress=False) for m in ("first", "last"))
    assert np.abs(f[0] - l[0]).max() > 1e-2  # "Unbelievably," has several pieces


def test_every_word_gets_exactly_one_vector(minilm):
    got = extract(minilm, SENTENCES, level="word", progress=False)
    assert got.shape[0] == sum(len(s) for s in SENTENCES)
    assert not np.all(got == 0, axis=(1, 2)).any()


def test_batched_equals_one_sentence_at_a_time(minilm):
    batched = extract(minilm, SENTENCES, level="word", batch_size=16, progress=False)
    single = np.concatenate([extract(minilm, [s], level="word", batch_size=1, progress=False) for s in SENTENCES])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    texts = [" ".join(s) for s in SENTENCES]
    b = extract(minilm, texts, level="sentence", batch_size=16, progress=False)
    s = np.concatenate([extract(minilm, [t], level="sentence", progress=False) for t in texts])
    np.testing.assert_allclose(b, s, atol=1e-4)


@pytest.mark.parametrize("mode", ["cls", "mean"])
def test_sentence_representation_matches_direct_forward(minilm, mode):
    text = "A gorgeous, witty, seductive movie."
    enc = minilm.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        hs = torch.stack(minilm.model(**enc, output_hidden_states=True).hidden_states)[:, 0].numpy()
    want = hs[:, 0] if mode == "cls" else hs.mean(axis=1)
    got = extract(minilm, [text], level="sentence", aggregation=mode, progress=False)
    np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_long_sentence_is_split_with_a_warning_and_keeps_every_word(minilm):
    long = [f"word{i}" for i in range(400)]  # ~3 pieces a word: far past 512 tokens
    with pytest.warns(UserWarning, match="1 sentence\\(s\\) were longer"):
        got = extract(minilm, [long, ["short", "one"]], level="word", progress=False)
    assert got.shape[0] == 402
    assert not np.all(got == 0, axis=(1, 2)).any()


def test_long_text_is_truncated_with_a_warning_and_count(minilm):
    with pytest.warns(UserWarning, match="1 text\\(s\\) were longer than 512 tokens and were truncated"):
        extract(minilm, ["word " * 2000, "short"], level="sentence", progress=False)


def test_bad_aggregation_is_refused(minilm):
    with pytest.raises(ValueError, match="aggregation 'cls' is not one of"):
        extract(minilm, SENTENCES, level="word", aggregation="cls", progress=False)


def _task():
    labels = [["X"] * len(s) for s in SENTENCES]
    split = Split(SENTENCES, labels)
    return Task("toy", "word", split, split, split, classes=("X",))


def test_store_is_reused_without_a_forward_pass(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    first = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    assert first.words == [w for s in SENTENCES for w in s]
    assert list(first.labels) == ["X"] * len(first.words)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran although the store exists")

    monkeypatch.setattr(act, "extract", no_forward)
    again = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    np.testing.assert_array_equal(np.asarray(again.activations), np.asarray(first.activations))


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_corrupt_or_truncated_store_is_detected_and_rebuilt(minilm, tmp_path, monkeypatch, damage):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    store = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    original = np.array(store.activations)
    path = store.path / "activations.npy"
    del store
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-4096])
    else:
        (path.parent / "meta.json").write_text("{not json")
    with pytest.raises(act.StoreError):
        ActivationStore.open(path.parent)
    with pytest.warns(UserWarning, match="unusable.*recomputing"):
        rebuilt = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    np.testing.assert_allclose(np.asarray(rebuilt.activations), original, atol=1e-6)


def test_store_from_other_inputs_is_recomputed(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    changed = _task()
    changed = Task("toy", "word", Split(SENTENCES, [["Y"] * len(s) for s in SENTENCES]), changed.dev, changed.test)
    with pytest.warns(UserWarning, match="made from other inputs.*data_sha256"):
        store = get_activations("minilm", changed, "train", root=tmp_path, device="cpu", progress=False)
    assert set(store.labels) == {"Y"}


def test_interrupted_extraction_resumes_where_it_stopped(minilm, tmp_path):
    texts = [s for s in SENTENCES * 5]
    split = Split(texts, [["X"] * len(s) for s in texts])
    calls = {"n": 0}
    real_forward = minilm.model.forward

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_forward(*args, **kwargs)

    path = tmp_path / "store"
    minilm.model.forward = flaky_forward
    try:
        with pytest.raises(KeyboardInterrupt):
            build_store(minilm, split, path, level="word", batch_size=2, checkpoint_every=1, progress=False)
        assert (tmp_path / "store.partial").exists() and not path.exists()
        state = json.loads((tmp_path / "store.partial" / "state.json").read_text())
        done_before = int(
            np.unpackbits(np.frombuffer(bytes.fromhex(state["done"]), dtype=np.uint8), count=state["n_segments"]).sum()
        )
        assert done_before == 4  # two batches of two segments were checkpointed
        calls["n"] = 100
        store = build_store(minilm, split, path, level="word", batch_size=2, checkpoint_every=1, progress=False)
    finally:
        minilm.model.forward = real_forward
    assert calls["n"] - 100 == (len(texts) - done_before + 1) // 2  # only the rest was run
    fresh = extract(minilm, texts, level="word", progress=False)
    np.testing.assert_allclose(np.asarray(store.activations), fresh, atol=1e-4)
    assert not (tmp_path / "store.partial").exists()
    assert json.loads((path / "meta.json").read_text())["complete"] is True


def test_empty_split_is_refused(minilm, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        build_store(minilm, Split([], []), tmp_path / "s", level="word", progress=False)


def test_float16_store(minilm, tmp_path):
    split = Split(SENTENCES, [["X"] * len(s) for s in SENTENCES])
    store = build_store(minilm, split, tmp_path / "h", level="word", dtype="float16", progress=False)
    assert store.activations.dtype == np.float16
    ref = extract(minilm, SENTENCES, level="word", progress=False)
    np.testing.assert_allclose(np.asarray(store.activations, dtype=np.float32), ref, rtol=2e-3, atol=2e-3)


def test_store_paths_stay_inside_the_root(tmp_path):
    kw = dict(aggregation="last", budget=None, eval_budget=None, seed=0, dtype="float32", root=tmp_path)
    for model in ("..", "../../etc", "/abs/model", "./local model"):
        path = act.store_path(model, "pos", "train", **kw).resolve()
        assert path.is_relative_to(tmp_path.resolve()), path
    with pytest.raises(ValueError, match="task name '../../escape' cannot be used as a folder name"):
        act.store_path("minilm", "../../escape", "train", **kw)
    with pytest.raises(ValueError, match="aggregation"):
        act.store_path("minilm", "pos", "train", **{**kw, "aggregation": "../x"})


def test_store_from_an_older_version_is_rebuilt(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    store = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    meta = json.loads((store.path / "meta.json").read_text())
    meta["store_version"] = 1
    (store.path / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="written by store version 1"):
        get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    assert json.loads((store.path / "meta.json").read_text())["store_version"] == act.STORE_VERSION


def test_weights_that_only_the_loaded_model_can_name_are_compared_after_loading(minilm, tmp_path, monkeypatch):
    """A name whose identity is unknown before loading (e.g. an unresolved hub commit): reuse only same weights."""
    import dataclasses

    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    first = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    monkeypatch.setattr(act, "model_identity", lambda name: None)
    forward_calls = []
    monkeypatch.setattr(act, "extract", lambda *a, **k: forward_calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    assert not forward_calls and again.meta["meta_sha256"] == first.meta["meta_sha256"]
    monkeypatch.undo()
    other = dataclasses.replace(minilm, source_sha256="other-weights")
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), other)
    monkeypatch.setattr(act, "model_identity", lambda name: None)
    with pytest.warns(UserWarning, match="made from other weights"):
        rebuilt = get_activations("minilm", _task(), "train", root=tmp_path, device="cpu", progress=False)
    assert rebuilt.meta["model_sha256"] == "other-weights"


def test_task_stores_apply_a_task_budget_to_train_only(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    common = dict(sentence_budget=8, eval_budget=4, root=tmp_path, device="cpu", progress=False)
    shared = act.task_stores("minilm", "polarity", splits=("train", "dev"), **common)
    larger = act.task_stores("minilm", "polarity", splits=("train", "dev"), task_budgets={"polarity": 12}, **common)
    assert (len(shared["train"]), len(larger["train"]), len(larger["dev"])) == (8, 12, 4)
    assert larger["train"].path != shared["train"].path  # its own store, not the shared budget's
    assert larger["train"].words[:8] == shared["train"].words
    np.testing.assert_allclose(
        np.asarray(larger["train"].activations)[:8], np.asarray(shared["train"].activations), atol=2e-2
    )
    np.testing.assert_array_equal(np.asarray(larger["dev"].activations), np.asarray(shared["dev"].activations))

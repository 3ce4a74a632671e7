"""Fine-tuning as a cached step: it learns, it reloads exactly, it resumes exactly, its key is complete.

Everything runs real MiniLM on a small synthetic sentence task whose label is carried by one word
("good" / "bad" words), with max length 32 and small batches, so each fine-tune takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from utils import finetune as ft
from utils.activations import get_activations
from utils.data import Split, Task, split_items
from utils.precision import resolve_precision

GOOD = ["good", "great", "wonderful", "excellent", "lovely"]
BAD = ["bad", "awful", "terrible", "poor", "dreadful"]
NOUNS = ["film", "movie", "story", "cast", "plot", "ending", "script", "score"]
SMALL = ft.Recipe(epochs=1, batch_size=16, max_length=32)
RESUME = ft.Recipe(epochs=2, batch_size=8, max_length=32, train_budget=40)  # 5 steps an epoch, 10 in all


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny batches: one thread is faster than two (and far faster on a shared, busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sentences(n: int, seed: int = 0) -> tuple[list[str], list[bool]]:
    rng = np.random.default_rng(seed)
    texts, positive = [], []
    for i in range(n):
        pos = bool(i % 2 == 0)
        word = rng.choice(GOOD if pos else BAD)
        texts.append(f"the {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} too")
        positive.append(pos)
    return texts, positive


def synthetic_task(n: int = 300, *, name: str = "synthetic", regression: bool = False) -> Task:
    """A separable sentence task: the label is the polarity of one adjective."""
    texts, positive = _sentences(n)
    if regression:
        rng = np.random.default_rng(1)
        labels = [float((1.0 if p else -1.0) + 0.1 * rng.standard_normal()) for p in positive]
    else:
        labels = ["positive" if p else "negative" for p in positive]
    train, dev, test = split_items(texts, labels, seed=0)
    classes = () if regression else ("negative", "positive")
    return Task(name, "sentence", train, dev, test, classes=classes)


def _weights(result: ft.FineTuned) -> dict[str, torch.Tensor]:
    return load_file(str(result.path / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of MiniLM on the synthetic task (15 steps of 16 sentences)."""
    task = synthetic_task()
    root = tmp_path_factory.mktemp("finetuned")
    return task, root, ft.finetune("minilm", task, recipe=SMALL, seed=0, root=root, device="cpu", progress=False)


def test_one_epoch_lifts_dev_accuracy_well_above_chance(trained):
    task, _, result = trained
    history = result.meta["history"]
    assert [h["epoch"] for h in history] == [1]
    assert result.meta["metric"] == "dev_accuracy"
    # the recorded metric agrees with accuracy recomputed from the saved model's dev logits
    model, tok = result.load_classifier(device="cpu")
    logits = ft.predict(model, tok, task.dev.texts, max_length=32)
    y = np.array([result.meta["classes"].index(lab) for lab in task.dev.labels])
    recomputed = float((logits.argmax(axis=1) == y).mean())
    assert recomputed == pytest.approx(result.dev_metric)
    assert recomputed >= 0.9  # chance is 0.5 (balanced classes)
    assert len(task.dev) >= 25


def test_saved_model_reloads_to_identical_logits(trained):
    task, _, result = trained
    assert result.model is not None
    model, tok = result.load_classifier(device="cpu")
    texts = task.dev.texts[:12] + ["an unseen sentence about nothing in particular"]
    np.testing.assert_array_equal(ft.predict(result.model, tok, texts), ft.predict(model, tok, texts))
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_cached_result_is_reused_and_a_corrupt_one_is_rebuilt_identically(trained):
    task, root, result = trained
    again = ft.finetune("minilm", task, recipe=SMALL, seed=0, root=root, device="cpu", progress=False)
    assert again.model is None and again.path == result.path and again.meta == result.meta
    weights = result.path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-100] ^= 0xFF  # flip one byte of the weights
    weights.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="does not match its recorded sha256"):
        rebuilt = ft.finetune("minilm", task, recipe=SMALL, seed=0, root=root, device="cpu", progress=False)
    assert rebuilt.model is not None  # trained again
    assert rebuilt.meta["weights_sha256"] == result.meta["weights_sha256"]  # same seed: same bytes


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    task = synthetic_task()
    root = tmp_path_factory.mktemp("uninterrupted")
    return ft.finetune(
        "minilm", task, recipe=RESUME, seed=3, root=root, device="cpu", checkpoint_every=3, progress=False
    )


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at, resumes_from", [(4, 3), (6, 6)])
def test_interrupted_fine_tune_resumes_to_the_same_weights(uninterrupted, tmp_path, stop_at, resumes_from):
    task = synthetic_task()
    seen: list[int] = []

    def stop(step: int) -> None:
        seen.append(step)
        if step == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        ft.finetune(
            "minilm",
            task,
            recipe=RESUME,
            seed=3,
            root=tmp_path,
            device="cpu",
            checkpoint_every=3,
            progress=False,
            on_step=stop,
        )
    path = ft.finetuned_path("minilm", task, RESUME, seed=3, root=tmp_path)
    assert not path.exists() and (path.parent / (path.name + ".partial") / "checkpoint.pt").exists()
    seen.clear()
    resumed = ft.finetune(
        "minilm",
        task,
        recipe=RESUME,
        seed=3,
        root=tmp_path,
        device="cpu",
        checkpoint_every=3,
        progress=False,
        on_step=seen.append,
    )
    assert seen == list(range(resumes_from + 1, 11))  # it resumed: no step before the checkpoint was redone
    assert resumed.meta["resumed_from_step"] == resumes_from
    a, b = _weights(uninterrupted), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.meta["history"] == uninterrupted.meta["history"]
    assert len(resumed.meta["history"]) == 2
    assert not (path.parent / (path.name + ".partial")).exists()


def test_a_different_seed_gives_different_weights(uninterrupted, tmp_path):
    other = ft.finetune(
        "minilm",
        synthetic_task(),
        recipe=dataclasses.replace(RESUME, epochs=1),
        seed=4,
        root=tmp_path,
        device="cpu",
        progress=False,
    )
    a, b = _weights(uninterrupted), _weights(other)
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])


def test_cache_key_changes_when_any_input_changes():
    task = synthetic_task()
    base_fields, base = ft.finetune_key("minilm", task, ft.PAPER_RECIPE, seed=0)
    changed = {
        "epochs": 2,
        "learning_rate": 3e-5,
        "max_length": 64,
        "batch_size": 16,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "max_grad_norm": 0.5,
        "train_budget": 100,
        "precision": "bfloat16",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(ft.Recipe)}  # every field is tried
    digests = {base}
    for name, value in changed.items():
        recipe = dataclasses.replace(ft.PAPER_RECIPE, **{name: value})
        digests.add(ft.finetune_key("minilm", task, recipe, seed=0)[1])
    digests.add(ft.finetune_key("minilm", task, ft.PAPER_RECIPE, seed=1)[1])
    digests.add(ft.finetune_key("mpnet", task, ft.PAPER_RECIPE, seed=0)[1])
    digests.add(ft.finetune_key("minilm", dataclasses.replace(task, name="other"), ft.PAPER_RECIPE, seed=0)[1])
    relabelled = Split(task.train.texts, task.train.labels[::-1])
    digests.add(ft.finetune_key("minilm", dataclasses.replace(task, train=relabelled), ft.PAPER_RECIPE, seed=0)[1])
    digests.add(ft.finetune_key("minilm", dataclasses.replace(task, dev=task.test), ft.PAPER_RECIPE, seed=0)[1])
    assert len(digests) == len(changed) + 6
    # the test split is never part of the key (and never read)
    assert ft.finetune_key("minilm", dataclasses.replace(task, test=task.dev), ft.PAPER_RECIPE, seed=0)[1] == base
    assert base_fields["finetune_version"] == ft.FINETUNE_VERSION
    assert json.dumps(base_fields)  # plain JSON
    # float32 (the default) is left out of the key: keys made before `precision` existed still hold
    assert "precision" not in base_fields["recipe"]
    assert set(base_fields["recipe"]) == {f.name for f in dataclasses.fields(ft.Recipe)} - {"precision"}
    bf16 = dataclasses.replace(ft.PAPER_RECIPE, precision="bfloat16")
    assert ft.finetune_key("minilm", task, bf16, seed=0)[0]["recipe"]["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        ft.Recipe(precision="float16")
    # "auto" is keyed as what it means here (bfloat16 on a CPU with native bfloat16, as for extraction)
    auto = dataclasses.replace(ft.PAPER_RECIPE, precision="auto")
    meant = dataclasses.replace(ft.PAPER_RECIPE, precision=resolve_precision("auto"))
    assert ft.finetune_key("minilm", task, auto, seed=0) == ft.finetune_key("minilm", task, meant, seed=0)
    assert ft.resolved(auto).precision in ("float32", "bfloat16") and ft.resolved(bf16) is bf16


def test_bfloat16_fine_tune_learns_and_records_its_own_dev_metric(trained, tmp_path):
    """Mixed precision: the same recipe under bfloat16 autocast still learns the task, ends with other
    weights than float32's, and the dev metric it records is that of a bfloat16 dev pass."""
    task, _, full = trained
    result = ft.finetune(
        "minilm", task, recipe=dataclasses.replace(SMALL, precision="bfloat16"), seed=0, root=tmp_path, progress=False
    )
    assert result.path != full.path and result.meta["recipe"]["precision"] == "bfloat16"
    model, tok = result.load_classifier(device="cpu")
    y = np.array([result.meta["classes"].index(lab) for lab in task.dev.labels])
    low = ft.predict(model, tok, task.dev.texts, max_length=32, precision="bfloat16")
    assert low.dtype == np.float32
    assert float((low.argmax(axis=1) == y).mean()) == pytest.approx(result.dev_metric)
    assert result.dev_metric >= 0.9
    # the bfloat16 dev pass is close to the float32 one of the same weights (8-bit mantissa: about 1e-2)
    high = ft.predict(model, tok, task.dev.texts, max_length=32)
    assert 0 < np.abs(low - high).max() < 0.1 * np.abs(high).max()
    assert any(not torch.equal(w, _weights(full)[k]) for k, w in _weights(result).items())


def _refused(tmp_path, task, match, model="minilm"):
    root = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        ft.finetune(model, task, recipe=SMALL, root=root, device="cpu", progress=False)
    assert not root.exists()  # refused before anything was trained or written


def test_bad_inputs_are_refused_before_training(tmp_path):
    task = synthetic_task(60)
    words = Task("words", "word", Split([["a", "b"]], [["X", "Y"]]), Split([["c"]], [["X"]]), Split([["d"]], [["Y"]]))
    _refused(tmp_path, words, "sentence-level tasks; 'words' is word-level")
    one_class = Split(task.train.texts, ["positive"] * len(task.train))
    _refused(tmp_path, dataclasses.replace(task, train=one_class, classes=("positive",)), "at least two")
    _refused(tmp_path, dataclasses.replace(task, dev=Split([], [])), "no dev split")
    odd_dev = Split(task.dev.texts, ["neutral"] * len(task.dev))
    _refused(tmp_path, dataclasses.replace(task, dev=odd_dev), "never occur in train")
    _refused(tmp_path, task, "GGUF decoder", model="smollm2")
    with pytest.raises(ValueError, match="train_budget"):
        ft.Recipe(train_budget=1)
    with pytest.raises(ValueError, match="only sentence-level tasks are fine-tuned"):
        get_activations("minilm+ft", words, "train", root=tmp_path / "stores", progress=False, precision="float32")


def test_regression_task_gets_a_regression_head(tmp_path, monkeypatch):
    task = synthetic_task(160, regression=True)
    recipe = ft.Recipe(epochs=1, batch_size=8, max_length=32, learning_rate=1e-4)
    released = []
    monkeypatch.setattr(ft.heap, "release_unused", lambda: released.append(1) or True)
    result = ft.finetune("minilm", task, recipe=recipe, root=tmp_path, device="cpu", progress=False)
    assert released == [1]  # the training run's freed memory is handed back once it is done ...
    ft.finetune("minilm", task, recipe=recipe, root=tmp_path, device="cpu", progress=False)
    assert released == [1]  # ... and a cached result trains nothing, so there is nothing to hand back
    assert result.meta["problem"] == "regression" and result.meta["metric"] == "dev_pearson"
    model, tok = result.load_classifier(device="cpu")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    pred = ft.predict(model, tok, task.dev.texts, max_length=32)
    assert pred.shape == (len(task.dev), 1)
    r = float(np.corrcoef(pred[:, 0], np.asarray(task.dev.labels))[0, 1])
    assert r == pytest.approx(result.dev_metric, abs=1e-6)
    assert r > 0.5  # the targets are the adjective's polarity plus small noise


def test_plus_ft_name_extracts_from_the_fine_tuned_encoder(trained, tmp_path, monkeypatch):
    task, _, result = trained
    monkeypatch.setitem(ft.RECIPES, "minilm", SMALL)
    store = get_activations(
        "minilm+ft", task, "dev", root=tmp_path / "activations", progress=False, precision="float32"
    )
    assert store.activations.shape == (len(task.dev), 7, 384)
    assert store.meta["model"].startswith("minilm+ft-")
    # the fine-tune was made beside the stores, with the same weights as the fixture's (same key, same seed)
    made = ft.open_finetuned(ft.finetuned_path("minilm", task, SMALL, seed=0, root=tmp_path / "finetuned"))
    assert made.meta["weights_sha256"] == result.meta["weights_sha256"]
    # reference: hidden states of the classifier's own encoder, first token, one sentence at a time
    model, tok = result.load_classifier(device="cpu")
    for i in (0, len(task.dev) - 1):
        enc = tok(task.dev.texts[i], return_tensors="pt")
        with torch.inference_mode():
            hs = model.base_model(**enc, output_hidden_states=True).hidden_states
        want = torch.stack(hs)[:, 0, 0].numpy()
        np.testing.assert_allclose(store.activations[i], want, atol=1e-5)
    base = get_activations("minilm", task, "dev", root=tmp_path / "activations", progress=False, precision="float32")
    assert np.abs(np.asarray(base.activations[:, -1]) - np.asarray(store.activations[:, -1])).max() > 1e-2
    again = get_activations(
        "minilm+ft", task, "dev", root=tmp_path / "activations", progress=False, precision="float32"
    )
    assert again.path == store.path


def test_named_tasks_fine_tune_on_the_whole_train_split_whatever_the_store_budget():
    from utils.data import load_task

    small = load_task("sentiment", budget=100, eval_budget=50, seed=0)
    larger = load_task("sentiment", budget=300, eval_budget=50, seed=0)
    whole_small, whole_larger = ft.whole_train(small, seed=0), ft.whole_train(larger, seed=0)
    assert len(whole_small.train) == len(load_task("sentiment", seed=0).train) > 8000
    assert whole_small.train.texts[:100] == small.train.texts  # the stores' budget is a prefix
    assert whole_small.dev == small.dev and whole_small.test == small.test
    key = ft.finetune_key("minilm", whole_small, ft.PAPER_RECIPE, seed=0)[1]
    assert ft.finetune_key("minilm", whole_larger, ft.PAPER_RECIPE, seed=0)[1] == key
    capped = ft.finetune_key("minilm", whole_small, dataclasses.replace(ft.PAPER_RECIPE, train_budget=2000), seed=0)
    assert capped[0]["n_train"] == 2000
    # a task that is not a prefix of the named one (other items under the same name) is left alone
    other = dataclasses.replace(small, train=Split(small.train.texts[::-1], small.train.labels[::-1]))
    assert ft.whole_train(other, seed=0) is other
    mine = synthetic_task()
    assert ft.whole_train(mine, seed=0) is mine


def test_speedup_of_a_fine_tuned_name_times_the_fine_tuned_encoder(trained, tmp_path, monkeypatch):
    """``selection.timed_speedup("minilm+ft", ...)`` finds the fine-tune of its recipe and times its encoder."""
    from utils.selection import ReducedProbe, timed_speedup

    task, root, result = trained
    monkeypatch.setenv("REDUNDANCY_CACHE", str(tmp_path))
    shutil.copytree(result.path, tmp_path / "finetuned" / result.path.relative_to(root))  # no training here
    rng = np.random.default_rng(0)
    classes = np.array(["negative", "positive"])
    reduced = ReducedProbe(1, 384, np.arange(384, 394), rng.normal(size=(2, 10)), np.zeros(2), classes)
    oracle = ReducedProbe(6, 384, np.arange(7 * 384), rng.normal(size=(2, 7 * 384)), np.zeros(2), classes)
    timing = timed_speedup("minilm+ft", task, reduced=reduced, oracle=oracle, n_sentences=4, recipe=SMALL, repeats=1)
    assert timing["items"] == 4 and timing["speedup"] > 0
    made = [p.name for p in (tmp_path / "finetuned" / "minilm").iterdir() if p.suffix != ".lock"]
    assert made == [result.path.name]  # the copied fine-tune was found: nothing was trained

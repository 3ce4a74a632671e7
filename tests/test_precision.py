"""The ``precision`` option of extraction: bfloat16 autocast forward passes, and stores keyed on it.

The fidelity of bfloat16 on real stores (correlations, clusters, CKA, probes) is measured by
``benchmarks/bench_bf16_fidelity.py``; these tests check the mechanism against hand computations.
"""

import json

import numpy as np
import pytest
import torch

from utils import activations as act
from utils import precision as prec
from utils.activations import build_store, extract, get_activations, store_path
from utils.data import Split, Task
from utils.precision import autocast, check_precision, cpu_has_bfloat16, resolve_precision

SENTENCES = [
    ["Unbelievably,", "Pierre", "Vinken's", "nonexecutive", "directorship", "ended."],
    ["The", "cat", "sat."],
    ["Stocks", "of", "Elsevier", "N.V.", "tumbled", "12%", "yesterday", "in", "Amsterdam."],
]


def _hand_forward(loaded, text, *, bf16):
    """Hidden states of one text, shape (n_layers, n_tokens, hidden), with or without bfloat16 autocast."""
    enc = loaded.tokenizer(text, return_tensors="pt")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hs = loaded.model(**enc, output_hidden_states=True).hidden_states
    return torch.stack([h.float() for h in hs])[:, 0].numpy()


@pytest.mark.parametrize("mode", ["cls", "mean"])
def test_bfloat16_extraction_equals_an_autocast_forward_by_hand(minilm, mode):
    text = "A gorgeous, witty, seductive movie."
    hs = _hand_forward(minilm, text, bf16=True)
    want = hs[:, 0] if mode == "cls" else hs.mean(axis=1)
    got = extract(minilm, [text], level="sentence", aggregation=mode, progress=False, precision="bfloat16")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


def test_bfloat16_changes_the_numbers_but_keeps_every_neuron_correlated(minilm):
    full = extract(minilm, SENTENCES, level="word", progress=False)
    half = extract(minilm, SENTENCES, level="word", progress=False, precision="bfloat16")
    assert half.shape == full.shape and half.dtype == np.float32
    # the embeddings (layer 0) are a lookup plus a float32 LayerNorm: bfloat16 leaves them alone ...
    np.testing.assert_allclose(half[:, 0], full[:, 0], atol=1e-6)
    # ... while the transformer layers really ran in bfloat16 (8 mantissa bits: errors of ~1e-2)
    assert np.abs(half[:, 1:] - full[:, 1:]).max() > 1e-3
    # yet each neuron's values across the words follow float32's (per-neuron Pearson r)
    a = full[:, 1:].reshape(len(full), -1).astype(np.float64)
    b = half[:, 1:].reshape(len(half), -1).astype(np.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    r = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    assert np.median(r) > 0.999 and r.min() > 0.98


def test_precision_is_part_of_the_store_key(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    split = Split(SENTENCES, [["X"] * len(s) for s in SENTENCES])
    task = Task("toy", "word", split, split, split, classes=("X",))
    full = get_activations("minilm", task, "train", root=tmp_path, device="cpu", progress=False, precision="float32")
    half = get_activations("minilm", task, "train", root=tmp_path, device="cpu", progress=False, precision="bfloat16")
    assert full.path != half.path and "xbfloat16" in half.path.name and "xbfloat16" not in full.path.name
    assert (full.meta["precision"], half.meta["precision"]) == ("float32", "bfloat16")
    np.testing.assert_array_equal(
        np.asarray(half.activations), extract(minilm, SENTENCES, level="word", progress=False, precision="bfloat16")
    )
    assert not np.array_equal(np.asarray(half.activations), np.asarray(full.activations))

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran although the store exists")

    monkeypatch.setattr(act, "extract", no_forward)  # both are reused, neither overwrote the other
    again = get_activations("minilm", task, "train", root=tmp_path, device="cpu", progress=False, precision="bfloat16")
    np.testing.assert_array_equal(np.asarray(again.activations), np.asarray(half.activations))
    get_activations("minilm", task, "train", root=tmp_path, device="cpu", progress=False, precision="float32")


def test_a_store_without_the_precision_field_counts_as_float32(minilm, tmp_path, monkeypatch):
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    split = Split(SENTENCES, [["X"] * len(s) for s in SENTENCES])
    task = Task("toy", "word", split, split, split, classes=("X",))
    store = get_activations("minilm", task, "train", root=tmp_path, device="cpu", progress=False, precision="float32")
    meta = json.loads((store.path / "meta.json").read_text())
    del meta["precision"]  # as written before the field existed (a store of this version, so its own digest agrees)
    meta["meta_sha256"] = act._meta_digest(meta)
    (store.path / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(act, "extract", lambda *a, **k: pytest.fail("an old float32 store was rebuilt"))
    get_activations("minilm", task, "train", root=tmp_path, device="cpu", progress=False, precision="float32")


def test_cpu_bfloat16_support_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bfloat16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not cpu_has_bfloat16(info)
    assert not cpu_has_bfloat16(tmp_path / "missing")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_only_on_a_cpu_that_has_it(minilm, tmp_path, monkeypatch, native):
    monkeypatch.setattr(prec, "cpu_has_bfloat16", lambda: native)
    want = "bfloat16" if native else "float32"
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("auto", "cuda") == "float32"
    assert resolve_precision("float32", "cpu") == "float32"
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    split = Split(SENTENCES, [["X"] * len(s) for s in SENTENCES])
    store = get_activations(
        "minilm",
        Task("toy", "word", split, split, split, classes=("X",)),
        "train",
        root=tmp_path,
        device="cpu",
        progress=False,
    )  # the default: "auto"
    assert store.meta["precision"] == want and ("xbfloat16" in store.path.name) == native
    np.testing.assert_array_equal(
        np.asarray(store.activations), extract(minilm, SENTENCES, level="word", progress=False, precision=want)
    )


def test_unknown_precision_is_refused(minilm, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of.*float16"):
        extract(minilm, SENTENCES, level="word", progress=False, precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        build_store(
            minilm,
            Split(SENTENCES, [["X"] * len(s) for s in SENTENCES]),
            tmp_path / "s",
            level="word",
            progress=False,
            precision="half",
        )
    with pytest.raises(ValueError, match="precision must be one of"):
        store_path(
            "m",
            "t",
            "train",
            aggregation="last",
            budget=None,
            eval_budget=None,
            seed=0,
            dtype="float32",
            precision="bf16",
        )


def test_check_precision_names_what_to_pass():
    assert check_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="float32"):
        check_precision("float16")
    with pytest.raises(ValueError, match="auto"):
        resolve_precision("half", "cpu")


def test_autocast_runs_matmuls_in_bfloat16_only_when_asked():
    a = torch.randn(8, 8)
    with autocast("bfloat16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("float32", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError):
        autocast("auto", "cpu")  # resolved first: "auto" is not an arithmetic

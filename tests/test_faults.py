"""Fault battery: the things that used to go wrong silently, done for real.

Processes are killed with SIGKILL, two real processes build one store at once, bytes are flipped and
files cut short on disk, a local model's weight file is rewritten, an unpacked resource is damaged,
and a model and a task are asked for while the hub is unreachable. Each test compares the outcome with
an uninterrupted build (bit for bit where the computation is the same) or with the documented message.

Everything is written under pytest's tmp folders; the shared cache is only read (the MiniLM archive
and unpacked model, through the ``minilm`` fixture or a symlink).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import activations as act
from utils.activations import ActivationStore, StoreError, build_store, get_activations
from utils.data import Split, Task
from utils.paths import REPO_ROOT

# The same tiny word task in this process and in the child processes (80 sentences, 40 batches of 2).
TASK_CODE = """
import numpy as np
from utils.data import Split, Task

def fault_task(n=80):
    rng = np.random.default_rng(0)
    vocab = "the a cat dog sat ran on under mat table quickly slowly big small red green house river".split()
    sents = [[vocab[i] for i in rng.integers(0, len(vocab), int(rng.integers(4, 12)))] for _ in range(n)]
    split = Split(sents, [[w[0].upper() for w in s] for s in sents])
    return Task("faults", "word", split, split, split)
"""
namespace: dict = {}
exec(TASK_CODE, namespace)  # noqa: S102 - our own constant, shared with the child scripts
fault_task = namespace["fault_task"]

# A child that builds the task's train store with a slowed forward (so that it can be caught mid-way),
# then saves the store's activations and what happened.
BUILDER = (
    TASK_CODE
    + """
import json, sys, time, warnings
import torch
from utils import activations as act
from utils.models import load_model

root, out, delay, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
loaded = load_model("minilm", device="cpu")
forward, calls = loaded.model.forward, [0]

def slow_forward(*args, **kwargs):
    calls[0] += 1
    time.sleep(delay)
    return forward(*args, **kwargs)

loaded.model.forward = slow_forward
act._MODEL_CACHE[("minilm", "cpu")] = loaded
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    store = act.get_activations("minilm", fault_task(), "train", root=root, device="cpu", batch_size=2,
                                progress=False, precision="float32")
np.save(out + ".npy", np.asarray(store.activations))
with open(out + ".json", "w") as f:
    json.dump({"forward_calls": calls[0], "warnings": [str(w.message) for w in caught]}, f)
"""
)

BATCHES = 40  # 80 sentences in batches of 2


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _spawn(script: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=_child_env(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _done_count(partial: Path) -> int:
    """Segments marked done in a .partial folder's resume state (0 while there is none)."""
    try:
        state = json.loads((partial / "state.json").read_text())
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(state["done"]), dtype=np.uint8), count=state["n_segments"])
        return int(bits.sum())
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def reference(minilm, tmp_path_factory):
    """The task's train store built in one uninterrupted run, batch 2, as an array."""
    path = tmp_path_factory.mktemp("reference") / "store"
    store = build_store(minilm, fault_task().train, path, level="word", batch_size=2, progress=False)
    return np.array(store.activations)


@pytest.fixture
def in_process_minilm(minilm, monkeypatch):
    """Route get_activations to the session's MiniLM and count its forward passes."""
    monkeypatch.setitem(act._MODEL_CACHE, ("minilm", "cpu"), minilm)
    calls = [0]
    forward = minilm.model.forward

    def counting(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(minilm.model, "forward", counting)
    return calls


def test_kill_9_during_extraction_then_resume_is_bit_identical(tmp_path, reference, in_process_minilm):
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    root = tmp_path / "stores"
    child = _spawn(script, str(root), str(tmp_path / "child"), "0.15", str(torch.get_num_threads()))
    path = act.store_path(
        "minilm",
        "faults",
        "train",
        aggregation="auto-encoder",
        budget=None,
        eval_budget=None,
        seed=0,
        dtype="float32",
        root=root,
    )
    partial = path.with_name(path.name + ".partial")
    deadline = time.monotonic() + 120
    while _done_count(partial) == 0 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, f"the child ended before it could be killed:\n{child.communicate()[0]}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_at_kill = _done_count(partial)
    assert 0 < done_at_kill < len(fault_task().train)
    lock_file = path.with_name(path.name + ".lock")
    assert lock_file.exists()  # the killed holder never released it: the kernel did

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        store = get_activations(
            "minilm", fault_task(), "train", root=root, device="cpu", batch_size=2, progress=False, precision="float32"
        )
    assert not [w for w in caught if "another process" in str(w.message)], "waited on the dead process's lock"
    assert time.monotonic() - t0 < 60
    assert in_process_minilm[0] < BATCHES  # only the rest ran: it resumed, it did not start again
    np.testing.assert_array_equal(np.asarray(store.activations), reference)
    assert not partial.exists()


def test_two_concurrent_builders_make_one_correct_store(tmp_path, reference):
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    root = tmp_path / "stores"
    threads = str(torch.get_num_threads())  # as the reference: bit-identical needs the same reductions
    children = [_spawn(script, str(root), str(tmp_path / f"child{i}"), "0.15", threads) for i in range(2)]
    outputs = [c.communicate(timeout=300)[0] for c in children]
    for c, out in zip(children, outputs):
        assert c.returncode == 0, out
    reports = [json.loads((tmp_path / f"child{i}.json").read_text()) for i in range(2)]
    builders = [r for r in reports if r["forward_calls"] > 0]
    assert len(builders) == 1, reports  # one built, the other reused its store
    waiter = next(r for r in reports if r["forward_calls"] == 0)
    assert any("another process is building" in w for w in waiter["warnings"]), waiter
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"child{i}.npy"), reference)
    stores = sorted(p.name for p in (root / "minilm").iterdir() if p.suffix != ".lock")
    assert stores == ["faults-train-auto-encoder-float32-ball-s0"]
    np.testing.assert_array_equal(np.asarray(ActivationStore.open(root / "minilm" / stores[0]).activations), reference)


SMALL = Task(
    "smallfaults",
    "word",
    Split([["The", "cat", "sat."], ["Stocks", "fell", "sharply", "today."]], [["A", "B", "C"], ["D", "E", "F", "G"]]),
    Split([["x"]], [["A"]]),
    Split([["y"]], [["A"]]),
)


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "flip":
        at = len(raw) - 3 if path.suffix == ".npy" else len(raw) // 2  # npy: in the data; json: in the text
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x04]) + raw[at + 1 :])
    elif how == "truncate":
        path.write_bytes(raw[: len(raw) - max(1, len(raw) // 5)])
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("name", ["activations.npy", "labels.npy", "sentence_ids.npy", "words.json", "meta.json"])
def test_damaged_store_file_is_a_warning_and_a_rebuild(tmp_path, in_process_minilm, name, how):
    store = get_activations("minilm", SMALL, "train", root=tmp_path, device="cpu", progress=False, precision="float32")
    original = (np.array(store.activations), list(store.labels), list(store.words), np.array(store.sentence_ids))
    path = store.path
    del store
    _damage(path / name, how)
    with pytest.raises(StoreError):
        ActivationStore.open(path)
    with pytest.warns(UserWarning, match="unusable.*recomputing"):
        rebuilt = get_activations(
            "minilm", SMALL, "train", root=tmp_path, device="cpu", progress=False, precision="float32"
        )
    np.testing.assert_allclose(np.asarray(rebuilt.activations), original[0], atol=1e-6)
    assert list(rebuilt.labels) == original[1] and list(rebuilt.words) == original[2]
    np.testing.assert_array_equal(rebuilt.sentence_ids, original[3])
    ActivationStore.open(path)  # the rebuilt store verifies


@pytest.mark.parametrize("edit", ["reorder-words", "missing-key", "edit-count"])
def test_valid_looking_edits_are_caught(tmp_path, in_process_minilm, edit):
    store = get_activations("minilm", SMALL, "train", root=tmp_path, device="cpu", progress=False, precision="float32")
    path, words = store.path, list(store.words)
    del store
    meta = json.loads((path / "meta.json").read_text())
    if edit == "reorder-words":  # still valid JSON of the right length
        (path / "words.json").write_text(json.dumps(words[::-1], ensure_ascii=False), encoding="utf-8")
    elif edit == "missing-key":
        del meta["dtype"]
        (path / "meta.json").write_text(json.dumps(meta))
    else:  # a plausible number, rewritten by hand
        meta["n_sentences"] += 1
        (path / "meta.json").write_text(json.dumps(meta, indent=1))
    with pytest.warns(UserWarning, match="unusable.*recomputing"):
        rebuilt = get_activations(
            "minilm", SMALL, "train", root=tmp_path, device="cpu", progress=False, precision="float32"
        )
    assert list(rebuilt.words) == words


def test_damaged_resume_state_is_not_trusted(tmp_path, minilm):
    """A done mask that claims unfinished segments are done would leave rows of zeros: refuse it."""
    split = fault_task(16).train
    reference = np.array(
        build_store(minilm, split, tmp_path / "reference", level="word", batch_size=2, progress=False).activations
    )
    path = tmp_path / "store"
    forward, calls = minilm.model.forward, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return forward(*args, **kwargs)

    minilm.model.forward = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            build_store(minilm, split, path, level="word", batch_size=2, checkpoint_every=1, progress=False)
    finally:
        minilm.model.forward = forward
    state_file = tmp_path / "store.partial" / "state.json"
    state = json.loads(state_file.read_text())
    state["done"] = "ff" * (len(state["done"]) // 2)  # every segment "done", the checksum left as it was
    state_file.write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="cannot be resumed"):
        store = build_store(minilm, split, path, level="word", batch_size=2, progress=False)
    assert not np.all(np.asarray(store.activations) == 0, axis=(1, 2)).any()
    np.testing.assert_array_equal(np.asarray(store.activations), reference)


def _copy_model_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            if p.suffix == ".safetensors":
                dst.joinpath(p.name).write_bytes(p.read_bytes())  # a real copy: this file gets rewritten
            else:
                dst.joinpath(p.name).symlink_to(p)
    return dst


def test_changed_local_weights_make_a_new_store(tmp_path, minilm, monkeypatch):
    from safetensors.torch import load_file, save_file

    from utils.models import load_model
    from utils.resources import fetch

    folder = _copy_model_folder(fetch("minilm"), tmp_path / "my-model")
    name = str(folder)
    monkeypatch.setattr(act, "_MODEL_CACHE", {})
    first = get_activations(
        name, SMALL, "train", root=tmp_path / "stores", device="cpu", progress=False, precision="float32"
    )
    before = np.array(first.activations)
    assert first.meta["model_sha256"].startswith("local-sha256:")
    np.testing.assert_allclose(before, act.extract(minilm, SMALL.train.texts, level="word", progress=False), atol=1e-5)

    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if k.endswith("embeddings.LayerNorm.weight"))
    weights[key] = weights[key] * 1.5
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="made from other inputs.*model_sha256"):
        second = get_activations(
            name, SMALL, "train", root=tmp_path / "stores", device="cpu", progress=False, precision="float32"
        )
    after = np.array(second.activations)
    assert second.meta["model_sha256"] != first.meta["model_sha256"]
    assert np.abs(after - before).max() > 0.1
    fresh = act.extract(load_model(name, device="cpu"), SMALL.train.texts, level="word", progress=False)
    np.testing.assert_allclose(after, fresh, atol=1e-5)


def test_corrupted_unpacked_resource_is_detected_and_unpacked_again(tmp_path, monkeypatch):
    from utils import resources

    shared = resources.cache_dir() / "archives" / "minilm"
    wanted = resources.RESOURCES["minilm"].archives[0].sha256
    archive = next(p for p in shared.iterdir() if resources.sha256_file(p) == wanted)
    cache = tmp_path / "cache"
    (cache / "archives" / "minilm").mkdir(parents=True)
    (cache / "archives" / "minilm" / archive.name).symlink_to(archive)  # read, never written
    monkeypatch.setenv("REDUNDANCY_CACHE", str(cache))

    folder = resources.fetch("minilm")
    assert folder.is_relative_to(cache)
    weights = folder / "model.safetensors"
    good = resources.sha256_file(weights)
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the middle of the weights
    weights.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="model.safetensors was modified since unpacking.*unpacking it again"):
        again = resources.fetch("minilm")
    assert resources.sha256_file(again / "model.safetensors") == good

    os.utime(again / "config.json")  # touched only: same bytes, no re-unpacking, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resources.fetch("minilm")
    (again / "vocab.txt").unlink()
    with pytest.warns(UserWarning, match="files are missing"):
        resources.fetch("minilm")
    assert (again / "vocab.txt").exists()


OFFLINE_CHILD = """
import json, sys, time
out = {}
t0 = time.monotonic()
from utils.models import load_model, model_identity
from utils.data import load_task
out["import_s"] = time.monotonic() - t0
t0 = time.monotonic()
try:
    load_model("minlm", device="cpu")
except OSError as exc:
    out["model_error"] = str(exc)
out["model_s"] = time.monotonic() - t0
t0 = time.monotonic()
try:
    load_task("mrpc")
except ConnectionError as exc:
    out["task_error"] = str(exc)
out["task_s"] = time.monotonic() - t0
loaded = load_model("fake-org/minilm-copy", device="cpu")
out["loaded_identity"] = loaded.source_sha256
out["identity"] = model_identity("fake-org/minilm-copy")
print(json.dumps(out))
"""


def test_offline_hub_names_fail_fast_and_cached_hub_models_record_their_commit(tmp_path):
    from utils.resources import fetch, offline_reason

    if offline_reason() is None:
        pytest.skip("the Hugging Face hub is reachable from here; this test is about being offline")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--fake-org--minilm-copy"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for p in fetch("minilm").iterdir():
        if p.is_file():
            (snapshot / p.name).symlink_to(p)
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(OFFLINE_CHILD))
    env = {
        k: v
        for k, v in _child_env().items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env["HF_HUB_CACHE"] = str(tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model_s"] < 5, out  # was 45-50 s of retries (about 0.1 s here when the machine is idle)
    assert "Did you mean 'minilm'?" in out["model_error"] and "Offline models: minilm" in out["model_error"]
    assert out["task_s"] < 5, out  # was about 24 s
    assert "Offline tasks: pos" in out["task_error"]
    assert out["loaded_identity"] == out["identity"] == f"hub:{commit}"

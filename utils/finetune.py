"""Fine-tune an encoder on a sentence task, as a cached, resumable, verified step (the paper's setting).

For sentence-level tasks the paper analyses models **fine-tuned on the task** (3 epochs, learning rate
5e-5, maximum length 128, a classification head on the classification token). Start reading at
``finetune(model, task)``: it trains ``AutoModelForSequenceClassification`` on the task's train split
with a plain torch loop (AdamW, linear schedule, gradient clipping), records the dev metric after each
epoch, and saves the result with ``save_pretrained`` (safetensors) under
``cache_dir()/finetuned/<model>/<task>-<key>``. The key hashes everything that made the weights:
the base model and its archive sha256, the task's train and dev data, the ``Recipe`` (epochs,
learning rate, maximum length, batch size, weight decay, warm-up, gradient clipping, train budget),
the seed and ``FINETUNE_VERSION``. Test data are never read here: the dev split only reports.

How a run is kept honest:

- **Cached and verified.** ``meta.json`` records the key and the sha256 of every weight file; a
  finished folder is reused only when they match, otherwise it is rebuilt with a warning.
- **Atomic.** Work happens in ``<folder>.partial`` and is renamed into place when complete.
- **Resumable, exactly.** Every ``checkpoint_every`` steps (and at each epoch end) the model,
  optimizer, scheduler, random-number state, step and history are saved. The order of the train
  items in epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, so a run resumed from a
  checkpoint takes the same batches and ends with the same weights as an uninterrupted one.
- **Seeded without touching the caller's random state**: training runs inside
  ``torch.random.fork_rng`` seeded with ``seed`` (head initialisation and dropout).

Extraction uses it by name: ``activations.get_activations("minilm+ft", task, split)`` calls
``finetuned_for`` (fine-tuning once, then reusing the cache) and extracts from the encoder inside the
classification model, which has the base model's hidden-state count. A named task is fine-tuned on
its whole train split (``whole_train``; the stores' train budget is a prefix of it), with the dev
split the stores use. The recipe for a base model is
``recipe_for(base)``: the paper's by default, changed with ``set_recipe(base, ...)`` (e.g. a smaller
train budget for MPNet on CPU).

Shapes: a sentence task holds ``n_train`` / ``n_dev`` texts (strings or ``(first, second)`` pairs)
with one label each; the classifier returns logits of shape (n_texts, n_labels), ``n_labels = 1``
for a regression task (numeric labels: MSE loss, Pearson r on dev).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import heap
from .data import Split, Task
from .models import OFFLINE_MODELS, LoadedModel, _kind_of, default_device, load_model
from .paths import cache_dir, locked
from .precision import PRECISIONS, autocast, resolve_precision
from .resources import RESOURCES, fetch, sha256_file

log = logging.getLogger(__name__)

FINETUNE_VERSION = 1  # bump when the training code changes what weights come out
FT_SUFFIX = "+ft"  # "minilm+ft": minilm fine-tuned on the task at hand


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune; every field enters the cache key.

    Attributes
    ----------
    epochs : int
        Passes over the train split (the paper: 3).
    learning_rate : float
        Peak AdamW learning rate (the paper: 5e-5), decayed linearly to 0.
    max_length : int
        Tokens per input, special tokens included (the paper: 128); longer inputs are truncated.
    batch_size : int
        Train items per optimizer step.
    weight_decay : float
        AdamW weight decay (transformers' default: 0).
    warmup_ratio : float
        Share of the steps with a linear warm-up (transformers' default: 0).
    max_grad_norm : float
        Gradient-norm clipping (transformers' default: 1.0).
    train_budget : int or None
        Fine-tune on the first ``train_budget`` train items only (None: the whole train split).
    precision : {"float32", "bfloat16", "auto"}
        Arithmetic of the forward and backward passes (and the dev pass): as loaded (the paper's), or
        under bfloat16 ``torch.autocast`` (mixed precision: weights, gradients and AdamW state stay
        float32; matrix products run in bfloat16). ``"auto"`` is bfloat16 on a CPU with native
        bfloat16 instructions and float32 elsewhere (``precision.resolve_precision``, as for
        extraction); it is resolved before the recipe enters the key.
    """

    epochs: int = 3
    learning_rate: float = 5e-5
    max_length: int = 128
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    train_budget: int | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "learning_rate": self.learning_rate > 0,
            "max_length": self.max_length >= 8,
            "batch_size": self.batch_size >= 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "max_grad_norm": self.max_grad_norm > 0,
            "train_budget": self.train_budget is None or self.train_budget >= 2,
            "precision": self.precision in (*PRECISIONS, "auto"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid Recipe field(s) {bad} in {self}; epochs, batch_size >= 1, learning_rate > 0, "
                "max_length >= 8, warmup_ratio in [0, 1), train_budget None or >= 2, precision 'float32', 'bfloat16' or 'auto'"
            )


PAPER_RECIPE = Recipe()
RECIPES: dict[str, Recipe] = {}  # per-base-model overrides of the paper's recipe (see set_recipe)


def recipe_for(base: str) -> Recipe:
    """The recipe used for ``base`` when fine-tuned by name (``"<base>+ft"``): an override or the paper's."""
    return RECIPES.get(base, PAPER_RECIPE)


def set_recipe(base: str, **fields: Any) -> Recipe:
    """Change the recipe of ``base`` (e.g. ``set_recipe("mpnet", train_budget=2000, epochs=2)``) and return it.

    Fields not given keep the paper's values; ``set_recipe(base)`` restores the paper's recipe.
    """
    recipe = dataclasses.replace(PAPER_RECIPE, **fields)
    RECIPES[base] = recipe
    return recipe


class FinetuneError(RuntimeError):
    """A fine-tuned model folder is incomplete or corrupt."""


@dataclass
class FineTuned:
    """A fine-tuned model on disk.

    Attributes
    ----------
    path : Path
        Folder with ``model.safetensors``, config, tokenizer files and ``meta.json``.
    meta : dict
        The cache key fields, per-epoch ``history`` (dev metric, mean train loss), weight sha256s,
        timings, label mapping and library versions.
    name : str
        ``"<base>+ft-<key12>"``: the model name activation stores are keyed by.
    model : torch.nn.Module or None
        The classifier in memory (eval mode) when this call trained it; None when read from the cache.
    """

    path: Path
    meta: dict
    name: str
    model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def dev_metric(self) -> float:
        """The dev metric after the last epoch (accuracy, or Pearson r for regression)."""
        return float(self.meta["history"][-1][self.meta["metric"]])

    def load_classifier(self, *, device: str | torch.device | None = None) -> tuple[torch.nn.Module, Any]:
        """The saved sequence classifier (eval mode) and its tokenizer."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = torch.device(device) if device is not None else default_device()
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, local_files_only=True, use_safetensors=True
            )
        return model.eval().to(device), AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    def encoder(self, *, device: str | torch.device | None = None) -> LoadedModel:
        """The encoder inside the classifier, ready for extraction (same hidden-state count as the base)."""
        key = (str(self.path), str(device))
        if key not in _ENCODERS:
            _ENCODERS.clear()  # at most one in memory
            with _quiet_transformers():  # the classification head's weights are unused here: say nothing
                loaded = load_model(str(self.path), device=device)
            _ENCODERS[key] = dataclasses.replace(loaded, name=self.name, source_sha256=self.meta["weights_sha256_all"])
        return _ENCODERS[key]


_ENCODERS: dict[tuple[str, str], LoadedModel] = {}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for a moment (restored on exit)."""
    from transformers.utils import logging as hf_logging

    level, bars_off = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled() is False
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if not bars_off:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# checks and the cache key


def check_task(task: Task) -> tuple[str, list]:
    """Refuse tasks that cannot be fine-tuned, before anything is loaded or trained.

    Returns
    -------
    problem : {"classification", "regression"}
        Regression when every train label is a real number (STS-B): one output, MSE loss.
    classes : list
        The train classes in ``task.classes`` order (empty for regression).

    Raises
    ------
    ValueError
        Word-level task, empty train or dev split, fewer than two classes, dev labels unseen in train.
    """
    if task.level != "sentence":
        raise ValueError(
            f"fine-tuning takes sentence-level tasks; {task.name!r} is {task.level}-level. The paper analyses "
            "word-level tasks on the pretrained model: use the base model name (without '+ft') for them."
        )
    if len(task.train) == 0:
        raise ValueError(f"task {task.name!r} has an empty train split: nothing to fine-tune on")
    if len(task.dev) == 0:
        raise ValueError(
            f"task {task.name!r} has no dev split; fine-tuning reports a dev metric each epoch and "
            "needs one (make a train/dev/test split, e.g. with data.split_items)"
        )
    labels = list(task.train.labels)
    if all(isinstance(y, (float, np.floating)) for y in labels):
        return "regression", []
    classes = [c for c in (task.classes or sorted(set(labels), key=str)) if c in set(labels)]
    if len(classes) < 2:
        raise ValueError(
            f"task {task.name!r} has {len(classes)} class(es) in its train split ({classes}); "
            "a classifier needs at least two: check the labels or the train budget"
        )
    unseen = sorted({y for y in task.dev.labels} - set(classes), key=str)
    if unseen:
        raise ValueError(
            f"task {task.name!r}: dev labels {unseen[:5]} never occur in train (classes {classes}); "
            "make the splits from the same label set"
        )
    return "classification", classes


def _split_sha256(split: Split) -> str:
    """sha256 of a split's texts and labels."""
    blob = json.dumps([split.texts, split.labels], ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _base_source(base: str) -> str:
    """Identity of the base weights: archive sha256s (offline), the safetensors sha256s (folder), or the hub name."""
    if base in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[base]
        if spec.get("gguf"):
            raise ValueError(f"{base!r} is a GGUF decoder; fine-tuning takes encoders ({', '.join(_encoders())})")
        return ",".join(a.sha256 for a in RESOURCES[spec["resource"]].archives)
    if Path(base).is_dir():
        files = sorted(Path(base).glob("*.safetensors"))
        if not files:
            raise ValueError(f"{base} holds no *.safetensors weights; save the model with save_pretrained")
        return ",".join(sha256_file(f) for f in files)
    return f"hub:{base}"


def _encoders() -> list[str]:
    return [name for name, spec in OFFLINE_MODELS.items() if not spec.get("gguf")]


def _train_split(task: Task, recipe: Recipe) -> Split:
    """The train items fine-tuned on: the first ``recipe.train_budget`` of the (already shuffled) train split."""
    n = len(task.train) if recipe.train_budget is None else min(recipe.train_budget, len(task.train))
    return Split(task.train.texts[:n], task.train.labels[:n])


def resolved(recipe: Recipe, device: str | torch.device | None = None) -> Recipe:
    """``recipe`` with ``precision="auto"`` turned into the precision it means on ``device``."""
    if recipe.precision != "auto":
        return recipe
    return dataclasses.replace(recipe, precision=resolve_precision("auto", device))


def _recipe_fields(recipe: Recipe) -> dict:
    """The recipe as it enters the key (``"auto"`` resolved); float32 (the default) is left out, so
    keys made before the ``precision`` field existed still name the same weights."""
    fields = dataclasses.asdict(resolved(recipe))
    if fields["precision"] == "float32":
        del fields["precision"]
    return fields


def finetune_key(base: str, task: Task, recipe: Recipe, *, seed: int) -> tuple[dict, str]:
    """Everything that makes the fine-tuned weights, and its sha256 (the cache key).

    Returns
    -------
    fields : dict
        Base model and source sha256, task name, train / dev data sha256 and sizes, recipe, seed, version.
    digest : str
        Hex sha256 of ``fields``.
    """
    train = _train_split(task, recipe)
    fields = {
        "finetune_version": FINETUNE_VERSION,
        "base": base,
        "base_source": _base_source(base),
        "task": task.name,
        "train_sha256": _split_sha256(train),
        "n_train": len(train),
        "dev_sha256": _split_sha256(task.dev),
        "n_dev": len(task.dev),
        "recipe": _recipe_fields(recipe),
        "seed": int(seed),
    }
    return fields, hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def finetuned_path(base: str, task: Task, recipe: Recipe, *, seed: int, root: str | os.PathLike | None = None) -> Path:
    """Folder of the fine-tuned model for these arguments (under ``cache_dir()/finetuned`` by default)."""
    root = Path(root) if root is not None else cache_dir() / "finetuned"
    _, digest = finetune_key(base, task, recipe, seed=seed)
    return root / base.strip("/").replace("/", "__") / f"{task.name}-{digest[:16]}"


# ---------------------------------------------------------------------------------------------
# the training loop


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Order of the train items in ``epoch``: a function of (seed, epoch) only, so resuming is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _tokenize(tokenizer: Any, texts: Sequence, max_length: int) -> dict[str, list[list[int]]]:
    """Token ids (and masks, segment ids) of each text or pair, truncated to ``max_length``."""
    pairs = bool(texts) and isinstance(texts[0], (tuple, list))
    first = [t[0] for t in texts] if pairs else list(texts)
    second = [t[1] for t in texts] if pairs else None
    return dict(tokenizer(first, second, truncation=True, max_length=max_length))


def _collate(
    enc: dict[str, list[list[int]]], idx: np.ndarray, pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-pad the items ``idx`` to the longest of them; tensors of shape (len(idx), width)."""
    width = max(len(enc["input_ids"][i]) for i in idx)
    batch = {}
    for key, rows in enc.items():
        arr = np.full((len(idx), width), pad_id if key == "input_ids" else 0, dtype=np.int64)
        for b, i in enumerate(idx):
            arr[b, : len(rows[i])] = rows[i]
        batch[key] = torch.from_numpy(arr).to(device)
    return batch


def _targets(labels: Sequence, problem: str, classes: list) -> torch.Tensor:
    """Class indices (int64) or regression targets (float32), shape (n,)."""
    if problem == "regression":
        return torch.tensor([float(y) for y in labels], dtype=torch.float32)
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[y] for y in labels], dtype=torch.int64)


def predict(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence,
    *,
    max_length: int = 128,
    batch_size: int = 64,
    precision: str = "float32",
) -> np.ndarray:
    """Logits of a sequence classifier for ``texts``, shape (n_texts, n_labels), in input order.

    ``precision="bfloat16"`` runs the forward pass under bfloat16 autocast; logits come back float32.
    """
    device = next(model.parameters()).device
    enc = _tokenize(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id or 0
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode(), autocast(precision, device):
        for start in range(0, len(texts), batch_size):
            idx = np.arange(start, min(start + batch_size, len(texts)))
            out.append(model(**_collate(enc, idx, pad_id, device)).logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def _dev_metric(logits: np.ndarray, targets: torch.Tensor, problem: str) -> float:
    """Accuracy (classification) or Pearson r (regression) of dev logits of shape (n_dev, n_labels)."""
    y = targets.numpy()
    if problem == "regression":
        pred = logits[:, 0]
        if pred.std() == 0 or y.std() == 0:
            return float("nan")
        return float(np.corrcoef(pred, y)[0, 1])
    return float((logits.argmax(axis=1) == y).mean())


def _save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename (a crash never leaves half a checkpoint)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _weights_sha256(folder: Path) -> dict[str, str]:
    """sha256 of each ``*.safetensors`` file in ``folder``."""
    return {f.name: sha256_file(f) for f in sorted(folder.glob("*.safetensors"))}


def open_finetuned(path: str | os.PathLike, *, verify: bool = True) -> FineTuned:
    """Open a finished fine-tuned folder, checking its weight files against ``meta.json``.

    Raises
    ------
    FinetuneError
        No or corrupt ``meta.json``, a missing weight file, or (with ``verify``) a sha256 mismatch.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FinetuneError(f"{path} is not a finished fine-tuned model ({exc}); delete it to rebuild") from exc
    recorded = meta.get("weights_sha256") or {}
    if not recorded:
        raise FinetuneError(f"{meta_path} records no weight checksums; delete {path} to rebuild")
    for name, sha in recorded.items():
        file = path / name
        if not file.exists():
            raise FinetuneError(f"{file} is missing; delete {path} to rebuild")
        if verify and sha256_file(file) != sha:
            raise FinetuneError(
                f"{file} does not match its recorded sha256: the file is corrupt; delete {path} to rebuild"
            )
    return FineTuned(path, meta, f"{meta['base']}{FT_SUFFIX}-{meta['key'][:12]}")


def finetune(
    model: str,
    task: Task,
    *,
    recipe: Recipe | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    checkpoint_every: int = 200,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> FineTuned:
    """Fine-tune ``model`` on ``task``'s train split, or return the cached result.

    Parameters
    ----------
    model : str
        Base encoder: ``"minilm"``, ``"mpnet"``, a Hugging Face hub name (needs internet) or a local folder.
    task : Task
        A sentence-level task with train and dev splits (``data.load_task``); test is never read.
    recipe : Recipe, optional
        Defaults to ``recipe_for(model)`` (the paper's: 3 epochs, lr 5e-5, max length 128).
    seed : int
        Seeds the head's initialisation, dropout and the per-epoch order of the train items.
    root : path, optional
        Where fine-tuned folders live; defaults to ``cache_dir()/finetuned``.
    device : str or torch.device, optional
        Defaults to CUDA when available, else CPU.
    checkpoint_every : int
        Optimizer steps between checkpoints (one is also written at each epoch end). Does not change
        the result, so it is not part of the key.
    progress : bool
        Show a tqdm bar over the optimizer steps.
    on_step : callable, optional
        Called with the step number after each optimizer step (and its checkpoint, if any); an
        exception raised there interrupts the run, which the next call resumes.

    Returns
    -------
    result : FineTuned
        ``meta["history"]`` holds one entry per epoch: ``{"epoch", metric, "train_loss"}`` with
        ``metric`` = ``"dev_accuracy"`` (or ``"dev_pearson"`` for regression).
    """
    recipe = resolved(recipe if recipe is not None else recipe_for(model), device)
    problem, classes = check_task(task)
    fields, digest = finetune_key(model, task, recipe, seed=seed)
    path = finetuned_path(model, task, recipe, seed=seed, root=root)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {checkpoint_every}")
    # One builder at a time: a second process waits, then finds the finished folder and reuses it.
    with locked(path, what=f"the fine-tune {path.name}"):
        if path.exists():
            try:
                done = open_finetuned(path)
                if done.meta.get("key") == digest:
                    return done
                warnings.warn(f"fine-tuned model {path} was made from other inputs; fine-tuning again", stacklevel=2)
            except FinetuneError as exc:
                warnings.warn(f"fine-tuned model {path} is unusable ({exc}); fine-tuning again", stacklevel=2)
        device = torch.device(device) if device is not None else default_device()
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        # Batches of different lengths fragment glibc's heap step after step (MPNet: 7.0 GiB after one
        # epoch); with each large tensor a memory map of its own the run peaks at 5.0 GiB (utils/heap.py).
        with torch.random.fork_rng(devices=fork_devices), heap.large_blocks_mapped():
            torch.manual_seed(seed)
            result = _train(
                model,
                task,
                recipe,
                fields,
                digest,
                problem,
                classes,
                path,
                seed=seed,
                device=device,
                checkpoint_every=checkpoint_every,
                progress=progress,
                on_step=on_step,
            )
    # The run's activations, gradients and Adam moments are freed now, but glibc keeps most of them
    # resident (2.7 GiB for MPNet): hand them back before the caller extracts the next store.
    heap.release_unused()
    return result


def _load_base(model: str, problem: str, classes: list, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The base encoder with a fresh sequence-classification head, and its tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if model in OFFLINE_MODELS:
        where, kwargs = str(fetch(OFFLINE_MODELS[model]["resource"])), {"local_files_only": True}
    else:
        where, kwargs = model, ({"local_files_only": True} if Path(model).is_dir() else {})
    config = AutoConfig.from_pretrained(where, **kwargs)
    if _kind_of(config) != "encoder":
        raise ValueError(
            f"{model!r} is a {config.model_type} decoder; fine-tuning takes encoders ({', '.join(_encoders())})"
        )
    head = (
        {"num_labels": 1, "problem_type": "regression"}
        if problem == "regression"
        else {
            "num_labels": len(classes),
            "problem_type": "single_label_classification",
            "id2label": {i: str(c) for i, c in enumerate(classes)},
            "label2id": {str(c): i for i, c in enumerate(classes)},
        }
    )
    with _quiet_transformers():  # "newly initialised classifier weights": expected, that is the head we train
        clf = AutoModelForSequenceClassification.from_pretrained(where, use_safetensors=True, **head, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    if tokenizer.pad_token is None:
        raise ValueError(f"{model!r}'s tokenizer has no padding token; fine-tuning pads batches")
    return clf.to(device), tokenizer


def _train(
    model: str,
    task: Task,
    recipe: Recipe,
    fields: dict,
    digest: str,
    problem: str,
    classes: list,
    path: Path,
    *,
    seed: int,
    device: torch.device,
    checkpoint_every: int,
    progress: bool,
    on_step: Callable[[int], None] | None,
) -> FineTuned:
    """The training loop proper (inside a forked, seeded RNG); see ``finetune``."""
    from transformers import get_linear_schedule_with_warmup

    clf, tokenizer = _load_base(model, problem, classes, device)
    max_length = min(recipe.max_length, int(getattr(tokenizer, "model_max_length", 10**6) or 10**6))
    train = _train_split(task, recipe)
    enc_train = _tokenize(tokenizer, train.texts, max_length)
    y_train, y_dev = _targets(train.labels, problem, classes), _targets(task.dev.labels, problem, classes)
    n_at_max = sum(len(ids) >= max_length for ids in enc_train["input_ids"])  # truncated (or exactly full)
    pad_id = tokenizer.pad_token_id or 0
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    # fused AdamW: the same update in one kernel, 4-5x faster than the default on CPU (22M-parameter MiniLM)
    optimizer = torch.optim.AdamW(
        clf.parameters(),
        lr=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * total_steps), total_steps)
    metric = "dev_pearson" if problem == "regression" else "dev_accuracy"

    partial = path.with_name(path.name + ".partial")
    ckpt_file, key_file = partial / "checkpoint.pt", partial / "key.json"
    step, history, loss_sum, seconds = 0, [], 0.0, 0.0
    resumed_from = None
    if ckpt_file.exists() and _recorded_key(key_file) == digest:
        try:
            state = torch.load(ckpt_file, map_location=device, weights_only=True)
            clf.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"], device)
            step, history, loss_sum, seconds = state["step"], state["history"], state["loss_sum"], state["seconds"]
            resumed_from = step
            log.info("resuming fine-tune %s at step %d of %d", path.name, step, total_steps)
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            warnings.warn(f"checkpoint {ckpt_file} is unusable ({exc}); fine-tuning from the start", stacklevel=3)
            return _restart(
                partial,
                model,
                task,
                recipe,
                fields,
                digest,
                problem,
                classes,
                path,
                seed=seed,
                device=device,
                checkpoint_every=checkpoint_every,
                progress=progress,
                on_step=on_step,
            )
    else:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        key_file.write_text(json.dumps({"key": digest, **fields}, indent=1))

    def checkpoint() -> None:
        _save_atomic(
            {
                "step": step,
                "model": clf.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": history,
                "loss_sum": loss_sum,
                "seconds": seconds + time.perf_counter() - t0,
            },
            ckpt_file,
        )

    t0 = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=step,
        unit="step",
        desc=f"fine-tune {model} on {task.name}",
        disable=not progress,
        leave=False,
    )
    clf.train()
    while step < total_steps:
        epoch, within = divmod(step, steps_per_epoch)
        idx = _epoch_order(len(train), seed, epoch)[within * recipe.batch_size : (within + 1) * recipe.batch_size]
        with autocast(recipe.precision, device):  # resolved by finetune(): never "auto" here
            out = clf(**_collate(enc_train, idx, pad_id, device), labels=y_train[idx].to(device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(clf.parameters(), recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_sum += float(out.loss.detach())
        if step % steps_per_epoch == 0:  # epoch end: dev metric (dev picks nothing; it reports)
            value = _dev_metric(
                predict(
                    clf,
                    tokenizer,
                    task.dev.texts,
                    max_length=max_length,
                    batch_size=2 * recipe.batch_size,
                    precision=recipe.precision,
                ),
                y_dev,
                problem,
            )
            history.append({"epoch": epoch + 1, metric: value, "train_loss": loss_sum / steps_per_epoch})
            loss_sum = 0.0
            bar.set_postfix({metric: f"{value:.3f}"})
        if step < total_steps and (step % checkpoint_every == 0 or step % steps_per_epoch == 0):
            checkpoint()
        bar.update(1)
        if on_step is not None:
            on_step(step)
    bar.close()
    seconds += time.perf_counter() - t0

    clf.eval()
    with _quiet_transformers():
        clf.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    for f in (ckpt_file, key_file):
        f.unlink(missing_ok=True)
    import transformers

    weights = _weights_sha256(partial)
    meta = {
        **fields,
        "key": digest,
        "problem": problem,
        "classes": [str(c) for c in classes],
        "metric": metric,
        "history": history,
        "steps": total_steps,
        "max_length_used": max_length,
        "n_train_at_max_length": int(n_at_max),
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "resumed_from_step": resumed_from,
        "weights_sha256": weights,
        "weights_sha256_all": hashlib.sha256("".join(weights.values()).encode()).hexdigest(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)
    result = open_finetuned(path, verify=False)
    result.model = clf
    return result


def _recorded_key(key_file: Path) -> str | None:
    """The key a partial folder was started for, or None when absent or unreadable."""
    try:
        return json.loads(key_file.read_text()).get("key")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _restart(partial: Path, *args: Any, **kwargs: Any) -> FineTuned:
    """Delete an unusable partial folder and train from the start (same seed, same result)."""
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(kwargs["seed"])
    return _train(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# extraction by name


def is_finetuned_name(model: str) -> bool:
    """True for names like ``"minilm+ft"`` (the base fine-tuned on the task at hand)."""
    return model.endswith(FT_SUFFIX) and len(model) > len(FT_SUFFIX)


def finetuned_for(
    model: str,
    task: Task,
    *,
    seed: int = 0,
    recipe: Recipe | None = None,
    stores_root: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FineTuned:
    """Resolve ``"<base>+ft"`` for ``task``: fine-tune ``base`` with ``recipe`` (or reuse the cache).

    Parameters
    ----------
    model : str
        ``"<base>+ft"``, e.g. ``"minilm+ft"``.
    task : Task
        A sentence-level task; a word-level one is refused (use the base model for it).
    seed : int
    recipe : Recipe, optional
        Defaults to ``recipe_for(base)`` (the recipe ``set_recipe`` registered, else the paper's).
    stores_root : path, optional
        The activation stores' root; fine-tuned folders go into ``finetuned/`` beside it
        (``cache_dir()/finetuned`` by default).
    device, progress
        As in ``finetune``.
    """
    if not is_finetuned_name(model):
        raise ValueError(f"expected a name ending in {FT_SUFFIX!r} (e.g. 'minilm+ft'), got {model!r}")
    if task.level != "sentence":
        raise ValueError(
            f"{model!r} means {model[: -len(FT_SUFFIX)]!r} fine-tuned on the task, and only sentence-level tasks are "
            f"fine-tuned; {task.name!r} is {task.level}-level: analyse it with {model[: -len(FT_SUFFIX)]!r} instead."
        )
    root = (Path(stores_root).parent if stores_root is not None else cache_dir()) / "finetuned"
    return finetune(
        model[: -len(FT_SUFFIX)],
        whole_train(task, seed=seed),
        recipe=recipe,
        seed=seed,
        root=root,
        device=device,
        progress=progress,
    )


def whole_train(task: Task, *, seed: int = 0) -> Task:
    """``task`` with its whole train split when it is a named task cut by a budget; otherwise ``task`` itself.

    Activation stores take a budget of the train split (a prefix of the seeded permutation), but the
    model is fine-tuned on the whole split (capped by the recipe's ``train_budget``), as in the paper;
    the budgeted prefix is part of it. Dev stays as given (it only reports); test is never read. A task
    whose train split is not a prefix of the named task's (your own data under a known name, another
    seed) is returned unchanged.
    """
    from .data import HUB_TASKS, OFFLINE_TASKS, load_task

    if task.name not in OFFLINE_TASKS and task.name not in HUB_TASKS:
        return task
    whole = load_task(task.name, seed=seed)
    n = len(task.train)
    if (
        len(whole.train) <= n
        or whole.train.texts[:n] != task.train.texts
        or whole.train.labels[:n] != task.train.labels
    ):
        return task
    return dataclasses.replace(task, train=whole.train)

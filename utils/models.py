"""Load a model and its tokenizer by short name (offline registry) or hub name, with the facts we need.

``load_model("minilm")`` fetches the registry archive (``resources``) and loads it from disk with
``local_files_only=True``; a folder path loads a local model (``config.json`` + safetensors); any
other name is passed to ``transformers`` as a hub name (``"bert-base-cased"``), which needs internet
or the local hub cache. When the hub cannot be reached (``HF_HUB_OFFLINE``, or no answer within about
two seconds) a name that is not in the hub cache fails at once with the offline alternatives. Weights
load from safetensors or GGUF only, never with ``trust_remote_code``. The GPU is used when one is
present.

``model_identity(name)`` names the exact weights without loading them (the registry archives' sha256,
a sha256 over a local folder's files, or a hub model's resolved commit); activation stores are keyed
on it. ``model_kind(name)`` gives encoder/decoder from the registry or a local ``config.json``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch

from .resources import RESOURCES, fetch, offline_reason, sha256_file

log = logging.getLogger(__name__)

Kind = Literal["encoder", "decoder"]

# Short names of the offline models and the facts that do not come from the config.
OFFLINE_MODELS: dict[str, dict[str, Any]] = {
    "minilm": {"resource": "minilm", "kind": "encoder"},
    "mpnet": {"resource": "mpnet", "kind": "encoder"},
    "smollm2": {"resource": "smollm2", "gguf": True, "kind": "decoder"},
    "gemma3": {"resource": "gemma3", "gguf": True, "kind": "decoder"},
}


@dataclass
class LoadedModel:
    """A model ready for extraction, with what the rest of the pipeline needs to know about it.

    Attributes
    ----------
    model : torch.nn.Module
        The base model in eval mode, on ``device``.
    tokenizer : transformers tokenizer
        A fast tokenizer (word alignment needs ``word_ids``).
    name : str
        The name it was loaded by.
    n_layers : int
        Hidden states returned: embeddings + every transformer layer.
    hidden : int
        Width of each hidden state.
    kind : {"encoder", "decoder"}
        Encoders use the first (classification) token for sentences; decoders the last real token.
    max_length : int
        Longest input in tokens, special tokens included.
    source_sha256 : str
        Identity of the weights, as ``model_identity`` gives it: the registry archives' sha256,
        ``"local-sha256:<hex>"`` for a local folder, ``"hub:<commit>"`` for a hub model.
    device : torch.device
    """

    model: torch.nn.Module
    tokenizer: Any
    name: str
    n_layers: int
    hidden: int
    kind: Kind
    max_length: int
    source_sha256: str
    device: torch.device


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _kind_of(config: Any) -> Kind:
    """Decoder for causal LMs (Llama, GPT-2, ...), encoder otherwise."""
    if getattr(config, "is_decoder", False) or config.model_type in {
        "llama",
        "gpt2",
        "mistral",
        "qwen2",
        "gemma",
        "gemma3_text",
        "phi",
    }:
        return "decoder"
    return "encoder"


def _kind_of_dict(config: dict) -> Kind:
    """``_kind_of`` for a parsed ``config.json``."""
    return _kind_of(SimpleNamespace(is_decoder=config.get("is_decoder", False), model_type=config.get("model_type")))


def _is_path_like(name: str) -> bool:
    """True for names written as paths (``./m``, ``../m``, ``/m``, ``~/m``), which are never hub names."""
    return name.startswith(("./", "../", "/", "~")) or name in (".", "..")


def check_model_folder(folder: str | os.PathLike) -> Path:
    """Return ``folder`` as a Path when it holds a loadable model, else raise ``OSError`` saying what is missing.

    A model folder has ``config.json`` and its weights as ``*.safetensors`` (pickled ``*.bin`` weights
    are not loaded).
    """
    folder = Path(folder).expanduser()
    has_config = (folder / "config.json").is_file()
    has_weights = any(folder.glob("*.safetensors"))
    if has_config and has_weights:
        return folder
    missing = " / ".join(
        m for m, ok in (("no config.json", has_config), ("no *.safetensors weights", has_weights)) if not ok
    )
    hint = (
        " (it holds pickled *.bin weights, which are not loaded: convert them to safetensors)"
        if any(folder.glob("*.bin"))
        else ""
    )
    raise OSError(
        f"{folder}: this folder is not a model ({missing}){hint}. Give a folder written by "
        "`save_pretrained` (config.json, model.safetensors and the tokenizer files), a hub name, or one of "
        f"the offline models: {', '.join(OFFLINE_MODELS)}."
    )


_LOCAL_IDS: dict[tuple, str] = {}


def _local_identity(folder: Path) -> str:
    """sha256 over the names and sha256s of a local model folder's files (memoised on size and mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _LOCAL_IDS:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
        _LOCAL_IDS[key] = "local-sha256:" + h.hexdigest()
    return _LOCAL_IDS[key]


def _cached_hub_revision(name: str) -> str | None:
    """Commit of ``name`` in the local hub cache (what ``refs/main`` points to), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id, or no cache at all
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def model_identity(name: str) -> str | None:
    """Identity of the weights ``load_model(name)`` would load, without loading them.

    Returns
    -------
    identity : str or None
        The registry archives' sha256 (comma-joined) for an offline model; ``"local-sha256:<hex>"``, a
        sha256 over the folder's files, for a local folder; ``"hub:<commit>"`` for a hub name (the
        hub's current commit when it can be reached, else the one in the local hub cache); None when
        a hub name's commit cannot be resolved.
    """
    if name in OFFLINE_MODELS:
        return ",".join(a.sha256 for a in RESOURCES[OFFLINE_MODELS[name]["resource"]].archives)
    if Path(name).expanduser().is_dir():
        return _local_identity(check_model_folder(name))
    if _is_path_like(name):
        return None
    commit = _hub_commit(name)
    return f"hub:{commit}" if commit else None


def _hub_commit(name: str) -> str | None:
    """The commit a hub name resolves to now: the hub's answer when reachable, else the local hub cache's."""
    if offline_reason() is None:
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(name, timeout=10).sha
            if sha:
                return sha
        except Exception:  # noqa: BLE001, S110 - unknown or private name, or the network dropped: use the cache
            pass
    return _cached_hub_revision(name)


def model_kind(name: str) -> Kind | None:
    """``"encoder"`` or ``"decoder"`` from the registry or a local ``config.json``; None for hub names."""
    if name in OFFLINE_MODELS:
        return OFFLINE_MODELS[name].get("kind")
    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        try:
            return _kind_of_dict(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return None


def load_model(
    name: str, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a model and tokenizer for activation extraction.

    Parameters
    ----------
    name : str
        ``"minilm"``, ``"mpnet"``, ``"smollm2"`` or ``"gemma3"`` (offline registry), or a hub name such
        as ``"bert-base-cased"`` or ``"xlnet-base-cased"`` (needs internet), or a local model folder.
    device : str or torch.device, optional
        Defaults to CUDA when available, else CPU.
    dtype : torch.dtype
        Weight dtype (float32 by default; GGUF weights are dequantised to it).

    Returns
    -------
    loaded : LoadedModel
    """
    device = torch.device(device) if device is not None else default_device()
    gguf_file = None
    if name in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[name]
        path = fetch(spec["resource"])
        sha = ",".join(a.sha256 for a in RESOURCES[spec["resource"]].archives)
        if spec.get("gguf"):
            gguf_file, path = path.name, path.parent
        kwargs: dict[str, Any] = {"local_files_only": True}
        where = str(path)
    elif Path(name).expanduser().is_dir():
        path = check_model_folder(name)
        sha = _local_identity(path)
        kwargs = {"local_files_only": True}
        where = str(path)
    elif _is_path_like(name):
        raise OSError(
            f"there is no model folder {name!r}; check the path (offline models: {', '.join(OFFLINE_MODELS)})"
        )
    else:
        kwargs = {}
        where = name
        reason = offline_reason()
        if reason is not None:
            if _cached_hub_revision(name) is None:
                close = difflib.get_close_matches(name, OFFLINE_MODELS, n=1)
                raise OSError(
                    f"could not load model {name!r}: it is not an offline model, not a local folder, and not in "
                    f"the local hub cache, and the Hugging Face hub cannot be used ({reason}). "
                    + (f"Did you mean {close[0]!r}? " if close else "")
                    + f"Offline models: {', '.join(OFFLINE_MODELS)}; or give the path of a local model folder."
                )
            kwargs["local_files_only"] = True
        commit = _hub_commit(name)
        sha = f"hub:{commit}" if commit else "hub:unresolved"
        if commit:
            kwargs["revision"] = commit  # the weights loaded are the ones the identity names
    from transformers import AutoModel, AutoTokenizer

    if gguf_file is not None:
        try:
            import gguf  # noqa: F401
        except ImportError as exc:
            raise ImportError("loading a GGUF model needs the `gguf` package: pip install gguf") from exc
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModel.from_pretrained(where, dtype=dtype, use_safetensors=gguf_file is None, **kwargs)
    except OSError as exc:
        raise OSError(
            f"could not load model {name!r}: {exc}\nHub names need internet access to huggingface.co. "
            f"Offline models: {', '.join(OFFLINE_MODELS)}."
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{name}: a fast tokenizer is needed to align subwords with words")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval().to(device)
    config = model.config
    max_len = getattr(config, "max_position_embeddings", None) or 512
    if config.model_type in {"mpnet", "roberta", "xlm-roberta"}:
        max_len -= 2  # position ids start after the padding index
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 100_000:
        max_len = min(max_len, tok_max)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        n_layers=config.num_hidden_layers + 1,
        hidden=config.hidden_size,
        kind=_kind_of(config),
        max_length=int(max_len),
        source_sha256=sha,
        device=device,
    )


def _layer_list(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module holding the transformer blocks as a ModuleList, and that attribute's name."""
    for owner_path, attr in (("encoder", "layer"), ("", "layers"), ("transformer", "layer"), ("", "h")):
        owner = getattr(model, owner_path, None) if owner_path else model
        if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.ModuleList):
            return owner, attr
    raise TypeError(f"cannot find the list of transformer blocks in {type(model).__name__}")


class truncated:
    """Context manager: run only the embeddings and the first ``n_blocks`` transformer blocks.

    Inside the block, ``model(...).hidden_states`` has ``n_blocks + 1`` entries and entry ``i`` equals
    entry ``i`` of the full model (a decoder's final norm is bypassed while truncated, so the last
    entry is the raw block output, as in the full model's hidden states). The full model is restored
    on exit, also after an exception.

    Parameters
    ----------
    model : torch.nn.Module
    n_blocks : int
        Blocks to keep, ``0 <= n_blocks <= total``; ``total`` leaves the model as it is.
    """

    def __init__(self, model: torch.nn.Module, n_blocks: int):
        self.model = model
        self.owner, self.attr = _layer_list(model)
        self.full = getattr(self.owner, self.attr)
        if not 0 <= n_blocks <= len(self.full):
            raise ValueError(f"n_blocks must be between 0 and {len(self.full)}, got {n_blocks}")
        self.n_blocks = n_blocks
        self.norm = None

    def __enter__(self) -> torch.nn.Module:
        if self.n_blocks < len(self.full):
            setattr(self.owner, self.attr, self.full[: self.n_blocks])
            if isinstance(getattr(self.model, "norm", None), torch.nn.Module):  # decoders' final norm
                self.norm = self.model.norm
                self.model.norm = torch.nn.Identity()
        return self.model

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.attr, self.full)
        if self.norm is not None:
            self.model.norm = self.norm

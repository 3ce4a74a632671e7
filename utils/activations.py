"""Hidden states of every layer, one vector per word or per sentence, kept in an on-disk store.

Start with ``get_activations(model, task, split)``: it returns an ``ActivationStore`` whose
``activations`` is a memory-mapped array of shape (n_items, n_layers, hidden) — layer 0 is the
embedding output — with ``labels`` and ``words`` aligned to its rows. The store is made once per
(model, task, split, aggregation, budget, seed, dtype, precision), written into a ``.partial``
folder that is renamed into place when complete (atomic), resumed after an interruption, reused
when present, and rebuilt with a warning when its metadata or checksum disagrees.

What makes a store safe to reuse:

- One builder at a time: building holds a file lock per store (``paths.locked``; the kernel releases
  it when its holder dies, even on ``kill -9``). A second process asking for the same store waits,
  then reuses what the first built.
- Every file is checksummed: ``meta.json`` records the size and sha256 of ``activations.npy``,
  ``labels.npy``, ``sentence_ids.npy`` and ``words.json``, and a sha256 of its own content; the
  resume state of a ``.partial`` folder (which segments are done) carries its own sha256. Any
  mismatch, missing or truncated file, or missing key is a ``StoreError``, which ``get_activations``
  turns into a warning and a rebuild.
- The store is tied to the weights that made it: its metadata holds ``models.model_identity`` (the
  registry archives' sha256, a sha256 over a local folder's files, or a hub model's commit), and a
  store made from other weights is rebuilt.

``extract(loaded, texts, level=...)`` is the extraction itself, usable without a store: sentences are
tokenized once, sorted by length, padded into batches and run under ``torch.inference_mode``;
``precision="bfloat16"`` runs the forward pass under ``torch.autocast`` (bfloat16) on the model's
device, and the vectors are still stored as float32. ``extract`` defaults to float32; stores
(``get_activations``, ``task_stores``) default to ``"auto"``: bfloat16 on a CPU with native bfloat16
instructions, where it was measured faithful, float32 elsewhere (``precision.resolve_precision``).

- Word level: the sentence's words are joined by spaces and tokenized with character offsets; each
  subword maps to the word whose characters it covers, and a word's vector is its ``first``,
  ``last`` (default) or ``mean`` subword. By default only the subwords of the word's *core* count:
  punctuation and clitics glued to it ("Vinken," "29." "isn't", as in the PTB sample) are seen by
  the model but not pooled (``split_glued``; see ``glued_core``). A sentence longer than the model's
  maximum is split into consecutive word windows that each fit (a warning gives the count), so every
  word gets one vector.
- Sentence level: ``cls`` (the first token, the encoders' classification token), ``last`` (the last
  real token, the decoders' summary) or ``mean`` over real tokens; ``"auto"`` picks ``cls`` for
  encoders and ``last`` for decoders. Texts longer than the maximum are truncated with a warning and
  a count.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import Split, Task, load_task
from .models import LoadedModel, load_model, model_identity, model_kind
from .paths import cache_dir, check_name, locked
from .precision import autocast, check_precision, resolve_precision
from .resources import sha256_file

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

WORD_AGGREGATIONS = ("first", "last", "mean")
SENTENCE_AGGREGATIONS = ("cls", "last", "mean")
STORE_VERSION = 2
# The files of a finished store; meta.json records the size and sha256 of each.
STORE_FILES = ("activations.npy", "labels.npy", "sentence_ids.npy", "words.json")
META_KEYS = (
    "store_version",
    "model",
    "model_sha256",
    "level",
    "aggregation",
    "dtype",
    "n_items",
    "n_sentences",
    "n_layers",
    "hidden",
    "data_sha256",
    "files",
    "complete",
    "meta_sha256",
)
# ---------------------------------------------------------------------------------------------
# tokenization and alignment


@dataclass
class _Segment:
    """One model input: token ids, and for each output row the token positions it aggregates."""

    ids: list[int]
    rows: np.ndarray  # (n_out,) output row of each aggregated vector
    token_word: np.ndarray  # (n_tokens,) index into ``rows`` of each token, -1 for special tokens


def _word_segments(
    tok: Any, sentence: Sequence[str], row0: int, max_length: int, split_glued: bool = True
) -> tuple[list[_Segment], int]:
    """Tokenize one sentence (joined words, char offsets); split into windows that fit; return segments and n_windows-1."""
    words = list(sentence)
    ids, token_word, owner = _encode_words(tok, words, split_glued=split_glued)
    if (owner >= 0).any() and len(np.unique(owner[owner >= 0])) < len(words):
        missing = np.setdiff1d(np.arange(len(words)), owner[owner >= 0])
        warnings.warn(
            f"{len(missing)} word(s) produced no subword token (e.g. {words[missing[0]]!r}); "
            "they are replaced by the unknown token so that every word still gets a vector",
            stacklevel=4,
        )
        for i in missing:
            words[i] = tok.unk_token or "?"
        ids, token_word, owner = _encode_words(tok, words, split_glued=split_glued)
    if len(ids) <= max_length:
        return [_Segment(ids, row0 + np.arange(len(words)), token_word)], 0
    # Too long: split into consecutive word windows that each fit.
    n_special = int((owner < 0).sum())
    counts = np.bincount(owner[owner >= 0], minlength=len(words))
    budget = max_length - n_special
    if counts.max() > budget:
        raise ValueError(f"a single word needs {counts.max()} tokens, more than the model's maximum {max_length}")
    segments, start = [], 0
    while start < len(words):
        csum = np.cumsum(counts[start:])
        stop = start + int(np.searchsorted(csum, budget, side="right"))
        piece_ids, piece_tw, _ = _encode_words(tok, words[start:stop], split_glued=split_glued)
        segments.append(_Segment(piece_ids, row0 + np.arange(start, stop), piece_tw))
        start = stop
    return segments, len(segments) - 1


# A word's glued material: leading non-word characters, and trailing non-word characters and clitics.
_GLUED = re.compile(r"(?P<lead>\W*)(?P<core>.*?)(?P<tail>(?:\W|n't|'s|'re|'ve|'ll|'d|'m)*)", re.IGNORECASE | re.DOTALL)


def glued_core(word: str) -> tuple[int, int]:
    """Character span ``(start, stop)`` of a word's core, without glued punctuation and clitics.

    The Penn Treebank separates punctuation, symbols and clitics into tokens of their own
    ("Pierre Vinken , 61 years old ,"; "$ 100"; "is n't"; "company 's"), and the paper's probes saw
    that tokenisation. The 10% sample we read glues them to the neighbouring word ("Vinken," "29."
    "$100" "``The" "isn't" "company's": 16.6% of its tokens, 12.7% with trailing punctuation) and
    keeps the tag of the word itself (NNP, CD, CD, DT, VBZ, NN). With last-subword aggregation such
    a word's vector would be that of the glued comma or clitic, so the extraction pools only over
    the subwords that overlap the core returned here. The glued pieces stay in the input, where the
    model sees them as context, as it saw PTB's separate punctuation tokens.

    Why pool over the core rather than re-split the text into PTB tokens: for the WordPiece encoders
    both give the same input ids (their pre-tokenizer splits punctuation anyway) and so the same
    vectors; for causal decoders a word's vector depends only on what precedes it, so re-splitting
    would change it only through earlier punctuation's spelling. Keeping the text as given also
    avoids guessing which periods belong to an abbreviation ("Nov." is one PTB token, "29." two).

    Leading non-word characters (``$``, quotes, the dashes of ``-LRB-``, ``@``/``#`` in tweets) are
    stripped too; internal ones stay ("N.V", "York-based", "3,000"). A word that is all punctuation
    ("--", "&", "...") is its own core.

    Parameters
    ----------
    word : str

    Returns
    -------
    start, stop : int
        ``word[start:stop]`` is the core; ``(0, len(word))`` when nothing is glued or the core would be
        empty.

    Examples
    --------
    >>> [w[slice(*glued_core(w))] for w in ["Vinken,", "29.", "$100", "``It's", "isn't", "-RRB-.", "--"]]
    ['Vinken', '29', '100', 'It', 'is', 'RRB', '--']
    """
    m = _GLUED.fullmatch(word)
    if m is None or not m.group("core"):
        return 0, len(word)
    return m.start("core"), m.end("core")


def _encode_words(
    tok: Any, words: Sequence[str], *, split_glued: bool = True
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Tokenize ``" ".join(words)`` and align every token with a word by character offsets.

    A token belongs to the word holding its last non-space character; a token of spaces only
    (SentencePiece's lone "▁" before digits, say) belongs to the word after it. A token is pooled
    into its word's vector when it overlaps the word's characters: with ``split_glued``, only those
    of the word's core (``glued_core``). Should no token of a word overlap its core, all its tokens
    are pooled.

    Returns
    -------
    ids : list of int
        Token ids, special tokens included.
    token_word : ndarray of shape (n_tokens,)
        Word index of each token pooled into a word's vector; -1 for special tokens and for tokens
        the model sees but no word pools (glued punctuation, spaces).
    owner : ndarray of shape (n_tokens,)
        Word index of each non-special token (-1 for special tokens): what a word costs in tokens.
    """
    text = " ".join(words)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    real = offsets[:, 1] > offsets[:, 0]
    blank = np.array([real[i] and not text[a:b].strip() for i, (a, b) in enumerate(offsets)], dtype=bool)
    # first non-space character of each token (a token may carry the space before its word)
    first = np.array([a + len(text[a:b]) - len(text[a:b].lstrip()) for a, b in offsets], dtype=np.int64)
    anchor = np.where(blank, offsets[:, 1], offsets[:, 1] - 1)
    owner = np.where(real, np.searchsorted(starts, anchor, side="right") - 1, -1)
    owner = np.minimum(owner, len(words) - 1)  # a blank token at the very end
    if split_glued:
        spans = np.array([glued_core(w) for w in words], dtype=np.int64).reshape(-1, 2) + starts[:, None]
    else:
        spans = np.stack([starts, starts + np.array([len(w) for w in words], dtype=np.int64)], axis=1)
    lo, hi = spans[np.maximum(owner, 0), 0], spans[np.maximum(owner, 0), 1]
    pooled = real & ~blank & (first < hi) & (offsets[:, 1] > lo)
    orphan = np.setdiff1d(owner[real & ~blank], owner[pooled])
    pooled |= real & ~blank & np.isin(owner, orphan)
    token_word = np.where(pooled, owner, -1)
    return list(enc["input_ids"]), token_word.astype(np.int64), owner.astype(np.int64)


def _sentence_segments(tok: Any, texts: Sequence, max_length: int) -> tuple[list[_Segment], int]:
    """Tokenize sentence-level texts (or pairs), truncating to ``max_length``; return segments and n_truncated."""
    pairs = bool(texts) and isinstance(texts[0], (tuple, list))
    first = [t[0] for t in texts] if pairs else list(texts)
    second = [t[1] for t in texts] if pairs else None
    full = tok(first, second, add_special_tokens=True)["input_ids"]
    n_trunc = sum(len(ids) > max_length for ids in full)
    if n_trunc:
        full = tok(first, second, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    segments = [_Segment(list(ids), np.array([i]), np.zeros(len(ids), dtype=np.int64)) for i, ids in enumerate(full)]
    return segments, n_trunc


def build_segments(
    loaded: LoadedModel, texts: Sequence, *, level: str, split_glued: bool = True
) -> tuple[list[_Segment], int]:
    """Tokenize ``texts`` into model inputs; return the segments and the total number of output rows.

    ``split_glued`` (word level): pool each word over its core's subwords only (see ``glued_core``).
    """
    tok, max_len = loaded.tokenizer, loaded.max_length
    if level == "word":
        segments, n_split, row = [], 0, 0
        for sentence in texts:
            segs, extra = _word_segments(tok, sentence, row, max_len, split_glued)
            segments += segs
            n_split += extra > 0
            row += len(sentence)
        if n_split:
            warnings.warn(
                f"{n_split} sentence(s) were longer than the model's maximum of {max_len} tokens and were split "
                "into consecutive word windows (each window is encoded without the other's context)",
                stacklevel=3,
            )
        return segments, row
    if level == "sentence":
        segments, n_trunc = _sentence_segments(tok, texts, max_len)
        if n_trunc:
            warnings.warn(f"{n_trunc} text(s) were longer than {max_len} tokens and were truncated", stacklevel=3)
        return segments, len(texts)
    raise ValueError(f"level must be 'word' or 'sentence', got {level!r}")


# ---------------------------------------------------------------------------------------------
# extraction


def resolve_aggregation(aggregation: str, *, level: str, kind: str) -> str:
    """Check ``aggregation`` for the level and turn ``"auto"`` into the model kind's default."""
    if level == "word":
        aggregation = "last" if aggregation == "auto" else aggregation
        allowed = WORD_AGGREGATIONS
    else:
        aggregation = ("last" if kind == "decoder" else "cls") if aggregation == "auto" else aggregation
        allowed = SENTENCE_AGGREGATIONS
    if aggregation not in allowed:
        raise ValueError(f"aggregation {aggregation!r} is not one of {allowed} for {level}-level tasks")
    return aggregation


def _batches(
    segments: list[_Segment], order: np.ndarray, batch_size: int, max_batch_tokens: int
) -> Iterator[np.ndarray]:
    """Yield index arrays of segments, in length order, capped by count and by padded tokens."""
    start = 0
    while start < len(order):
        stop = start + 1
        while (
            stop < len(order)
            and stop - start < batch_size
            and len(segments[order[stop]].ids) * (stop - start + 1) <= max_batch_tokens
        ):
            stop += 1
        yield order[start:stop]
        start = stop


def _pool(
    hidden: torch.Tensor, seg_tokens: torch.Tensor, seg_rows: torch.Tensor, n_out: int, mode: str
) -> torch.Tensor:
    """Aggregate token vectors (n_tokens, hidden) into (n_out, hidden) by ``mode`` over each output's tokens."""
    if mode == "mean":  # summed in float32 also when the model ran in bfloat16
        out = torch.zeros(n_out, hidden.shape[-1], dtype=torch.float32, device=hidden.device)
        out.index_add_(0, seg_rows, hidden[seg_tokens].float())
        counts = torch.bincount(seg_rows, minlength=n_out).clamp_min(1).to(torch.float32)
        return out / counts[:, None]
    return hidden[seg_tokens]


def _gather_plan(
    batch: list[_Segment], width: int, level: str, aggregation: str
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Flat token positions to read from a (batch, width) grid, which output each feeds, and output rows."""
    positions, feeds, rows = [], [], []
    n_out = 0
    for b, seg in enumerate(batch):
        tw = seg.token_word
        idx = np.flatnonzero(tw >= 0)
        if level == "sentence":
            real = np.arange(len(seg.ids))
            if aggregation == "cls":
                idx = real[:1]
            elif aggregation == "last":
                idx = real[-1:]
            else:
                idx = real
            positions.append(b * width + idx)
            feeds.append(np.full(len(idx), n_out))
        elif aggregation == "mean":
            positions.append(b * width + idx)
            feeds.append(n_out + tw[idx])
        else:
            words = tw[idx]
            # first / last subword of each word: where the word index changes
            keep = (
                np.r_[True, words[1:] != words[:-1]] if aggregation == "first" else np.r_[words[1:] != words[:-1], True]
            )
            positions.append(b * width + idx[keep])
            feeds.append(n_out + words[keep])
        rows.append(seg.rows)
        n_out += len(seg.rows)
    return (torch.from_numpy(np.concatenate(positions)), torch.from_numpy(np.concatenate(feeds)), np.concatenate(rows))


def extract(
    loaded: LoadedModel,
    texts: Sequence,
    *,
    level: str,
    aggregation: str = "auto",
    batch_size: int = 32,
    max_batch_tokens: int = 8192,
    out: np.ndarray | None = None,
    done: np.ndarray | None = None,
    on_batch: Callable[[], None] | None = None,
    progress: bool = True,
    split_glued: bool = True,
    precision: str = "float32",
) -> np.ndarray:
    """Run the model over ``texts`` and return every layer's vector per word or per text.

    Parameters
    ----------
    loaded : LoadedModel
        From ``models.load_model``.
    texts : sequence
        Word level: sentences as lists of words. Sentence level: strings or ``(first, second)`` pairs.
    level : {"word", "sentence"}
    aggregation : str
        Word level: ``"first"``, ``"last"`` or ``"mean"`` subword (``"auto"`` = last). Sentence level:
        ``"cls"``, ``"last"`` or ``"mean"`` (``"auto"`` = cls for encoders, last for decoders).
    batch_size : int
        Most sentences per forward pass; ``max_batch_tokens`` caps padded tokens per pass.
    out : array of shape (n_items, n_layers, hidden), optional
        Where to write (e.g. a memmap). Allocated as float32 when not given.
    done : bool array of shape (n_segments,), optional
        Resume state: segments marked True are skipped, and each finished one is marked.
    on_batch : callable, optional
        Called after each batch is written (the store uses it to checkpoint).
    progress : bool
        Show a tqdm bar.
    split_glued : bool
        Word level: pool each word only over the subwords of its core, leaving out punctuation and
        clitics glued to it ("Vinken," pools "Vinken"'s pieces; see ``glued_core`` for why). False
        pools every subword the word's characters produced. The input text is the same either way.
    precision : {"float32", "bfloat16"}
        Arithmetic of the forward pass: as loaded, or under bfloat16 ``torch.autocast`` on the
        model's device. The returned vectors are float32 (or ``out``'s dtype) either way.

    Returns
    -------
    activations : ndarray of shape (n_items, n_layers, hidden)
        ``n_items`` is the number of words (word level) or texts (sentence level).
    """
    aggregation = resolve_aggregation(aggregation, level=level, kind=loaded.kind)
    check_precision(precision)
    segments, n_items = build_segments(loaded, texts, level=level, split_glued=split_glued)
    if n_items == 0:
        raise ValueError("nothing to extract: the input holds no sentences")
    shape = (n_items, loaded.n_layers, loaded.hidden)
    if out is None:
        out = np.zeros(shape, dtype=np.float32)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    if done is None:
        done = np.zeros(len(segments), dtype=bool)
    elif len(done) != len(segments):
        raise ValueError(f"done has {len(done)} entries, expected one per segment ({len(segments)})")
    todo = np.flatnonzero(~done)
    order = todo[np.argsort([len(segments[i].ids) for i in todo], kind="stable")]
    pad_id = loaded.tokenizer.pad_token_id or 0
    model, device = loaded.model, loaded.device
    target = torch.from_numpy(out)  # shares memory with ``out`` (an array or a writable memmap)
    bar = tqdm(
        total=int(sum(len(segments[i].rows) for i in order)),
        unit="item",
        desc=f"{loaded.name} {level}",
        disable=not progress,
        leave=False,
    )
    buf = None  # the batch's pooled vectors, (rows, n_layers, hidden), before one copy into ``out``
    with torch.inference_mode(), autocast(precision, device):
        for idx in _batches(segments, order, batch_size, max_batch_tokens):
            batch = [segments[i] for i in idx]
            width = max(len(s.ids) for s in batch)
            ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for b, s in enumerate(batch):
                ids[b, : len(s.ids)] = s.ids
                mask[b, : len(s.ids)] = 1
            outputs = model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                output_hidden_states=True,
            )
            positions, feeds, rows = _gather_plan(batch, width, level, aggregation)
            positions, feeds = positions.to(device), feeds.to(device)
            mode = "mean" if aggregation == "mean" else "pick"
            # layer by layer, gather the batch's vectors into one (rows, n_layers, hidden) block, then copy
            # whole rows into ``out`` at once: contiguous writes, where a copy per layer writes strided pieces
            rows_t = torch.from_numpy(rows)
            if buf is None or len(buf) < len(rows):  # reused: a fresh block every batch costs page faults
                buf = torch.empty((2 * len(rows), target.shape[1], target.shape[2]), dtype=target.dtype)
            block = buf[: len(rows)]
            for layer, h in enumerate(outputs.hidden_states):
                vectors = _pool(h.reshape(-1, h.shape[-1]), positions, feeds, len(rows), mode)
                if target.dtype == torch.float16 and float(vectors.abs().max()) > np.finfo(np.float16).max:
                    raise ValueError(
                        f"{loaded.name}: activations reach {float(vectors.abs().max()):.3g}, beyond float16's range "
                        f"({np.finfo(np.float16).max:.0f}; decoders such as gemma3 have massive activations); "
                        "store them as float32 (dtype='float32')."
                    )
                block[:, layer] = vectors
            target.index_copy_(0, rows_t, block)
            del outputs  # free the hidden states before the next forward pass
            done[idx] = True
            if on_batch is not None:
                on_batch()
            bar.update(len(rows))
    bar.close()
    return out


# ---------------------------------------------------------------------------------------------
# the on-disk store


@dataclass
class ActivationStore:
    """Activations of one (model, task, split) on disk, with aligned labels.

    Attributes
    ----------
    path : Path
    activations : np.memmap of shape (n_items, n_layers, hidden)
    labels : ndarray of shape (n_items,)
    words : list of str
        The word (word level) or text (sentence level) of each row.
    sentence_ids : ndarray of shape (n_items,)
        Index of the sentence each row came from.
    meta : dict
        What made the store: model and the identity of its weights (``model_sha256``), task, split,
        aggregation, dtype, counts, library versions, the size and sha256 of every file (``files``)
        and the sha256 of the metadata itself (``meta_sha256``).
    """

    path: Path
    activations: np.ndarray
    labels: np.ndarray
    words: list
    sentence_ids: np.ndarray
    meta: dict

    @property
    def n_layers(self) -> int:
        return int(self.activations.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.activations.shape[2])

    def __len__(self) -> int:
        return int(self.activations.shape[0])

    def layer(self, index: int) -> np.ndarray:
        """Activations of one layer, shape (n_items, hidden)."""
        return np.asarray(self.activations[:, index, :])

    def iter_chunks(self, chunk_size: int = 4096) -> Iterator[np.ndarray]:
        """Yield row chunks of shape (<= chunk_size, n_layers, hidden) read from the memory map."""
        for start in range(0, len(self), chunk_size):
            yield np.asarray(self.activations[start : start + chunk_size])

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> ActivationStore:
        """Open a finished store, checking every file against the sizes and sha256s in its metadata.

        Parameters
        ----------
        path : path
        verify : bool
            Hash ``activations.npy`` in full (the other files are small and always hashed); without
            it, the activations are checked by size, shape and dtype only.

        Raises
        ------
        StoreError
            When a file is missing, truncated, altered, or unreadable, or the metadata lacks a key.
        """
        path = Path(path)
        try:
            return cls._open(path, verify)
        except StoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:  # JSON, unicode and npy errors included
            raise StoreError(f"{path}: {type(exc).__name__}: {exc}; delete it to rebuild") from exc

    @classmethod
    def _open(cls, path: Path, verify: bool) -> ActivationStore:
        meta = read_store_meta(path)
        for name in STORE_FILES:
            _check_file(path / name, meta["files"].get(name), full=verify or name != "activations.npy")
        act_path = path / "activations.npy"
        acts = np.load(act_path, mmap_mode="r")
        expected = (meta["n_items"], meta["n_layers"], meta["hidden"])
        if tuple(acts.shape) != expected or str(acts.dtype) != meta["dtype"]:
            raise StoreError(
                f"{act_path} has shape {acts.shape} {acts.dtype}, metadata says {expected} {meta['dtype']}"
            )
        labels = np.load(path / "labels.npy", allow_pickle=False)
        sentence_ids = np.load(path / "sentence_ids.npy", allow_pickle=False)
        words = json.loads((path / "words.json").read_text(encoding="utf-8"))
        if not (len(labels) == len(words) == len(sentence_ids) == len(acts)):
            raise StoreError(f"{path}: labels, words and activations disagree in length; delete it to rebuild")
        return cls(path, acts, labels, words, sentence_ids, meta)


def _meta_digest(meta: dict) -> str:
    """sha256 of a store's metadata without its own ``meta_sha256`` entry (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read_store_meta(path: str | os.PathLike) -> dict:
    """Read and check a finished store's ``meta.json``: version, every key, and its own sha256.

    Raises
    ------
    StoreError
        When the file is missing or unreadable, made by another store version, lacks a key, or was altered.
    """
    meta_path = Path(path) / "meta.json"
    if not meta_path.exists():
        raise StoreError(f"{path} is not a finished activation store (no meta.json); delete it to rebuild")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{meta_path} is corrupt ({exc}); delete {path} to rebuild") from exc
    if not isinstance(meta, dict):
        raise StoreError(f"{meta_path} does not hold a JSON object; delete {path} to rebuild")
    if meta.get("store_version") != STORE_VERSION:
        raise StoreError(
            f"{path} was written by store version {meta.get('store_version')}, this code reads version {STORE_VERSION}"
        )
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise StoreError(f"{meta_path} lacks {missing}; delete {path} to rebuild")
    if _meta_digest(meta) != meta["meta_sha256"] or not isinstance(meta["files"], dict):
        raise StoreError(f"{meta_path} does not match its recorded sha256: it was altered; delete {path} to rebuild")
    return meta


def _file_record(path: Path) -> dict:
    """Size and sha256 of one store file."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _check_file(path: Path, record: dict | None, *, full: bool) -> None:
    """Raise ``StoreError`` unless ``path`` exists with the recorded size (and, with ``full``, sha256)."""
    if not isinstance(record, dict):
        raise StoreError(f"{path.parent}/meta.json records no checksum for {path.name}; delete the store to rebuild")
    if not path.is_file():
        raise StoreError(f"{path} is missing; delete {path.parent} to rebuild")
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise StoreError(
            f"{path} has {size} bytes, {record.get('bytes')} were written (truncated or altered); "
            f"delete {path.parent} to rebuild"
        )
    if full and sha256_file(path) != record.get("sha256"):
        raise StoreError(
            f"{path} does not match its recorded sha256: the file is corrupt; delete {path.parent} to rebuild"
        )


class StoreError(RuntimeError):
    """An activation store on disk is incomplete, corrupt or inconsistent."""


def layer_norms(store: ActivationStore, *, chunk_size: int = 4096) -> np.ndarray:
    """Mean L2 norm of the item vectors at each layer, shape (n_layers,), in one pass over the store."""
    total = np.zeros(store.n_layers, dtype=np.float64)
    for chunk in store.iter_chunks(chunk_size):
        total += np.linalg.norm(chunk.astype(np.float32), axis=2).sum(axis=0)
    return total / len(store)


def preview(store: ActivationStore, *, rows: int = 8, layers: Sequence[int] = (0, -1), units: int = 3) -> pd.DataFrame:
    """First ``rows`` items of a store: word, label, and the first ``units`` neurons of some layers."""
    import pandas as pd

    table = {"word": store.words[:rows], "label": list(store.labels[:rows])}
    for layer in layers:
        ln = layer % store.n_layers
        for u in range(units):
            table[f"L{ln}[{u}]"] = np.asarray(store.activations[:rows, ln, u], dtype=np.float32)
    return pd.DataFrame(table)


def _texts_sha256(split: Split) -> str:
    """sha256 of a split's texts and labels (detects data that changed under a cached store)."""
    blob = json.dumps([split.texts, split.labels], ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}


def store_path(
    model: str,
    task: str,
    split: str,
    *,
    aggregation: str,
    budget: int | None,
    eval_budget: int | None,
    seed: int,
    dtype: str,
    precision: str = "float32",
    root: str | os.PathLike | None = None,
) -> Path:
    """Folder of the store for these arguments (under ``cache_dir()/activations`` by default).

    ``precision`` other than float32 adds a ``-x<precision>`` field, so stores of the two never mix
    (and float32 stores keep the names they had before the field existed).
    """
    root = Path(root) if root is not None else cache_dir() / "activations"
    b = budget if split == "train" else eval_budget
    for value, what in ((task, "task name"), (split, "split"), (aggregation, "aggregation"), (dtype, "dtype")):
        check_name(value, what=what)
    safe_model = "".join(c if c.isalnum() or c in "._+-" else "_" for c in model.replace("/", "__")).lstrip(".") or "_"
    mode = "" if check_precision(precision) == "float32" else f"-x{precision}"
    return root / safe_model / f"{task}-{split}-{aggregation}-{dtype}{mode}-b{b or 'all'}-s{seed}"


def _one_builder(fn: Callable[..., ActivationStore]) -> Callable[..., ActivationStore]:
    """Hold the store's file lock (``paths.locked``) while ``fn(loaded, split, path, ...)`` runs."""

    @functools.wraps(fn)
    def wrapper(
        loaded: LoadedModel, split: Split, path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> ActivationStore:
        with locked(Path(path), what=f"the activation store {path}"):
            return fn(loaded, split, path, *args, **kwargs)

    return wrapper


def _read_progress(
    partial: Path, record: dict, n_segments: int, dtype: str, shape: tuple
) -> tuple[np.ndarray, np.ndarray] | None:
    """The memmapped activations and done mask of a ``.partial`` folder, or None when it cannot be resumed.

    Resumable means: ``state.json`` parses, was made for the same ``record``, its done mask has
    ``n_segments`` entries and matches its sha256, and ``activations.npy`` has the expected shape.
    """
    try:
        state = json.loads((partial / "state.json").read_text())
        packed = bytes.fromhex(state["done"])
        if (
            state["record"] != json.loads(json.dumps(record))
            or state["n_segments"] != n_segments
            or hashlib.sha256(packed).hexdigest() != state["done_sha256"]
        ):
            return None
        done = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n_segments).astype(bool)
        acts = np.load(partial / "activations.npy", mmap_mode="r+")
        if tuple(acts.shape) != shape or str(acts.dtype) != dtype:
            return None
        return acts, done
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _write_progress(partial: Path, record: dict, done: np.ndarray) -> None:
    """Write the resume state (record, done mask, its sha256) atomically."""
    packed = np.packbits(done).tobytes()
    state = {
        "record": record,
        "n_segments": int(len(done)),
        "done": packed.hex(),
        "done_sha256": hashlib.sha256(packed).hexdigest(),
    }
    tmp = partial / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, partial / "state.json")


def _reusable(path: Path, record: dict) -> ActivationStore | None:
    """The finished store at ``path`` when it verifies and was made from ``record``'s inputs, else None."""
    try:
        store = ActivationStore.open(path, verify=True)
    except StoreError:
        return None
    return store if all(store.meta.get(k) == v for k, v in json.loads(json.dumps(record)).items()) else None


@_one_builder
def build_store(
    loaded: LoadedModel,
    split: Split,
    path: str | os.PathLike,
    *,
    level: str,
    aggregation: str = "auto",
    dtype: str = "float32",
    meta: dict | None = None,
    batch_size: int = 32,
    checkpoint_every: int = 20,
    progress: bool = True,
    split_glued: bool = True,
    precision: str = "float32",
) -> ActivationStore:
    """Extract ``split`` with ``loaded`` into a store at ``path`` (resumable, renamed into place when done).

    Holds the store's file lock throughout: a concurrent builder of the same ``path`` waits, and then
    returns the store the first one made when it verifies and was made from the same inputs.

    Parameters
    ----------
    loaded : LoadedModel
    split : Split
    path : path
        Final folder of the store; work happens in ``<path>.partial``.
    level, aggregation, batch_size
        As in ``extract``.
    dtype : {"float32", "float16"}
        Storage dtype.
    meta : dict, optional
        Extra metadata to record (task name, budgets, ...).
    checkpoint_every : int
        Batches between flushes of the activations and the resume state.
    split_glued : bool
        As in ``extract`` (recorded in the metadata for word-level stores).
    precision : {"float32", "bfloat16"}
        Arithmetic of the forward pass (as in ``extract``); recorded in the metadata.

    Returns
    -------
    store : ActivationStore
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if len(split) == 0:
        raise ValueError("the split is empty: there is nothing to extract; check the task's budget and data")
    path = Path(path)
    aggregation = resolve_aggregation(aggregation, level=level, kind=loaded.kind)
    word_level = level == "word"
    n_items = split.n_items if word_level else len(split)
    record = {
        "store_version": STORE_VERSION,
        "model": loaded.name,
        "model_sha256": loaded.source_sha256,
        "level": level,
        "aggregation": aggregation,
        "dtype": dtype,
        "precision": check_precision(precision),
        "n_items": int(n_items),
        "n_sentences": len(split),
        "n_layers": loaded.n_layers,
        "hidden": loaded.hidden,
        "data_sha256": _texts_sha256(split),
        "max_length": loaded.max_length,
        **(meta or {}),
    }
    if word_level:
        record["split_glued"] = bool(split_glued)
    if path.exists() and (reused := _reusable(path, record)) is not None:
        log.info("%s was built by another process meanwhile; reusing it", path)
        return reused
    partial = path.with_name(path.name + ".partial")
    act_file, state_file = partial / "activations.npy", partial / "state.json"
    segments_count = (
        len(build_segments(loaded, split.texts, level=level, split_glued=split_glued)[0]) if word_level else len(split)
    )
    shape = (n_items, loaded.n_layers, loaded.hidden)
    progress_state = _read_progress(partial, record, segments_count, dtype, shape) if partial.exists() else None
    if progress_state is not None:
        acts, done = progress_state
        log.info("resuming %s: %d of %d segments done", path.name, int(done.sum()), len(done))
    else:
        if partial.exists():
            warnings.warn(
                f"{partial} cannot be resumed (made from other inputs, or its resume state is damaged); "
                "starting it again",
                stacklevel=3,
            )
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        acts = np.lib.format.open_memmap(act_file, mode="w+", dtype=dtype, shape=shape)
        done = np.zeros(segments_count, dtype=bool)
        _write_progress(partial, record, done)
    batches = [0]

    def checkpoint(force: bool = False) -> None:
        batches[0] += 1
        if force or batches[0] % checkpoint_every == 0:
            acts.flush()
            _write_progress(partial, record, done)

    extract(
        loaded,
        split.texts,
        level=level,
        aggregation=aggregation,
        batch_size=batch_size,
        out=acts,
        done=done,
        on_batch=checkpoint,
        progress=progress,
        split_glued=split_glued,
        precision=precision,
    )
    checkpoint(force=True)
    acts = None  # drop the memory map (the checkpoint closure shares this name) before the folder is renamed
    if word_level:
        labels = [lab for labs in split.labels for lab in labs]
        words = [w for sent in split.texts for w in sent]
        sentence_ids = np.repeat(np.arange(len(split)), [len(s) for s in split.texts])
    else:
        labels = list(split.labels)
        words = [t if isinstance(t, str) else " [SEP] ".join(t) for t in split.texts]
        sentence_ids = np.arange(len(split))
    np.save(
        partial / "labels.npy",
        np.asarray([str(x) for x in labels]) if not _numeric(labels) else np.asarray(labels, dtype=np.float64),
    )
    np.save(partial / "sentence_ids.npy", sentence_ids)
    (partial / "words.json").write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")
    record.update(
        files={name: _file_record(partial / name) for name in STORE_FILES}, versions=_versions(), complete=True
    )
    record["meta_sha256"] = _meta_digest(json.loads(json.dumps(record)))
    (partial / "meta.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    state_file.unlink()
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)
    return ActivationStore.open(path, verify=False)


def _numeric(labels: list) -> bool:
    """True when every label is a float: such labels are stored as float64, others as strings.

    A storage decision only: whether float labels are a regression target or classes that happen to
    be whole numbers is decided downstream by ``validation.is_regression_target``.
    """
    return bool(labels) and all(isinstance(x, (float, np.floating)) for x in labels)


_MODEL_CACHE: dict[tuple[str, str], LoadedModel] = {}


def _cached_model(name: str, device: str | None, identity: str | None = None) -> LoadedModel:
    """Load each model once per process (several stores are often made in a row).

    A cached model whose weights are no longer ``identity`` (a local folder that changed) is loaded again.
    """
    key = (name, str(device))
    cached = _MODEL_CACHE.get(key)
    if cached is None or (identity is not None and cached.source_sha256 != identity):
        _MODEL_CACHE.clear()  # keep at most one model in memory
        _MODEL_CACHE[key] = load_model(name, device=device)
    return _MODEL_CACHE[key]


def get_activations(
    model: str,
    task: str | Task,
    split: str,
    *,
    budget: int | None = None,
    eval_budget: int | None = None,
    seed: int = 0,
    aggregation: str = "auto",
    dtype: str = "float32",
    batch_size: int = 32,
    root: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
    split_glued: bool = True,
    precision: str = "auto",
) -> ActivationStore:
    """Return the activation store of (model, task, split), extracting it only when needed.

    Parameters
    ----------
    model : str
        A model name for ``models.load_model`` (``"minilm"``, ``"mpnet"``, ``"smollm2"``, ``"gemma3"``, or a
        hub name), or ``"<base>+ft"`` for a sentence task: the base fine-tuned on that task first
        (``finetune.finetuned_for``).
    task : str or Task
        A task name for ``data.load_task`` or a ``Task`` (e.g. from your own files).
    split : {"train", "dev", "test"}
    budget, eval_budget, seed
        As in ``data.load_task`` (ignored when ``task`` is already a ``Task``).
    aggregation : str
        As in ``extract``; ``"auto"`` resolves per model kind and task level.
    dtype : {"float32", "float16"}
    batch_size : int
    root : path, optional
        Where stores live; defaults to ``cache_dir()/activations``.
    device : str, optional
    progress : bool
    split_glued : bool
        Word level: pool each word over its core's subwords only (see ``extract``). False keeps the
        stores apart (``-keepglued`` in the folder name).
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the forward pass (``extract``); part of the store's key and folder name.
        ``"auto"`` (default): bfloat16 on a CPU with native bfloat16 instructions, float32 elsewhere
        (``resolve_precision``); pass ``"float32"`` for the exact forward pass.

    Returns
    -------
    store : ActivationStore
        Reused when a finished store with the same metadata, the same weights (``models.model_identity``)
        and valid checksums exists; rebuilt (with a warning saying why) when it is corrupt, truncated or
        made from other inputs. While another process builds the same store, this call waits for it
        and then reuses its store.
    """
    task_obj = task if isinstance(task, Task) else load_task(task, budget=budget, eval_budget=eval_budget, seed=seed)
    finetuned = None
    if model.endswith("+ft"):  # "minilm+ft": minilm fine-tuned on this (sentence) task, made once and cached
        from .finetune import finetuned_for

        finetuned = finetuned_for(model, task_obj, seed=seed, stores_root=root, device=device, progress=progress)
        model = finetuned.name  # "minilm+ft-<key>": stores are keyed by the fine-tune that made them
    data = task_obj.split(split)
    if len(data) == 0:
        raise ValueError(f"the {split} split of {task_obj.name!r} is empty; nothing to extract")
    precision = resolve_precision(precision, device)
    kind = model_kind(model)
    agg_key = aggregation if aggregation != "auto" else (f"auto-{kind}" if kind else "auto")
    if task_obj.level == "word" and not split_glued:
        agg_key += "-keepglued"
    path = store_path(
        model,
        task_obj.name,
        split,
        aggregation=agg_key,
        budget=budget,
        eval_budget=eval_budget,
        seed=seed,
        dtype=dtype,
        precision=precision,
        root=root,
    )
    # None: only the loaded model can tell (an unresolved hub commit)
    identity = finetuned.meta["weights_sha256_all"] if finetuned is not None else model_identity(model)
    expected = {
        "model": model,
        "task": task_obj.name,
        "split": split,
        "dtype": dtype,
        "precision": precision,
        "data_sha256": _texts_sha256(data),
        "model_sha256": identity,
    }
    undecided = None
    if task_obj.level == "word":
        expected["split_glued"] = bool(split_glued)  # stores made before the option existed are rebuilt
    if path.exists():
        try:
            store = ActivationStore.open(path, verify=True)
            recorded = {"precision": "float32", **store.meta}  # stores made before the field were float32
            diff = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
            if not diff:
                return store
            if identity is None and set(diff) == {"model_sha256"}:
                undecided = store  # decided below, once the loaded model names its weights
            else:
                warnings.warn(f"activation store {path} was made from other inputs {diff}; recomputing", stacklevel=2)
        except StoreError as exc:
            warnings.warn(f"activation store {path} is unusable ({exc}); recomputing", stacklevel=2)
    if finetuned is not None:
        loaded = finetuned.encoder(device=device)
    else:
        loaded = _cached_model(model, device, identity)
    if undecided is not None:
        if undecided.meta["model_sha256"] == loaded.source_sha256:
            return undecided
        warnings.warn(
            f"activation store {path} was made from other weights ({undecided.meta['model_sha256']}, "
            f"now {loaded.source_sha256}); recomputing",
            stacklevel=2,
        )
    meta = {"task": task_obj.name, "split": split, "budget": budget, "eval_budget": eval_budget, "seed": seed}
    return build_store(
        loaded,
        data,
        path,
        level=task_obj.level,
        aggregation=aggregation,
        dtype=dtype,
        meta=meta,
        batch_size=batch_size,
        progress=progress,
        split_glued=split_glued,
        precision=precision,
    )


def task_stores(
    model: str,
    task: str,
    *,
    token_budget: int | None = None,
    sentence_budget: int | None = None,
    eval_budget: int | None = None,
    task_budgets: Mapping[str, int] | None = None,
    seed: int = 0,
    splits: Sequence[str] = ("train", "dev", "test"),
    **kwargs: Any,
) -> dict[str, ActivationStore]:
    """Stores of several splits of one task under experiment-wide budgets (see ``data.budgets_for``).

    Parameters
    ----------
    model, task : str
    token_budget, sentence_budget, eval_budget : int, optional
        Train tokens (word tasks), train sentences and dev/test sentences (sentence tasks).
    task_budgets : mapping of str to int, optional
        Train budgets of single tasks, overriding ``token_budget`` / ``sentence_budget``.
    seed : int
    splits : sequence of str
    **kwargs
        Passed to ``get_activations`` (``aggregation``, ``dtype``, ``precision`` (default ``"auto"``),
        ``root``, ``device``, ``progress``).

    Returns
    -------
    stores : dict of str to ActivationStore
        Keyed by split name.
    """
    from .data import budgets_for

    b = budgets_for(
        task,
        token_budget=token_budget,
        sentence_budget=sentence_budget,
        eval_budget=eval_budget,
        task_budgets=task_budgets,
    )
    task_obj = load_task(task, seed=seed, **b)
    out = {}
    for split in splits:
        # the path is keyed on the budgets, so pass them although the Task already applied them
        out[split] = get_activations(model, task_obj, split, seed=seed, **b, **kwargs)
    return out

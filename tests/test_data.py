from collections import Counter

import pytest

from utils.data import DataError, budgets_for, load_task, sentence_task_from_tsv, split_items, word_task_from_files


def test_pos_task_is_the_ptb_sample_with_41_tags():
    task = load_task("pos")
    assert task.level == "word"
    n_sent = len(task.train) + len(task.dev) + len(task.test)
    assert n_sent == 3914
    assert task.train.n_items + task.dev.n_items + task.test.n_items == 81147
    tags = {t for split in (task.train, task.dev, task.test) for labs in split.labels for t in labs}
    assert len(tags) == 41
    for words, labs in zip(task.train.texts, task.train.labels):
        assert len(words) == len(labs)


def test_splits_are_deterministic_and_disjoint():
    a, b = load_task("polarity", seed=3), load_task("polarity", seed=3)
    assert a.test.texts == b.test.texts
    assert load_task("polarity", seed=4).test.texts != a.test.texts
    assert not set(a.train.texts) & set(a.test.texts)


def test_budget_takes_a_prefix_of_whole_sentences_and_leaves_test_alone():
    full = load_task("pos")
    small = load_task("pos", budget=1000, eval_budget=300)
    assert small.train.n_items <= 1000 and small.train.n_items > 900
    assert small.train.texts == full.train.texts[: len(small.train)]
    assert small.test.texts == full.test.texts[: len(small.test)]
    sent = load_task("sentiment", budget=50)
    assert len(sent.train) == 50


SHARED = dict(token_budget=1000, sentence_budget=50, eval_budget=30)


def test_task_budgets_override_the_train_budget_of_the_named_tasks_only():
    per_task = {"tweets": 120, "pos": 2000}
    assert budgets_for("tweets", **SHARED, task_budgets=per_task) == {"budget": 120, "eval_budget": 30}
    assert budgets_for("pos", **SHARED, task_budgets=per_task) == {"budget": 2000, "eval_budget": None}
    assert budgets_for("sentiment", **SHARED, task_budgets=per_task) == {"budget": 50, "eval_budget": 30}
    assert budgets_for("ner", **SHARED, task_budgets=per_task) == {"budget": 1000, "eval_budget": None}
    assert budgets_for("ner", **SHARED) == budgets_for("ner", **SHARED, task_budgets={})


def test_a_larger_task_budget_extends_the_same_train_prefix_and_keeps_dev_and_test():
    shared = load_task("tweets", seed=0, **budgets_for("tweets", **SHARED))
    larger = load_task("tweets", seed=0, **budgets_for("tweets", **SHARED, task_budgets={"tweets": 120}))
    assert (len(shared.train), len(larger.train)) == (50, 120)
    assert larger.train.texts[:50] == shared.train.texts
    assert larger.dev.texts == shared.dev.texts and larger.test.texts == shared.test.texts


@pytest.mark.parametrize("value", [0, -5, 2.5, "6000", True])
def test_a_task_budget_that_is_not_a_positive_integer_is_refused(value):
    with pytest.raises(ValueError, match=r"task_budgets\['tweets'\] must be a positive number"):
        budgets_for("tweets", **SHARED, task_budgets={"tweets": value})


def test_a_task_budget_for_an_unknown_task_is_refused_not_ignored():
    with pytest.raises(KeyError, match="unknown task 'tweet'"):
        budgets_for("pos", **SHARED, task_budgets={"tweet": 6000})


@pytest.mark.parametrize(
    "name,n,classes",
    [
        ("sentiment", 10_605, {"positive", "negative"}),
        ("polarity", 4_000, {"positive", "negative"}),
        ("uncertainty", 3_000, {"certain", "uncertain"}),
        ("tweets", 38_158, {"negative", "neutral", "positive"}),
    ],
)
def test_sentence_tasks(name, n, classes):
    task = load_task(name)
    total = len(task.train) + len(task.dev) + len(task.test)
    assert task.level == "sentence"
    assert total <= n and total > 0.95 * n  # sentiment drops zero-rated sentences
    assert set(task.classes) == classes
    counts = Counter(task.train.labels)
    assert min(counts.values()) > 0.1 * len(task.train)


def test_unknown_task_names_the_alternatives():
    with pytest.raises(KeyError, match="Offline tasks: pos"):
        load_task("ccg")


def test_hub_task_offline_gives_a_clear_error():
    with pytest.raises(ConnectionError, match="needs internet access.*Offline tasks"):
        load_task("mrpc")


def _write(tmp_path, sentences, labels):
    s, l = tmp_path / "sents.txt", tmp_path / "labels.txt"
    s.write_text("\n".join(sentences) + "\n")
    l.write_text("\n".join(labels) + "\n")
    return s, l


def test_word_files_round_trip(tmp_path):
    sents = [f"the cat {i} sat" for i in range(20)]
    labs = ["DT NN CD VBD"] * 20
    task = word_task_from_files(*_write(tmp_path, sents, labs))
    assert task.train.n_items + task.dev.n_items + task.test.n_items == 80
    assert set(task.classes) == {"DT", "NN", "CD", "VBD"}


def test_word_files_with_wrong_line_count(tmp_path):
    with pytest.raises(DataError, match="5 sentences but 4 label lines"):
        word_task_from_files(*_write(tmp_path, ["a b"] * 5, ["X Y"] * 4))


def test_word_files_with_wrong_token_count(tmp_path):
    with pytest.raises(DataError, match="sentence 2 has 3 words but 2 labels"):
        word_task_from_files(*_write(tmp_path, ["a b", "a b c", "a"], ["X Y", "X Y", "X"]))


def test_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="no sentences"):
        word_task_from_files(*_write(tmp_path, [], []))
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\n")
    with pytest.raises(DataError, match="empty"):
        sentence_task_from_tsv(tsv)
    with pytest.raises(DataError, match="empty"):
        split_items([], [])


def test_tsv_reading_and_missing_columns(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"text number {i}\t{i % 2}\n" for i in range(30)))
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\].*text_columns="):
        sentence_task_from_tsv(tsv)
    task = sentence_task_from_tsv(tsv, text_columns=["sentence"])
    assert len(task.train) + len(task.dev) + len(task.test) == 30
    assert set(task.classes) == {"0", "1"}


def test_non_utf8_input_names_the_file_line_and_column(tmp_path):
    s, l = tmp_path / "sents.txt", tmp_path / "labels.txt"
    s.write_bytes("a b\nc d\ncaf\xe9 e\n".encode("latin-1"))
    l.write_text("X Y\nX Y\nX Y\n")
    with pytest.raises(DataError, match=r"sents\.txt: line 3, column 4 is not valid UTF-8 \(byte 0xe9\).*iconv"):
        word_task_from_files(s, l)
    tsv = tmp_path / "d.tsv"
    tsv.write_bytes(b"text\tlabel\n" + b"".join(f"ok {i}\t1\n".encode() for i in range(5)) + b"na\xefve\t0\n")
    with pytest.raises(DataError, match=r"d\.tsv: line 7, column 3 is not valid UTF-8"):
        sentence_task_from_tsv(tsv)


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    tsv = tmp_path / "bom.tsv"
    tsv.write_bytes("\ufefftext\tlabel\n".encode() + "".join(f"café {i}\t{i % 2}\n" for i in range(10)).encode())
    task = sentence_task_from_tsv(tsv)
    assert any("café" in t for t in task.train.texts)


@pytest.mark.parametrize("name", ["..", "../escape", "a/b", "", " spaced", ".hidden", "x" * 200])
def test_unsafe_task_names_are_refused(tmp_path, name):
    from utils.data import Split, Task

    split = Split([["a"]], [["X"]])
    with pytest.raises(ValueError, match="cannot be used as a folder name"):
        Task(name, "word", split, split, split)
    with pytest.raises(ValueError, match="cannot be used as a folder name"):
        word_task_from_files(*_write(tmp_path, ["a b"] * 5, ["X Y"] * 5), name=name)

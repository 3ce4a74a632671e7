"""Pretrained and fine-tuned side by side: the run lists, the comparison tables, the reading, the figures.

Everything here works on small hand-made tables (no model is loaded or trained): the numbers a
comparison table should hold are computed independently in each test, and the reading is checked
for what it must say ("higher after fine-tuning, as in the paper", "unlike the paper", the tally).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from figure_text import visible_texts
from PIL import Image

from utils import plots, report


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# run lists


def test_runs_add_the_fine_tuned_model_on_sentence_tasks_only_next_to_its_base():
    runs = report.analysis_runs(
        ["mpnet", "smollm2"], ["pos", "sentiment", "uncertainty"], finetuned=["mpnet"],
        sentence_tasks=["sentiment", "uncertainty"],
    )  # fmt: skip
    assert runs == [
        ("mpnet", "pos"),
        ("mpnet", "sentiment"),
        ("mpnet", "uncertainty"),
        ("mpnet+ft", "sentiment"),
        ("mpnet+ft", "uncertainty"),
        ("smollm2", "pos"),
        ("smollm2", "sentiment"),
        ("smollm2", "uncertainty"),
    ]
    assert not any(m.endswith("+ft") and t == "pos" for m, t in runs)  # word-level tasks never fine-tuned
    assert report.finetuned_pairs(runs) == [
        ("mpnet", "mpnet+ft", "sentiment"),
        ("mpnet", "mpnet+ft", "uncertainty"),
    ]


def test_an_empty_finetuned_list_gives_the_runs_of_before():
    models, tasks = ["minilm"], ["pos", "sentiment"]
    runs = report.analysis_runs(models, tasks, finetuned=[], sentence_tasks=["sentiment"])
    assert runs == [(m, t) for m in models for t in tasks]
    assert report.finetuned_pairs(runs) == []
    # a notebook whose tasks hold no sentence task (notebook 02 with redundancy_tasks = ["pos"]) adds nothing
    assert report.analysis_runs(models, ["pos"], finetuned=["minilm"], sentence_tasks=["sentiment"]) == [
        ("minilm", "pos")
    ]


def test_finetune_tasks_limits_which_sentence_tasks_are_fine_tuned():
    """make reproduce analyses five tasks but fine-tunes MPNet on two of them (finetune_tasks)."""
    tasks = ["pos", "sentiment", "polarity", "uncertainty"]
    sentence = ["sentiment", "polarity", "uncertainty"]
    runs = report.analysis_runs(
        ["mpnet"], tasks, finetuned=["mpnet"], sentence_tasks=sentence, finetune_tasks=["sentiment", "uncertainty"]
    )
    assert runs == [("mpnet", t) for t in tasks] + [("mpnet+ft", "sentiment"), ("mpnet+ft", "uncertainty")]
    # None is every sentence task, as before the parameter existed
    everything = report.analysis_runs(["mpnet"], tasks, finetuned=["mpnet"], sentence_tasks=sentence)
    assert [t for m, t in everything if m == "mpnet+ft"] == sentence
    with pytest.raises(ValueError, match=r"finetune_tasks names \['pos'\], which are not among sentence_tasks"):
        report.analysis_runs(["mpnet"], tasks, finetuned=["mpnet"], sentence_tasks=sentence, finetune_tasks=["pos"])


def test_a_fine_tuned_base_must_be_among_the_models_and_named_without_suffix():
    with pytest.raises(ValueError, match=r"not among models \['minilm'\].*add the base to models"):
        report.analysis_runs(["minilm"], ["sentiment"], finetuned=["mpnet"], sentence_tasks=["sentiment"])
    with pytest.raises(ValueError, match="write the base name"):
        report.analysis_runs(["minilm"], ["sentiment"], finetuned=["minilm+ft"], sentence_tasks=["sentiment"])


def test_the_suffix_is_the_one_extraction_understands():
    from utils import finetune

    assert report.FT_SUFFIX == finetune.FT_SUFFIX
    assert all(finetune.is_finetuned_name(m) for _, m, _ in report.finetuned_pairs([("a", "s"), ("a+ft", "s")]))


# ---------------------------------------------------------------------------------------------
# comparison tables


def _cka(adjacent: list[float]) -> np.ndarray:
    """A symmetric layer × layer matrix with the given neighbour similarities and 0.1 elsewhere."""
    n = len(adjacent) + 1
    m = np.full((n, n), 0.1)
    np.fill_diagonal(m, 1.0)
    for i, v in enumerate(adjacent):
        m[i, i + 1] = m[i + 1, i] = v
    return m


def _general_tables() -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    cka = {
        ("minilm", "sentiment"): _cka([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
        ("minilm+ft", "sentiment"): _cka([0.9, 0.8, 0.7, 0.9, 0.95, 0.99]),
    }
    kept, share = [], []
    for model, pct, drop in (
        ("minilm", 60.0, [50, 40, 30, 20, 10, 5, 0]),
        ("minilm+ft", 40.0, [50, 40, 30, 60, 70, 80, 90]),
    ):
        for t in (0.2, 0.3):
            kept.append(
                {"model": model, "task": "sentiment", "threshold": t, "pct_kept": pct + (10 if t == 0.2 else 0)}
            )
            share += [
                {"model": model, "task": "sentiment", "threshold": t, "layer": i, "pct_redundant": d - (5 if t == 0.2 else 0)}
                for i, d in enumerate(drop)
            ]  # fmt: skip
    return cka, pd.DataFrame(kept), pd.DataFrame(share)


def test_general_changes_read_the_upper_half_at_the_reference_threshold():
    cka, kept, share = _general_tables()
    pairs = [("minilm", "minilm+ft", "sentiment")]
    changes = report.finetune_general_changes(pairs, cka, kept, share, reference_threshold=0.3).set_index("measure")
    # 6 neighbour pairs: the upper half is the last 3
    assert changes.loc["upper_adjacent_cka", "pretrained"] == pytest.approx(np.mean([0.6, 0.5, 0.4]))
    assert changes.loc["upper_adjacent_cka", "finetuned"] == pytest.approx(np.mean([0.9, 0.95, 0.99]))
    # 7 layers: the upper half is layers 3..6, read at t = 0.3 (not 0.2)
    assert changes.loc["upper_pct_dropped", "pretrained"] == pytest.approx(np.mean([20, 10, 5, 0]))
    assert changes.loc["upper_pct_dropped", "finetuned"] == pytest.approx(np.mean([60, 70, 80, 90]))
    assert changes.loc["pct_kept_clustering", ["pretrained", "finetuned"]].tolist() == [60.0, 40.0]
    assert set(changes["n_layers"]) == {7}


def test_task_and_transfer_changes_pick_the_best_layer_the_mean_lca_set_and_the_selected_layer():
    rows = []
    for model, best in (("minilm", 5), ("minilm+ft", 6)):
        for layer in range(7):
            rows.append({"model": model, "task": "sentiment", "layer": layer, "mode": "independent",
                         "score": 0.9 if layer == best else 0.6})  # fmt: skip
            rows.append({"model": model, "task": "sentiment", "layer": layer, "mode": "incremental", "score": 0.95})
        rows.append({"model": model, "task": "sentiment", "layer": 6, "mode": "oracle", "score": 0.99})
    task_layers = pd.DataFrame(rows)
    minimal = pd.DataFrame(
        [
            {"model": m, "task": "sentiment", "seed": s, "ordering": o, "pct_kept": p}
            for m, ps in (("minilm", (2.0, 4.0)), ("minilm+ft", (0.1, 0.3)))
            for s, p in enumerate(ps)
            for o, p in (("lca", p), ("random", 50.0))
        ]
    )
    pairs = [("minilm", "minilm+ft", "sentiment")]
    task = report.finetune_task_changes(pairs, task_layers, minimal).set_index("measure")
    assert task.loc["best_layer", ["pretrained", "finetuned"]].tolist() == [5, 6]  # the oracle row is not a layer
    assert task.loc["minimal_pct_kept", ["pretrained", "finetuned"]].tolist() == pytest.approx([3.0, 0.2])
    transfer = pd.DataFrame(
        [
            {"model": "minilm", "task": "sentiment", "selected_layer": 6, "pct_kept": 5.0, "n_layers": 7},
            {"model": "minilm+ft", "task": "sentiment", "selected_layer": 3, "pct_kept": 1.0, "n_layers": 7},
            {"model": "minilm", "task": "pos", "selected_layer": 2, "pct_kept": 3.0, "n_layers": 7},
        ]
    )
    tr = report.finetune_transfer_changes(pairs, transfer).set_index("measure")
    assert tr.loc["selected_layer", ["pretrained", "finetuned"]].tolist() == [6, 3]
    assert tr.loc["transfer_pct_kept", ["pretrained", "finetuned"]].tolist() == [5.0, 1.0]
    assert report.finetune_transfer_changes([("minilm", "minilm+ft", "pos")], transfer).empty  # no fine-tuned row


# ---------------------------------------------------------------------------------------------
# the reading


def _hand_made_changes() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # agrees with the paper: upper layers more alike after fine-tuning
            {"base": "minilm", "task": "sentiment", "measure": "upper_adjacent_cka", "pretrained": 0.50, "finetuned": 0.90},
            # disagrees: the minimal set grows
            {"base": "minilm", "task": "sentiment", "measure": "minimal_pct_kept", "pretrained": 0.20, "finetuned": 1.50},
            # the LayerSelector stops at layer 3 of 0..6
            {"base": "minilm", "task": "sentiment", "measure": "selected_layer", "pretrained": 6, "finetuned": 3, "n_layers": 7},
            # a paired interval that holds 0 reads as "about the same", whatever the points say
            {"base": "minilm", "task": "sentiment", "measure": "test_accuracy", "pretrained": 0.80, "finetuned": 0.83,
             "pretrained_low": 0.76, "pretrained_high": 0.84, "finetuned_low": 0.79, "finetuned_high": 0.87,
             "diff": 0.03, "diff_low": -0.01, "diff_high": 0.07},
            # a second pair: a second upper-layer comparison, this one unlike the paper
            {"base": "mpnet", "task": "uncertainty", "measure": "upper_adjacent_cka", "pretrained": 0.80, "finetuned": 0.60},
            {"base": "mpnet", "task": "uncertainty", "measure": "not_a_measure", "pretrained": 1.0, "finetuned": 2.0},
        ]
    )  # fmt: skip


def test_reading_says_what_changed_and_whether_the_paper_found_it():
    text = report.describe_finetuning(_hand_made_changes())
    lines = text.splitlines()
    line = next(x for x in lines if "minilm · sentiment" in x and "0.500" in x)
    assert "0.500 → 0.900" in line and "higher after fine-tuning, as in the paper" in line
    line = next(x for x in lines if "mpnet · uncertainty" in x)
    assert "0.800 → 0.600" in line and "lower after fine-tuning, unlike the paper" in line
    line = next(x for x in lines if "0.20 → 1.50" in x)
    assert "higher after fine-tuning, unlike the paper" in line
    line = next(x for x in lines if "6 → 3" in x)
    assert "stops below its last layer (6), as in the paper" in line
    line = next(x for x in lines if "0.800 [0.760, 0.840] → 0.830 [0.790, 0.870]" in x)
    assert "difference +0.030 [-0.010, +0.070], paired" in line and "about the same" in line
    assert "not_a_measure" not in text
    assert "upper layers become more redundant after fine-tuning: agrees in 1 of 2" in text
    assert "fewer neurons are needed after fine-tuning: agrees in 0 of 1" in text


def test_a_paired_interval_beyond_zero_decides_the_direction():
    row = {"base": "b", "task": "t", "measure": "test_accuracy", "pretrained": 0.80, "finetuned": 0.80,
           "diff": 0.02, "diff_low": 0.01, "diff_high": 0.03}  # fmt: skip
    assert "higher after fine-tuning" in report.describe_finetuning(pd.DataFrame([row]))
    small = {"base": "b", "task": "t", "measure": "upper_adjacent_cka", "pretrained": 0.80, "finetuned": 0.81}
    assert "about the same (within 0.020)" in report.describe_finetuning(pd.DataFrame([small]))


def test_reading_of_the_layers_fine_tuning_changed():
    layer_change = pd.DataFrame(
        {"base": "minilm", "task": "sentiment", "layer": range(7), "cka": [np.nan, 0.99, 0.97, 0.87, 0.72, 0.14, 0.04]}
    )
    text = report.describe_finetuning(_hand_made_changes().iloc[:0], layer_change=layer_change)
    line = next(x for x in text.splitlines() if x.startswith("- minilm · sentiment"))
    assert "layer(s) [0] undefined" in line
    # lower half = layers 0..2 (layer 0 undefined): mean of 0.99, 0.97; upper half = layers 3..6
    assert (
        f"mean {np.mean([0.99, 0.97]):.2f} in the lower half, {np.mean([0.87, 0.72, 0.14, 0.04]):.2f} in the upper"
        in line
    )
    assert "changed the upper layers most (least alike: layer 6, 0.04)" in line
    assert "No pretrained / fine-tuned pair to compare." in text


def test_reading_refuses_a_table_without_its_columns():
    with pytest.raises(ValueError, match=r"missing \['finetuned'\]"):
        report.describe_finetuning(pd.DataFrame({"base": ["b"], "task": ["t"], "measure": ["x"], "pretrained": [1.0]}))


def test_tables_built_from_notebook_numbers_feed_the_reading():
    cka, kept, share = _general_tables()
    changes = report.finetune_general_changes(
        [("minilm", "minilm+ft", "sentiment")], cka, kept, share, reference_threshold=0.3
    )
    text = report.describe_finetuning(changes)
    assert "upper layers become more redundant after fine-tuning: agrees in 2 of 2" in text
    assert "t = 0.3" in text


# ---------------------------------------------------------------------------------------------
# figures: legible at reader width (1,000 px shown; text at 8 pt or more), no empty panel


def _layer_table(pairs: int) -> pd.DataFrame:
    rows = []
    for p in range(pairs):
        for layer in range(13):
            for series, value in (
                ("CKA(pretrained l, fine-tuned l)", 1 - layer / 13),
                ("neighbours, pretrained: CKA(l-1, l)", 0.8),
                ("neighbours, fine-tuned: CKA(l-1, l)", 0.7 + 0.02 * layer),
            ):
                rows.append({"base": "mpnet", "task": f"task{p}", "series": series, "layer": layer,
                             "value": np.nan if layer == 0 else value})  # fmt: skip
    return pd.DataFrame(rows)


def _probe_table(pairs: int) -> pd.DataFrame:
    rows = []
    for p in range(pairs):
        for model in ("pretrained", "fine-tuned"):
            for mode in ("independent", "incremental"):
                rows += [{"base": "mpnet", "task": f"task{p}", "model": model, "layer": layer, "mode": mode,
                          "score": 0.6 + 0.02 * layer} for layer in range(13)]  # fmt: skip
            rows.append(
                {"base": "mpnet", "task": f"task{p}", "model": model, "layer": 12, "mode": "oracle", "score": 0.85}
            )
        rows.append({"base": "mpnet", "task": f"task{p}", "model": "fine-tuned", "layer": np.nan, "mode": "classifier",
                     "score": 0.9})  # fmt: skip
    return pd.DataFrame(rows)


FIGURES = {
    "finetune_layer_curves": lambda n: plots.finetune_layer_curves(_layer_table(n), title="What fine-tuning changed"),
    "finetune_probe_curves": lambda n: plots.finetune_probe_curves(_probe_table(n), title="Layer probes, dev"),
}


@pytest.mark.parametrize("n_pairs", [1, 2, 4])
@pytest.mark.parametrize("name", list(FIGURES))
def test_side_by_side_figures_stay_legible_at_reader_width(name, n_pairs, tmp_path):
    fig = FIGURES[name](n_pairs)
    path = plots.save(fig, tmp_path / f"{name}.png")
    with Image.open(path) as image:
        width_px = image.size[0]
    assert width_px <= 1511
    shrink = min(1.0, 1000 / width_px) * plots.DPI / 96
    sizes = {t.get_text(): t.get_fontsize() * shrink for t in visible_texts(fig)}
    smallest = min(sizes, key=sizes.get)
    assert sizes[smallest] >= 8.0, f"{name}: {smallest!r} at {sizes[smallest]:.1f} pt"
    axes = fig.axes
    assert len(axes) == n_pairs  # one panel per base · task, none empty
    for ax in axes:
        assert ax.has_data() and ax.get_xlabel() and ax.get_ylabel()


def test_probe_figure_draws_both_models_and_the_classifier():
    fig = plots.finetune_probe_curves(_probe_table(1), title="t")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith("pretrained") and labels[-1] == "fine-tuned classifier itself"
    assert {"pretrained: independent", "fine-tuned: incremental", "fine-tuned: oracle (all layers)"} <= set(labels)
    ax = fig.axes[0]
    assert 0.9 in {line.get_ydata()[0] for line in ax.get_lines()}  # the classifier's dev accuracy, as a line


def test_layer_figure_colours_each_model_and_the_comparison_of_both_in_black():
    fig = plots.finetune_layer_curves(_layer_table(1), title="t")
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert colours == {
        "CKA(pretrained l, fine-tuned l)": "0.1",
        "neighbours, pretrained: CKA(l-1, l)": "C0",
        "neighbours, fine-tuned: CKA(l-1, l)": "C3",
    }


def test_layer_figure_needs_its_columns():
    with pytest.raises(ValueError, match="finetune_layer_curves needs a tidy table"):
        plots.finetune_layer_curves(pd.DataFrame({"layer": [0], "value": [1.0]}), title="t")

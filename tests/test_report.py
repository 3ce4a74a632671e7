"""Tests for utils.report: the readings are computed from small hand-made tables, the claims from their bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.report import (
    PAPER_CLAIMS,
    check_runs,
    claims_side_by_side,
    describe_cc_sweep,
    describe_general_redundancy,
    describe_norms,
    describe_task_redundancy,
    general_claim_verdicts,
    markdown_table,
    oracle_score,
    read_artifact,
    replace_section,
    reproduction_report,
    seed_spread,
    task_claim_table,
    task_claim_verdicts,
    transfer_claim_verdicts,
    transfer_claims,
    warnings_as_notes,
)

# ---------------------------------------------------------------------------------------------
# the paper's claims


def test_claims_hold_the_papers_numbers_and_check_each_bound():
    assert PAPER_CLAIMS["general"].bound("pct_redundant") == 85
    assert PAPER_CLAIMS["task"].bound("pct_removable") == 92
    assert PAPER_CLAIMS["transfer"].bound("pct_of_oracle") == 97
    assert PAPER_CLAIMS["transfer"].bound("pct_kept") == 10
    table = pd.DataFrame({"pct_of_oracle": [98.0, 97.0, 99.0, 90.0], "pct_kept": [5.0, 10.0, 12.0, 1.0]})
    checked = PAPER_CLAIMS["transfer"].check(table)
    assert checked["pct_of_oracle_ok"].tolist() == [True, True, True, False]
    assert checked["pct_kept_ok"].tolist() == [True, True, False, True]
    assert checked["claim_holds"].tolist() == [True, True, False, False]


def test_transfer_claims_name_each_bound():
    table = pd.DataFrame(
        {"model": ["a", "b"], "task": ["t", "t"], "pct_kept": [3.0, 20.0], "pct_of_oracle": [96.0, 99.0]}
    )
    c = transfer_claims(table)
    assert c["keeps_97pct"].tolist() == [False, True]
    assert c["at_most_10pct_neurons"].tolist() == [True, False]
    assert not c["claim_holds"].any()


# ---------------------------------------------------------------------------------------------
# reading what an earlier notebook wrote


def test_read_artifact_names_the_notebook_that_makes_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 02_general_redundancy writes it"):
        read_artifact(tmp_path, "general_redundancy.csv")
    pd.DataFrame({"model": ["m"], "task": ["t"]}).to_csv(tmp_path / "minimal_neurons.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['ordering', 'pct_kept', 'score'\].*03_task_specific"):
        read_artifact(tmp_path, "minimal_neurons.csv")
    with pytest.raises(ValueError, match="unknown artefact"):
        read_artifact(tmp_path, "nothing.csv")
    want = pd.DataFrame({"model": ["m"], "task": ["t"], "threshold": [0.3], "pct_kept": [40.0]})
    want.to_csv(tmp_path / "general_redundancy.csv", index=False)
    pd.testing.assert_frame_equal(read_artifact(tmp_path, "general_redundancy.csv"), want)


def test_check_runs_names_the_missing_runs():
    table = pd.DataFrame({"model": ["m", "m"], "task": ["pos", "sst"], "split": ["train", "train"]})
    check_runs(table, "activation_stores.csv", [("m", "pos"), ("m", "sst")])
    with pytest.raises(ValueError, match=r"no rows for \[\('m', 'pos', 'dev'\)\].*01_activation_extraction"):
        check_runs(
            table,
            "activation_stores.csv",
            [("m", "pos", "train"), ("m", "pos", "dev")],
            keys=("model", "task", "split"),
        )


def test_oracle_score_reads_the_single_oracle_row():
    tl = _task_layers()
    assert oracle_score(tl, "m", "pos") == pytest.approx(0.9)
    with pytest.raises(ValueError, match="expected one oracle row for m · sst"):
        oracle_score(tl, "m", "sst")


# ---------------------------------------------------------------------------------------------
# notebook 01


def test_norm_reading_names_the_peak_per_run():
    norms = pd.DataFrame(
        {
            "model": "m",
            "task": ["pos"] * 3 + ["sst"] * 3,
            "layer": [0, 1, 2] * 2,
            "mean_norm": [1.0, 5.5, 2.25, 3.0, 2.0, np.inf],
        }
    )
    lines = describe_norms(norms).splitlines()
    assert lines[0] == (
        "m · pos: mean norm 1.00 at the embeddings, peak 5.50 at layer 1, 2.25 at the last layer "
        "(3 layers; all finite: True)."
    )
    assert lines[1].startswith("m · sst: mean norm 3.00 at the embeddings, peak inf at layer 2")
    assert lines[1].endswith("all finite: False).")


# ---------------------------------------------------------------------------------------------
# notebook 02


def _tables(layer_share_by_layer, spans):
    kept = pd.DataFrame({"run": "m", "threshold": [0.1, 0.3, 0.5], "pct_kept": [90.0, 40.0, 12.0]})
    share = pd.DataFrame({"run": "m", "threshold": 0.3, "layer": np.arange(4), "pct_redundant": layer_share_by_layer})
    span_df = pd.DataFrame({"run": "m", "span": [1, 2, 3, 4], "n_clusters": spans})
    return kept, share, span_df


def test_reading_is_generated_from_the_numbers():
    banded = np.array([[1.0, 0.9, 0.5, 0.2], [0.9, 1.0, 0.8, 0.4], [0.5, 0.8, 1.0, 0.7], [0.2, 0.4, 0.7, 1.0]])
    kept, share, spans = _tables([60.0, 50.0, 20.0, 10.0], [8, 2, 0, 0])
    text = describe_general_redundancy(
        {"m": banded}, kept, share, spans, reference_threshold=0.3, same_unit={"m": 0.75}, constant_neurons={"m": 3}
    )
    assert "for 100% of layers the most similar other layer is a neighbour" in text
    assert "75% of them are one unit index repeated" in text
    assert "3 constant neurons stay as singletons" in text
    assert "40.0% kept at t = 0.3" in text and "15% or fewer remain from threshold 0.5 on" in text
    assert "lower half 55.0% vs upper half 15.0% redundant" in text
    assert "10 multi-neuron clusters; 80% lie in one layer, 100% span at most two" in text
    assert "differs" not in text

    # the opposite numbers give the opposite verdicts
    scrambled = np.array([[1.0, 0.1, 0.3, 0.9], [0.1, 1.0, 0.9, 0.1], [0.3, 0.9, 1.0, 0.2], [0.9, 0.1, 0.2, 1.0]])
    kept, share, spans = _tables([10.0, 20.0, 50.0, 60.0], [0, 1, 3, 6])
    kept["pct_kept"] = [95.0, 80.0, 60.0]
    text = describe_general_redundancy({"m": scrambled}, kept, share, spans, reference_threshold=0.3)
    assert text.count("differs") == 3
    assert "no threshold up to 0.5 leaves 15% or fewer" in text


def test_general_reading_takes_its_target_from_the_claim():
    kept, share, spans = _tables([60.0, 50.0, 20.0, 10.0], [8, 2, 0, 0])
    text = describe_general_redundancy({"m": np.eye(4)}, kept, share, spans, reference_threshold=0.3)
    assert "**85% of neurons are redundant**" in text
    text = describe_general_redundancy(
        {"m": np.eye(4)}, kept, share, spans, reference_threshold=0.3, paper_pct_redundant=50
    )
    assert "50% or fewer remain from threshold 0.3 on" in text


# ---------------------------------------------------------------------------------------------
# notebook 03


def _task_layers():
    rows = []
    for layer, (ind, inc, sel) in enumerate([(0.60, 0.60, 0.10), (0.85, 0.86, 0.30), (0.80, 0.895, 0.20)]):
        rows.append(
            {"model": "m", "task": "pos", "layer": layer, "mode": "independent", "score": ind, "selectivity": sel}
        )
        rows.append(
            {"model": "m", "task": "pos", "layer": layer, "mode": "incremental", "score": inc, "selectivity": 0.0}
        )
    rows.append({"model": "m", "task": "pos", "layer": 2, "mode": "oracle", "score": 0.9, "selectivity": np.nan})
    return pd.DataFrame(rows)


def _minimal_neurons():
    base = {"model": "m", "task": "pos", "neurons_total": 300, "oracle_score": 0.88}
    return pd.DataFrame(
        [
            {
                **base,
                "ordering": "lca",
                "neurons_kept": 15,
                "pct_kept": 5.0,
                "score": 0.87,
                "score_low": 0.85,
                "score_high": 0.89,
                "reached": True,
            },
            {
                **base,
                "ordering": "random",
                "neurons_kept": 60,
                "pct_kept": 20.0,
                "score": 0.86,
                "score_low": 0.8,
                "score_high": 0.9,
                "reached": True,
            },
            {
                **base,
                "ordering": "bottom",
                "neurons_kept": 300,
                "pct_kept": 100.0,
                "score": 0.7,
                "score_low": 0.6,
                "score_high": 0.8,
                "reached": False,
            },
            {
                **base,
                "ordering": "mean_difference",
                "neurons_kept": 30,
                "pct_kept": 10.0,
                "score": 0.86,
                "score_low": 0.8,
                "score_high": 0.9,
                "reached": True,
            },
        ]
    )


def test_task_reading_is_generated_from_the_tables():
    counts = pd.DataFrame({"model": "m", "task": "pos", "layer": [0, 1, 2], "count": [2, 9, 4]})
    text = describe_task_redundancy(_task_layers(), _minimal_neurons(), counts, delta=1.0)
    assert "The oracle reaches 0.900 dev accuracy" in text
    assert "best single layer is layer 1 (0.850)" in text
    # 0.9 * 0.99 = 0.891: layer 2's incremental probe (0.895) is the first to reach it
    assert "within 1% of the oracle at layer 2" in text
    assert "Selectivity peaks at layer 1 (0.300)" in text
    assert "keeps 15 of 300 neurons (5.0%, so 95.0% removable; the paper: at least 92%)" in text
    assert "scores 0.870 on test [0.850, 0.890] against the oracle's 0.880" in text
    assert "need 60 and all 300 (target not reached) neurons, the probe-free ranking 30" in text
    assert "sit in layers 1, 2, 0" in text
    assert "holds for 1 of 1 model × task pairs" in text and "fewer neurons than a random ordering in 1 of 1" in text

    # a looser tolerance reaches the oracle earlier; a larger set breaks the claim
    minimal = _minimal_neurons()
    minimal.loc[minimal.ordering == "lca", ["neurons_kept", "pct_kept"]] = [90, 30.0]
    text = describe_task_redundancy(_task_layers(), minimal, counts, delta=5.0)
    assert "within 5% of the oracle at layer 1" in text
    assert "holds for 0 of 1" in text and "fewer neurons than a random ordering in 0 of 1" in text


def test_task_claim_table_marks_the_lca_rows():
    claim = task_claim_table(_minimal_neurons())
    assert claim["ordering"].tolist() == ["lca"]
    assert claim["pct_removable"].tolist() == [95.0]
    assert claim["claim_holds"].tolist() == [True]
    assert claim["paper_claim"].iloc[0] == "≥ 92% removable"


# ---------------------------------------------------------------------------------------------
# notebook 04: the reproduction report


def test_reproduction_report_verdicts_follow_the_bounds():
    transfer = pd.DataFrame(
        {"model": ["a", "b"], "task": ["pos", "pos"], "pct_kept": [4.0, 12.5], "pct_of_oracle": [98.0, 95.5]}
    )
    general = pd.DataFrame(
        {
            "model": ["a", "a", "b"],
            "task": ["pos", "sst", "pos"],
            "threshold": [0.3, 0.3, 0.3],
            "pct_kept": [10.0, 14.0, 40.0],
        }
    )
    minimal = _minimal_neurons()
    text = reproduction_report(transfer, general=general, minimal=minimal)
    assert "a: 88% redundant; b: 60% redundant (mean over tasks): the claim **holds in part**" in text
    assert "remove 95.0–95.0% of the neurons (1 of 1 model × task pairs reach 92%): the claim **holds**" in text
    assert "keeps 95.5–98.0% of the oracle's test score with 4.00–12.50% of the neurons; 1 of 2" in text
    assert "  - b · pos: keeps 95.5% of the oracle (< 97%) and needs 12.5% of the neurons (> 10%)." in text
    # nothing met: "does not hold"
    text = reproduction_report(transfer.assign(pct_of_oracle=[90.0, 90.0]))
    assert "0 of 2 model × task pairs meet both bounds: the claim **does not hold**" in text
    assert "General redundancy" not in text


def test_reproduction_report_says_which_sentence_rows_are_fine_tuned():
    transfer = pd.DataFrame(
        {
            "model": ["a", "a", "a+ft"],
            "task": ["pos", "sst", "sst"],
            "pct_kept": [4.0, 2.0, 3.0],
            "pct_of_oracle": [98.0, 98.0, 99.0],
        }
    )
    text = reproduction_report(transfer)
    assert "for a also on a copy fine-tuned on each task (rows a+ft:" in text
    assert "not task-fine-tuned" not in text
    plain = reproduction_report(transfer[transfer.model == "a"])
    assert "sentence tasks use the pretrained (not task-fine-tuned) models" in plain
    assert "fine-tuned on each task" not in plain


def test_transfer_verdict_also_reads_macro_f1_and_says_where_it_differs():
    base = {
        "model": ["a", "a"],
        "task": ["pos", "ner"],
        "pct_kept": [3.0, 0.1],
        "pct_kept_min": [3.0, 0.1],
        "pct_kept_max": [3.0, 0.1],
        "ratio": [0.98, 0.984],
        "ratio_low": [0.975, 0.978],
        "ratio_high": [0.985, 0.99],
    }
    table = pd.DataFrame(
        {**base, "f1_ratio": [0.98, 0.17], "f1_ratio_low": [0.972, 0.15], "f1_ratio_high": [0.99, 0.19]}
    )
    v = transfer_claim_verdicts(table).set_index("task")
    assert v.loc["pos", "verdict"] == v.loc["ner", "verdict"] == "holds"  # the authors' reading: accuracy
    assert v.loc["pos", "macro_f1_verdict"] == "holds" and v.loc["ner", "macro_f1_verdict"] == "does not hold"
    assert "macro-F1" not in v.loc["pos", "decided_by"]
    assert "read on macro-F1 instead of accuracy: ratio [15.0, 19.0]% (does not hold)" in v.loc["ner", "decided_by"]
    assert "macro_f1_verdict" not in transfer_claim_verdicts(pd.DataFrame(base)).columns
    text = reproduction_report(table.assign(pct_of_oracle=[98.0, 98.4]))
    assert "  - a · ner: ratio [97.8, 99.0]%" in text and "1 model × task pair(s) read differently" in text
    assert "a · pos" not in text


def test_markdown_helpers():
    df = pd.DataFrame({"a": [1, 2], "b": [0.12345, np.nan]})
    assert markdown_table(df, digits=2).splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.12 |", "| 2 | – |"]
    text = "x\n<!-- s:start -->\nold\n<!-- s:end -->\ny"
    assert replace_section(text, "s", "new") == "x\n<!-- s:start -->\nnew\n<!-- s:end -->\ny"
    with pytest.raises(ValueError, match="no '<!-- t:start -->'"):
        replace_section(text, "t", "new")


# ---------------------------------------------------------------------------------------------
# verdicts from intervals (general and transfer claims) and the side-by-side table


def _sweep(model, task, rows, *, total=1000, constant=0):
    """cc_sweep-shaped rows: (threshold, neurons_kept, ratio, ratio_low, ratio_high) per clustering step."""
    out = [
        {
            "model": model,
            "task": task,
            "step": "oracle",
            "threshold": np.nan,
            "neurons_total": total,
            "neurons_constant": constant,
            "neurons_kept": total,
            "pct_removed_nonconstant": 0.0,
            "ratio": 1.0,
            "ratio_low": 1.0,
            "ratio_high": 1.0,
        }
    ]
    for t, kept, r, lo, hi in rows:
        out.append(
            {
                "model": model,
                "task": task,
                "step": "clustering",
                "threshold": t,
                "neurons_total": total,
                "neurons_constant": constant,
                "neurons_kept": kept,
                "pct_removed_nonconstant": 100 * (total - constant - kept) / (total - constant),
                "ratio": r,
                "ratio_low": lo,
                "ratio_high": hi,
            }
        )
    return out


def _sweep_table():
    return pd.DataFrame(
        # holds at t = 0.5 (90% removed, [0.975, 0.99]); t = 0.7 removes more but straddles
        _sweep("a", "pos", [(0.3, 300, 0.99, 0.98, 1.0), (0.5, 100, 0.985, 0.975, 0.99), (0.7, 50, 0.97, 0.95, 0.99)])
        # enough removed only at t = 0.7, whose interval straddles 0.97: inconclusive
        + _sweep("a", "sst", [(0.3, 400, 1.0, 0.99, 1.01), (0.7, 140, 0.975, 0.94, 1.0)])
        # enough removed only where the accuracy is lost for sure: does not hold
        + _sweep("b", "pos", [(0.3, 500, 0.99, 0.98, 1.0), (0.7, 120, 0.9, 0.85, 0.95), (0.9, 20, 0.6, 0.55, 0.65)])
        # never removes 85% of the 230 non-constant neurons (1000 with 770 constant): does not hold
        + _sweep("b", "sst", [(0.3, 200, 1.0, 0.99, 1.0), (0.9, 60, 0.99, 0.98, 1.0)], constant=770)
    )


def test_general_verdicts_follow_the_intervals():
    v = general_claim_verdicts(_sweep_table()).set_index(["model", "task"])
    assert v.loc[("a", "pos"), "verdict"] == "holds"
    assert v.loc[("a", "pos"), "threshold"] == 0.5
    assert v.loc[("a", "pos"), "max_removed_within"] == pytest.approx(90.0)
    assert v.loc[("a", "pos"), "max_removed_point"] == pytest.approx(95.0)  # t = 0.7 by its point estimate
    assert v.loc[("a", "sst"), "verdict"] == "inconclusive"
    assert v.loc[("a", "sst"), ("ratio_low", "ratio_high")].tolist() == [0.94, 1.0]
    assert v.loc[("b", "pos"), "verdict"] == "does not hold"
    assert v.loc[("b", "pos"), "threshold"] == 0.7  # of the failing ones, the interval reaching highest
    row = v.loc[("b", "sst")]
    assert row["verdict"] == "does not hold" and row["neurons_constant"] == 770
    assert row["pct_removed_nonconstant"] == pytest.approx(100 * 170 / 230)  # constants are not evidence
    assert "no threshold removes 85%" in row["decided_by"]
    # a looser tolerance turns the straddling case into a pass
    loose = general_claim_verdicts(_sweep_table(), tolerance_pct=90).set_index(["model", "task"])
    assert loose.loc[("a", "sst"), "verdict"] == "holds"
    with pytest.raises(ValueError, match="lacks columns"):
        general_claim_verdicts(_sweep_table().drop(columns="ratio_low"))


def test_general_sweep_reading_names_the_constant_neurons():
    text = describe_cc_sweep(general_claim_verdicts(_sweep_table()))
    assert "a · pos: clustering removes up to 90.0% (t = 0.5)" in text
    assert "**holds**" in text and "**inconclusive at this sample size**" in text
    assert "770 constant neurons are left out" in text


def _transfer_table():
    return pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "task": ["pos", "sst", "pos", "sst"],
            "pct_kept": [2.0, 9.0, 3.0, 4.0],
            "pct_of_oracle": [99.0, 98.0, 96.0, 98.5],
            "pct_kept_min": [1.0, 8.0, 2.0, 3.0],
            "pct_kept_max": [3.0, 11.0, 4.0, 5.0],
            "ratio": [0.99, 0.98, 0.96, 0.985],
            "ratio_low": [0.975, 0.97, 0.93, 0.96],
            "ratio_high": [1.0, 0.99, 0.965, 1.01],
        }
    )


def test_transfer_verdicts_need_both_bounds():
    v = transfer_claim_verdicts(_transfer_table()).set_index(["model", "task"])
    assert v.loc[("a", "pos"), "verdict"] == "holds"
    assert v.loc[("a", "sst"), ["accuracy_verdict", "size_verdict", "verdict"]].tolist() == [
        "holds",
        "inconclusive",
        "inconclusive",
    ]  # seeds on both sides of 10%
    assert v.loc[("b", "pos"), "verdict"] == "does not hold"  # [0.93, 0.965] lies below 0.97
    assert v.loc[("b", "sst"), "verdict"] == "inconclusive"
    no_spread = transfer_claim_verdicts(_transfer_table().drop(columns=["pct_kept_min", "pct_kept_max"]))
    assert no_spread.set_index(["model", "task"]).loc[("a", "sst"), "size_verdict"] == "holds"  # 9% ≤ 10%
    with pytest.raises(ValueError, match="interval columns"):
        transfer_claim_verdicts(_transfer_table().drop(columns="ratio_low"))


def test_side_by_side_table_and_report_use_the_interval_verdicts():
    general = general_claim_verdicts(_sweep_table())
    transfer = transfer_claim_verdicts(_transfer_table())
    table = claims_side_by_side(general, transfer)
    lines = table.splitlines()
    assert lines[0] == "| claim | paper | model · task | ours | decided by (95% intervals) | verdict |"
    assert len(lines) == 2 + len(general) + len(transfer)
    assert sum(PAPER_CLAIMS["general"].text in line for line in lines) == 4
    assert any("b · pos" in line and "[93.0, 96.5]" in line and "**does not hold**" in line for line in lines)
    with pytest.raises(ValueError, match="no verdict table"):
        claims_side_by_side()
    text = reproduction_report(_transfer_table(), cc_sweep=_sweep_table())
    assert "holds: 1; inconclusive at this sample size: 1; does not hold: 2" in text
    assert "clustering removes at most 90.0% of the non-constant neurons" in text
    assert "holds: 1; inconclusive at this sample size: 2; does not hold: 1" in text
    assert "meet both bounds" not in text  # no point verdict once intervals are there


# notebook 03: seeds and the claim read from intervals


def _seeded_lca(rows):
    """LCA rows of minimal_neurons: (seed, pct_kept, ratio, ratio_low, ratio_high) per seed."""
    return pd.DataFrame(
        [
            {
                "model": "m",
                "task": "pos",
                "ordering": "lca",
                "seed": s,
                "pct_kept": k,
                "ratio": r,
                "ratio_low": lo,
                "ratio_high": hi,
            }
            for s, k, r, lo, hi in rows
        ]
    )


@pytest.mark.parametrize(
    "rows, expected",
    [
        # every seed removes >= 92% and the whole ratio interval is >= 0.99
        ([(0, 5.0, 1.00, 0.995, 1.01), (1, 8.0, 0.999, 0.991, 1.005)], "holds"),
        # the interval straddles the tolerance 0.99
        ([(0, 5.0, 0.99, 0.97, 1.01), (1, 5.0, 0.995, 0.985, 1.004)], "inconclusive"),
        # the whole interval lies below the tolerance
        ([(0, 5.0, 0.95, 0.93, 0.97), (1, 5.0, 0.96, 0.94, 0.98)], "does not hold"),
        # the share removed is short of 92% (9% kept), however good the score
        ([(0, 9.0, 1.0, 0.995, 1.01)], "does not hold"),
        # seeds disagree: one holds, one does not
        ([(0, 5.0, 1.0, 0.995, 1.01), (1, 20.0, 1.0, 0.995, 1.01)], "inconclusive"),
    ],
)
def test_task_claim_verdicts_are_read_from_intervals(rows, expected):
    v = task_claim_verdicts(_seeded_lca(rows), delta=1.0)
    assert len(v) == 1
    row = v.iloc[0]
    assert row.verdict == expected
    assert row.n_seeds == len(rows) and row.tolerance == pytest.approx(0.99)
    assert row.pct_removable_min == 100 - max(r[1] for r in rows)
    assert row.ratio_low_min == min(r[3] for r in rows) and row.ratio_high_max == max(r[4] for r in rows)
    assert "92% removable within 1% of the oracle" in row.paper_claim
    assert row.deciding.count("seed ") == len(rows)


def test_task_claim_verdicts_use_the_tolerance_and_ignore_other_orderings():
    table = pd.concat(
        [_seeded_lca([(0, 5.0, 0.97, 0.96, 0.985)]), _seeded_lca([(0, 90.0, 0.5, 0.4, 0.6)]).assign(ordering="random")],
        ignore_index=True,
    )
    assert task_claim_verdicts(table, delta=1.0).verdict.tolist() == ["does not hold"]  # 0.985 < 0.99
    assert task_claim_verdicts(table, delta=5.0).verdict.tolist() == ["holds"]  # 0.96 >= 0.95
    assert "[0.960, 0.985] ≥ 0.950" in task_claim_verdicts(table, delta=5.0).deciding.iloc[0]
    with pytest.raises(ValueError, match="ratio_low"):
        task_claim_verdicts(table.drop(columns=["ratio_low"]), delta=1.0)


def test_task_claim_verdicts_also_read_macro_f1_and_say_where_it_differs():
    lca = _seeded_lca([(0, 1.0, 0.992, 0.988, 0.996), (1, 1.5, 0.993, 0.987, 0.997)])
    mostly_o = lca.assign(f1_ratio=[0.62, 0.66], f1_ratio_low=[0.55, 0.58], f1_ratio_high=[0.70, 0.74])
    v = task_claim_verdicts(mostly_o, delta=1.0).iloc[0]
    assert v.verdict == "inconclusive" and v.macro_f1_verdict == "does not hold"
    assert v.f1_ratio_low_min == 0.55 and v.f1_ratio_high_max == 0.74
    assert "read on macro-F1 instead of accuracy: set/oracle [0.550, 0.740] over seeds (does not hold)" in v.deciding
    agree = lca.assign(f1_ratio=[0.99, 0.99], f1_ratio_low=[0.985, 0.985], f1_ratio_high=[0.995, 0.995])
    w = task_claim_verdicts(agree, delta=1.0).iloc[0]
    assert w.macro_f1_verdict == "inconclusive" and "macro-F1" not in w.deciding
    assert "macro_f1_verdict" not in task_claim_verdicts(lca, delta=1.0).columns


def test_seed_spread_is_mean_sd_min_max_per_group():
    t = pd.DataFrame(
        {
            "model": "m",
            "ordering": ["lca", "lca", "lca", "random"],
            "k": [10, 14, 12, 50],
            "score": [0.9, 0.8, 0.85, 0.7],
        }
    )
    s = seed_spread(t, by=["model", "ordering"], values=["k", "score"]).set_index("ordering")
    assert s.loc["lca", "n_seeds"] == 3 and s.loc["random", "n_seeds"] == 1
    assert s.loc["lca", "k_mean"] == 12 and s.loc["lca", "k_sd"] == pytest.approx(np.std([10, 14, 12], ddof=1))
    assert (s.loc["lca", "score_min"], s.loc["lca", "score_max"]) == (0.8, 0.9)
    assert np.isnan(s.loc["random", "k_sd"])
    with pytest.raises(ValueError, match="needs columns"):
        seed_spread(t, by=["model"], values=["missing"])


def test_task_reading_with_seeds_reads_the_first_seed_and_gives_the_verdict():
    counts = pd.DataFrame({"model": "m", "task": "pos", "layer": [0, 1, 2], "count": [2, 9, 4]})
    one = _minimal_neurons().assign(ratio=0.99, ratio_low=0.995, ratio_high=1.01)
    other = one.assign(seed=1, neurons_kept=one.neurons_kept * 2, pct_kept=one.pct_kept * 2)
    both = pd.concat([one.assign(seed=0), other], ignore_index=True)
    text = describe_task_redundancy(_task_layers(), both, counts, delta=1.0)
    assert "keeps 15 of 300 neurons (5.0%" in text  # seed 0
    # seed 0 holds, seed 1 keeps 10% (90% removable < 92%): the seeds disagree
    assert "over 2 seeds" in text and "m · pos: **inconclusive**" in text
    assert "seed 1: 90.0% removable < 92%" in text


def test_task_claim_verdicts_read_the_bound_rows_straight_from_test():
    lca = _seeded_lca([(0, 30.0, 1.0, 0.995, 1.01), (1, 30.0, 1.0, 0.995, 1.01)])  # the search keeps 30%
    at_bound = _seeded_lca([(0, 8.0, 0.97, 0.96, 0.98), (1, 8.0, 0.975, 0.965, 0.985)]).assign(ordering="lca_at_bound")
    v = task_claim_verdicts(pd.concat([lca, at_bound], ignore_index=True), delta=1.0).iloc[0]
    assert v.verdict == "does not hold"  # 70% removable
    assert v.bound_verdict == "does not hold"  # 0.985 < 0.99
    assert (v.bound_ratio_low_min, v.bound_ratio_high_max, v.bound_pct_kept) == (0.96, 0.985, 8.0)
    v = task_claim_verdicts(pd.concat([lca, at_bound], ignore_index=True), delta=3.0).iloc[0]
    assert v.bound_verdict == "inconclusive"  # [0.96, 0.98] straddles 0.97
    assert "bound_verdict" not in task_claim_verdicts(lca, delta=1.0).columns


def test_task_reading_gives_the_reading_at_the_bound():
    counts = pd.DataFrame({"model": "m", "task": "pos", "layer": [0, 1, 2], "count": [2, 9, 4]})
    one = _minimal_neurons().assign(seed=0, ratio=1.0, ratio_low=0.995, ratio_high=1.01)
    bound = one[one.ordering == "lca"].assign(
        ordering="lca_at_bound", pct_kept=8.0, ratio=0.97, ratio_low=0.96, ratio_high=0.98
    )
    text = describe_task_redundancy(_task_layers(), pd.concat([one, bound], ignore_index=True), counts, delta=1.0)
    assert "m · pos: **holds**" in text  # the search's set: 95% removable, [0.995, 1.01] >= 0.99
    assert "8% of them" in text and "0.970 of the oracle, intervals within [0.960, 0.980] -> **does not hold**" in text


def test_report_reads_the_task_claim_from_intervals_and_shows_it_beside_the_paper():
    minimal = _seeded_lca([(0, 5.0, 0.995, 0.990, 1.000), (1, 6.0, 0.996, 0.992, 1.001)])
    text = reproduction_report(_transfer_table(), minimal=minimal, task_delta=1.0)
    assert "remove 94.0–95.0% of the neurons over seeds" in text
    assert "holds: 1" in text and "claim **holds in part**" not in text
    # one seed whose interval straddles the tolerance makes the pair inconclusive
    straddling = _seeded_lca([(0, 5.0, 0.995, 0.985, 1.000), (1, 6.0, 0.996, 0.992, 1.001)])
    verdicts = task_claim_verdicts(straddling, delta=1.0)
    assert verdicts.loc[0, "verdict"] == "inconclusive"
    table = claims_side_by_side(verdicts)
    assert "| task |" in table and "**inconclusive at this sample size**" in table
    assert "[0.985, 1.000] straddles 0.990" in table


def test_warnings_as_notes_prints_expected_warnings_once_and_passes_others_on(capsys):
    import warnings

    with pytest.warns(RuntimeWarning, match="other"):
        with warnings_as_notes() as notes:
            warnings.warn("770 constant neurons", UserWarning, stacklevel=1)
            warnings.warn("770 constant neurons", UserWarning, stacklevel=1)  # the same one: printed once
            warnings.warn("no grid point reached the target", UserWarning, stacklevel=1)
            warnings.warn("other", RuntimeWarning, stacklevel=1)
    assert notes == ["note: 770 constant neurons", "note: no grid point reached the target"]
    assert capsys.readouterr().out.splitlines() == notes

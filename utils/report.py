"""The written readings of the results and the paper's numeric claims, computed from tidy tables.

Start reading at ``PAPER_CLAIMS`` (each claim of the paper's abstract with the bounds it sets: the
one place where 85%, 92%, 97% and 10% are written), then the readings, one per notebook:
``describe_norms`` (notebook 01), ``describe_general_redundancy`` (notebook 02), ``describe_task_redundancy`` (notebook 03) and
``reproduction_report`` (notebook 04 and the README). The general and transfer claims are also read from
95% intervals: ``general_claim_verdicts``, ``transfer_claim_verdicts`` ("holds", "does not hold",
"inconclusive at this sample size", with the deciding interval) and ``claims_side_by_side`` (the
paper's claim and ours in one markdown table). Pretrained and fine-tuned models side by side (the
paper's sentence-level setting): ``analysis_runs`` lists a notebook's (model, task) runs with the
``"<base>+ft"`` ones beside their base, ``finetuned_pairs`` pairs them, the ``finetune_*_changes``
functions turn notebooks 02-04's tables into one comparison table and ``describe_finetuning`` reads it
against the paper's findings (``FINETUNE_MEASURES``). ``read_artifact`` is how a notebook reads what
an earlier one wrote: a missing file or column is an error naming the notebook that makes it.

Nothing here computes a statistic; every function reads tidy pandas tables (one row per model ×
task × ..., the CSV files of ``figures/``) and says what they show, so that no number in the
README or a "What we saw" cell is typed by hand.

Quantities and their shapes:

- ``task_layers``: DataFrame with columns ``model, task, layer, mode, score, control_score,
  selectivity, n_features`` (one row per layer probe; ``mode == "oracle"`` once per model × task).
- ``minimal_neurons``: DataFrame with columns ``model, task, ordering, neurons_total, neurons_kept,
  pct_kept, score, score_low, score_high, oracle_score, reached, ...`` (one row per ordering).
- ``transfer``: DataFrame with columns ``model, task, pct_kept, pct_of_oracle, ...`` (one row per run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .intervals import verdict as interval_verdict
from .paths import REPO_ROOT
from .similarity import adjacent_layer_summary

# ---------------------------------------------------------------------------------------------
# the paper's claims


@dataclass(frozen=True)
class Claim:
    """One numeric claim of the paper's abstract, as bounds on columns of a results table.

    Attributes
    ----------
    text : str
        The claim in the paper's words.
    bounds : mapping of column name to (">=" or "<=", value in percent)
        The claim holds for a row when every bound holds.
    """

    text: str
    bounds: Mapping[str, tuple[str, float]] = field(default_factory=dict)

    def bound(self, column: str) -> float:
        """The value of the bound on ``column``."""
        return float(self.bounds[column][1])

    def check(self, table: pd.DataFrame) -> pd.DataFrame:
        """One boolean column per bound (named after the column, ``_ok`` appended) and ``claim_holds``."""
        out = pd.DataFrame(index=table.index)
        for column, (op, value) in self.bounds.items():
            if op not in (">=", "<="):
                raise ValueError(f"bound operators are '>=' or '<=', got {op!r} for {column}")
            out[f"{column}_ok"] = table[column] >= value if op == ">=" else table[column] <= value
        out["claim_holds"] = out.all(axis=1)
        return out


PAPER_CLAIMS: dict[str, Claim] = {
    "general": Claim("85% of the neurons across the network are redundant", {"pct_redundant": (">=", 85.0)}),
    "task": Claim(
        "at least 92% of the neurons can be removed when optimising for a task", {"pct_removable": (">=", 92.0)}
    ),
    "transfer": Claim(
        "97% of the performance is kept with at most 10% of the neurons",
        {"pct_of_oracle": (">=", 97.0), "pct_kept": ("<=", 10.0)},
    ),
}
"""The abstract's three claims (Dalvi et al. 2020); every threshold used to judge them is read from here."""


def _verdict(n_ok: int, n: int) -> str:
    """'holds' (all), 'holds in part' (some) or 'does not hold' (none)."""
    return "holds" if n_ok == n else ("holds in part" if n_ok else "does not hold")


# ---------------------------------------------------------------------------------------------
# what each notebook writes, and reading it back


ARTIFACTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "activation_stores.csv": ("01_activation_extraction", ("model", "task", "split", "items", "layers", "hidden")),
    "general_redundancy.csv": ("02_general_redundancy", ("model", "task", "threshold", "pct_kept")),
    "task_layers.csv": ("03_task_specific_redundancy", ("model", "task", "layer", "mode", "score")),
    "minimal_neurons.csv": ("03_task_specific_redundancy", ("model", "task", "ordering", "pct_kept", "score")),
    "transfer_results.csv": ("04_feature_selected_transfer", ("model", "task", "pct_kept", "pct_of_oracle")),
    "finetune_general.csv": ("02_general_redundancy", ("base", "task", "measure", "pretrained", "finetuned")),
    "finetune_layer_change.csv": ("02_general_redundancy", ("base", "task", "layer", "cka")),
    "finetune_task.csv": ("03_task_specific_redundancy", ("base", "task", "measure", "pretrained", "finetuned")),
    "cc_sweep.csv": (
        "02_general_redundancy",
        (
            "model",
            "task",
            "step",
            "threshold",
            "neurons_kept",
            "pct_removed_nonconstant",
            "ratio",
            "ratio_low",
            "ratio_high",
        ),
    ),
}
"""File name -> (the notebook that writes it, the columns a reader may rely on)."""


def read_artifact(folder: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read a table an earlier notebook wrote into ``folder``, checking that it is there and complete.

    Parameters
    ----------
    folder : path
        The run's figures folder (``figures_dir``).
    name : str
        A key of ``ARTIFACTS``, e.g. ``"general_redundancy.csv"``.

    Returns
    -------
    table : DataFrame

    Raises
    ------
    FileNotFoundError
        The file is missing: the message names the notebook that writes it.
    ValueError
        Columns are missing (the file comes from an older version of that notebook).
    """
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artefact {name!r}; expected one of {sorted(ARTIFACTS)}")
    notebook, columns = ARTIFACTS[name]
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: notebook {notebook} writes it. Run {notebook} with the same "
            f"parameters (figures_dir={str(folder)!r}) first; make quick runs 01-04 in order."
        )
    table = pd.read_csv(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: it was written by an older {notebook}; rerun it.")
    return table


def check_runs(
    table: pd.DataFrame, name: str, runs: Sequence[tuple[Any, ...]], *, keys: Sequence[str] = ("model", "task")
) -> None:
    """Raise when some run (a tuple of ``keys`` values, e.g. (model, task)) has no row in ``table``.

    ``name`` is the artefact the table was read from (its notebook is named in the message).
    """
    have = set(map(tuple, table[list(keys)].astype(str).to_numpy().tolist()))
    missing = [r for r in runs if tuple(map(str, r)) not in have]
    if missing:
        notebook = ARTIFACTS.get(name, ("an earlier notebook",))[0]
        raise ValueError(
            f"{name} has no rows for {missing} ({', '.join(keys)}): run {notebook} with these models and tasks first."
        )


def oracle_score(task_layers: pd.DataFrame, model: str, task: str) -> float:
    """Dev score of the oracle probe (all layers) of one model × task, from the ``task_layers`` table."""
    rows = task_layers[
        (task_layers["model"] == model) & (task_layers["task"] == task) & (task_layers["mode"] == "oracle")
    ]
    if len(rows) != 1:
        raise ValueError(f"expected one oracle row for {model} · {task} in task_layers, found {len(rows)}")
    return float(rows["score"].iloc[0])


# ---------------------------------------------------------------------------------------------
# notebook 01: activation norms


def describe_norms(norms: pd.DataFrame) -> str:
    """A short reading of a ``model, task, layer, mean_norm`` table: where norms peak and how they change.

    Returns one line per model × task (in table order): the mean norm at the embeddings, its peak and
    the layer of the peak, the last layer's, and whether every value is finite.
    """
    lines = []
    for (model, task), g in norms.groupby(["model", "task"], sort=False):
        values = g["mean_norm"].to_numpy()
        peak = int(g["layer"].to_numpy()[values.argmax()])
        lines.append(
            f"{model} · {task}: mean norm {values[0]:.2f} at the embeddings, peak {values.max():.2f} at layer "
            f"{peak}, {values[-1]:.2f} at the last layer ({len(values)} layers; all finite: "
            f"{bool(np.isfinite(values).all())})."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# notebook 02: general redundancy


def _first_threshold_reaching(kept: pd.DataFrame, pct_kept: float) -> float | None:
    """Smallest threshold whose pct_kept is at most ``pct_kept``, or None."""
    hit = kept.loc[kept["pct_kept"] <= pct_kept + 1e-9, "threshold"]
    return float(hit.min()) if len(hit) else None


def describe_general_redundancy(
    cka: Mapping[str, Any],
    kept: pd.DataFrame,
    layer_share: pd.DataFrame,
    spans: pd.DataFrame,
    *,
    reference_threshold: float,
    same_unit: Mapping[str, float] | None = None,
    constant_neurons: Mapping[str, int] | None = None,
    paper_pct_redundant: float | None = None,
) -> str:
    """Write the reading of the general-redundancy figures from their numbers, next to the paper's.

    Parameters
    ----------
    cka : mapping of str to array-like of shape (n_layers, n_layers)
        Layer CKA per run label (e.g. ``"minilm / pos"``).
    kept : DataFrame
        Columns ``run, threshold, pct_kept`` (as from ``redundancy_by_threshold`` plus a run column).
    layer_share : DataFrame
        Columns ``run, threshold, layer, pct_redundant`` (from ``layer_redundancy``).
    spans : DataFrame
        Columns ``run, span, n_clusters`` (from ``cluster_layer_spans`` at ``reference_threshold``).
    reference_threshold : float
        Threshold at which per-layer shares and spans are read (the paper's pipeline uses 0.3).
    same_unit : mapping of str to float, optional
        ``same_unit_share`` per run, at ``reference_threshold``.
    constant_neurons : mapping of str to int, optional
        Number of constant neurons per run (they stay as singletons, so they count as kept).
    paper_pct_redundant : float, optional
        The paper's headline share of redundant neurons; defaults to ``PAPER_CLAIMS["general"]``'s bound.

    Returns
    -------
    text : str
        Markdown bullet points, one block per finding, each saying whether our numbers agree.
    """
    if paper_pct_redundant is None:
        paper_pct_redundant = PAPER_CLAIMS["general"].bound("pct_redundant")
    lines: list[str] = []
    target_kept = 100.0 - paper_pct_redundant
    same_unit = dict(same_unit or {})
    constant_neurons = dict(constant_neurons or {})

    lines.append(
        "**Adjacent layers are the most similar** (paper: layer-level redundancy is highest between neighbours)."
    )
    for run, matrix in cka.items():
        s = adjacent_layer_summary(matrix)
        verdict = (
            "agrees" if s["frac_nearest_adjacent"] >= 0.5 and s["mean_adjacent"] > s["mean_non_adjacent"] else "differs"
        )
        undefined = (
            f" Layer(s) {s['undefined_layers']} are constant over these items (CKA undefined) and left out."
            if s["undefined_layers"]
            else ""
        )
        lines.append(
            f"- {run}: for {100 * s['frac_nearest_adjacent']:.0f}% of layers the most similar other layer is a "
            f"neighbour; neighbours average CKA {s['mean_adjacent']:.2f} vs {s['mean_non_adjacent']:.2f} for layers "
            f"two or more apart; the least similar neighbours are layers {s['min_adjacent_pair']} and "
            f"{s['min_adjacent_pair'] + 1} ({s['min_adjacent']:.2f}). Neighbours in the lower half average "
            f"{s['lower_adjacent']:.2f}, in the upper half {s['upper_adjacent']:.2f}.{undefined} -> {verdict}."
        )

    lines.append("")
    lines.append(
        f"**{paper_pct_redundant:.0f}% of neurons are redundant** (paper, abstract): here, the share kept after clustering."
    )
    for run, g in kept.groupby("run", sort=False):
        g = g.sort_values("threshold")
        ref = g.loc[np.isclose(g["threshold"], reference_threshold), "pct_kept"]
        reach = _first_threshold_reaching(g, target_kept)
        where = (
            f"{target_kept:.0f}% or fewer remain from threshold {reach:g} on"
            if reach is not None
            else f"no threshold up to {g['threshold'].max():g} leaves {target_kept:.0f}% or fewer"
        )
        at_ref = f"{ref.iloc[0]:.1f}% kept at t = {reference_threshold:g}; " if len(ref) else ""
        n_const = constant_neurons.get(run, 0)
        const = (
            f" {n_const} constant neurons stay as singletons and count as kept, though they carry nothing."
            if n_const
            else ""
        )
        lines.append(
            f"- {run}: {at_ref}{g['pct_kept'].iloc[0]:.1f}% at t = {g['threshold'].iloc[0]:g}, "
            f"{g['pct_kept'].iloc[-1]:.1f}% at t = {g['threshold'].iloc[-1]:g}; {where}.{const}"
        )

    lines.append("")
    lines.append(
        f"**Lower layers are more redundant** (paper): share of each layer's neurons dropped at t = {reference_threshold:g}."
    )
    at_ref = layer_share[np.isclose(layer_share["threshold"], reference_threshold)]
    for run, g in at_ref.groupby("run", sort=False):
        g = g.sort_values("layer")
        share = g["pct_redundant"].to_numpy()
        half = len(share) // 2
        lower, upper = share[:half].mean(), share[half:].mean()
        rho = pd.Series(share).corr(pd.Series(np.arange(len(share), dtype=float)), method="spearman")
        verdict = "agrees" if lower > upper else "differs"
        lines.append(
            f"- {run}: lower half {lower:.1f}% vs upper half {upper:.1f}% redundant (most: layer "
            f"{int(g['layer'].iloc[int(np.argmax(share))])}, {share.max():.1f}%; Spearman rho of share vs "
            f"depth {rho:+.2f}). -> {verdict}."
        )

    lines.append("")
    lines.append(
        f"**Clusters stay within neighbouring layers** (paper: redundant neurons mostly come from the same or adjacent layers), t = {reference_threshold:g}, clusters of 2+ neurons."
    )
    for run, g in spans.groupby("run", sort=False):
        total = int(g["n_clusters"].sum())
        if total == 0:
            lines.append(f"- {run}: no cluster has two or more neurons at this threshold.")
            continue
        within = g.loc[g["span"] <= 2, "n_clusters"].sum() / total
        one = g.loc[g["span"] == 1, "n_clusters"].sum() / total
        verdict = "agrees" if within >= 0.5 else "differs"
        unit = same_unit.get(run)
        unit_text = (
            f" {100 * unit:.0f}% of them are one unit index repeated across consecutive layers (the residual "
            f"stream carrying a dimension forward)."
            if unit is not None and np.isfinite(unit)
            else ""
        )
        lines.append(
            f"- {run}: {total} multi-neuron clusters; {100 * one:.0f}% lie in one layer, {100 * within:.0f}% "
            f"span at most two; widest span {int(g.loc[g['n_clusters'] > 0, 'span'].max())} layers.{unit_text} -> {verdict}."
        )
    return "\n".join(lines)


# the general claim read the authors' way: neurons removed by clustering while the accuracy survives

VERDICT_TEXT = {"holds": "holds", "does not hold": "does not hold", "inconclusive": "inconclusive at this sample size"}
"""How a verdict of ``intervals.verdict`` is written in tables and text."""


def _verdict_counts(verdicts: pd.Series) -> str:
    """'holds: 2; inconclusive at this sample size: 1; does not hold: 0' for a column of verdicts."""
    return "; ".join(
        f"{VERDICT_TEXT[k]}: {int((verdicts == k).sum())}" for k in ("holds", "inconclusive", "does not hold")
    )


def _largest_removal(shares: pd.Series) -> str:
    """'clustering removes at most 91.2% of the non-constant neurons', or that no threshold keeps the tolerance."""
    if not np.isfinite(shares).any():
        return "no clustering threshold keeps the accuracy for certain"
    return f"clustering removes at most {np.nanmax(shares):.1f}% of the non-constant neurons"


def general_tolerance_pct() -> float:
    """The accuracy a clustering must keep, in % of the oracle's, for its removals to count as redundancy.

    The paper states no separate tolerance for its 85% reading (its Figure 3 pairs neurons kept with
    accuracy); its abstract's one numeric tolerance is the transfer claim's "97% of the performance",
    so that bound (``PAPER_CLAIMS["transfer"]``) is used here too.
    """
    return PAPER_CLAIMS["transfer"].bound("pct_of_oracle")


def general_claim_verdicts(
    sweep: pd.DataFrame, *, tolerance_pct: float | None = None, bound_pct: float | None = None
) -> pd.DataFrame:
    """The general-redundancy claim per model × task, from the clustering sweep and its intervals.

    A threshold supports "``bound_pct`` % of the neurons are redundant" when clustering removes at
    least ``bound_pct`` % of the non-constant neurons (constant neurons are reported apart: removing
    them is trivial) and the probe on the representatives keeps ``tolerance_pct`` % of the oracle's
    test accuracy (paired ratio interval on the same test items). The verdict:

    - **holds** when some threshold removing enough neurons has its whole ratio interval at or above
      the tolerance (the deciding row: the largest such removal);
    - **does not hold** when no threshold removes enough, or every one that does lies wholly below
      the tolerance (deciding row: the one whose interval reaches highest);
    - **inconclusive** otherwise: the best such threshold's interval straddles the tolerance.

    Parameters
    ----------
    sweep : DataFrame
        ``cc_sweep.csv`` (notebook 02): columns ``model, task, step, threshold, neurons_total,
        neurons_constant, neurons_kept, pct_removed_nonconstant, ratio, ratio_low, ratio_high`` (rows
        of step ``clustering`` are read).
    tolerance_pct : float, optional
        Defaults to ``general_tolerance_pct()`` (97).
    bound_pct : float, optional
        Defaults to ``PAPER_CLAIMS["general"]``'s 85.

    Returns
    -------
    table : DataFrame
        One row per model × task: ``model, task, claim, verdict, threshold, pct_removed_nonconstant,
        neurons_kept, neurons_total, neurons_constant, ratio, ratio_low, ratio_high,
        max_removed_within, threshold_within, max_removed_point, ours, decided_by``.
        ``max_removed_within`` is the largest share removed whose whole ratio interval keeps the
        tolerance, ``max_removed_point`` the largest whose point estimate does (NaN: none).
    """
    tol = (general_tolerance_pct() if tolerance_pct is None else float(tolerance_pct)) / 100
    bound = PAPER_CLAIMS["general"].bound("pct_redundant") if bound_pct is None else float(bound_pct)
    missing = [c for c in ARTIFACTS["cc_sweep.csv"][1] if c not in sweep.columns]
    if missing:
        raise ValueError(f"the sweep table lacks columns {missing}: pass cc_sweep.csv from notebook 02")
    rows = []
    clustering = sweep[sweep["step"] == "clustering"]
    for (model, task), g in clustering.groupby(["model", "task"], sort=False):
        g = g.sort_values("threshold")
        v = np.array([interval_verdict((lo, hi), tol) for lo, hi in zip(g["ratio_low"], g["ratio_high"])])
        within = g[v == "holds"]
        point = g[g["ratio"] >= tol]
        enough = g["pct_removed_nonconstant"] >= bound
        cand, cv = g[enough], v[enough.to_numpy()]
        if (cv == "holds").any():
            verdict, row = "holds", cand[cv == "holds"].sort_values("pct_removed_nonconstant").iloc[-1]
            why = "removes enough and keeps the tolerance"
        elif len(cand) and (cv == "does not hold").all():
            verdict, row = "does not hold", cand.sort_values("ratio_high").iloc[-1]
            why = "every threshold removing enough loses accuracy beyond the tolerance"
        elif len(cand):
            verdict, row = "inconclusive", cand[cv == "inconclusive"].sort_values("ratio_low").iloc[-1]
            why = "the interval straddles the tolerance"
        else:
            verdict, row = "does not hold", g.sort_values("pct_removed_nonconstant").iloc[-1]
            why = f"no threshold removes {bound:g}% of the non-constant neurons"
        n_const = int(row["neurons_constant"]) if "neurons_constant" in row else 0
        const = f"; {n_const} constant neurons removed apart" if n_const else ""
        rows.append(
            {
                "model": model,
                "task": task,
                "claim": "general",
                "verdict": verdict,
                "threshold": float(row["threshold"]),
                "pct_removed_nonconstant": float(row["pct_removed_nonconstant"]),
                "neurons_kept": int(row["neurons_kept"]),
                "neurons_total": int(row["neurons_total"]) if "neurons_total" in row else np.nan,
                "neurons_constant": n_const,
                "ratio": float(row["ratio"]),
                "ratio_low": float(row["ratio_low"]),
                "ratio_high": float(row["ratio_high"]),
                "max_removed_within": float(within["pct_removed_nonconstant"].max()) if len(within) else np.nan,
                "threshold_within": (
                    float(within.sort_values("pct_removed_nonconstant")["threshold"].iloc[-1])
                    if len(within)
                    else np.nan
                ),
                "max_removed_point": float(point["pct_removed_nonconstant"].max()) if len(point) else np.nan,
                "ours": (
                    f"t = {row['threshold']:g}: {row['pct_removed_nonconstant']:.1f}% of the non-constant neurons "
                    f"removed ({int(row['neurons_kept'])} kept{const})"
                ),
                "decided_by": (
                    f"accuracy {100 * row['ratio']:.1f}% of the oracle [{100 * row['ratio_low']:.1f}, "
                    f"{100 * row['ratio_high']:.1f}] vs ≥ {100 * tol:g}%; {why}"
                ),
            }
        )
    return pd.DataFrame(rows)


def describe_cc_sweep(verdicts: pd.DataFrame, *, tolerance_pct: float | None = None) -> str:
    """Markdown lines: per model × task, the largest share clustering removes while the accuracy survives.

    Parameters
    ----------
    verdicts : DataFrame
        From ``general_claim_verdicts``.
    tolerance_pct : float, optional
        The tolerance those verdicts used (for the text); defaults to ``general_tolerance_pct()``.
    """
    tol = general_tolerance_pct() if tolerance_pct is None else float(tolerance_pct)
    bound = PAPER_CLAIMS["general"].bound("pct_redundant")
    lines = [
        f"**{bound:g}% of the neurons are redundant** (paper), read the authors' way: a probe retrained on the "
        f"cluster representatives at every threshold must keep {tol:g}% of the oracle's test accuracy "
        f"(paired 95% interval on the same test items)."
    ]
    for r in verdicts.itertuples(index=False):
        within = (
            f"{r.max_removed_within:.1f}% (t = {r.threshold_within:g})"
            if np.isfinite(r.max_removed_within)
            else "none of the thresholds"
        )
        point = f"{r.max_removed_point:.1f}%" if np.isfinite(r.max_removed_point) else "none"
        const = (
            f" {r.neurons_constant} constant neurons are left out of these shares (removing them is trivial)."
            if r.neurons_constant
            else ""
        )
        lines.append(
            f"- {r.model} · {r.task}: clustering removes up to {within} of the non-constant neurons with the "
            f"whole interval within the tolerance ({point} on the point estimate).{const} Against "
            f"{bound:g}%: {r.ours}; {r.decided_by} -> **{VERDICT_TEXT[r.verdict]}**."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# notebook 03: task-specific redundancy


def task_claim_table(minimal_neurons: pd.DataFrame) -> pd.DataFrame:
    """The LCA minimal sets against the paper's task-specific claim: one row per model × task.

    Parameters
    ----------
    minimal_neurons : DataFrame
        As written by notebook 03 (rows of ordering ``"lca"`` are read).

    Returns
    -------
    table : DataFrame
        The LCA rows with ``pct_removable = 100 - pct_kept``, ``paper_claim`` and ``claim_holds``.
    """
    claim = PAPER_CLAIMS["task"]
    out = minimal_neurons[minimal_neurons["ordering"] == "lca"].copy()
    out["pct_removable"] = 100 - out["pct_kept"]
    out["paper_claim"] = f"≥ {claim.bound('pct_removable'):g}% removable"
    out["claim_holds"] = claim.check(out)["claim_holds"]
    return out


def seed_spread(table: pd.DataFrame, *, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation, minimum and maximum of ``values`` over the seeds of each ``by`` group.

    Parameters
    ----------
    table : DataFrame
        One row per seed (and per ``by`` group), e.g. ``minimal_neurons`` with its ``seed`` column.
    by : sequence of str
        Grouping columns, e.g. ``["model", "task", "ordering"]``.
    values : sequence of str
        Numeric columns to summarise.

    Returns
    -------
    summary : DataFrame
        ``by`` columns, ``n_seeds``, then ``<value>_mean, <value>_sd, <value>_min, <value>_max`` for each
        value (sd with ddof 1; NaN for a single seed).
    """
    missing = [c for c in [*by, *values] if c not in table.columns]
    if missing:
        raise ValueError(f"seed_spread needs columns {missing}; the table has {list(table.columns)}")
    g = table.groupby(list(by), sort=False)
    out = g.size().rename("n_seeds").to_frame()
    for v in values:
        agg = g[v].agg(["mean", "std", "min", "max"])
        agg.columns = [f"{v}_mean", f"{v}_sd", f"{v}_min", f"{v}_max"]
        out = out.join(agg)
    return out.reset_index()


def task_claim_verdicts(minimal_neurons: pd.DataFrame, *, delta: float) -> pd.DataFrame:
    """The paper's task-specific claim read from intervals: one verdict per model × task.

    The claim ("at least 92% of the neurons can be removed") is about a minimal LCA set that keeps
    the oracle's accuracy within the tolerance the set was chosen with on dev: score ≥ oracle ×
    (1 − delta / 100). On test, for each seed, the set must therefore

    1. remove at least ``PAPER_CLAIMS["task"]``'s share of the neurons (``100 - pct_kept``; the set
       itself is fixed once chosen on dev), and
    2. keep the oracle's score: the paired bootstrap interval of score / oracle score (``ratio_low``,
       ``ratio_high``) is read against ``1 - delta / 100`` with ``intervals.verdict``.

    A seed's verdict is "does not hold" when (1) fails or (2) does not hold, "holds" when both
    hold, "inconclusive" otherwise (the ratio's interval straddles the tolerance). Over seeds: the
    common verdict when all seeds agree, else "inconclusive".

    The share in (1) is chosen on dev, so it carries dev noise that no test interval shows. Rows of
    ordering ``"lca_at_bound"`` (a probe on exactly the top ``100 - 92``% LCA neurons, whatever dev
    says) give a second reading of the same claim straight from test: ``bound_verdict`` is
    ``intervals.verdict`` of that set's ratio interval against the tolerance (over seeds as above).

    Parameters
    ----------
    minimal_neurons : DataFrame
        Notebook 03's table: columns ``model, task, ordering, pct_kept, ratio, ratio_low, ratio_high``
        and optionally ``seed`` (rows of ordering ``"lca"`` are read).
    delta : float
        The minimal-set tolerance in percent.

    Returns
    -------
    table : DataFrame
        One row per model × task: ``n_seeds, pct_removable_mean, pct_removable_min,
        pct_removable_max, ratio_mean, ratio_low_min, ratio_high_max, tolerance, paper_claim,
        seed_verdicts, verdict, deciding`` (the interval or share that decides, in words), and
        ``claim, ours, decided_by`` for ``claims_side_by_side``; with
        ``"lca_at_bound"`` rows also ``bound_pct_kept, bound_ratio_mean, bound_ratio_low_min,
        bound_ratio_high_max, bound_verdict``; with macro-F1 columns (``f1_ratio_low, f1_ratio_high``)
        also ``f1_ratio_mean, f1_ratio_low_min, f1_ratio_high_max, macro_f1_verdict`` (the same reading
        on macro-F1; ``deciding`` says so where it differs from accuracy's).
    """
    need = ["model", "task", "ordering", "pct_kept", "ratio", "ratio_low", "ratio_high"]
    missing = [c for c in need if c not in minimal_neurons.columns]
    if missing:
        raise ValueError(
            f"task_claim_verdicts needs columns {missing} (paired ratio intervals from "
            f"ranking.minimal_set_table); rerun notebook 03."
        )
    claim = PAPER_CLAIMS["task"]
    removable_bound = claim.bound("pct_removable")
    tolerance = 1 - delta / 100
    lca = minimal_neurons[minimal_neurons["ordering"] == "lca"].copy()
    if "seed" not in lca.columns:
        lca["seed"] = 0
    lca["pct_removable"] = 100 - lca["pct_kept"]
    rows = []
    for (model, task), g in lca.groupby(["model", "task"], sort=False):
        verdicts, reasons = [], []
        for r in g.sort_values("seed").itertuples(index=False):
            share_ok = r.pct_removable >= removable_bound
            score_v = interval_verdict((float(r.ratio_low), float(r.ratio_high)), tolerance)
            if not share_ok:
                v, why = "does not hold", f"seed {r.seed}: {r.pct_removable:.1f}% removable < {removable_bound:g}%"
            elif score_v == "does not hold":
                v, why = (
                    score_v,
                    (
                        f"seed {r.seed}: test/oracle {r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}] "
                        f"< {tolerance:.3f}"
                    ),
                )
            else:
                v = score_v
                why = (
                    f"seed {r.seed}: test/oracle {r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}] "
                    f"{'≥' if v == 'holds' else 'straddles'} {tolerance:.3f}"
                )
            verdicts.append(v)
            reasons.append(why)
        overall = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
        # the same reading on macro-F1 (class labels): where it differs from accuracy's, say so
        f1 = {}
        if {"f1_ratio_low", "f1_ratio_high"} <= set(g.columns) and g["f1_ratio_low"].notna().all():
            f1_v = [
                "does not hold"
                if r.pct_removable < removable_bound
                else interval_verdict((float(r.f1_ratio_low), float(r.f1_ratio_high)), tolerance)
                for r in g.sort_values("seed").itertuples(index=False)
            ]
            f1 = {
                "f1_ratio_mean": g["f1_ratio"].mean(),
                "f1_ratio_low_min": g["f1_ratio_low"].min(),
                "f1_ratio_high_max": g["f1_ratio_high"].max(),
                "macro_f1_verdict": f1_v[0] if len(set(f1_v)) == 1 else "inconclusive",
            }
            if f1["macro_f1_verdict"] != overall:
                reasons.append(
                    f"read on macro-F1 instead of accuracy: set/oracle [{f1['f1_ratio_low_min']:.3f}, "
                    f"{f1['f1_ratio_high_max']:.3f}] over seeds ({VERDICT_TEXT[f1['macro_f1_verdict']]})"
                )
        bound = {}
        b = minimal_neurons[
            (minimal_neurons["ordering"] == "lca_at_bound")
            & (minimal_neurons["model"] == model)
            & (minimal_neurons["task"] == task)
        ]
        if len(b):
            bv = [
                interval_verdict((float(lo), float(hi)), tolerance) for lo, hi in zip(b["ratio_low"], b["ratio_high"])
            ]
            bound = {
                "bound_pct_kept": b["pct_kept"].mean(),
                "bound_ratio_mean": b["ratio"].mean(),
                "bound_ratio_low_min": b["ratio_low"].min(),
                "bound_ratio_high_max": b["ratio_high"].max(),
                "bound_verdict": bv[0] if len(set(bv)) == 1 else "inconclusive",
            }
        rows.append(
            {
                "model": model,
                "task": task,
                "n_seeds": len(g),
                "pct_removable_mean": g["pct_removable"].mean(),
                "pct_removable_min": g["pct_removable"].min(),
                "pct_removable_max": g["pct_removable"].max(),
                "ratio_mean": g["ratio"].mean(),
                "ratio_low_min": g["ratio_low"].min(),
                "ratio_high_max": g["ratio_high"].max(),
                "tolerance": tolerance,
                "paper_claim": f"≥ {removable_bound:g}% removable within {delta:g}% of the oracle",
                "seed_verdicts": ", ".join(verdicts),
                "verdict": overall,
                "deciding": "; ".join(reasons),
                "claim": "task",
                "ours": (
                    f"{g['pct_removable'].min():.1f}–{g['pct_removable'].max():.1f}% removable over "
                    f"{len(g)} seed(s), test/oracle {g['ratio'].mean():.3f}"
                ),
                "decided_by": "; ".join(reasons),
                **bound,
                **f1,
            }
        )
    return pd.DataFrame(rows)


def describe_task_redundancy(
    task_layers: pd.DataFrame, minimal_neurons: pd.DataFrame, layer_counts: pd.DataFrame, *, delta: float
) -> str:
    """Write the reading of notebook 03's tables: layer probes, minimal neuron sets, where the neurons sit.

    Parameters
    ----------
    task_layers : DataFrame
        Columns ``model, task, layer, mode, score, selectivity`` (modes independent, incremental, oracle).
    minimal_neurons : DataFrame
        Columns ``model, task, ordering, neurons_total, neurons_kept, pct_kept, score, score_low,
        score_high, oracle_score, reached``, orderings ``lca, random, bottom, mean_difference``.
    layer_counts : DataFrame
        Columns ``model, task, layer, count``: the LCA minimal set's neurons per layer.
    delta : float
        The minimal-set tolerance in percent (target = oracle × (1 − delta / 100)).

    Returns
    -------
    text : str
        One paragraph per model × task (in the order of ``task_layers``), then one on the paper's claim.
    """
    lines = []
    runs = list(dict.fromkeys(zip(task_layers["model"], task_layers["task"])))
    removable = PAPER_CLAIMS["task"].bound("pct_removable")
    all_seeds = minimal_neurons
    if "seed" in minimal_neurons.columns:  # the paragraphs read the first seed; the verdicts read them all
        minimal_neurons = minimal_neurons[minimal_neurons["seed"] == minimal_neurons["seed"].min()]
    for model, task in runs:
        t = task_layers[(task_layers.model == model) & (task_layers.task == task)]
        ind, inc = t[t["mode"] == "independent"], t[t["mode"] == "incremental"]
        oracle_dev = oracle_score(task_layers, model, task)
        best = ind.loc[ind.score.idxmax()]
        reach = inc[inc.score >= oracle_dev * (1 - delta / 100)]
        sel = ind.loc[ind.selectivity.idxmax()]
        m = minimal_neurons[(minimal_neurons.model == model) & (minimal_neurons.task == task)].set_index("ordering")
        lca = m.loc["lca"]
        counts = layer_counts[(layer_counts.model == model) & (layer_counts.task == task)]
        top_layers = counts.sort_values("count", ascending=False).head(3)

        def needed(name: str, m: pd.DataFrame = m) -> str:
            row = m.loc[name]
            return f"{int(row.neurons_kept)}" if row.reached else f"all {int(row.neurons_kept)} (target not reached)"

        lines.append(
            f"**{model} · {task}.** The oracle reaches {oracle_dev:.3f} dev accuracy. The best single layer is layer "
            f"{int(best.layer)} ({best.score:.3f}); incremental probes first come within {delta:g}% of the oracle at "
            f"layer {int(reach.layer.min()) if len(reach) else 'none'}. Selectivity peaks at layer {int(sel.layer)} "
            f"({sel.selectivity:.3f}). The LCA minimal set keeps {int(lca.neurons_kept)} of {int(lca.neurons_total)} "
            f"neurons ({lca.pct_kept:.1f}%, so {100 - lca.pct_kept:.1f}% removable; the paper: at least "
            f"{removable:g}%) and scores {lca.score:.3f} on test [{lca.score_low:.3f}, {lca.score_high:.3f}] against "
            f"the oracle's {lca.oracle_score:.3f}. Random and bottom orderings need {needed('random')} and "
            f"{needed('bottom')} neurons, the probe-free ranking {needed('mean_difference')}. Most selected neurons "
            f"sit in layers {', '.join(str(int(layer)) for layer in top_layers.layer)}."
        )
    claims = task_claim_table(minimal_neurons)
    lca_rows = claims.set_index(["model", "task"])
    random_rows = minimal_neurons[minimal_neurons.ordering == "random"].set_index(["model", "task"])
    beats_random = int((lca_rows.neurons_kept < random_rows.neurons_kept.reindex(lca_rows.index)).sum())
    lines.append(
        f"The paper's '≥ {removable:g}% removable' holds for {int(claims.claim_holds.sum())} of {len(runs)} "
        f"model × task pairs here (LCA minimal sets keep {claims.pct_kept.min():.1f}–"
        f"{claims.pct_kept.max():.1f}% of the neurons). LCA needs fewer neurons than a random ordering "
        f"in {beats_random} of {len(runs)}."
    )
    if {"ratio_low", "ratio_high"} <= set(all_seeds.columns):
        v = task_claim_verdicts(all_seeds, delta=delta)
        seeds = f" over {int(v.n_seeds.max())} seeds" if v.n_seeds.max() > 1 else ""
        lines.append(
            f"Read from intervals{seeds} (test score / oracle's, paired bootstrap, against "
            f"{1 - delta / 100:.3f}, and the share removed against {removable:g}%): "
            + "; ".join(f"{r.model} · {r.task}: **{r.verdict}** ({r.deciding})" for r in v.itertuples())
            + "."
        )
        if "bound_verdict" in v.columns:
            lines.append(
                "At the bound itself (a probe on the top LCA neurons only, "
                f"{100 - removable:g}% of them, scored on test against the oracle): "
                + "; ".join(
                    f"{r.model} · {r.task}: {r.bound_ratio_mean:.3f} of the oracle, intervals within "
                    f"[{r.bound_ratio_low_min:.3f}, {r.bound_ratio_high_max:.3f}] -> **{r.bound_verdict}**"
                    for r in v.itertuples()
                    if isinstance(r.bound_verdict, str)
                )
                + "."
            )
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# pretrained and fine-tuned, side by side (the paper's sentence-level setting)

FT_SUFFIX = "+ft"
"""Suffix of a fine-tuned model's name (``"minilm+ft"``); the same as ``finetune.FT_SUFFIX``."""


def analysis_runs(
    models: Sequence[str],
    tasks: Sequence[str],
    *,
    finetuned: Sequence[str] = (),
    sentence_tasks: Sequence[str] = (),
    finetune_tasks: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """The (model, task) runs a notebook analyses: every model on every task, plus the fine-tuned ones.

    Parameters
    ----------
    models : sequence of str
        Pretrained model names (``"minilm"``, ``"mpnet"``, ...).
    tasks : sequence of str
        The notebook's tasks, word- and sentence-level.
    finetuned : sequence of str, default ()
        Base models (each among ``models``) whose ``"<base>+ft"`` variant, fine-tuned on each sentence
        task, is analysed beside them; ``()`` turns fine-tuning off.
    sentence_tasks : sequence of str, default ()
        Which of ``tasks`` are sentence-level: only those are fine-tuned (the paper analyses word-level
        tasks on the pretrained model).
    finetune_tasks : sequence of str, optional
        The sentence tasks the bases of ``finetuned`` are fine-tuned on; default every one of
        ``sentence_tasks``. Each must be a sentence task.

    Returns
    -------
    runs : list of (model, task)
        Model by model in the order of ``models``, each model's tasks in the order of ``tasks``;
        ``("<base>+ft", task)`` follow their base's runs, so the two sit side by side in tables and figures.

    Raises
    ------
    ValueError
        A base of ``finetuned`` that is not among ``models`` (its pretrained runs are what the fine-tuned
        ones are compared with), a name that already ends in ``"+ft"``, or a fine-tune task that is
        not a sentence task.
    """
    finetuned = list(dict.fromkeys(finetuned))
    if finetune_tasks is None:
        finetune_tasks = sentence_tasks
    not_sentence = [t for t in finetune_tasks if t not in set(sentence_tasks)]
    if not_sentence:
        raise ValueError(
            f"finetune_tasks names {not_sentence}, which are not among sentence_tasks {list(sentence_tasks)}: "
            "only sentence-level tasks are fine-tuned; list them in sentence_tasks too (or drop them here)"
        )
    bad = [b for b in finetuned if b.endswith(FT_SUFFIX)]
    if bad:
        raise ValueError(
            f"finetuned lists base models, got {bad}; write the base name (e.g. 'minilm', not 'minilm+ft')"
        )
    missing = [b for b in finetuned if b not in models]
    if missing:
        raise ValueError(
            f"finetuned names {missing}, which are not among models {list(models)}: each fine-tuned model is shown "
            "next to its pretrained base, so add the base to models (or remove it from finetuned)"
        )
    runs = []
    for model in dict.fromkeys(models):
        runs += [(model, task) for task in tasks]
        if model in finetuned:
            runs += [(model + FT_SUFFIX, task) for task in tasks if task in set(finetune_tasks)]
    return runs


def finetuned_pairs(runs: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(base, "<base>+ft", task)`` for every fine-tuned run of ``runs`` whose pretrained run is there too."""
    have = set(map(tuple, runs))
    return [
        (model[: -len(FT_SUFFIX)], model, task)
        for model, task in runs
        if model.endswith(FT_SUFFIX) and (model[: -len(FT_SUFFIX)], task) in have
    ]


@dataclass(frozen=True)
class FinetuneMeasure:
    """One quantity compared between a pretrained model and its fine-tuned twin.

    Attributes
    ----------
    text : str
        What the number is, as the reading names it.
    expect : {"higher", "lower"} or None
        What the paper's fine-tuned sentence models show for it, relative to the pretrained model
        (None: the paper states no direction; the reading only reports the change).
    finding : str
        The paper's finding this measure tests ('' when none).
    fmt : str
        Number format.
    tolerance : float
        Changes this small (absolute) read as "about the same".
    """

    text: str
    expect: str | None = None
    finding: str = ""
    fmt: str = ".3f"
    tolerance: float = 0.0


_UPPER = "upper layers become more redundant after fine-tuning"
_FEWER = "fewer neurons are needed after fine-tuning"
FINETUNE_MEASURES: dict[str, FinetuneMeasure] = {
    "upper_adjacent_cka": FinetuneMeasure(
        "mean linear CKA between adjacent layers of the upper half", "higher", _UPPER, ".3f", 0.02
    ),
    "upper_pct_dropped": FinetuneMeasure(
        "share of the upper half's neurons dropped by clustering (%, mean over layers)", "higher", _UPPER, ".1f", 1.0
    ),
    "pct_kept_clustering": FinetuneMeasure("share of all neurons kept by clustering (%)", None, "", ".1f", 1.0),
    "minimal_pct_kept": FinetuneMeasure(
        "share of the neurons in the LCA minimal set (%, mean over seeds)", "lower", _FEWER, ".2f", 0.05
    ),
    "transfer_pct_kept": FinetuneMeasure(
        "share of the neurons the transfer pipeline keeps (%, mean over seeds)", "lower", _FEWER, ".2f", 0.05
    ),
    "best_layer": FinetuneMeasure("best single layer (independent probe, dev)", None, "", ".0f", 0.0),
    "selected_layer": FinetuneMeasure(
        "layer the LayerSelector stops at (first seed)",
        "lower",
        "the LayerSelector can stop below the last layer: the upper layers are redundant for the task",
        ".0f",
        0.0,
    ),
    "dev_accuracy": FinetuneMeasure(
        "dev accuracy: the pretrained model's best layer probe vs the fine-tuned classifier", None, "", ".3f", 0.0
    ),
    "test_accuracy": FinetuneMeasure(
        "test accuracy: the pretrained model's best layer probe vs the fine-tuned classifier", None, "", ".3f", 0.0
    ),
}
"""The measures ``describe_finetuning`` reads, keyed by the ``measure`` column of a comparison table."""

FINETUNE_COLUMNS = ("base", "task", "measure", "pretrained", "finetuned")
"""Columns every comparison table has; optional: ``pretrained_low/high``, ``finetuned_low/high`` (95%
intervals), ``diff, diff_low, diff_high`` (fine-tuned − pretrained, paired), ``n_layers``, ``note``."""


def _finetune_rows(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    return table if len(table) else pd.DataFrame(columns=list(FINETUNE_COLUMNS))


def finetune_general_changes(
    pairs: Sequence[tuple[str, str, str]],
    cka: Mapping[tuple[str, str], Any],
    kept: pd.DataFrame,
    layer_share: pd.DataFrame,
    *,
    reference_threshold: float,
) -> pd.DataFrame:
    """Notebook 02's numbers of each pretrained / fine-tuned pair, as rows of a comparison table.

    Parameters
    ----------
    pairs : sequence of (base, fine-tuned model, task)
        From ``finetuned_pairs``.
    cka : mapping of (model, task) to array-like of shape (n_layers, n_layers)
        Layer × layer linear CKA of each run.
    kept : DataFrame
        Columns ``model, task, threshold, pct_kept`` (clustering).
    layer_share : DataFrame
        Columns ``model, task, threshold, layer, pct_redundant``.
    reference_threshold : float
        Where the clustering numbers are read.

    Returns
    -------
    changes : DataFrame
        ``FINETUNE_COLUMNS`` plus ``n_layers``; measures ``upper_adjacent_cka``, ``upper_pct_dropped``,
        ``pct_kept_clustering``.
    """
    rows = []

    def at_ref(table: pd.DataFrame, model: str, task: str) -> pd.DataFrame:
        sel = (table["model"] == model) & (table["task"] == task)
        return table[sel & np.isclose(table["threshold"], reference_threshold)]

    for base, tuned, task in pairs:
        values = {}
        for model in (base, tuned):
            share = at_ref(layer_share, model, task).sort_values("layer")["pct_redundant"].to_numpy(float)
            k = at_ref(kept, model, task)["pct_kept"]
            values[model] = {
                "upper_adjacent_cka": adjacent_layer_summary(cka[model, task])["upper_adjacent"],
                "upper_pct_dropped": float(share[len(share) // 2 :].mean()) if len(share) else np.nan,
                "pct_kept_clustering": float(k.iloc[0]) if len(k) else np.nan,
            }
        n_layers = int(np.asarray(cka[base, task]).shape[0])
        for measure in ("upper_adjacent_cka", "upper_pct_dropped", "pct_kept_clustering"):
            rows.append(
                {
                    "base": base,
                    "task": task,
                    "measure": measure,
                    "pretrained": values[base][measure],
                    "finetuned": values[tuned][measure],
                    "n_layers": n_layers,
                    "note": f"t = {reference_threshold:g}" if measure != "upper_adjacent_cka" else "",
                }
            )
    return _finetune_rows(rows)


def finetune_task_changes(
    pairs: Sequence[tuple[str, str, str]], task_layers: pd.DataFrame, minimal_neurons: pd.DataFrame
) -> pd.DataFrame:
    """Notebook 03's numbers of each pair: the best single layer and the LCA minimal set's size.

    Parameters
    ----------
    pairs : sequence of (base, fine-tuned model, task)
    task_layers : DataFrame
        Columns ``model, task, layer, mode, score``.
    minimal_neurons : DataFrame
        Columns ``model, task, ordering, pct_kept`` (and ``seed``: the mean over seeds is read).

    Returns
    -------
    changes : DataFrame
        Measures ``best_layer`` and ``minimal_pct_kept``.
    """
    rows = []
    for base, tuned, task in pairs:
        values = {}
        for model in (base, tuned):
            t = task_layers[(task_layers.model == model) & (task_layers.task == task)]
            ind = t[t["mode"] == "independent"]
            m = minimal_neurons[
                (minimal_neurons.model == model) & (minimal_neurons.task == task) & (minimal_neurons.ordering == "lca")
            ]
            values[model] = {
                "best_layer": float(ind.loc[ind["score"].idxmax(), "layer"]) if len(ind) else np.nan,
                "minimal_pct_kept": float(m["pct_kept"].mean()) if len(m) else np.nan,
                "n_layers": int(t["layer"].max()) + 1 if len(t) else np.nan,
            }
        for measure in ("best_layer", "minimal_pct_kept"):
            rows.append(
                {
                    "base": base,
                    "task": task,
                    "measure": measure,
                    "pretrained": values[base][measure],
                    "finetuned": values[tuned][measure],
                    "n_layers": values[base]["n_layers"],
                }
            )
    return _finetune_rows(rows)


def finetune_transfer_changes(pairs: Sequence[tuple[str, str, str]], transfer: pd.DataFrame) -> pd.DataFrame:
    """Notebook 04's numbers of each pair: the LayerSelector's layer and the share of neurons kept.

    Parameters
    ----------
    pairs : sequence of (base, fine-tuned model, task)
    transfer : DataFrame
        ``transfer_results.csv``: columns ``model, task, selected_layer, pct_kept`` (optional ``n_layers``).

    Returns
    -------
    changes : DataFrame
        Measures ``selected_layer`` and ``transfer_pct_kept``.
    """
    rows = []
    index = transfer.set_index(["model", "task"])
    for base, tuned, task in pairs:
        if (base, task) not in index.index or (tuned, task) not in index.index:
            continue
        b, f = index.loc[(base, task)], index.loc[(tuned, task)]
        n_layers = b["n_layers"] if "n_layers" in index.columns else np.nan
        for measure, column in (("selected_layer", "selected_layer"), ("transfer_pct_kept", "pct_kept")):
            rows.append(
                {
                    "base": base,
                    "task": task,
                    "measure": measure,
                    "pretrained": float(b[column]),
                    "finetuned": float(f[column]),
                    "n_layers": n_layers,
                }
            )
    return _finetune_rows(rows)


def _fmt(value: float, fmt: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, fmt)


def _interval_text(row: Any, side: str, fmt: str) -> str:
    low, high = getattr(row, f"{side}_low", np.nan), getattr(row, f"{side}_high", np.nan)
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return ""
    return f" [{_fmt(low, fmt)}, {_fmt(high, fmt)}]"


def _direction(row: Any, spec: FinetuneMeasure) -> str | None:
    """'higher', 'lower' or 'same' (fine-tuned vs pretrained), from the paired interval when there is one."""
    low, high = getattr(row, "diff_low", np.nan), getattr(row, "diff_high", np.nan)
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        return "higher" if low > 0 else ("lower" if high < 0 else "same")
    if not (np.isfinite(row.pretrained) and np.isfinite(row.finetuned)):
        return None
    diff = row.finetuned - row.pretrained
    return "same" if abs(diff) <= spec.tolerance else ("higher" if diff > 0 else "lower")


def describe_finetuning(changes: pd.DataFrame, *, layer_change: pd.DataFrame | None = None) -> str:
    """Say what fine-tuning changed, pair by pair, and compare it with the paper's sentence-level findings.

    Parameters
    ----------
    changes : DataFrame
        ``FINETUNE_COLUMNS`` (``base, task, measure, pretrained, finetuned``), one row per pair and
        measure of ``FINETUNE_MEASURES`` (other measures are ignored); optional columns
        ``pretrained_low/high``, ``finetuned_low/high`` (95% intervals), ``diff_low/high`` (paired
        interval of fine-tuned − pretrained: the direction is then read from it, not from the points),
        ``n_layers`` and ``note``. Built by ``finetune_general_changes``, ``finetune_task_changes``,
        ``finetune_transfer_changes`` or by hand.
    layer_change : DataFrame, optional
        Columns ``base, task, layer, cka``: linear CKA between layer l of the pretrained model and
        layer l of its fine-tuned twin on the same items (NaN for an undefined, constant layer).

    Returns
    -------
    text : str
        Markdown: which layers fine-tuning changed (with ``layer_change``), one bullet per pair and
        measure ("pretrained → fine-tuned: higher / lower / about the same", and whether that is what
        the paper found), then one line per paper finding counting the pairs that agree.
    """
    missing = [c for c in FINETUNE_COLUMNS if c not in changes.columns]
    if missing:
        raise ValueError(
            f"describe_finetuning needs columns {list(FINETUNE_COLUMNS)}; missing {missing}. Build the table with "
            "finetune_general_changes / finetune_task_changes / finetune_transfer_changes."
        )
    lines: list[str] = []
    if layer_change is not None and len(layer_change):
        lines.append(
            "**Which layers did fine-tuning change?** Linear CKA between layer l of the pretrained model and layer l "
            "of the fine-tuned one, on the same items (1: unchanged up to rotation and scale)."
        )
        for (base, task), g in layer_change.groupby(["base", "task"], sort=False):
            g = g.sort_values("layer")
            cka, layers = g["cka"].to_numpy(float), g["layer"].to_numpy(int)
            ok = np.isfinite(cka)
            if not ok.any():
                lines.append(f"- {base} · {task}: every layer is undefined (constant); nothing to compare.")
                continue
            half = len(cka) // 2
            lower, upper = np.nanmean(cka[:half]) if ok[:half].any() else np.nan, np.nanmean(cka[half:])
            lowest = int(layers[ok][np.argmin(cka[ok])])
            where = "upper" if upper < lower else "lower"
            undefined = f" (layer(s) {layers[~ok].tolist()} undefined: constant)" if (~ok).any() else ""
            lines.append(
                f"- {base} · {task}: {', '.join(_fmt(v, '.2f') for v in cka)} for layers "
                f"{layers[0]}–{layers[-1]}{undefined}; mean {_fmt(lower, '.2f')} in the lower half, "
                f"{_fmt(upper, '.2f')} in the upper half. Fine-tuning changed the {where} layers most "
                f"(least alike: layer {lowest}, {np.nanmin(cka):.2f})."
            )
        lines.append("")
    known = changes[changes["measure"].isin(list(FINETUNE_MEASURES))]
    if not len(known):
        return "\n".join(lines + ["No pretrained / fine-tuned pair to compare."]).strip()
    lines.append("**Pretrained → fine-tuned**, per measure (the paper's finding in brackets where it states one).")
    tally: dict[str, list[bool]] = {}
    for measure in [m for m in FINETUNE_MEASURES if m in set(known["measure"])]:
        spec = FINETUNE_MEASURES[measure]
        paper = f" (paper: {spec.finding})" if spec.finding else ""
        lines.append(f"- *{spec.text}*{paper}:")
        for row in known[known["measure"] == measure].itertuples(index=False):
            direction = _direction(row, spec)
            note = f", {row.note}" if isinstance(getattr(row, "note", None), str) and row.note else ""
            text = (
                f"  - {row.base} · {row.task}{note}: {_fmt(row.pretrained, spec.fmt)}"
                f"{_interval_text(row, 'pretrained', spec.fmt)} → {_fmt(row.finetuned, spec.fmt)}"
                f"{_interval_text(row, 'finetuned', spec.fmt)}"
            )
            d_low, d_high = getattr(row, "diff_low", np.nan), getattr(row, "diff_high", np.nan)
            paired = d_low is not None and d_high is not None and bool(np.isfinite(d_low) and np.isfinite(d_high))
            if paired:
                diff = getattr(row, "diff", row.finetuned - row.pretrained)
                text += f" (difference {diff:+.3f} [{d_low:+.3f}, {d_high:+.3f}], paired)"
            if direction is None:
                text += ": not comparable (a value is missing)."
            elif direction == "same":
                text += ": about the same" + (
                    " (the interval of the difference holds 0)"
                    if paired
                    else (f" (within {spec.tolerance:{spec.fmt}})" if spec.tolerance else "")
                )
            else:
                text += f": {direction} after fine-tuning"
            if measure == "selected_layer":
                n_layers = getattr(row, "n_layers", np.nan)
                if n_layers is not None and np.isfinite(n_layers) and np.isfinite(row.finetuned):
                    below = row.finetuned < n_layers - 1
                    text += (
                        f"; the fine-tuned model's LayerSelector stops {'below' if below else 'at'} its last layer "
                        f"({int(n_layers) - 1})" + (", as in the paper" if below else ", unlike the paper")
                    )
                    tally.setdefault(spec.finding, []).append(bool(below))
            elif spec.expect is not None and direction is not None:
                agrees = direction == spec.expect
                text += ", as in the paper" if agrees else ", unlike the paper"
                tally.setdefault(spec.finding, []).append(agrees)
            lines.append(text + ("." if not text.endswith(".") else ""))
    if tally:
        lines.append("")
        lines.append("**Against the paper's sentence-level findings:**")
        for finding, agree in tally.items():
            lines.append(f"- {finding}: agrees in {sum(agree)} of {len(agree)} comparison(s) here.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# markdown and the README


README_COLUMNS = {
    "pct_kept": "% neurons",
    "pct_of_oracle": "% of oracle",
    "pct_kept_sd": "% neurons sd (seeds)",
    "test_low": "test 95% low",
    "test_high": "test 95% high",
    "pct_of_oracle_low": "% of oracle 95% low",
    "pct_of_oracle_high": "% of oracle 95% high",
}
"""How the README's results table names the columns of ``transfer_results.csv`` it renames."""


def markdown_table(df: pd.DataFrame, *, digits: int = 3) -> str:
    """Render a DataFrame as a GitHub markdown table (floats rounded to ``digits``)."""

    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else f"{v:.{digits}f}"
        return "–" if v is None else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def replace_section(text: str, name: str, body: str) -> str:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``text``."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no '<!-- {name}:start -->' ... '<!-- {name}:end -->' markers in the text")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text, count=1)


def update_readme(name: str, body: str, *, path: str | os.PathLike = REPO_ROOT / "README.md") -> Path:
    """Write ``body`` into the README section ``name`` (atomic replace); return the path."""
    path = Path(path)
    new = replace_section(path.read_text(encoding="utf-8"), name, body)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# notebook 04 and the README: the reproduction report


def transfer_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Per model × task: does the reduced probe meet both bounds of ``PAPER_CLAIMS["transfer"]``?

    Returns the ``model, task, pct_kept, pct_of_oracle`` columns of ``table`` with ``keeps_97pct``,
    ``at_most_10pct_neurons`` (one per bound; named after the paper's numbers) and ``claim_holds``.
    """
    out = table[["model", "task", "pct_kept", "pct_of_oracle"]].copy()
    checked = PAPER_CLAIMS["transfer"].check(out)
    out["keeps_97pct"] = checked["pct_of_oracle_ok"]
    out["at_most_10pct_neurons"] = checked["pct_kept_ok"]
    out["claim_holds"] = checked["claim_holds"]
    return out


def transfer_claim_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """The transfer claim per model × task from intervals: "97% of the oracle with at most 10% of the neurons".

    Accuracy: the paired ratio interval of the reduced probe against the oracle (``ratio_low,
    ratio_high``, fractions; seeds pooled) read against 97% by ``intervals.verdict``. Size: the share
    of neurons kept over the seeds (``pct_kept_min, pct_kept_max``; without them ``pct_kept``) read
    against 10% the same way: every seed within holds, every seed beyond does not hold, seeds on
    both sides are inconclusive. The claim holds when both parts hold and does not hold when either
    does not.

    The paper reads accuracy, and so does ``verdict``. With macro-F1 columns (``f1_ratio_low,
    f1_ratio_high``: the reduced probe's macro-F1 over the oracle's, paired) the same bound is also read
    on macro-F1 (``macro_f1_verdict``), and where the two readings differ ``decided_by`` says so: on a
    task with one dominant class a probe that predicts that class everywhere keeps the accuracy and
    loses the macro-F1.

    Parameters
    ----------
    table : DataFrame
        ``transfer_results.csv`` of notebook 04: ``model, task, ratio, ratio_low, ratio_high`` and
        ``pct_kept_min, pct_kept_max`` (or ``pct_kept``); optionally ``f1_ratio, f1_ratio_low,
        f1_ratio_high``.

    Returns
    -------
    verdicts : DataFrame
        ``model, task, claim, verdict, accuracy_verdict, size_verdict, ratio, ratio_low, ratio_high,
        pct_kept_low, pct_kept_high, ours, decided_by`` (and ``macro_f1_verdict, f1_ratio,
        f1_ratio_low, f1_ratio_high`` with macro-F1 columns).
    """
    claim = PAPER_CLAIMS["transfer"]
    keep, at_most = claim.bound("pct_of_oracle") / 100, claim.bound("pct_kept")
    need = ["model", "task", "ratio", "ratio_low", "ratio_high"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(
            f"transfer table lacks interval columns {missing}: written by notebook 04 with seeds "
            f"(selection.transfer_over_seeds)"
        )
    low = table["pct_kept_min"] if "pct_kept_min" in table else table["pct_kept"]
    high = table["pct_kept_max"] if "pct_kept_max" in table else table["pct_kept"]
    rows = []
    for r, lo, hi in zip(table.itertuples(index=False), low, high):
        acc = interval_verdict((r.ratio_low, r.ratio_high), keep)
        size = interval_verdict((lo, hi), at_most, direction="at_most")
        both = (acc, size)
        verdict = (
            "does not hold" if "does not hold" in both else "holds" if both == ("holds", "holds") else "inconclusive"
        )
        kept = f"{lo:.2f}%" if np.isclose(lo, hi) else f"{lo:.2f}–{hi:.2f}% (over seeds)"
        decided_by = (
            f"ratio [{100 * r.ratio_low:.1f}, {100 * r.ratio_high:.1f}]% vs ≥ {100 * keep:g}% "
            f"({VERDICT_TEXT[acc]}); neurons {kept} vs ≤ {at_most:g}% ({VERDICT_TEXT[size]})"
        )
        f1_cols = {}
        f1_low, f1_high = getattr(r, "f1_ratio_low", np.nan), getattr(r, "f1_ratio_high", np.nan)
        if np.isfinite(f1_low) and np.isfinite(f1_high):
            f1 = interval_verdict((f1_low, f1_high), keep)
            f1_cols = {"macro_f1_verdict": f1, "f1_ratio": r.f1_ratio, "f1_ratio_low": f1_low, "f1_ratio_high": f1_high}
            if f1 != acc:
                decided_by += (
                    f"; read on macro-F1 instead of accuracy: ratio [{100 * f1_low:.1f}, {100 * f1_high:.1f}]% "
                    f"({VERDICT_TEXT[f1]})"
                )
        rows.append(
            {
                "model": r.model,
                "task": r.task,
                "claim": "transfer",
                "verdict": verdict,
                "accuracy_verdict": acc,
                "size_verdict": size,
                "ratio": r.ratio,
                "ratio_low": r.ratio_low,
                "ratio_high": r.ratio_high,
                "pct_kept_low": float(lo),
                "pct_kept_high": float(hi),
                "ours": f"neurons kept {kept}; {100 * r.ratio:.1f}% of the oracle's accuracy",
                "decided_by": decided_by,
                **f1_cols,
            }
        )
    return pd.DataFrame(rows)


def claims_side_by_side(*verdicts: pd.DataFrame) -> str:
    """A markdown table: the paper's claim and ours, per claim and model × task, with the deciding interval.

    Parameters
    ----------
    *verdicts : DataFrame
        Tables with columns ``claim`` (a key of ``PAPER_CLAIMS``), ``model, task, verdict, ours,
        decided_by`` (as from ``general_claim_verdicts``, ``task_claim_verdicts`` and
        ``transfer_claim_verdicts``).

    Returns
    -------
    text : str
        Columns: claim, the paper, model · task, ours, what decides, verdict.
    """
    frames = [v for v in verdicts if v is not None and len(v)]
    if not frames:
        raise ValueError(
            "no verdict table to show: pass general_claim_verdicts(...) and/or transfer_claim_verdicts(...)"
        )
    rows = []
    for v in frames:
        for r in v.itertuples(index=False):
            rows.append(
                {
                    "claim": r.claim,
                    "paper": PAPER_CLAIMS[r.claim].text,
                    "model · task": f"{r.model} · {r.task}",
                    "ours": r.ours,
                    "decided by (95% intervals)": r.decided_by,
                    "verdict": f"**{VERDICT_TEXT[r.verdict]}**",
                }
            )
    return markdown_table(pd.DataFrame(rows))


def reproduction_report(
    transfer: pd.DataFrame,
    *,
    general: pd.DataFrame | None = None,
    minimal: pd.DataFrame | None = None,
    general_threshold: float = 0.3,
    cc_sweep: pd.DataFrame | None = None,
    task_delta: float = 1.0,
) -> str:
    """Markdown: which of the paper's abstract claims hold on these models, with the numbers.

    Parameters
    ----------
    transfer : DataFrame
        ``transfer_results.csv`` (columns ``model, task, pct_kept, pct_of_oracle, test, oracle_test, ...``).
    general : DataFrame, optional
        ``general_redundancy.csv`` (``model, task, threshold, pct_kept, ...``) from notebook 02.
    minimal : DataFrame, optional
        ``minimal_neurons.csv`` (``model, task, ordering, pct_kept, ...``) from notebook 03.
    general_threshold : float
        Clustering threshold at which the general-redundancy claim is read (without ``cc_sweep``).
    cc_sweep : DataFrame, optional
        ``cc_sweep.csv`` from notebook 02: the general claim is then read the authors' way, from the
        probes on the cluster representatives and their intervals (``general_claim_verdicts``), and
        ``general`` is not used for it. With interval columns (``ratio_low``, ``ratio_high``) in
        ``transfer``, the transfer claim is read from intervals too (``transfer_claim_verdicts``).
    task_delta : float
        The minimal-set tolerance (percent) notebook 03 used; with interval columns in ``minimal`` the
        task claim is read by ``task_claim_verdicts``.
    """
    lines = ["### Reproduction report", ""]
    if cc_sweep is not None and len(cc_sweep):
        v = general_claim_verdicts(cc_sweep)
        counts = _verdict_counts(v["verdict"])
        lines.append(
            f"- **General redundancy** — paper: {PAPER_CLAIMS['general'].text}. Here, read the authors' way "
            f"(a probe on the cluster representatives at every threshold must keep "
            f"{general_tolerance_pct():g}% of the oracle's accuracy, 95% paired interval; constant neurons "
            f"apart), {_largest_removal(v['max_removed_within'])} within that tolerance; per model × task: "
            f"{counts} (table below)."
        )
    elif general is not None and len(general):
        g = general[np.isclose(general["threshold"], general_threshold)]
        if len(g):
            redundant = 100 - g.groupby("model")["pct_kept"].mean()
            parts = [f"{m}: {v:.0f}% redundant" for m, v in redundant.items()]
            ok = PAPER_CLAIMS["general"].check(redundant.rename("pct_redundant").to_frame())["claim_holds"]
            verdict = _verdict(int(ok.sum()), len(ok))
            lines.append(
                f"- **General redundancy** — paper: {PAPER_CLAIMS['general'].text}. Here, clustering all neurons "
                f"at t = {general_threshold} (|r| ≥ {1 - general_threshold:.1f}) marks "
                f"{'; '.join(parts)} (mean over tasks): the claim **{verdict}**."
            )
    if minimal is not None and len(minimal) and {"ratio_low", "ratio_high"} <= set(minimal.columns):
        tv = task_claim_verdicts(minimal, delta=task_delta)  # seeds and intervals: no point verdict
        removable = 100 - minimal.loc[minimal["ordering"] == "lca", "pct_kept"]
        lines.append(
            f"- **Task-specific redundancy** — paper: {PAPER_CLAIMS['task'].text}. Here the minimal LCA "
            f"neuron sets (chosen on dev within {task_delta:g}% of the oracle) remove "
            f"{removable.min():.1f}–{removable.max():.1f}% of the neurons over seeds; read from the share "
            f"removed and the 95% paired interval of test score / oracle score, per model × task: "
            f"{_verdict_counts(tv['verdict'])} (table below)."
        )
    elif minimal is not None and len(minimal):
        m = minimal[minimal["ordering"].str.lower().isin(["lca", "lca (probe)"])] if "ordering" in minimal else minimal
        m = m if len(m) else minimal
        removed = (100 - m["pct_kept"]).rename("pct_removable")
        task_claim = PAPER_CLAIMS["task"]
        n_ok = int(task_claim.check(removed.to_frame())["claim_holds"].sum())
        lines.append(
            f"- **Task-specific redundancy** — paper: {task_claim.text}. Here the minimal LCA neuron "
            f"sets remove {removed.min():.1f}–{removed.max():.1f}% of the neurons ({n_ok} of {len(m)} "
            f"model × task pairs reach {task_claim.bound('pct_removable'):g}%): the claim "
            f"**{_verdict(n_ok, len(m))}**."
        )
    transfer_claim = PAPER_CLAIMS["transfer"]
    keep, at_most = transfer_claim.bound("pct_of_oracle"), transfer_claim.bound("pct_kept")
    c = transfer_claims(transfer)
    if {"ratio_low", "ratio_high"} <= set(transfer.columns):  # seeds and intervals: no point verdict
        tv = transfer_claim_verdicts(transfer)
        counts = _verdict_counts(tv["verdict"])
        lines.append(
            f"- **Efficient transfer** — paper: {transfer_claim.text}. Here the pipeline (mean over seeds) "
            f"keeps {c['pct_of_oracle'].min():.1f}–{c['pct_of_oracle'].max():.1f}% of the oracle's test "
            f"score with {c['pct_kept'].min():.2f}–{c['pct_kept'].max():.2f}% of the neurons. Read from the "
            f"95% paired intervals (reduced vs oracle on the same test items, seeds pooled) and the seeds' "
            f"spread of neurons kept, per model × task: {counts} (table below)."
        )
        differ = (
            tv["macro_f1_verdict"] != tv["accuracy_verdict"]
            if "macro_f1_verdict" in tv
            else pd.Series(False, index=tv.index)
        )
        for r in tv[(tv["verdict"] != "holds") | differ].itertuples(index=False):
            lines.append(f"  - {r.model} · {r.task}: {r.decided_by}.")
        if differ.any():
            lines.append(
                f"  Read on macro-F1 instead of accuracy (the same bound, paired intervals), {int(differ.sum())} "
                "model × task pair(s) read differently (listed above): where one class dominates, a probe "
                "that predicts it everywhere keeps the accuracy and loses the macro-F1."
            )
    else:
        n_ok = int(c["claim_holds"].sum())
        verdict = _verdict(n_ok, len(c))
        lines.append(
            f"- **Efficient transfer** — paper: {transfer_claim.text}. Here the pipeline keeps "
            f"{c['pct_of_oracle'].min():.1f}–{c['pct_of_oracle'].max():.1f}% of the oracle's test score with "
            f"{c['pct_kept'].min():.2f}–{c['pct_kept'].max():.2f}% of the neurons; {n_ok} of {len(c)} "
            f"model × task pairs meet both bounds: the claim **{verdict}**."
        )
        misses = c[~c["claim_holds"]]
        for row in misses.itertuples(index=False):
            why = []
            if not row.keeps_97pct:
                why.append(f"keeps {row.pct_of_oracle:.1f}% of the oracle (< {keep:g}%)")
            if not row.at_most_10pct_neurons:
                why.append(f"needs {row.pct_kept:.1f}% of the neurons (> {at_most:g}%)")
            lines.append(f"  - {row.model} · {row.task}: {' and '.join(why)}.")
    tuned = sorted({str(m)[: -len(FT_SUFFIX)] for m in transfer["model"] if str(m).endswith(FT_SUFFIX)})
    if tuned:
        sentence_models = (
            "sentence tasks run on the pretrained models, as the paper's claims are about pretrained models, and "
            f"for {', '.join(tuned)} also on a copy fine-tuned on each task (rows "
            f"{', '.join(b + FT_SUFFIX for b in tuned)}: the paper's sentence-level setting, on a train budget)"
        )
    else:
        sentence_models = "sentence tasks use the pretrained (not task-fine-tuned) models"
    lines += [
        "",
        "Why results may differ from the paper's: our encoders are sentence-embedding fine-tunes "
        "(all-MiniLM-L6-v2, all-mpnet-base-v2), not raw BERT/XLNet checkpoints; SmolLM2 is an instruction-tuned, "
        "4-bit quantised decoder; Gemma 3 270M is a raw pretrained (base) decoder, the closest to the paper's "
        "kind of model, also 4-bit quantised; the training sets are much smaller (the PTB sample holds 65k training tokens "
        "against the paper's 150k, and the full run uses a budget of them; a few thousand sentences per "
        f"sentence task); {sentence_models}; and the dev-set choice rule here is explicit (fewest neurons keeping "
        f"{keep:g}% of the oracle on dev).",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def warnings_as_notes(categories: tuple[type[Warning], ...] = (UserWarning,)) -> Iterator[list[str]]:
    """Run a block with the warnings of ``categories`` caught, then print each distinct one as ``note: ...``.

    For notebooks: an expected warning (constant neurons, a minimal-set target no grid point reached)
    is part of the result, so it is shown as text on standard output, once, without the file path
    and line a kernel warning carries. Warnings of other categories are re-issued unchanged.

    Yields
    ------
    notes : list of str
        Filled when the block ends: the printed notes, in order of first appearance.
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    for w in caught:
        if issubclass(w.category, categories):
            note = f"note: {w.message}"
            if note not in notes:
                notes.append(note)
                print(note)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _timings(args: argparse.Namespace) -> None:
    """Command line: write measured wall times into the README's timings section."""
    rows = []
    for item in args.time:
        name, seconds = item.split("=")
        rows.append(
            f"- `make {name}`: {float(seconds) / 60:.1f} min wall time on a 2-core machine "
            f"(measured by the Makefile on its last run)."
        )
    update_readme("timings", "\n".join(rows))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m utils.report --time reproduce=SECONDS``: record wall times in the README."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--time", action="append", default=[], help="TARGET=SECONDS")
    _timings(parser.parse_args(argv))


if __name__ == "__main__":
    main()

"""Tables and prose generated from the numbers: markdown tables, the reproduction report, README sections.

Nothing here computes a statistic; it reads the tidy tables the notebooks write and says what they
show, so that no number in the README or a "What we saw" cell is typed by hand.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .paths import REPO_ROOT

PAPER_CLAIMS = {
    "general": "85% of the neurons across the network are redundant",
    "task": "at least 92% of the neurons can be removed when optimising for a task",
    "transfer": "97% of the performance is kept with at most 10% of the neurons",
}


README_COLUMNS = {"pct_kept": "% neurons", "pct_of_oracle": "% of oracle"}
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


def transfer_claims(table: pd.DataFrame, *, keep_pct: float = 97.0, max_pct_kept: float = 10.0) -> pd.DataFrame:
    """Per model × task: does the reduced probe keep ``keep_pct`` % of the oracle with ≤ ``max_pct_kept`` % neurons?"""
    out = table[["model", "task", "pct_kept", "pct_of_oracle"]].copy()
    out["keeps_97pct"] = out["pct_of_oracle"] >= keep_pct
    out["at_most_10pct_neurons"] = out["pct_kept"] <= max_pct_kept
    out["claim_holds"] = out["keeps_97pct"] & out["at_most_10pct_neurons"]
    return out


def reproduction_report(
    transfer: pd.DataFrame,
    *,
    general: pd.DataFrame | None = None,
    minimal: pd.DataFrame | None = None,
    general_threshold: float = 0.3,
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
        Clustering threshold at which the general-redundancy claim is read.
    """
    lines = ["### Reproduction report", ""]
    if general is not None and len(general):
        g = general[np.isclose(general["threshold"], general_threshold)]
        if len(g):
            redundant = 100 - g.groupby("model")["pct_kept"].mean()
            parts = [f"{m}: {v:.0f}% redundant" for m, v in redundant.items()]
            verdict = "holds" if (redundant >= 85).all() else ("holds in part" if (redundant >= 85).any() else "does not hold")
            lines.append(f"- **General redundancy** — paper: {PAPER_CLAIMS['general']}. Here, clustering all neurons "
                         f"at t = {general_threshold} (|r| ≥ {1 - general_threshold:.1f}) marks "
                         f"{'; '.join(parts)} (mean over tasks): the claim **{verdict}**.")
    if minimal is not None and len(minimal):
        m = minimal[minimal["ordering"].str.lower().isin(["lca", "lca (probe)"])] if "ordering" in minimal else minimal
        m = m if len(m) else minimal
        removed = 100 - m["pct_kept"]
        n_ok = int((removed >= 92).sum())
        verdict = "holds" if n_ok == len(m) else ("holds in part" if n_ok else "does not hold")
        lines.append(f"- **Task-specific redundancy** — paper: {PAPER_CLAIMS['task']}. Here the minimal LCA neuron "
                     f"sets remove {removed.min():.1f}–{removed.max():.1f}% of the neurons ({n_ok} of {len(m)} "
                     f"model × task pairs reach 92%): the claim **{verdict}**.")
    c = transfer_claims(transfer)
    n_ok = int(c["claim_holds"].sum())
    verdict = "holds" if n_ok == len(c) else ("holds in part" if n_ok else "does not hold")
    lines.append(f"- **Efficient transfer** — paper: {PAPER_CLAIMS['transfer']}. Here the pipeline keeps "
                 f"{c['pct_of_oracle'].min():.1f}–{c['pct_of_oracle'].max():.1f}% of the oracle's test score with "
                 f"{c['pct_kept'].min():.2f}–{c['pct_kept'].max():.2f}% of the neurons; {n_ok} of {len(c)} "
                 f"model × task pairs meet both bounds: the claim **{verdict}**.")
    misses = c[~c["claim_holds"]]
    for row in misses.itertuples(index=False):
        why = []
        if not row.keeps_97pct:
            why.append(f"keeps {row.pct_of_oracle:.1f}% of the oracle (< 97%)")
        if not row.at_most_10pct_neurons:
            why.append(f"needs {row.pct_kept:.1f}% of the neurons (> 10%)")
        lines.append(f"  - {row.model} · {row.task}: {' and '.join(why)}.")
    lines += ["", "Why results may differ from the paper's: our encoders are sentence-embedding fine-tunes "
              "(all-MiniLM-L6-v2, all-mpnet-base-v2), not raw BERT/XLNet checkpoints; SmolLM2 is a 4-bit "
              "quantised decoder; the training sets are much smaller (the PTB sample holds 65k training tokens "
              "against the paper's 150k, and the full run uses a budget of them; a few thousand sentences per "
              "sentence task); sentence tasks use the pretrained (not "
              "task-fine-tuned) models; and the dev-set choice rule here is explicit (fewest neurons keeping "
              "97% of the oracle on dev)."]
    return "\n".join(lines)


def _timings(args: argparse.Namespace) -> None:
    """Command line: write measured wall times into the README's timings section."""
    rows = []
    for item in args.time:
        name, seconds = item.split("=")
        rows.append(f"- `make {name}`: {float(seconds) / 60:.1f} min wall time on a 2-core machine "
                    f"(measured by the Makefile on its last run).")
    update_readme("timings", "\n".join(rows))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m utils.report --time reproduce=SECONDS``: record wall times in the README."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--time", action="append", default=[], help="TARGET=SECONDS")
    _timings(parser.parse_args(argv))


if __name__ == "__main__":
    main()

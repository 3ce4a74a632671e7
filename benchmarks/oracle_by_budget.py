"""The oracle against the best layer probe, by training budget: is the cut budget why the oracle trails?

Notebook 03 checks that the oracle (one probe on all neurons) does not trail the best layer probe on
dev by more than the noise (``probing.oracle_against_best_layer``: paired interval of oracle − best,
dev sentences resampled). At the full run's 10,000 POS training tokens, MPNet's oracle (9,984
features) fails that check. This script repeats notebook 03's steps — layer probes (independent
and incremental), the oracle's elastic-net strength chosen on dev from ``probing.REG_GRID``, the
paired dev check — at several training budgets, on the same dev split, and prints one row per
budget. A measurement of the evidence, not a speed target; it reads and writes the activation cache
(stores of new budgets are extracted on first use, about 1,000 words a second for MPNet).

Usage::

    .venv/bin/python benchmarks/oracle_by_budget.py                              # MPNet POS, 10k 20k 40k all
    .venv/bin/python benchmarks/oracle_by_budget.py --model gemma3 --task tweets --budgets 1500 3000 6000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import activations, probing  # noqa: E402


def one_budget(model: str, task: str, budget: int | None, seed: int, n_boot: int, eval_budget: int | None) -> dict:
    """Notebook 03's layer probes, oracle grid and dev check at one training budget (None: every item)."""
    started = time.perf_counter()
    budgets = dict(token_budget=budget, sentence_budget=budget, eval_budget=eval_budget)  # words or sentences
    stores = activations.task_stores(model, task, seed=seed, splits=("train", "dev"), **budgets)
    d = probing.ProbeSplits.from_stores(stores["train"], stores["dev"])
    params = {"random_state": seed}
    common = {"activations_dev": d.activations_dev, "y_dev": d.labels_dev, "probe_params": params}
    layers, probes = probing.fit_layer_probes(
        d.activations, d.labels, mode=["independent", "incremental"], return_probes=True, **common
    )
    reg, oracle = probing.select_regularization(d.activations, d.labels, grid=probing.REG_GRID, **common)
    chosen = reg[reg.chosen].iloc[0]
    row, _ = probing.oracle_against_best_layer(
        layers, probes, oracle, d, oracle_dev=float(chosen.score), n_boot=n_boot, random_state=seed
    )
    return {
        "model": model,
        "task": task,
        "train_items": len(d.labels),
        "oracle_l1_l2": float(chosen.l1),
        **row,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mpnet")
    ap.add_argument("--task", default="pos")
    ap.add_argument("--budgets", nargs="+", default=["10000", "20000", "40000", "all"], help="train items, or 'all'")
    ap.add_argument("--eval-budget", type=int, default=1000, help="dev sentences of sentence tasks (the full run's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    rows = []
    for b in args.budgets:
        rows.append(
            one_budget(args.model, args.task, None if b == "all" else int(b), args.seed, args.n_boot, args.eval_budget)
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    print()
    print(pd.DataFrame(rows).round(4).to_string(index=False))


if __name__ == "__main__":
    main()

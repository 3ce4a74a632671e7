"""Benchmark: the transfer pipeline over seeds, as notebook 04 runs it now vs as it ran before.

Notebook 04 runs ``selection.run_transfer`` on every model × task for three probe seeds. Two things
make it cheaper, neither changing what it selects:

- ``before``: one ``run_transfer`` per seed, each training the incremental probes of every layer
  (``selection.FIRST_LAYERS = 1``) and clustering every selected layer itself;
- ``now``: ``selection.run_transfer_seeds``: the incremental probes of the first quarter of the layers
  first (the rest only when none reaches the LayerSelector's highest target), and the cluster
  representatives of a (layer, threshold) computed once for all seeds.

Both run here, one after the other, on the same stores and one torch thread (as a worker of
``parallel.map_jobs``). Prints the seconds of each, their ratio, and whether every seed's grid, steps and
test predictions are equal (they must be; the incremental probes of the first layers agree with those of
a full bank up to float32 rounding, so a difference would show as a changed dev score in the grid).

Usage::

    .venv/bin/python benchmarks/bench_transfer.py                               # MPNet POS, seed 0
    .venv/bin/python benchmarks/bench_transfer.py --model smollm2 --task tweets --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import activations, selection  # noqa: E402

# the full configuration's budgets (notebooks/params/full.yaml)
BUDGETS = dict(token_budget=10000, sentence_budget=1500, eval_budget=1000, task_budgets={"pos": 20000, "tweets": 6000})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mpnet")
    ap.add_argument("--task", default="pos")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a map_jobs worker uses 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st = activations.task_stores(args.model, args.task, seed=0, **BUDGETS)
    data = [(st[s].activations, st[s].labels) for s in ("train", "dev", "test")]
    print(
        f"{args.model} {args.task}: train {st['train'].activations.shape}, seeds {args.seeds}, {args.threads} thread(s)"
    )

    first = selection.FIRST_LAYERS
    selection.FIRST_LAYERS = 1.0
    t0 = time.perf_counter()
    before = [
        selection.run_transfer(*data, probe_params={"random_state": s}, info={"seed": s}, progress=False)
        for s in args.seeds
    ]
    t_before = time.perf_counter() - t0
    selection.FIRST_LAYERS = first
    t0 = time.perf_counter()
    now = selection.run_transfer_seeds(*data, seeds=args.seeds, progress=False)
    t_now = time.perf_counter() - t0

    same = all(
        a.grid.equals(b.grid) and a.steps.equals(b.steps) and np.array_equal(a.test_predictions, b.test_predictions)
        for a, b in zip(before, now)
    )
    table = pd.DataFrame(
        [
            {
                "way": "before",
                "seconds": round(t_before, 1),
                "incremental layers": [r.info["incremental_layers"] for r in before],
            },
            {
                "way": "now",
                "seconds": round(t_now, 1),
                "incremental layers": [r.info["incremental_layers"] for r in now],
            },
        ]
    )
    print(table.to_string(index=False))
    print(
        f"speed-up now vs before: {t_before / t_now:.2f}x; selected layers {[r.selected_layer for r in now]}; "
        f"equal results: {same}"
    )


if __name__ == "__main__":
    main()

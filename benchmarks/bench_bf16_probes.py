"""bfloat16 matrix products in the probes: faithful enough to be the default, and how much faster?

``LinearProbe(precision="bfloat16")`` keeps the standardised features and does the minibatch matrix
products in bfloat16 (parameters, losses and Adam in float32). This script trains notebook 03's
probes on one model x task at the full run's budget, three ways, and compares them on dev:

- ``float32, seed 0`` (the reference), ``float32, seed 1`` (what the seed alone changes: the yardstick)
  and ``bfloat16, seed 0``;
- the probes: every independent and incremental layer probe with its control task (one batched fit,
  as notebook 03) and the oracle at the authors' λ = 1e-5;
- per variant: seconds (same thread count), dev accuracy of the oracle and of the best layer probe,
  the paired 95% interval (dev sentences resampled) of its difference from the reference, the largest
  |difference| of any layer probe, and the overlap of the oracle's top 1% and 5% LCA neurons with the
  reference's.

bfloat16 is faithful when its differences from the reference are no larger than the seed's.

    .venv/bin/python benchmarks/bench_bf16_probes.py --model mpnet --threads 1
    .venv/bin/python benchmarks/bench_bf16_probes.py --model smollm2 --threads 1
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

from utils import activations, intervals, probing, ranking  # noqa: E402

VARIANTS = (("float32", 0), ("float32", 1), ("bfloat16", 0))


def fit(d: probing.ProbeSplits, precision: str, seed: int) -> dict:
    """Layer probes (with control tasks) and the oracle of one variant, timed; dev predictions."""
    params = {"random_state": seed, "precision": precision}
    common = {"y": d.labels, "activations_dev": d.activations_dev, "y_dev": d.labels_dev, "probe_params": params}
    t0 = time.perf_counter()
    table, probes = probing.fit_layer_probes(
        d.activations,
        **common,
        mode=["independent", "incremental"],
        words=d.words,
        words_dev=d.words_dev,
        control_random_state=0,
        return_probes=True,
    )
    t_layers = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, (oracle,) = probing.fit_layer_probes(d.activations, **common, mode="oracle", return_probes=True)
    t_oracle = time.perf_counter() - t0
    A = np.asarray(d.activations_dev)
    preds = {}
    for row, probe in zip(table.itertuples(), probes):
        preds[f"{row.mode} {row.layer}"] = probe.predict(probing.layer_probe_inputs(A, row.mode, row.layer))
    preds["oracle"] = oracle.predict(A.reshape(len(A), -1))
    return {"layers_s": t_layers, "oracle_s": t_oracle, "preds": preds, "coef": oracle.standardized_coef_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--task", default="pos")
    parser.add_argument("--token-budget", type=int, default=10_000)
    parser.add_argument("--sentence-budget", type=int, default=1_500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a notebook worker uses 1)")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stores = activations.task_stores(
        args.model,
        args.task,
        seed=0,
        splits=("train", "dev"),
        token_budget=args.token_budget,
        sentence_budget=args.sentence_budget,
        eval_budget=1000,
    )
    d = probing.ProbeSplits.from_stores(stores["train"], stores["dev"])
    groups = d.sentences_dev if d.sentences_dev is not None else np.arange(len(d.labels_dev))
    runs = {v: fit(d, *v) for v in VARIANTS}
    ref = runs["float32", 0]
    y = d.labels_dev
    ref_scores = {k: float(np.mean(p == y)) for k, p in ref["preds"].items()}
    best = max((k for k in ref_scores if k != "oracle"), key=ref_scores.get)
    top = {pct: max(1, int(round(pct / 100 * ref["coef"].shape[1]))) for pct in (1, 5)}
    ref_order = ranking.lca_ordering(ref["coef"])
    rows = []
    for (precision, seed), r in runs.items():
        row = {"variant": f"{precision}, seed {seed}", "layers_s": r["layers_s"], "oracle_s": r["oracle_s"]}
        for name in ("oracle", best):
            diff = intervals.paired_interval(
                y, r["preds"][name], ref["preds"][name], groups=groups, n_boot=args.n_boot, random_state=0
            )
            key = "oracle" if name == "oracle" else "best_layer"
            row |= {
                key: float(np.mean(r["preds"][name] == y)),
                f"{key}_diff": diff.estimate,
                f"{key}_low": diff.low,
                f"{key}_high": diff.high,
            }
        row["max_layer_abs_diff"] = max(
            abs(float(np.mean(p == y)) - ref_scores[k]) for k, p in r["preds"].items() if k != "oracle"
        )
        order = ranking.lca_ordering(r["coef"])
        for pct, k in top.items():
            row[f"top{pct}pct_overlap"] = len(np.intersect1d(order[:k], ref_order[:k])) / k
        rows.append(row)
    table = pd.DataFrame(rows)
    print(
        f"{args.model} {args.task}: train {d.activations.shape}, dev {len(y)} items; best layer probe "
        f"(float32, seed 0): {best}; {args.threads} torch thread(s)"
    )
    print(table.round(4).to_string(index=False))
    base = runs["float32", 0]
    bf = runs["bfloat16", 0]
    print(
        f"bfloat16 speed-up: layer probes {base['layers_s'] / bf['layers_s']:.2f}x, "
        f"oracle {base['oracle_s'] / bf['oracle_s']:.2f}x"
    )


if __name__ == "__main__":
    main()

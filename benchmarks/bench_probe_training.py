"""Probe training before and after two changes, side by side: the analytic penalty step, and grouped minimal-set fits.

1. **The Adam step.** Each Adam step adds the gradient of the elastic-net penalty and updates every
   weight. Before, the penalty went through autograd (``Bank.penalty(...).backward()``: a forward and
   a backward pass over every weight) and the per-probe Adam of the incremental probes built two
   temporaries per parameter; now ``Bank.add_penalty_grad_`` adds the same gradient directly and
   ``training._Adam.step`` works in place.
2. **Grouped grid points.** A minimal-set search (``ranking.minimal_neuron_set``) and an accuracy
   curve train one probe per grid point k. Before, each was its own fit; now neighbouring points
   are trained together as one batched model (``probing.fit_subset_probes``, ``ranking.GROUP_COLUMNS``).

The "before" variant is the replaced code, defined here and swapped in (the autograd step, and
``GROUP_COLUMNS = 0``: one fit per grid point); "after" is the committed code. Workloads, on one
model x task at the full run's budget:

- ``layers``: notebook 03's layer probes (every independent and incremental probe with its control
  task, one batched fit);
- ``oracle``: the oracle at the authors' lambda = 1e-5;
- ``minimal-<ordering>``: one minimal-set search (target: 99% of the oracle's dev score, as notebook 03)
  on a random ordering and on the probe-free ``mean_difference`` ordering (LCA needs an oracle first;
  it stops near the same k).

The variants alternate ``--repeats`` times; each keeps its best time. Printed: seconds, the ratio, and
how far apart the two variants' dev scores are (every layer probe, the oracle, every grid point both
searches trained): the computations are the same up to the order of floating-point operations.

    .venv/bin/python benchmarks/bench_probe_training.py --model mpnet --task pos --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import activations, probing, ranking, training  # noqa: E402


def reference_penalty_grad(bank: training.Bank, l1: float, l2: float, *, l2_squared: bool) -> None:
    """The replaced step: the exact penalty back-propagated by autograd (accumulates into ``.grad``)."""
    pen = bank.penalty(l1, l2, l2_squared=l2_squared, smooth=False)
    if pen.requires_grad:
        pen.backward()


@torch.no_grad()
def reference_adam_step(self: training._Adam) -> None:
    """The replaced per-entry Adam: ``m.div(v.div(c2).sqrt_().add_(eps)).mul_(lr / c1)``, two temporaries."""
    self.t += 1
    b1, b2 = self.betas
    c1, c2 = 1 - b1**self.t, 1 - b2**self.t
    for p, lr, m, v in zip(self.params, self.lrs, self.m, self.v):
        if p.grad is None:
            continue
        m.mul_(b1).add_(p.grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        p.sub_(m.div(v.div(c2).sqrt_().add_(self.eps)).mul_(lr / c1))


@contextlib.contextmanager
def variant(name: str):
    """``"after"``: the committed code; ``"before"``: the autograd step and one fit per grid point."""
    if name == "after":
        yield
        return
    saved = training.Bank.add_penalty_grad_, training._Adam.step, ranking.GROUP_COLUMNS
    training.Bank.add_penalty_grad_, training._Adam.step = reference_penalty_grad, reference_adam_step
    ranking.GROUP_COLUMNS = 0
    try:
        yield
    finally:
        training.Bank.add_penalty_grad_, training._Adam.step, ranking.GROUP_COLUMNS = saved


def workloads(d: probing.ProbeSplits) -> dict:
    """name -> function returning a dict of dev scores."""
    common = {"y": d.labels, "activations_dev": d.activations_dev, "y_dev": d.labels_dev}
    X, Xd = d.features()
    orderings = {
        "random": ranking.random_ordering(X.shape[1], random_state=0),
        "mean_difference": ranking.mean_difference_ordering(X, d.labels),
    }
    target = {}

    def layers() -> dict:
        table = probing.fit_layer_probes(
            d.activations, **common, mode=["independent", "incremental"], words=d.words, words_dev=d.words_dev
        )
        return {f"{r.mode} {r.layer}": r.score for r in table.itertuples()}

    def oracle() -> dict:
        table = probing.fit_layer_probes(d.activations, **common, mode="oracle")
        target.setdefault("dev", float(table.score.iloc[0]) * 0.99)
        return {"oracle": float(table.score.iloc[0])}

    def search(name: str):
        def run() -> dict:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ms = ranking.minimal_neuron_set(X, d.labels, Xd, d.labels_dev, orderings[name], target=target["dev"])
            return {f"k={r.k}": r.score for r in ms.curve.itertuples()}

        return run

    return {"layers": layers, "oracle": oracle, **{f"minimal-{name}": search(name) for name in orderings}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--task", default="pos")
    parser.add_argument("--token-budget", type=int, default=20_000, help="train words (the full run: POS 20,000)")
    parser.add_argument("--sentence-budget", type=int, default=1_500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a notebook worker uses 1)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="workloads to run (the oracle always runs first)")
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
    print(f"{args.model} {args.task}: train {d.activations.shape}, dev {len(d.labels_dev)}; {args.threads} thread(s)")
    jobs = workloads(d)
    names = ["oracle"] + [n for n in jobs if n != "oracle" and (not args.only or n in args.only)]
    for name in names:
        best, scores = {}, {}
        for _ in range(args.repeats):
            for v in ("before", "after"):
                with variant(v):
                    t0 = time.perf_counter()
                    scores[v] = jobs[name]()
                    best[v] = min(best.get(v, np.inf), time.perf_counter() - t0)
        a, b = scores["before"], scores["after"]
        shared = sorted(a.keys() & b.keys())
        diff = max(abs(a[k] - b[k]) for k in shared)
        print(
            f"{name:24s} before {best['before']:7.1f} s   after {best['after']:7.1f} s   "
            f"ratio {best['before'] / best['after']:.2f}x   largest |dev score difference| {diff:.4f} over "
            f"{len(shared)} probes{'' if a.keys() == b.keys() else f' (before {len(a)}, after {len(b)} probes)'}",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""The Adam step of the probes: analytic penalty gradient and in-place Adam against the autograd step they replaced.

Each Adam step of a probe bank adds the gradient of the elastic-net penalty and updates every weight.
Until this change the penalty went through autograd (``Bank.penalty(...).backward()``: the penalty's
forward and backward passes over every weight) and the per-probe Adam of the incremental probes
built two temporaries per parameter. Now ``Bank.add_penalty_grad_`` adds the same gradient directly
and ``training._Adam.step`` works in place. This script trains the same probes both ways, side by
side in one process (the reference step is defined here and swapped in), alternating the two
variants ``--repeats`` times and keeping each one's best time:

- ``layers``: notebook 03's layer probes of one model x task (every independent and incremental
  probe with its control task, one batched fit);
- ``oracle``: the oracle at the authors' lambda = 1e-5;
- ``minimal``: one minimal-set search on a random ordering (many small probes; notebook 03's
  "Minimal neuron sets" and notebook 04's searches are made of these).

It prints seconds for each variant and the ratio, and how far apart the two variants' dev
accuracies are (every layer probe, the oracle, the search's grid points): the two steps compute the
same gradient and update in another order of floating-point operations, so the scores agree to
within a few items, not bit for bit.

    .venv/bin/python benchmarks/bench_probe_step.py --model mpnet --task pos --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
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
def step(variant: str):
    """Train with the committed step (``"analytic"``) or the replaced one (``"autograd"``)."""
    if variant == "analytic":
        yield
        return
    saved = training.Bank.add_penalty_grad_, training._Adam.step
    training.Bank.add_penalty_grad_, training._Adam.step = reference_penalty_grad, reference_adam_step
    try:
        yield
    finally:
        training.Bank.add_penalty_grad_, training._Adam.step = saved


def workloads(d: probing.ProbeSplits) -> dict:
    """name -> function returning a dict of dev scores."""
    common = {"y": d.labels, "activations_dev": d.activations_dev, "y_dev": d.labels_dev}
    X, Xd = d.features()
    order = np.random.default_rng(0).permutation(X.shape[1])

    def layers() -> dict:
        table = probing.fit_layer_probes(
            d.activations, **common, mode=["independent", "incremental"], words=d.words, words_dev=d.words_dev
        )
        return {f"{r.mode} {r.layer}": r.score for r in table.itertuples()}

    def oracle() -> dict:
        table = probing.fit_layer_probes(d.activations, **common, mode="oracle")
        return {"oracle": float(table.score.iloc[0])}

    def minimal() -> dict:
        with probing_warnings_off():
            ms = ranking.minimal_neuron_set(X, d.labels, Xd, d.labels_dev, order, target=0.95)
        return {f"k={r.k}": r.score for r in ms.curve.itertuples()}

    return {"layers": layers, "oracle": oracle, "minimal": minimal}


@contextlib.contextmanager
def probing_warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--task", default="pos")
    parser.add_argument("--token-budget", type=int, default=20_000, help="train words (the full run: POS 20,000)")
    parser.add_argument("--sentence-budget", type=int, default=1_500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a notebook worker uses 1)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="workloads to run (layers, oracle, minimal)")
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
    for name, fn in workloads(d).items():
        if args.only and name not in args.only:
            continue
        best, scores = {}, {}
        for _ in range(args.repeats):
            for variant in ("autograd", "analytic"):
                with step(variant):
                    t0 = time.perf_counter()
                    scores[variant] = fn()
                    best[variant] = min(best.get(variant, np.inf), time.perf_counter() - t0)
        a, b = scores["autograd"], scores["analytic"]
        diff = max(abs(a[k] - b[k]) for k in a.keys() & b.keys())
        print(
            f"{name:8s} autograd step {best['autograd']:7.1f} s   analytic step {best['analytic']:7.1f} s   "
            f"ratio {best['autograd'] / best['analytic']:.2f}x   largest |dev score difference| {diff:.4f} "
            f"over {len(a.keys() & b.keys())} probes (mean {np.mean(list(a.values())):.4f} vs "
            f"{np.mean(list(b.values())):.4f})",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""What task fine-tuning costs on this machine: one fine-tune of the full run's kind, timed, from nothing.

Fine-tunes ``--model`` on ``--task`` with the paper's recipe (3 epochs, lr 5e-5, batch 32, max length
128) on the first ``--train`` train sentences, as ``make reproduce`` does for ``"<base>+ft"`` runs
(``notebooks/params/full.yaml``: MPNet, 500 sentences, dev = the run's 1,000 dev sentences), into a
temporary folder so that nothing is reused. Prints the training time the fine-tune records (steps,
checkpoints and the dev pass after each epoch), the wall time including model loading, and the dev
accuracy per epoch. Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/bench_finetune.py                      # MPNet, sentiment, 500 sentences
    .venv/bin/python benchmarks/bench_finetune.py --model minilm --train 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--train", type=int, default=500, help="train sentences (the recipe's train_budget)")
    parser.add_argument("--eval-budget", type=int, default=1000, help="dev sentences scored after each epoch")
    args = parser.parse_args()

    import torch

    from utils import data, finetune

    task = data.load_task(
        args.task,
        seed=0,
        **data.budgets_for(args.task, token_budget=10000, sentence_budget=1500, eval_budget=args.eval_budget),
    )
    recipe = dataclasses.replace(finetune.recipe_for(args.model), train_budget=args.train)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as root:
        t0 = time.perf_counter()
        done = finetune.finetune(
            args.model, finetune.whole_train(task, seed=0), recipe=recipe, seed=0, root=root, progress=False
        )
        wall = time.perf_counter() - t0
    meta = done.meta
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{args.model} on {args.task}: {meta['n_train']} train sentences, {meta['steps']} steps, {len(task.dev.texts)} dev sentences"
    )
    print(
        f"training (recorded): {meta['train_seconds']:.0f} s = {meta['train_seconds'] / meta['steps']:.1f} s a step, dev passes included"
    )
    print(f"wall, loading included: {wall:.0f} s ({wall / 60:.1f} min)")
    print("dev accuracy per epoch: " + ", ".join(f"{h['dev_accuracy']:.3f}" for h in meta["history"]))


if __name__ == "__main__":
    main()

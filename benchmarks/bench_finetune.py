"""What task fine-tuning costs on this machine: one fine-tune of the full run's kind, timed, from nothing.

Fine-tunes ``--model`` on ``--task`` with the paper's recipe (3 epochs, lr 5e-5, batch 32, max length
128) on the first ``--train`` train sentences, as ``make reproduce`` does for ``"<base>+ft"`` runs
(``notebooks/params/full.yaml``: MPNet, 500 sentences, dev = the run's 1,000 dev sentences), into a
temporary folder so that nothing is reused. Prints the training time the fine-tune records (steps,
checkpoints and the dev pass after each epoch), the wall time including model loading, and the dev
accuracy per epoch. Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/bench_finetune.py                      # MPNet, sentiment, 500 sentences
    .venv/bin/python benchmarks/bench_finetune.py --model minilm --train 1500
    .venv/bin/python benchmarks/bench_finetune.py --task uncertainty --epochs 1 --heap
    .venv/bin/python benchmarks/bench_finetune.py --task uncertainty --epochs 1 --precision

With ``--heap``, the fine-tune runs twice, each in a fresh process: as ``finetune.finetune`` runs it
(every tensor of 1 MiB or more a memory map of its own, ``heap.large_blocks_mapped``) and with glibc's
default heap. Printed for each: training seconds, peak anonymous memory (``RssAnon`` every 0.1 s) and the
weights' sha256 (equal: the heap does not change the arithmetic), then the two ratios. With
``--precision``, the same for the recipe under bfloat16 autocast and in float32 (other weights: whether
they are as good is ``finetune_precision.py``'s question), dev accuracy by epoch beside.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cross_model import anon_mib, measured  # noqa: E402  (peak memory of one call, sampled every 0.1 s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--train", type=int, default=500, help="train sentences (the recipe's train_budget)")
    parser.add_argument("--eval-budget", type=int, default=1000, help="dev sentences scored after each epoch")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's 3 epochs (shorter --heap runs)")
    parser.add_argument("--heap", action="store_true", help="compare the mapped large blocks with glibc's default heap")
    parser.add_argument(
        "--precision", action="store_true", help="compare bfloat16 autocast with float32 (the recipe's precision)"
    )
    parser.add_argument("--one", choices=["mapped", "default"], help=argparse.SUPPRESS)  # a child of --heap
    parser.add_argument("--one-precision", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.heap:
        return compare(args, "--one", ("mapped", "default"))
    if args.precision:
        return compare(args, "--one-precision", ("bfloat16", "float32"))

    import torch

    from utils import data, finetune

    task = data.load_task(
        args.task,
        seed=0,
        **data.budgets_for(args.task, token_budget=10000, sentence_budget=1500, eval_budget=args.eval_budget),
    )
    recipe = dataclasses.replace(finetune.recipe_for(args.model), train_budget=args.train)
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    if args.one_precision:
        recipe = dataclasses.replace(recipe, precision=args.one_precision)
    if args.one == "default":  # glibc's own heap: no mapping of large blocks during the fine-tune
        finetune.heap.large_blocks_mapped = lambda *a, **k: contextlib.nullcontext(False)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as root:
        base = anon_mib()
        done, wall, growth = measured(
            finetune.finetune,
            args.model,
            finetune.whole_train(task, seed=0),
            recipe=recipe,
            seed=0,
            root=root,
            progress=False,
        )
    peak = base + growth
    meta = done.meta
    if args.one or args.one_precision:
        print(
            json.dumps(
                {
                    "train_seconds": meta["train_seconds"],
                    "peak_anon_mib": peak,
                    "weights": meta["weights_sha256_all"],
                    "steps": meta["steps"],
                    "dev": [h["dev_accuracy"] for h in meta["history"]],
                }
            )
        )
        return
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{args.model} on {args.task}: {meta['n_train']} train sentences, {meta['steps']} steps, {len(task.dev.texts)} dev sentences"
    )
    print(
        f"training (recorded): {meta['train_seconds']:.0f} s = {meta['train_seconds'] / meta['steps']:.1f} s a step, dev passes included"
    )
    print(f"wall, loading included: {wall:.0f} s ({wall / 60:.1f} min)")
    print("dev accuracy per epoch: " + ", ".join(f"{h['dev_accuracy']:.3f}" for h in meta["history"]))


def compare(args: argparse.Namespace, flag: str, variants: tuple[str, str]) -> None:
    """The fine-tune in two fresh processes, one per variant (``flag`` tells the child which); print both."""
    rows = {}
    for variant in variants:
        cmd = [sys.executable, __file__, "--model", args.model, "--task", args.task, "--train", str(args.train)]
        cmd += ["--eval-budget", str(args.eval_budget), flag, variant]
        cmd += ["--epochs", str(args.epochs)] if args.epochs is not None else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[variant] = json.loads(out.strip().splitlines()[-1])
        r = rows[variant]
        print(
            f"{variant:8s} {r['steps']} steps: {r['train_seconds']:.1f} s, peak {r['peak_anon_mib']:,.0f} MiB anonymous, "
            f"weights {r['weights'][:16]}, dev accuracy by epoch " + ", ".join(f"{d:.3f}" for d in r["dev"])
        )
    a, b = (rows[v] for v in variants)
    print(
        f"{variants[0]} / {variants[1]}: time {a['train_seconds'] / b['train_seconds']:.2f}x, peak memory "
        f"{a['peak_anon_mib'] / b['peak_anon_mib']:.2f}x, same weights: {a['weights'] == b['weights']}"
    )


if __name__ == "__main__":
    main()

"""Is fine-tuning under bfloat16 autocast faithful to float32? The full run's fine-tunes, both ways.

For each task, MPNet is fine-tuned with the full run's recipe (the paper's: 3 epochs, lr 5e-5, batch
32, max length 128, on the first 500 train sentences; dev = the run's 1,000 dev sentences) three
times: float32 (seed 0, the run's own fine-tune, read from the cache when the run made it),
bfloat16 autocast (seed 0), and float32 with seed 1, the yardstick: how far two float32 fine-tunes
that differ only in their random state (head initialisation, dropout) already lie apart. Printed
per task and run: training seconds (as recorded when it was made, so not side by side: for the
speed ratio use ``bench_finetune.py --precision``), dev
accuracy after each epoch, and, against the float32 seed-0 model on the dev sentences, the paired
difference of dev accuracy with its 95% bootstrap interval, the share of identical predictions, and
the linear CKA of every layer's sentence vectors (the [CLS] state; extracted in float32).

bfloat16 is faithful here when it lies no farther from float32 than the other seed does. Fine-tunes
go to the cache (``cache_dir()/finetuned``) like the run's, so a second call only compares:

    .venv/bin/python benchmarks/finetune_precision.py                    # sentiment and uncertainty
    .venv/bin/python benchmarks/finetune_precision.py --tasks sentiment
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from utils import data, finetune, intervals, similarity  # noqa: E402
from utils.activations import extract  # noqa: E402

RUNS = {"float32 (run)": ("float32", 0), "bfloat16": ("bfloat16", 0), "float32, seed 1": ("float32", 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--tasks", nargs="+", default=["sentiment", "uncertainty"])
    parser.add_argument("--train", type=int, default=500, help="train sentences (the full run's finetune_budget)")
    parser.add_argument("--eval-budget", type=int, default=1000, help="dev sentences (the full run's eval_budget)")
    args = parser.parse_args()
    for name in args.tasks:
        task = data.load_task(
            name,
            seed=0,
            **data.budgets_for(name, token_budget=10000, sentence_budget=1500, eval_budget=args.eval_budget),
        )
        whole = finetune.whole_train(task, seed=0)
        paper = dataclasses.replace(finetune.recipe_for(args.model), train_budget=args.train)
        done = {
            label: finetune.finetune(
                args.model, whole, recipe=dataclasses.replace(paper, precision=prec), seed=seed, progress=True
            )
            for label, (prec, seed) in RUNS.items()
        }
        texts = task.dev.texts
        classes = done["float32 (run)"].meta["classes"]
        y = np.array([classes.index(lab) for lab in task.dev.labels])
        preds, states = {}, {}
        for label, ft in done.items():
            model, tok = ft.load_classifier(device="cpu")
            logits = finetune.predict(model, tok, texts, max_length=paper.max_length, precision=RUNS[label][0])
            preds[label] = logits.argmax(axis=1)
            states[label] = extract(ft.encoder(device="cpu"), texts, level="sentence", progress=False)
        ref = "float32 (run)"
        print(f"\n{args.model} fine-tuned on {name}: {done[ref].meta['n_train']} train, {len(texts)} dev sentences")
        for label, ft in done.items():
            history = ", ".join(f"{h['dev_accuracy']:.3f}" for h in ft.meta["history"])
            line = f"  {label:16s} {ft.meta['train_seconds']:6.0f} s   dev accuracy by epoch {history}"
            if label != ref:
                diff = intervals.paired_interval(y, preds[label], preds[ref], n_boot=2000)
                same = float(np.mean(preds[label] == preds[ref]))
                # layer 0's [CLS] vector is the same for every sentence (no CKA): layers 1..L
                cka = [
                    similarity.linear_cka(states[label][:, layer], states[ref][:, layer])
                    for layer in range(1, states[ref].shape[1])
                ]
                line += (
                    f"\n  {'':16s} vs float32 seed 0: dev accuracy difference {diff}, same prediction {same:.3f}, "
                    f"CKA of layers 1-{len(cka)}: min {min(cka):.3f} (layer {1 + int(np.argmin(cka))}), "
                    f"last {cka[-1]:.3f}"
                )
            print(line)


if __name__ == "__main__":
    main()

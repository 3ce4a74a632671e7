"""Extraction speed: ``utils.activations.extract`` against a bare forward loop, per model and precision.

For each model and each precision (``float32``, and ``bfloat16`` = the forward pass under bfloat16
``torch.autocast``) both methods run on the same PTB sentences, tokenized the same way (inside the
timing) and in the same length-sorted, padded batches; the bare loop only calls the model (with
``output_hidden_states=True``) and keeps nothing, so ``extract / bare`` is what our alignment,
pooling and copying cost (target: at most 1.05). Repeats are interleaved (bare, extract, bare, ...)
so that drift on a shared machine hits both alike, and the best of each is kept. Two clocks: wall
time, and the CPU time of this process (``time.process_time``, all threads), which a machine shared
with other jobs disturbs much less. Also printed: how much faster bfloat16 is than float32.

    nice .venv/bin/python benchmarks/bench_extraction.py --models minilm mpnet smollm2 --sentences 60 --threads 1
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from utils.activations import _batches, build_segments, extract
from utils.data import load_task
from utils.models import load_model
from utils.precision import PRECISIONS, autocast


def bare_forward(loaded, texts, *, batch_size: int, precision: str, max_batch_tokens: int = 8192) -> None:
    """The floor: the same tokenization and batches through the model at ``precision``, nothing kept."""
    segments, _ = build_segments(loaded, texts, level="word")
    order = np.argsort([len(s.ids) for s in segments], kind="stable")
    pad = loaded.tokenizer.pad_token_id or 0
    with torch.inference_mode(), autocast(precision, loaded.device):
        for idx in _batches(segments, order, batch_size, max_batch_tokens):
            batch = [segments[i] for i in idx]
            width = max(len(s.ids) for s in batch)
            ids = np.full((len(batch), width), pad, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for b, s in enumerate(batch):
                ids[b, : len(s.ids)] = s.ids
                mask[b, : len(s.ids)] = 1
            loaded.model(
                input_ids=torch.from_numpy(ids).to(loaded.device),
                attention_mask=torch.from_numpy(mask).to(loaded.device),
                output_hidden_states=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "mpnet", "smollm2"])
    parser.add_argument("--sentences", type=int, default=300, help="PTB-sample train sentences to extract")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = load_task("pos")
    texts = task.train.texts[: args.sentences]
    n_words = sum(len(s) for s in texts)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(texts)} sentences, {n_words} words; "
        f"best of {args.repeats} interleaved repeats"
    )
    print(
        f"{'model':8s} {'precision':9s} {'tokens':>6s} {'bare s':>7s} {'extract s':>9s} {'bare tok/s':>10s} "
        f"{'extract tok/s':>13s} {'extract/bare wall':>17s} {'bare cpu s':>10s} {'extract cpu s':>13s} "
        f"{'extract/bare cpu':>16s}"
    )
    summary = []
    for name in args.models:
        loaded = load_model(name, device="cpu")
        segments, _ = build_segments(loaded, texts, level="word")
        n_tokens = sum(len(s.ids) for s in segments)
        best = {}
        for precision in args.precisions:
            extract(loaded, texts[:20], level="word", progress=False, precision=precision)  # warm-up
            bare_forward(loaded, texts[:20], batch_size=args.batch_size, precision=precision)
            wall = {"bare": [], "extract": []}
            cpu = {"bare": [], "extract": []}
            runs = {
                "bare": partial(bare_forward, loaded, texts, batch_size=args.batch_size, precision=precision),
                "extract": partial(
                    extract,
                    loaded,
                    texts,
                    level="word",
                    batch_size=args.batch_size,
                    progress=False,
                    precision=precision,
                ),
            }
            for _ in range(args.repeats):
                for method, run in runs.items():
                    t, c = time.perf_counter(), time.process_time()
                    run()
                    wall[method].append(time.perf_counter() - t)
                    cpu[method].append(time.process_time() - c)
            bare, ext = min(wall["bare"]), min(wall["extract"])
            bare_cpu, ext_cpu = min(cpu["bare"]), min(cpu["extract"])
            best[precision] = np.array([bare, ext, bare_cpu, ext_cpu])
            ratio, ratio_cpu = ext / bare, ext_cpu / bare_cpu
            summary.append((name, precision, ratio, ratio_cpu))
            print(
                f"{name:8s} {precision:9s} {n_tokens:6d} {bare:7.2f} {ext:9.2f} {n_tokens / bare:10.0f} "
                f"{n_tokens / ext:13.0f} {ratio:16.3f}x {bare_cpu:10.2f} {ext_cpu:13.2f} {ratio_cpu:15.3f}x"
            )
        if len(best) == 2:
            up = best["float32"] / best["bfloat16"]
            print(
                f"{name:8s} bfloat16 speed-up over float32: bare {up[0]:.2f}x, extract {up[1]:.2f}x (wall); "
                f"bare {up[2]:.2f}x, extract {up[3]:.2f}x (cpu)"
            )
        del loaded
    for i, clock in ((2, "wall"), (3, "cpu")):
        worst = max(summary, key=lambda s: s[i])
        print(
            f"worst extract/bare ({clock}): {worst[i]:.3f}x ({worst[0]}, {worst[1]}); target <= 1.05x"
            f"{'' if worst[i] <= 1.05 else '  OVER'}"
        )


if __name__ == "__main__":
    main()

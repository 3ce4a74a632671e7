"""Extraction speed: ``utils.activations.extract`` against a bare ``model(**batch)`` loop.

Both run on the same sentences in the same length-sorted, padded batches; the bare loop only calls
the model (with ``output_hidden_states=True``) and keeps nothing, so the difference is what our
alignment, pooling and copying cost. Prints sentences/s, tokens/s and the overhead.

    .venv/bin/python benchmarks/bench_extraction.py --models minilm mpnet --sentences 400
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from utils.activations import _batches, build_segments, extract
from utils.data import load_task
from utils.models import load_model


def bare_forward(loaded, texts, *, batch_size: int) -> None:
    """The floor: the same batches through the model, nothing kept."""
    segments, _ = build_segments(loaded, texts, level="word")
    order = np.argsort([len(s.ids) for s in segments], kind="stable")
    pad = loaded.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for idx in _batches(segments, order, batch_size, 8192):
            batch = [segments[i] for i in idx]
            width = max(len(s.ids) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, s in enumerate(batch):
                ids[b, : len(s.ids)] = torch.tensor(s.ids)
                mask[b, : len(s.ids)] = 1
            loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "mpnet"])
    parser.add_argument("--sentences", type=int, default=400, help="PTB-sample sentences to extract")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    task = load_task("pos")
    texts = task.train.texts[: args.sentences]
    n_words = sum(len(s) for s in texts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(texts)} sentences, {n_words} words")
    print(f"{'model':8s} {'method':10s} {'seconds':>8s} {'sent/s':>8s} {'tokens/s':>9s}")
    for name in args.models:
        loaded = load_model(name, device="cpu")
        segments, _ = build_segments(loaded, texts, level="word")
        n_tokens = sum(len(s.ids) for s in segments)
        extract(loaded, texts[:20], level="word", progress=False)  # warm-up
        times = {"bare": [], "extract": []}
        for _ in range(args.repeats):  # interleave so drift hits both alike
            t = time.perf_counter()
            bare_forward(loaded, texts, batch_size=args.batch_size)
            times["bare"].append(time.perf_counter() - t)
            t = time.perf_counter()
            extract(loaded, texts, level="word", batch_size=args.batch_size, progress=False)
            times["extract"].append(time.perf_counter() - t)
        for method, ts in times.items():
            best = min(ts)
            print(f"{name:8s} {method:10s} {best:8.2f} {len(texts) / best:8.1f} {n_tokens / best:9.0f}")
        overhead = min(times["extract"]) / min(times["bare"]) - 1
        print(f"{name:8s} overhead of extract over the bare forward pass: {100 * overhead:+.1f}% (target < 15%)")


if __name__ == "__main__":
    main()

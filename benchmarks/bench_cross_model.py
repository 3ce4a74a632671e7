"""Cross-model layer CKA: the cross-block pass against one Gram over both models' neurons.

Notebook 02 compares every layer of one model with every layer of another on the same words
(``similarity.cross_model_similarity``). Two ways to get the (n_layers_a, n_layers_b) CKA matrix:

- ``joint Gram``: concatenate both models' neurons and fill one ``GramAccumulator`` (upper half of the
  float64 Gram of all of them), then read the cross blocks of ``block_similarity`` — what the
  function did before, and what ``layer_similarity`` does for one model;
- ``cross blocks``: ``cross_model_similarity`` as it is now: a pass for the column means, then only
  the cross Gram between the models (in groups of at most ``CROSS_MAX_BYTES``) and each layer's own
  Gram.

Both read the same memory-mapped stores in chunks of 2,048 rows, one after the other in this process.
Printed: seconds, the peak growth of anonymous memory during each call (``RssAnon`` sampled every
0.1 s), their ratios, and the largest difference between the two CKA matrices.

    .venv/bin/python benchmarks/bench_cross_model.py                          # SmolLM2 x Gemma 3, POS train
    .venv/bin/python benchmarks/bench_cross_model.py --models mpnet smollm2 --task pos
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import activations, similarity  # noqa: E402


def anon_mib() -> int:
    """Anonymous resident memory of this process (``RssAnon``), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024
    return 0


def measured(fn, *args, **kwargs):
    """(result, seconds, peak anonymous growth in MiB) of one call."""
    base, peak, done = anon_mib(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anon_mib())
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return out, seconds, max(peak[0], anon_mib()) - base


def joint_gram(store_a, store_b, chunk_size: int = similarity.DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """The cross blocks of one ``GramAccumulator`` over both models' neurons (the earlier method)."""
    a, b = store_a.activations, store_b.activations
    la, lb = a.shape[1], b.shape[1]
    acc = similarity.GramAccumulator(block_sizes=[a.shape[2]] * la + [b.shape[2]] * lb)
    for start in range(0, a.shape[0], chunk_size):
        ca = np.asarray(a[start : start + chunk_size], dtype=np.float32)
        cb = np.asarray(b[start : start + chunk_size], dtype=np.float32)
        acc.add(np.concatenate([ca.reshape(len(ca), -1), cb.reshape(len(cb), -1)], axis=1))
    acc.release_buffers()
    return acc.block_similarity()[:la, la:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs=2, default=["smollm2", "gemma3"])
    parser.add_argument("--task", default="pos")
    parser.add_argument("--budget", type=int, default=10000, help="train tokens (word tasks) or sentences")
    args = parser.parse_args()
    budgets = dict(token_budget=args.budget, sentence_budget=args.budget, eval_budget=1000)
    stores = [activations.task_stores(m, args.task, seed=0, splits=("train",), **budgets)["train"] for m in args.models]
    for s in stores:  # page the stores in once, so neither method pays the first read
        for _chunk in s.iter_chunks():
            pass
    new, t_new, m_new = measured(similarity.cross_model_similarity, *stores, progress=False)
    old, t_old, m_old = measured(joint_gram, *stores)
    a, b = stores
    print(
        f"{args.models[0]} ({a.n_layers} x {a.hidden}) x {args.models[1]} ({b.n_layers} x {b.hidden}), "
        f"{args.task} train, {len(a)} rows"
    )
    print(f"{'method':<14}{'seconds':>10}{'peak anon MiB':>16}")
    print(f"{'joint Gram':<14}{t_old:>10.1f}{m_old:>16d}")
    print(f"{'cross blocks':<14}{t_new:>10.1f}{m_new:>16d}")
    print(
        f"speed-up {t_old / t_new:.2f}x, memory {m_old / max(m_new, 1):.2f}x less; "
        f"largest |CKA difference| {np.nanmax(np.abs(new - old)):.2e}"
    )


if __name__ == "__main__":
    main()

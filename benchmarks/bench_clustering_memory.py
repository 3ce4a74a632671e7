"""Memory of the exact neuron clustering: the square correlation kept through the linkage, or freed.

Notebook 04's transfer pipeline (``selection.run_transfer``) clusters the neurons of layers 0..l of a
store. Two ways to get what it needs (``|r|`` for the representatives and the average-linkage tree):

- ``two steps``: ``corr = neuron_correlation(store)`` then ``linkage_tree(corr)`` with ``corr`` kept
  for ``cluster_neurons`` — what the pipeline did before. scipy's ``linkage`` copies its condensed
  input, so the square float32 matrix, the float64 condensed distances and scipy's copy are alive
  together: three n² arrays;
- ``freed``: ``clustering.correlation_linkage``, as the pipeline does now: the square matrix is freed
  before the linkage and ``|r|`` rebuilt from the distances after it (bit-equal).

Both run in this process on the same memory-mapped store, the new one first. Printed: seconds, the
peak growth of anonymous memory during each call (``RssAnon`` sampled every 0.1 s), their ratio, and
whether trees and ``|r|`` are equal. With ``--tiled``, also the peak of notebook 06's tiled clustering
of several models on the same words (``tiled_clustering.cluster_neurons_tiled``, its full-run settings).

    .venv/bin/python benchmarks/bench_clustering_memory.py                  # SmolLM2 tweets, 17,856 neurons
    .venv/bin/python benchmarks/bench_clustering_memory.py --tiled          # + notebook 06, three models, POS
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cross_model import measured  # noqa: E402

from utils import activations, clustering  # noqa: E402


def two_steps(acts) -> tuple[np.ndarray, np.ndarray]:
    """The earlier path: the correlation, then its tree, with the square matrix kept (as |r|) beside both."""
    corr = clustering.neuron_correlation(acts, progress=False)
    tree = clustering.linkage_tree(corr)
    return np.abs(corr, out=corr), tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="tweets")
    parser.add_argument("--budget", type=int, default=1500, help="train sentences (or tokens for word tasks)")
    parser.add_argument("--tiled", action="store_true", help="also notebook 06's tiled clustering (three models, POS)")
    args = parser.parse_args()
    budgets = dict(token_budget=args.budget, sentence_budget=args.budget, eval_budget=1000)
    store = activations.task_stores(args.model, args.task, seed=0, splits=("train",), **budgets)["train"]
    acts = store.activations
    for _chunk in store.iter_chunks():  # page the store in once, so neither method pays the first read
        pass
    (abs_new, tree_new), t_new, m_new = measured(clustering.correlation_linkage, acts, progress=False)
    (abs_old, tree_old), t_old, m_old = measured(two_steps, acts)
    same = np.array_equal(tree_new, tree_old) and np.array_equal(abs_new, abs_old)
    n = acts.shape[1] * acts.shape[2]
    print(
        f"{args.model} {args.task} train: {acts.shape[0]} rows, {n:,} neurons (one n² float32 = {4 * n * n / 2**20:,.0f} MiB)"
    )
    print(f"{'method':<12}{'seconds':>10}{'peak anon MiB':>16}")
    print(f"{'two steps':<12}{t_old:>10.1f}{m_old:>16d}")
    print(f"{'freed':<12}{t_new:>10.1f}{m_new:>16d}")
    print(f"memory {m_old / max(m_new, 1):.2f}x less; trees and |r| equal: {same}")
    del abs_new, tree_new, abs_old, tree_old
    if args.tiled:
        from utils.tiled_clustering import ColumnConcat, cluster_neurons_tiled

        models = ["mpnet", "smollm2", "gemma3"]
        stores = [
            activations.task_stores(m, "pos", seed=0, token_budget=10000, splits=("train",))["train"] for m in models
        ]
        cat = ColumnConcat(stores, names=models)
        joint, t_tiled, m_tiled = measured(
            cluster_neurons_tiled,
            cat,
            [0.1, 0.2, 0.3],
            t_max=0.3,
            memory_budget=2 * 2**30,
            tile_size=4096,
            layer_cka=True,
            progress=False,
        )
        print(
            f"notebook 06, {' + '.join(models)} POS ({cat.shape[1]:,} neurons, {cat.shape[0]:,} words): "
            f"{t_tiled:.1f} s, peak anon {m_tiled:,} MiB (largest component {joint.largest_component:,} neurons)"
        )


if __name__ == "__main__":
    main()

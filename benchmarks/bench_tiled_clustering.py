"""Neuron clustering without the dense n x n matrix: time, peak memory, edges, largest component by size.

On synthetic residual-stream activations (``tiled_clustering.residual_stream_activations``: each unit
carried up the layers with new content written at every layer, a weak shared low-rank structure, and
2% duplicated units), stored as a float32 ``.npy`` memory map, this runs for each size

- ``tiled``: ``cluster_neurons_tiled`` (moments pass, thresholded tiles, connected components, exact
  average linkage per component) at t = 0.3 (plus the other thresholds when given);
- ``dense``: ``clustering.neuron_correlation`` + ``cluster_sweep`` (the dense path), only where it fits
  ``--dense-max`` neurons; the two partitions are compared.

Sizes (``--sizes``): ``10k`` = 13 x 768 (BERT-base's 9,984 neurons), ``30k`` = 30 x 1,024 (30,720),
``131k`` = 32 x 4,096 (a 7B model's 131,072). Every stage runs in a fresh process; its peak resident
set (``ru_maxrss``) counts the touched pages of the memory-mapped store too (at most the store's size).

    .venv/bin/python benchmarks/bench_tiled_clustering.py                         # 10k, 30k, 131k; 2,000 rows
    .venv/bin/python benchmarks/bench_tiled_clustering.py --sizes 10k --rows 4000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"10k": (13, 768), "30k": (30, 1024), "131k": (32, 4096)}


def store_file(size: str, rows: int) -> Path:
    """The synthetic store for ``size`` (made on first use) under the cache."""
    from utils.paths import cache_dir
    from utils.tiled_clustering import residual_stream_activations

    n_layers, hidden = SHAPES[size]
    path = Path(cache_dir()) / "synthetic" / f"residual_{rows}x{n_layers}x{hidden}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, n_layers, hidden))
        residual_stream_activations(out, n_layers=n_layers, hidden=hidden, random_state=0)
        del out
        os.replace(tmp, path)
    return path


def stage(kind: str, path: str, thresholds: list[float], budget_gib: float, device: str | None) -> dict:
    """Run one stage in this process and return its numbers."""
    x = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    if kind == "tiled":
        from utils.tiled_clustering import cluster_neurons_tiled

        res = cluster_neurons_tiled(x, thresholds, memory_budget=int(budget_gib * 2**30), device=device, progress=False)
        clusters = res.clusterings
        extra = {
            "edges": res.correlation.n_edges,
            "largest_component": res.largest_component,
            "components_2plus": int((res.component_sizes >= 2).sum()),
        }
    else:
        from utils.clustering import cluster_sweep, neuron_correlation

        corr = neuron_correlation(x, progress=False)
        clusters = cluster_sweep(corr, thresholds)
        extra = {}
    wall = time.perf_counter() - t0
    labels_path = Path(path).with_suffix(f".{kind}.labels.npy")
    np.save(labels_path, np.stack([c.labels for c in clusters]))
    return {
        "kind": kind,
        "wall_s": wall,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "kept": [c.n_clusters for c in clusters],
        "labels": str(labels_path),
        **extra,
    }


def run_stage(kind: str, path: Path, args: argparse.Namespace) -> dict:
    """``stage`` in a fresh Python process (so that its peak memory is its own)."""
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        kind,
        "--path",
        str(path),
        "--budget-gib",
        str(args.budget_gib),
        "--thresholds",
        *map(str, args.thresholds),
    ] + (["--device", args.device] if args.device else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label vectors define the same partition."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10k", "30k", "131k"], choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument(
        "--dense-max",
        type=int,
        default=12_000,
        help="largest neuron count for the dense path (it needs ~12 bytes x n² plus scipy's copy)",
    )
    parser.add_argument("--budget-gib", type=float, default=2.0, help="memory budget for one component's block")
    parser.add_argument("--device", default=None)
    parser.add_argument("--stage", choices=["tiled", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.path, args.thresholds, args.budget_gib, args.device)))
        return

    import torch

    print(
        f"rows {args.rows}; thresholds {args.thresholds}; torch threads {torch.get_num_threads()}; "
        f"device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}"
    )
    header = (
        f"{'size':>5} {'neurons':>8} {'path':>6} {'wall s':>8} {'peak GiB':>9} {'edges':>10} "
        f"{'largest comp':>12} {'kept @ t':>22} {'same as dense':>13}"
    )
    lines = [header, "-" * len(header)]
    for size in args.sizes:
        n_layers, hidden = SHAPES[size]
        d = n_layers * hidden
        t0 = time.perf_counter()
        path = store_file(size, args.rows)
        print(f"{size}: store ready ({time.perf_counter() - t0:.0f} s) at {path}", flush=True)
        tiled = run_stage("tiled", path, args)
        dense = run_stage("dense", path, args) if d <= args.dense_max else None
        same = "–"
        if dense is not None:
            a, b = np.load(tiled["labels"]), np.load(dense["labels"])
            same = "yes" if all(same_partition(x, y) for x, y in zip(a, b)) else "NO"
        for r in [tiled] + ([dense] if dense else []):
            lines.append(
                f"{size:>5} {d:>8,} {r['kind']:>6} {r['wall_s']:>8.1f} {r['peak_rss_gib']:>9.2f} "
                f"{r.get('edges', '–'):>10} {r.get('largest_component', '–'):>12} "
                f"{'/'.join(map(str, r['kept'])):>22} {same if r['kind'] == 'dense' else '':>13}"
            )
        if dense is None:
            need = 12 * d * d / 2**30
            lines.append(
                f"{size:>5} {d:>8,} {'dense':>6} {'not run':>8}: the dense path needs about {need:.0f} GiB "
                f"(float32 matrix + float64 condensed distances) plus scipy's working copy"
            )
        print("\n".join(lines[-3:]), flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

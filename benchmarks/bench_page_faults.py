"""Benchmark: does backing large allocations with transparent huge pages make the probes cheaper?

The full run of 59faaa0 spent 1,087 s of system time (1,862 s in 864717e's run of the same computations)
and took 260 million minor page faults (``/usr/bin/time -v``). Huge pages would take 512 times fewer
faults for the same bytes. This script runs one of notebook 03's layer-probe jobs (independent and
incremental probes with their control task, ``probing.fit_layer_probes``, one torch thread as a
``parallel.map_jobs`` worker) in a fresh process under each allocation policy, one after the other:

- ``default``: as ``make reproduce`` runs (this machine: THP ``madvise``; numpy already advises huge pages
  for its own large arrays, torch and glibc do not);
- ``torch-thp``: ``THP_MEM_ALLOC_ENABLE=1`` (torch's CPU allocator aligns large tensors to 2 MiB and
  advises huge pages);
- ``glibc-thp``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc advises huge pages for what it maps).

Prints each process's wall, user and system seconds and minor page faults (``getrusage`` around the
fit), the ratios to ``default``, and whether the dev scores are equal (they must be: the allocation
policy does not change the arithmetic).

Usage::

    .venv/bin/python benchmarks/bench_page_faults.py                    # MPNet POS, the full run's budget
    .venv/bin/python benchmarks/bench_page_faults.py --model mpnet --task sentiment
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

from bench_transfer import BUDGETS  # the full configuration's budgets (notebooks/params/full.yaml)

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {
    "default": {},
    "torch-thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "glibc-thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}


def job(model: str, task: str) -> dict:
    """One layer-probe job of notebook 03, in this process: its seconds, faults and dev scores."""
    import torch

    sys.path.insert(0, str(ROOT))
    from utils import activations, probing

    torch.set_num_threads(1)
    stores = activations.task_stores(model, task, seed=0, splits=("train", "dev"), **BUDGETS)
    d = probing.ProbeSplits.from_stores(stores["train"], stores["dev"])
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    table = probing.fit_layer_probes(
        d.activations,
        d.labels,
        activations_dev=d.activations_dev,
        y_dev=d.labels_dev,
        mode=["independent", "incremental"],
        words=d.words,
        words_dev=d.words_dev,
        probe_params={"random_state": 0},
        control_random_state=0,
    )
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "minflt": after.ru_minflt - before.ru_minflt,
        "scores": table["score"].tolist() + table["control_score"].tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mpnet")
    ap.add_argument("--task", default="pos")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(job(args.model, args.task)))
        return
    results = {}
    for name, env in POLICIES.items():
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--task", args.task, "--child"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(
            f"{name:>10}: wall {r['wall']:7.1f} s  user {r['user']:7.1f} s  sys {r['sys']:6.1f} s  "
            f"minor faults {r['minflt']:>11,}",
            flush=True,
        )
    base = results["default"]
    print(f"\n{args.model} {args.task}, notebook 03's layer probes with control task, one torch thread")
    for name, r in results.items():
        same = r["scores"] == base["scores"]
        print(
            f"{name:>10} / default: wall {r['wall'] / base['wall']:.3f}x  sys {r['sys'] / max(base['sys'], 1e-9):.2f}x  "
            f"faults {r['minflt'] / max(base['minflt'], 1):.3f}x  dev scores equal: {same}"
        )


if __name__ == "__main__":
    main()

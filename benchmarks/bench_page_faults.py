"""Benchmark: page faults in the probes' training, by allocation policy and against an earlier checkout.

The full run of 59faaa0 spent 1,087 s of system time (1,862 s in 864717e's run of the same computations)
and took 260 million minor page faults (``/usr/bin/time -v``). Huge pages would take 512 times fewer
faults for the same bytes. This script runs one of notebook 03's layer-probe jobs (independent and
incremental probes with their control task, ``probing.fit_layer_probes``, one torch thread as a
``parallel.map_jobs`` worker; ``--job transfer``: notebook 04's pipeline, ``selection.run_transfer_seeds``
for probe seed 0) in a fresh process under each allocation policy, one after the other:

- ``default``: as ``make reproduce`` runs (this machine: THP ``madvise``; numpy already advises huge pages
  for its own large arrays, torch and glibc do not);
- ``torch-thp``: ``THP_MEM_ALLOC_ENABLE=1`` (torch's CPU allocator aligns large tensors to 2 MiB and
  advises huge pages);
- ``glibc-thp``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc advises huge pages for what it maps);
- ``glibc-keep``: ``MALLOC_MMAP_THRESHOLD_=32 MiB`` (glibc's largest) and ``MALLOC_TRIM_THRESHOLD_=8 GiB``:
  blocks up to 32 MiB come from the heap and freed memory stays there for the next step instead of going
  back to the system (and being faulted in again, page by page);
- ``glibc-nommap``: ``MALLOC_MMAP_MAX_=0`` and the same trim threshold: every block from the heap.

Prints each process's wall, user and system seconds, minor page faults (``getrusage`` around the fit)
and peak resident memory, the ratios to ``default``, and whether the results are equal (the layer
probes' dev scores; the pipeline's grid of dev scores, its test scores and its neuron count). They must
be: the allocation policy does not change the arithmetic.

``--baseline-root PATH`` instead runs the same job from this checkout and from another one (e.g. a
``git worktree`` of an earlier commit) **at the same time**, two processes side by side as notebook 03's
two workers run, so that both see the same load: a change of code that should move page faults and
nothing else is measured against its parent this way, its results compared for equality.

Usage::

    .venv/bin/python benchmarks/bench_page_faults.py                    # MPNet POS, the full run's budget
    .venv/bin/python benchmarks/bench_page_faults.py --model mpnet --task sentiment
    .venv/bin/python benchmarks/bench_page_faults.py --copies 2 --policies glibc-keep   # two workers side by side
    git worktree add /tmp/parent HEAD~1
    .venv/bin/python benchmarks/bench_page_faults.py --baseline-root /tmp/parent        # this code vs its parent
    .venv/bin/python benchmarks/bench_page_faults.py --baseline-root /tmp/parent --job transfer
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = {
    "default": {},
    "torch-thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "glibc-thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "glibc-keep": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(8 * 2**30)},
    "glibc-nommap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(8 * 2**30)},
}


def job(model: str, task: str, root: Path = ROOT, kind: str = "layers") -> dict:
    """One job, in this process, with the ``utils`` of checkout ``root``: notebook 03's layer probes
    (``kind="layers"``) or notebook 04's transfer pipeline for probe seed 0 (``kind="transfer"``)."""
    import torch

    sys.path.insert(0, str(root))
    import utils
    from utils import activations, probing, selection

    # the full configuration's budgets (notebooks/params/full.yaml); imported after utils, because
    # bench_transfer puts this checkout first on the path and would import its utils
    budgets = importlib.import_module("bench_transfer").BUDGETS
    if Path(utils.__file__).resolve().parent.parent != root.resolve():
        raise SystemExit(f"the job imported {utils.__file__}, not the utils of {root}")

    torch.set_num_threads(1)
    if kind == "transfer":
        st = activations.task_stores(model, task, seed=0, **budgets)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        (result,) = selection.run_transfer_seeds(
            *[(st[split].activations, st[split].labels) for split in ("train", "dev", "test")],
            seeds=[0],
            progress=False,
        )
        scores = result.grid["dev"].tolist() + result.steps["test"].tolist() + [len(result.neurons)]
    else:
        stores = activations.task_stores(model, task, seed=0, splits=("train", "dev"), **budgets)
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
        scores = table["score"].tolist() + table["control_score"].tolist()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "minflt": after.ru_minflt - before.ru_minflt,
        "peak_mib": after.ru_maxrss / 1024,  # the process's peak resident set (KiB on Linux)
        "scores": scores,
    }


def _start(args: argparse.Namespace, env: dict[str, str], root: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--model", args.model, "--task", args.task, "--job", args.job]
    cmd += ["--root", str(root), "--child"]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)


def _collect(name: str, procs: list[subprocess.Popen]) -> dict:
    """The runs of ``procs`` (identical jobs): times and faults summed, wall and peak the largest."""
    runs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"the {name} job failed (exit {p.returncode}); run it alone with --child to see why")
        runs.append(json.loads(out.strip().splitlines()[-1]))
    r = {
        "wall": max(x["wall"] for x in runs),
        **{k: sum(x[k] for x in runs) for k in ("user", "sys", "minflt")},
        "peak_mib": max(x["peak_mib"] for x in runs),
        "scores": runs[0]["scores"],
        "copies_equal": all(x["scores"] == runs[0]["scores"] for x in runs),
    }
    print(
        f"{name:>12}: wall {r['wall']:7.1f} s  user {r['user']:7.1f} s  sys {r['sys']:6.1f} s  "
        f"minor faults {r['minflt']:>11,}  peak RSS {r['peak_mib']:7,.0f} MiB (per process)",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mpnet")
    ap.add_argument("--task", default="pos")
    ap.add_argument("--job", choices=["layers", "transfer"], default="layers", help="notebook 03's or 04's")
    ap.add_argument("--policies", nargs="*", default=list(POLICIES), choices=list(POLICIES), help="default first")
    ap.add_argument("--copies", type=int, default=1, help="identical jobs run at once under each policy")
    ap.add_argument("--baseline-root", type=Path, help="another checkout: its job runs beside this one's")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(job(args.model, args.task, args.root, args.job)))
        return
    results = {}
    if args.baseline_root is not None:
        procs = {"this code": _start(args, {}, ROOT), "baseline": _start(args, {}, args.baseline_root.resolve())}
        for name, p in procs.items():
            results[name] = _collect(name, [p])
        reference, what = "baseline", f"this checkout and {args.baseline_root} side by side"
    else:
        for name in dict.fromkeys(["default", *args.policies]):
            # --copies N: N identical jobs at once, as notebook 03's workers run side by side
            results[name] = _collect(name, [_start(args, POLICIES[name], ROOT) for _ in range(args.copies)])
        reference, what = "default", f"{args.copies} at once under each policy"
    base = results[reference]
    which = "notebook 03's layer probes with control task" if args.job == "layers" else "notebook 04's pipeline, seed 0"
    print(
        f"\n{args.model} {args.task}, {which}, one torch thread, "
        f"{what} (times and faults summed over a policy's jobs, wall the longest)"
    )
    for name, r in results.items():
        same = r["scores"] == base["scores"] and r["copies_equal"] and base["copies_equal"]
        cpu = (r["user"] + r["sys"]) / (base["user"] + base["sys"])
        print(
            f"{name:>12} / {reference}: wall {r['wall'] / base['wall']:.3f}x  CPU {cpu:.3f}x  "
            f"sys {r['sys'] / max(base['sys'], 1e-9):.2f}x  faults {r['minflt'] / max(base['minflt'], 1):.3f}x  "
            f"results equal: {same}"
        )


if __name__ == "__main__":
    main()

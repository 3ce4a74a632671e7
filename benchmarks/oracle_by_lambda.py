"""Does a wider elastic-net grid stop the oracle trailing its best layer probe on dev?

Full-run budgets (notebooks/params/full.yaml), seed 0, the three pairs where the oracle trails
(mpnet pos, smollm2 tweets, gemma3 tweets). The layer probes come back from the full run's result
cache (same job, same arguments); the oracle is refitted at larger lambdas only.
Usage: .venv/bin/python benchmarks/oracle_by_lambda.py [model task ...]   (after make reproduce: the cache has the stores)
"""

import sys
import time

import pandas as pd

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from utils import activations, memo, parallel, probing

pairs = [tuple(sys.argv[i : i + 2]) for i in range(1, len(sys.argv), 2)] or [
    ("smollm2", "tweets"),
    ("gemma3", "tweets"),
    ("mpnet", "pos"),
]
budgets = dict(token_budget=10000, sentence_budget=1500, eval_budget=1000)
params = {"random_state": 0}
cache = memo.ResultCache(enabled=True)
rows = []
for model, task in pairs:
    t0 = time.perf_counter()
    stores = activations.task_stores(model, task, seed=0, splits=("train", "dev"), **budgets)
    d = probing.ProbeSplits.from_stores(stores["train"], stores["dev"])
    common = {"y": d.labels, "activations_dev": d.activations_dev, "y_dev": d.labels_dev}
    job = {
        "fn": probing.fit_layer_probes,
        "activations": d.activations,
        **common,
        "mode": ["independent", "incremental"],
        "words": d.words,
        "words_dev": d.words_dev,
        "probe_params": params,
        "control_random_state": 0,
        "return_probes": True,
    }
    ((table, probes),) = parallel.map_jobs(parallel.call, [job], n_jobs=1, progress=False, cache=cache)
    print(model, task, "layer probes", f"{time.perf_counter() - t0:.0f} s", flush=True)
    for lam in (1e-3, 1e-2, 3e-2, 1e-1):
        reg, oracle = probing.select_regularization(d.activations, grid=[lam], probe_params=params, **common)
        check, _ = probing.oracle_against_best_layer(table, probes, oracle, d, oracle_dev=float(reg.score.iloc[0]))
        rows.append({"model": model, "task": task, "lambda": lam, "best_epoch": reg.best_epoch.iloc[0], **check})
        print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)

print(pd.DataFrame(rows).round(4).to_string())

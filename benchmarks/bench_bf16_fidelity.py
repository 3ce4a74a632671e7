"""Fidelity of bfloat16: what bfloat16 extraction, or half-precision stores, change in what we report.

For each model, the POS train and dev stores are made twice (``precision="float32"`` and
``"bfloat16"``, i.e. a bfloat16 ``torch.autocast`` forward pass) and compared with the float32 store
as the reference. Two more variants take the float32 activations and round them to float16 or
bfloat16, as a half-precision store on disk would hold them (half the bytes to write and read).
For every variant against the reference:

- ``r_min`` / ``r_med``: Pearson correlation of each neuron's train values with its float32 values
  (lowest and median over neurons; constant neurons left out), and ``n_r<.99``: neurons below 0.99;
- ``max_dabs_r``: the largest change of any ``|r|`` in the neuron x neuron correlation matrix (the input
  of the clustering), and ``n_cross``: neuron pairs whose ``|r|`` crosses 0.7 (the t = 0.3 cut);
- ``ari``: adjusted Rand index of the clustering partitions at t = 0.3 (``sklearn.metrics.
  adjusted_rand_score``; 1 = identical), with the numbers of clusters;
- ``cka`` / ``cka_std``: largest absolute difference in the layer x layer linear CKA matrix (the
  paper's) and in the CKA of standardised neurons;
- probe dev accuracy of a few independent layer probes and of the all-layer oracle, with 95%
  percentile-bootstrap intervals (``utils.metrics.bootstrap_ci``, 1,000 resamples), trained with the
  notebooks' defaults (seeded, so a variant differs from float32 only through its activations).

Fidelity holds when the partition and CKA barely move and every probe accuracy lies inside the
float32 probe's interval.

    nice .venv/bin/python benchmarks/bench_bf16_fidelity.py                          # mpnet + smollm2, 10k tokens
    nice .venv/bin/python benchmarks/bench_bf16_fidelity.py --models mpnet --token-budget 20000
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import adjusted_rand_score

from utils.activations import task_stores
from utils.clustering import cluster_neurons
from utils.metrics import bootstrap_ci
from utils.probing import fit_layer_probes
from utils.similarity import (
    ConstantFeatureWarning,
    gram_statistics,
    standardized_layer_cka,
)

THRESHOLD = 0.3  # the pipeline's clustering cut: |r| >= 0.7


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` stored in ``dtype`` ("float16" or "bfloat16") and read back as float32 (same shape)."""
    if dtype == "float16":
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    return (
        torch.from_numpy(np.array(x, dtype=np.float32)).to(torch.bfloat16).float().numpy()
    )  # copy: x may be read-only


def neuron_r(a: np.ndarray, b: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """Pearson r between column j of ``a`` and of ``b`` (both (n_items, n_features)), float64 per column chunk.

    Returns shape (n_features,), NaN for a column constant in either input.
    """
    out = np.empty(a.shape[1])
    for s in range(0, a.shape[1], chunk):
        x = a[:, s : s + chunk].astype(np.float64)
        y = b[:, s : s + chunk].astype(np.float64)
        x -= x.mean(0)
        y -= y.mean(0)
        den = np.sqrt((x * x).sum(0) * (y * y).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.where(den > 0, (x * y).sum(0) / den, np.nan)
    return out


def abs_r_change(
    c_ref: np.ndarray, c: np.ndarray, *, cut: float = 1 - THRESHOLD, band: int = 1024
) -> tuple[float, int]:
    """Largest ``| |r| - |r_ref| |`` over all neuron pairs, and pairs (i < j) on different sides of ``cut``."""
    worst, crossing = 0.0, 0
    for s in range(0, len(c), band):
        a, b = np.abs(c_ref[s : s + band]), np.abs(c[s : s + band])
        worst = max(worst, float(np.abs(a - b).max()))
        crossing += int(((a >= cut) != (b >= cut)).sum())
    return worst, crossing // 2


def general(train: np.ndarray, n_layers: int, hidden: int) -> dict:
    """Correlation matrix, clusters at t = 0.3 and both layer CKA matrices of (n_items, n_layers, hidden)."""
    acc = gram_statistics(train, progress=False)
    cka = acc.block_similarity()
    constant = acc.constant_features()
    corr = acc.correlation()
    del acc
    return {
        "corr": corr,
        "cka": cka,
        "cka_std": standardized_layer_cka(corr, [hidden] * n_layers, constant=constant),
        "labels": cluster_neurons(corr, THRESHOLD).labels,
    }


def probes(train: np.ndarray, y: np.ndarray, dev: np.ndarray, yd: np.ndarray, layers: list[int], seed: int) -> dict:
    """Dev accuracy and 95% interval of independent probes at ``layers`` (first, middle, last) and of the oracle."""
    _, fitted = fit_layer_probes(
        train,
        y,
        activations_dev=dev,
        y_dev=yd,
        mode=["independent", "oracle"],
        probe_params={"random_state": seed},
        return_probes=True,
    )
    out = {}
    for key, layer in zip(("L1", "Lmid", "Llast"), layers):
        out[key] = bootstrap_ci(yd, fitted[layer].predict(dev[:, layer]), random_state=seed)
    out["oracle"] = bootstrap_ci(yd, fitted[-1].predict(dev.reshape(len(dev), -1)), random_state=seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mpnet", "smollm2"])
    parser.add_argument("--task", default="pos")
    parser.add_argument("--token-budget", type=int, default=10_000)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["bf16-extract", "fp16-store", "bf16-store"],
        choices=["bf16-extract", "fp16-store", "bf16-store", "bf16-extract+fp16-store"],
    )
    parser.add_argument("--no-probes", action="store_true", help="skip the probes (the slowest part)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", help="also write the table here")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConstantFeatureWarning)  # the same few dead neurons in every variant
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; task {args.task}, "
        f"train budget {args.token_budget} tokens, whole dev split"
    )
    rows = []
    for model in args.models:
        t0 = time.perf_counter()
        stores = {
            p: task_stores(
                model,
                args.task,
                token_budget=args.token_budget,
                seed=args.seed,
                splits=("train", "dev"),
                precision=p,
                progress=False,
            )
            for p in ("float32", "bfloat16")
        }
        ref_train, ref_dev = stores["float32"]["train"], stores["float32"]["dev"]
        n_layers, hidden = ref_train.n_layers, ref_train.hidden
        y = ref_train.labels
        keep = np.isin(ref_dev.labels, np.unique(y))  # dev items whose tag the train split has
        yd = ref_dev.labels[keep]
        layers = [1, n_layers // 2, n_layers - 1]
        print(
            f"\n{model}: train {ref_train.activations.shape}, dev {int(keep.sum())} items; probes Lmid = layer "
            f"{layers[1]}, Llast = layer {layers[2]}; stores ready in "
            f"{time.perf_counter() - t0:.0f} s; max |activation| {np.abs(ref_train.activations).max():.1f}"
        )

        def variant(name: str, stores: dict = stores, keep: np.ndarray = keep) -> tuple[np.ndarray, np.ndarray]:
            base = stores["bfloat16" if name.startswith("bf16-extract") else "float32"]
            tr, dv = np.asarray(base["train"].activations), np.asarray(base["dev"].activations)[keep]
            store_dtype = {"fp16-store": "float16", "bf16-store": "bfloat16", "bf16-extract+fp16-store": "float16"}.get(
                name
            )
            return (round_to(tr, store_dtype), round_to(dv, store_dtype)) if store_dtype else (tr, dv)

        ref_tr, ref_dv = variant("float32")
        t = time.perf_counter()
        ref = general(ref_tr, n_layers, hidden)
        ref_probes = None if args.no_probes else probes(ref_tr, y, ref_dv, yd, layers, args.seed)
        row = {"model": model, "variant": "float32", "n_clusters": int(ref["labels"].max() + 1)}
        if ref_probes:
            row.update({k: f"{ci.estimate:.4f} [{ci.low:.3f}, {ci.high:.3f}]" for k, ci in ref_probes.items()})
        rows.append(row)
        print(f"  float32 reference: {time.perf_counter() - t:.0f} s; {row}", flush=True)
        for name in args.variants:
            t = time.perf_counter()
            tr, dv = variant(name)
            r = neuron_r(ref_tr.reshape(len(ref_tr), -1), tr.reshape(len(tr), -1))
            got = general(tr, n_layers, hidden)
            dmax, n_cross = abs_r_change(ref["corr"], got["corr"])
            row = {
                "model": model,
                "variant": name,
                "r_min": float(np.nanmin(r)),
                "r_med": float(np.nanmedian(r)),
                "n_r<.99": int((r < 0.99).sum()),
                "max_dabs_r": dmax,
                "n_cross": n_cross,
                "ari": adjusted_rand_score(ref["labels"], got["labels"]),
                "n_clusters": int(got["labels"].max() + 1),
                "cka": float(np.nanmax(np.abs(got["cka"] - ref["cka"]))),
                "cka_std": float(np.nanmax(np.abs(got["cka_std"] - ref["cka_std"]))),
            }
            del got
            if not args.no_probes:
                for k, ci in probes(tr, y, dv, yd, layers, args.seed).items():
                    inside = ref_probes[k].low <= ci.estimate <= ref_probes[k].high
                    row[k] = f"{ci.estimate:.4f} [{ci.low:.3f}, {ci.high:.3f}]{'' if inside else ' !'}"
            rows.append(row)
            print(f"  {name}: {time.perf_counter() - t:.0f} s; {row}", flush=True)
        del ref
    table = pd.DataFrame(rows)
    print(
        "\nFidelity against float32 (probe columns: dev accuracy [95% bootstrap interval]; "
        "'!' = outside the float32 probe's interval)"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(table.astype(object).where(table.notna(), "").to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()

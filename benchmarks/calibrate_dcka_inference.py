"""How well the dCKA permutation null and bootstrap behave where the truth is known (issue 11).

    PYTHONPATH=. python3 benchmarks/calibrate_dcka_inference.py [--runs 300]

Synthetic Gaussian representations with linear kernels, one layer each, the permutation null of
the package (model 2's deconfounded Gram permuted; docs/inference.md):

1. X, Y, Z independent: the null hypothesis holds exactly; report the share of p-values
   <= 0.05 and <= 0.10 (nominal 0.05 / 0.10) for the full estimator (biased and unbiased HSIC)
   and the streaming one (unbiased, batches of 12).
2. X = Z + E, Y = Z + F (both read the confounder, nothing else shared; population dCKA = 0
   for the unbiased estimator): share of p <= 0.05, and how often a 90% percentile bootstrap
   interval (200 resamples) covers 0.

Prints one JSON object. Runs on one thread, about a minute.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from simtorch_semantic.functional.dcka import dcka_from_hsic, dcka_hsic_terms
from simtorch_semantic.functional.inference import (bootstrap_indices, dcka_bootstrap_from_grams,
                                                    dcka_permutation_null_from_grams, make_generator,
                                                    percentile_interval, permutation_p_values,
                                                    random_permutations,
                                                    streaming_dcka_permutation_null)


def gram(X):
    X = torch.from_numpy(X)
    return X @ X.T


def rates(p):
    p = np.asarray(p)
    return {"p<=0.05": round(float(np.mean(p <= 0.05)), 3), "p<=0.10": round(float(np.mean(p <= 0.10)), 3)}


def independent(runs, n, d, unbiased, streaming, permutations=99):
    rng = np.random.default_rng(0)
    p = []
    for seed in range(runs):
        X, Y, Z = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, 4))
        if streaming:
            batches = [(gram(X[s:s + 12])[None], gram(Y[s:s + 12])[None], gram(Z[s:s + 12]))
                       for s in range(0, n, 12)]
            terms = batches and sum((dcka_hsic_terms(*b) for b in batches[1:]), dcka_hsic_terms(*batches[0]))
            obs = dcka_from_hsic(terms).numpy()
            null = streaming_dcka_permutation_null(batches, permutations, make_generator(seed)[0])
        else:
            K, L, KZ = gram(X)[None], gram(Y)[None], gram(Z)
            obs = dcka_from_hsic(dcka_hsic_terms(K, L, KZ, unbiased)).numpy()
            null = dcka_permutation_null_from_grams(
                K, L, KZ, random_permutations(n, permutations, make_generator(seed)[0]), unbiased)
        p.append(permutation_p_values(obs, null)[0, 0])
    return rates(p)


def shared_confounder(runs, n, permutations=99, bootstrap=200):
    rng = np.random.default_rng(1)
    p, covered, values = [], 0, []
    for seed in range(runs):
        Z = rng.normal(size=(n, 4))
        K, L, KZ = gram(Z + rng.normal(size=(n, 4)))[None], gram(Z + rng.normal(size=(n, 4)))[None], gram(Z)
        obs = dcka_from_hsic(dcka_hsic_terms(K, L, KZ, True)).numpy()
        gen = make_generator(seed)[0]
        null = dcka_permutation_null_from_grams(K, L, KZ, random_permutations(n, permutations, gen), True)
        reps = dcka_bootstrap_from_grams(K, L, KZ, bootstrap_indices(n, bootstrap, gen), True)
        low, high = percentile_interval(reps, 0.9)
        p.append(permutation_p_values(obs, null)[0, 0])
        covered += bool(low[0, 0] <= 0.0 <= high[0, 0])
        values.append(obs[0, 0])
    return {**rates(p), "mean_dcka": round(float(np.mean(values)), 4),
            "ci90_covers_0": round(covered / runs, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    out = {"runs": args.runs, "load_average_before": [round(v, 2) for v in load]}
    for name, (n, d, unbiased, streaming) in {
            "independent, full, biased, n=24, d=3": (24, 3, False, False),
            "independent, full, biased, n=24, d=20": (24, 20, False, False),
            "independent, full, biased, n=96, d=3": (96, 3, False, False),
            "independent, full, unbiased, n=24, d=3": (24, 3, True, False),
            "independent, full, unbiased, n=24, d=20": (24, 20, True, False),
            "independent, full, unbiased, n=96, d=3": (96, 3, True, False),
            "independent, streaming (4 batches of 12), d=3": (48, 3, True, True)}.items():
        out[name] = independent(args.runs, n, d, unbiased, streaming)
    for n in (48, 200):
        out[f"both read Z, full, unbiased, n={n}"] = shared_confounder(max(args.runs // 3, 20), n)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

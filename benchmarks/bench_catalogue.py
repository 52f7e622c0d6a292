"""Time the ReSi-catalogue measures on one pair against the matrix products they need.

For each registered measure of the catalogue families, on float32 activations ``X, Y [n, d]``
(the usual dtype of hooked activations), the median over ``--repeats`` runs of the plain function
``spec.fn(X, Y)`` with default options, next to a baseline measured in the same run: the two
float64 Gram matrices ``X X^T`` and ``Y Y^T`` (what every sample-geometry measure needs at least;
the kNN measures need these plus a top-k) and, for the feature-matching measures, the feature
cross product ``X^T Y`` plus an exact assignment on it (``linear_sum_assignment``), and for the
spectral measures (orthogonal fits, bases, whitening, Laplacian spectra) one symmetric
eigendecomposition ``eigh`` of each ``[n, n]`` Gram matrix (``d > n``), the least any
implementation of them needs.

    PYTHONPATH=$PWD python3 benchmarks/bench_catalogue.py --n 1000 --d 2048 --repeats 3

RTD is timed with ``trials=1`` (one subset of ``batch=500`` samples; the default averages 10).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

from simtorch_semantic.functional.registry import get_measure, list_measures

FAMILIES = ("alignment", "neighbors", "rsm_measures", "statistics", "topology")
MATCHING = {"hard_correlation_match", "permutation_procrustes", "soft_matching"}
SPECTRAL = {"aligned_cosine", "linear_regression", "procrustes_size_shape", "shape_metric",
            "eigenspace_overlap", "gulp", "imd"}


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="measure names to time")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(args.n, 64))
    X = torch.as_tensor(np.maximum(Z @ rng.normal(size=(64, args.d)), 0) + 0.1 * rng.normal(size=(args.n, args.d)),
                        dtype=torch.float32)
    Y = torch.as_tensor(np.tanh(Z @ rng.normal(size=(64, args.d))) + 0.1 * rng.normal(size=(args.n, args.d)),
                        dtype=torch.float32)

    def grams():
        X64, Y64 = X.double(), Y.double()
        return X64 @ X64.T, Y64 @ Y64.T

    def cross_assign():
        from scipy.optimize import linear_sum_assignment

        C = (X.double().T @ Y.double()).numpy()
        return linear_sum_assignment(C, maximize=True)

    def eighs():
        return [torch.linalg.eigh(G) for G in grams()]

    base_gram = _median_time(grams, args.repeats)
    base_eigh = _median_time(eighs, args.repeats)
    base_match = _median_time(cross_assign, args.repeats)
    print(f"# n={args.n} d={args.d} float32 inputs, torch threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"# baseline two float64 Grams X X^T, Y Y^T: {base_gram:.3f} s; "
          f"X^T Y + linear_sum_assignment: {base_match:.3f} s; Grams + eigh of each: {base_eigh:.3f} s")
    print("| measure | seconds (median) | x Grams | x matching or eigh baseline |")
    print("|---|---|---|---|")
    names = [m for m in list_measures() if get_measure(m).family in FAMILIES]
    for name in names:
        if args.only and name not in args.only:
            continue
        spec = get_measure(name)
        warnings.simplefilter("ignore", RuntimeWarning)  # rank n - 1 notes at d > n
        opts = {"trials": 1} if name == "rtd" else {}
        reps = 1 if name in ("rtd", "soft_matching") else args.repeats
        t = _median_time(lambda: spec.fn(X, Y, **opts), reps)
        extra = (f"{t / base_match:.2f} (matching)" if name in MATCHING
                 else f"{t / base_eigh:.2f} (eigh)" if name in SPECTRAL else "")
        print(f"| {name} | {t:.3f} | {t / base_gram:.2f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()

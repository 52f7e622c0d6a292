"""Speed and accuracy of RDMs, RDM comparison, Procrustes and CCA (issue 4).

    python3 benchmarks/bench_rsa.py                 # everything (a few minutes on 2 cores)
    python3 benchmarks/bench_rsa.py --part rdm|compare|procrustes_cca|accuracy [--scipy]

rdm             rdm(X, metric) for X = 5000 x 2048 float32 random data, float64 and float32
                computation, automatic and fixed chunk sizes; median of --repeats runs.
                --scipy adds scipy.spatial.distance.pdist(X, "correlation") once for contrast.
compare         compare_rdms on two 5000 x 5000 RDMs with every method, and center=True.
procrustes_cca  procrustes_angular / cca / svcca / pwcca on 5000 x 2048 vs 5000 x 1024.
accuracy        float32 vs float64 RDM error on data whose mean is 1000x its spread; centred
                RSA vs linear CKA at n = 2000 (the identity, in float64).
duplicates      rdm(X, "pearson") and rdm(X, "L2") of X = 3000 x 1024 float32 without and with 10%
                duplicated rows, against X @ X.T in float64 in the same run (the ratio is what
                counts on a shared machine), the share of rdm's time spent screening for and
                recomputing close pairs, and the largest RDM entry between duplicates in
                float64 and float32 (exactly 0 is the target).

Prints one JSON object; numbers go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from simtorch_semantic.functional.cca import cca, pwcca, svcca
from simtorch_semantic.functional.cka import linear_cka
from simtorch_semantic.functional.procrustes import procrustes_angular
from simtorch_semantic.functional.rsa import compare_rdms, rdm


def timed(fn, repeats=1):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
    return round(statistics.median(times), 3)


def data(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def bench_rdm(repeats, with_scipy):
    X = data(5000, 2048)
    out = {}
    # the yardstick, in the same run: a bare X @ X.T in each precision, and rdm's ratio to it
    for name, dt in (("float64", torch.float64), ("float32", torch.float32)):
        Xd = X.to(dt)
        gemm = timed(lambda: Xd @ Xd.T, repeats)
        out[f"gemm_{name}_s"] = gemm
        for metric in ("pearson", "L2squared"):
            t = timed(lambda: rdm(X, metric, dtype=dt), repeats)
            out[f"{metric}_{name}_s"] = t
            out[f"{metric}_{name}_ratio_to_gemm"] = round(t / gemm, 2)
    out["cosine_float64_s"] = timed(lambda: rdm(X, "cosine"), repeats)
    for chunk in (1250,):
        out[f"pearson_float64_chunk{chunk}_s"] = timed(lambda: rdm(X, "pearson", chunk_size=chunk), repeats)
    if with_scipy:
        from scipy.spatial.distance import pdist

        out["scipy_pdist_correlation_s"] = timed(lambda: pdist(X.numpy().astype(np.float64), "correlation"))
    return out


def bench_compare(repeats):
    X, Y = data(5000, 512, 1), data(5000, 512, 2)
    Y = Y + X[:, :512]
    A, B = rdm(X, "pearson"), rdm(Y, "pearson")
    out = {}
    for method in ("cosine", "pearson", "spearman"):
        out[f"{method}_s"] = timed(lambda: compare_rdms(A, B, method), repeats)
    out["kendall_s"] = timed(lambda: compare_rdms(A, B, "kendall"))
    out["cosine_center_s"] = timed(lambda: compare_rdms(A, B, "cosine", center=True), repeats)
    return out


def bench_procrustes_cca(repeats):
    X = data(5000, 2048, 3)
    Y = X[:, :1024] @ data(1024, 1024, 4) / 32 + data(5000, 1024, 5)
    return {
        "procrustes_angular_s": timed(lambda: procrustes_angular(X, Y), repeats),
        "cca_s": timed(lambda: cca(X, Y), repeats),
        "svcca_s": timed(lambda: svcca(X, Y), repeats),
        "pwcca_s": timed(lambda: pwcca(X, Y), repeats),
    }


def bench_accuracy():
    g = torch.Generator().manual_seed(6)
    X = 1000.0 + torch.randn(2000, 256, generator=g)  # mean 1000x the spread
    Y = X[:, :128] @ torch.randn(128, 128, generator=g) / 12 + torch.randn(2000, 128, generator=g)
    out = {}
    for metric in ("L2squared", "pearson", "cosine"):
        ref = rdm(X.double(), metric)
        r32 = rdm(X.float(), metric, dtype=torch.float32).double()
        scale = ref.abs().max()
        out[f"{metric}_float32_max_rel_err"] = float(((r32 - ref).abs().max() / scale))
    # naive float32 Gram trick without centring, for contrast (what the centring protects)
    Xf = X.float()
    G = Xf @ Xf.T
    d = G.diagonal()
    naive = (d[:, None] + d[None, :] - 2 * G).clamp_min(0).double()
    ref = rdm(X.double(), "L2squared")
    out["L2squared_float32_uncentred_max_rel_err"] = float((naive - ref).abs().max() / ref.abs().max())
    value = compare_rdms(rdm(X, "L2squared"), rdm(Y, "L2squared"), "cosine", center=True)
    out["centred_rsa_minus_linear_cka"] = abs(value - linear_cka(X.double(), Y.double()))
    out["upper_triangle_pearson_rsa"] = compare_rdms(rdm(X, "L2squared"), rdm(Y, "L2squared"), "pearson")
    out["linear_cka"] = linear_cka(X.double(), Y.double())
    return out


def bench_duplicates(repeats):
    X = data(3000, 1024, 7)
    dup = X.clone()
    dup[::10] = dup[1::10]  # rows 0, 10, 20, ... repeat rows 1, 11, 21, ...
    X64 = X.double()
    out = {"gemm_float64_s": timed(lambda: X64 @ X64.T, repeats)}
    for name, Z in (("distinct", X), ("dup10pct", dup)):
        for metric in ("pearson", "L2"):
            out[f"{name}_{metric}_float64_s"] = timed(lambda: rdm(Z, metric), repeats)
    out["distinct_pearson_ratio_to_gemm"] = round(out["distinct_pearson_float64_s"] / out["gemm_float64_s"], 2)
    # share of rdm's time spent screening and recomputing close pairs (same run, so load cancels)
    from simtorch_semantic.functional import rsa as rsa_module

    real = rsa_module._refine_close_pairs
    for name, Z in (("distinct", X), ("dup10pct", dup)):
        spent = []

        def timed_refine(*args, **kwargs):
            start = time.perf_counter()
            real(*args, **kwargs)
            spent.append(time.perf_counter() - start)

        rsa_module._refine_close_pairs = timed_refine
        try:
            shares = []
            for _ in range(repeats):
                spent.clear()
                start = time.perf_counter()
                rdm(Z, "pearson")
                shares.append(sum(spent) / (time.perf_counter() - start))
        finally:
            rsa_module._refine_close_pairs = real
        out[f"{name}_pearson_refine_share"] = round(statistics.median(shares), 3)
    out["dup10pct_pearson_ratio_to_gemm"] = round(out["dup10pct_pearson_float64_s"] / out["gemm_float64_s"], 2)
    rows, copies = torch.arange(0, 3000, 10), torch.arange(1, 3000, 10)
    for dtype in (torch.float64, torch.float32):
        for metric in ("L2", "L2_normalize", "cosine", "pearson"):
            D = rdm(dup, metric, dtype=dtype)
            out[f"max_dup_entry_{metric}_{str(dtype)[6:]}"] = float(D[rows, copies].abs().max())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["rdm", "compare", "procrustes_cca", "accuracy", "duplicates", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scipy", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"load_average": os.getloadavg(), "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    parts = ["rdm", "compare", "procrustes_cca", "accuracy", "duplicates"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "rdm":
            result["rdm_5000x2048"] = bench_rdm(args.repeats, args.scipy)
        elif part == "compare":
            result["compare_5000"] = bench_compare(args.repeats)
        elif part == "duplicates":
            result["duplicates_3000x1024"] = bench_duplicates(args.repeats)
        elif part == "procrustes_cca":
            result["procrustes_cca_5000"] = bench_procrustes_cca(args.repeats)
        else:
            result["accuracy"] = bench_accuracy()
        print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()

"""Calibrate the cost model of ``matching="auto"`` and measure the certified solvers (issue 9, T2).

Affinities ``A = V_i V_j^T`` of real ResNet-18 features (random init, seed 0, eval mode) of two
*different* photographs per pair (the package's shipped photographs, default_dataset order):

    layer3 at 96 px  -> S =   36      layer2 at 96 px  -> S =  144
    layer3 at 224 px -> S =  196      layer1 at 96 px  -> S =  576
    conv1 at 96 px   -> S = 2304      layer1 at 224 px -> S = 3136

For each size, the same pairs go through ``exact`` (scipy, one thread, one pair at a time),
``auction`` (the numba-compiled Gauss-Seidel auction on float32 affinities, one pair at a time) and ``batched`` (the torch batched
auction on one block of all the pairs, one thread), each interleaved in one process so machine
load affects all alike. Reported: time per problem, speed-up over exact, certified ratio
``objective / bound`` (a guaranteed lower bound of objective / optimum) and the true
objective / optimum. The script ends with the power-law fits ``t = c * S^e`` per problem that
``functional/matching.py`` stores as ``_AUCTION_C/_AUCTION_E`` and ``_BATCHED_C/_BATCHED_E``,
and the exact fit ``c3 S^3 + c2 S^2``.

    PYTHONPATH=. python3 benchmarks/calibrate_matching.py            # all sizes
    PYTHONPATH=. python3 benchmarks/calibrate_matching.py --sizes 36 144 576 --pairs 4
    PYTHONPATH=. python3 benchmarks/calibrate_matching.py --pipeline   # auto vs exact, small S
    PYTHONPATH=. python3 benchmarks/calibrate_matching.py --spot-check # T1: auto vs exact RSM
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simtorch_semantic.functional.matching import (  # noqa: E402
    _solve_auction, assignment_objective, batched_auction, choose_solver, solve_assignment)
from simtorch_semantic.images import default_dataset  # noqa: E402

SIZES = {36: ("layer3", 96), 144: ("layer2", 96), 196: ("layer3", 224), 576: ("layer1", 96),
         2304: ("conv1", 96), 3136: ("layer1", 224)}


def features(layer, px, n):
    """``[n, S, C]`` float32 features of a random-init ResNet-18 for the first n photographs."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    ds = default_dataset(n=n, size=px, seed=0)
    x = torch.stack([ds[i] for i in range(n)])
    out = {}
    with torch.no_grad():
        h = net.conv1(x)
        out["conv1"] = h
        h = net.layer1(net.maxpool(net.relu(net.bn1(h))))
        out["layer1"] = h
        h = net.layer2(h)
        out["layer2"] = h
        out["layer3"] = net.layer3(h)
    return out[layer].flatten(2).transpose(1, 2).contiguous()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(sizes, n_pairs, log=print):
    torch.set_num_threads(1)
    rows = []
    for S in sizes:
        layer, px = SIZES[S]
        k = min(n_pairs[S], 6)
        X = features(layer, px, k + 1)
        assert X.shape[1] == S, (layer, px, X.shape)
        A = torch.stack([X[i] @ X[i + 1].T for i in range(k)])  # photographs i, i+1: different
        A64 = A.double().numpy()
        A32 = A.numpy()  # the auction gets float32 affinities, as in the semantic pipeline
        _solve_auction(A32[:1, :8, :8])  # compile the kernel (numba caches it) before timing
        t_ex, t_au = [], []
        opt = np.empty(k)
        au_ratio, au_cert = np.empty(k), np.empty(k)
        for b in range(k):
            pe, t = timed(lambda: solve_assignment(A64[b], "exact", n_workers=1))
            t_ex.append(t)
            opt[b] = assignment_objective(A64[b], pe)
            (pa, obj, bound), t = timed(lambda: _solve_auction(A32[b:b + 1], return_bound=True))
            t_au.append(t)
            au_ratio[b] = assignment_objective(A64[b], pa[0]) / opt[b]
            au_cert[b] = obj[0] / bound[0]
        res, t_b = timed(lambda: batched_auction(A))
        obj_b = assignment_objective(A64, res.perm.numpy())
        bt_ratio = obj_b / opt
        bt_cert = (res.objective / res.bound).numpy()
        ex = float(np.median(t_ex))
        row = dict(S=S, layer=f"{layer} @ {px} px", pairs=k, exact=ex, auction=float(np.median(t_au)),
                   batched=t_b / k, au_ratio=au_ratio.min(), au_cert=au_cert.min(),
                   bt_ratio=bt_ratio.min(), bt_cert=bt_cert.min(),
                   bt_all=bool(res.certified.all()), auto=choose_solver(S))
        rows.append(row)
        log(f"S={S}: exact {ex:.4f} s, auction {row['auction']:.4f} s "
            f"({ex / row['auction']:.1f}x, certified >= {row['au_cert']:.5f}), batched "
            f"{row['batched']:.4f} s ({ex / row['batched']:.1f}x, certified >= "
            f"{row['bt_cert']:.5f}, all certified: {row['bt_all']}); auto -> {row['auto']}")
    return rows


def pipeline_small(sizes=(36, 144, 196), n=16, repeats=3, log=print):
    """"auto" vs "exact" through the whole semantic pipeline (``semantic_sim_parallel``, n samples,
    n (n - 1) / 2 pairs, default threads) at small S: medians of ``repeats``, interleaved."""
    from simtorch_semantic.functional.semantic import semantic_sim_parallel
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    rows = []
    for S in sizes:
        layer, px = SIZES[S]
        X = features(layer, px, n)
        t = {"auto": [], "exact": []}
        for _ in range(repeats):
            for m in ("exact", "auto"):
                _, dt = timed(lambda: semantic_sim_parallel(X, kernel="linear", matching=m,
                                                            layout="nsc", progress=False))
                t[m].append(dt)
        ex, au = float(np.median(t["exact"])), float(np.median(t["auto"]))
        rows.append((S, n * (n - 1) // 2, choose_solver(S), ex, au))
        log(f"pipeline S={S}: exact {ex:.3f} s, auto ({choose_solver(S)}) {au:.3f} s: "
            f"{au / ex:.2f}x exact")
    return rows


def spot_check(layers=(("conv1", 96), ("layer1", 96)), n=64, k=8, seed=0, log=print):
    """T1's spot check: ``k`` of the ``n`` default samples at random, their semantic RSM (linear
    kernel) with ``matching="auto"`` (float32 affinities, certified auction) against
    ``"exact"`` on float64 features; the largest relative shortfall of auto per entry."""
    from simtorch_semantic.functional.semantic import semantic_sim_parallel
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    rows = []
    for layer, px in layers:
        X = features(layer, px, n)[idx]
        stats = {}
        auto, t_a = timed(lambda: semantic_sim_parallel(X, kernel="linear", matching="auto",
                                                        layout="nsc", progress=False,
                                                        stats=stats))
        ref, t_e = timed(lambda: semantic_sim_parallel(X.double(), kernel="linear",
                                                       matching="exact", layout="nsc",
                                                       progress=False))
        iu = np.triu_indices(k, 1)
        short = (ref[iu] - auto[iu]) / np.abs(ref[iu])
        rows.append((layer, X.shape[1], iu[0].size, stats["solver"], float(short.max()),
                     float(short.min()), stats["max_rel_gap"], stats["exact_fallback"], t_a, t_e))
        log(f"spot check {layer} (S = {X.shape[1]}): {iu[0].size} pairs, auto = "
            f"{stats['solver']}: (exact - auto) / |exact| in [{short.min():.2e}, "
            f"{short.max():.2e}], certified gap <= {stats['max_rel_gap']:.2e}, "
            f"{stats['exact_fallback']} exact fallbacks; {t_a:.1f} s vs exact {t_e:.1f} s")
    return rows


def fit(rows):
    S = np.array([r["S"] for r in rows], dtype=float)
    out = {}
    # the auctions' power laws are fitted where auto may use them (S >= 100): below that a
    # call's fixed overhead dominates and would bend the fit away from the large S that matter
    big = S >= 100 if (S >= 100).sum() >= 2 else np.ones_like(S, dtype=bool)
    for key in ("auction", "batched"):
        t = np.array([r[key] for r in rows])
        e, logc = np.polyfit(np.log(S[big]), np.log(t[big]), 1)
        out[key] = (float(np.exp(logc)), float(e))
    t = np.array([r["exact"] for r in rows])
    M = np.stack([S ** 3, S ** 2], axis=1)
    c3, c2 = np.linalg.lstsq(M / t[:, None], np.ones_like(t), rcond=None)[0]  # relative errors
    out["exact"] = (float(c3), float(c2))
    return out


def markdown(rows, consts, load0, load1):
    lines = [f"load average {load0:.1f} at the start, {load1:.1f} at the end", "",
             "| S | features | pairs | exact s/problem | auction s/problem | auction speed-up | "
             "auction certified >= | true obj/opt (auction) | batched s/problem | batched speed-up | batched certified >= "
             "| true obj/opt (batched) | auto picks |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['S']} | {r['layer']} | {r['pairs']} | {r['exact']:.4f} | {r['auction']:.4f} | "
            f"{r['exact'] / r['auction']:.1f}x | {r['au_cert']:.5f} | {r['au_ratio']:.5f} | "
            f"{r['batched']:.4f} | "
            f"{r['exact'] / r['batched']:.1f}x | {r['bt_cert']:.5f} | {r['bt_ratio']:.5f} | "
            f"{r['auto']} |")
    lines += ["", "Fits (seconds per problem, one thread; the auctions' on S >= 100): exact "
              f"{consts['exact'][0]:.3g} S^3 + {consts['exact'][1]:.3g} S^2; auction "
              f"{consts['auction'][0]:.3g} S^{consts['auction'][1]:.3f}; batched "
              f"{consts['batched'][0]:.3g} S^{consts['batched'][1]:.3f}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    ap.add_argument("--pairs", type=int, default=4, help="pairs per size below S = 2304 (at "
                    "most 6)")
    ap.add_argument("--pairs-large", type=int, default=2, help="pairs for S >= 2304 (at most "
                    "6; exact takes 5-10 s per problem there)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--pipeline", action="store_true", help="instead: time matching='auto' "
                    "against 'exact' through semantic_sim_parallel at S = 36, 144, 196 (16 "
                    "samples, 120 pairs, medians of 3)")
    ap.add_argument("--spot-check", action="store_true", help="instead: T1's spot check, 8 of "
                    "the 64 default samples, conv1 and layer1 at 96 px, auto against exact")
    args = ap.parse_args(argv)
    if args.spot_check:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        text = ("| layer | S | pairs | auto solver | max (exact - auto) / exact | min | max "
                "certified gap | exact fallbacks | auto s | exact s |\n"
                "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n" + "".join(
                    f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2e} | {r[5]:.2e} | "
                    f"{r[6]:.2e} | {r[7]} | {r[8]:.1f} | {r[9]:.1f} |\n" for r in spot_check()))
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    if args.pipeline:
        rows = pipeline_small()
        text = ("| S | pairs | auto picks | exact s | auto s | auto / exact |\n"
                "|---:|---:|---|---:|---:|---:|\n" + "".join(
                    f"| {S} | {P} | {c} | {ex:.3f} | {au:.3f} | {au / ex:.2f}x |\n"
                    for S, P, c, ex, au in rows))
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    n_pairs = {S: (args.pairs_large if S >= 2304 else args.pairs) for S in args.sizes}
    load0 = os.getloadavg()[0]
    rows = run(args.sizes, n_pairs)
    consts = fit(rows) if len(rows) >= 2 else None
    text = markdown(rows, consts, load0, os.getloadavg()[0]) if consts else ""
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Every registered measure through the protocol: one pair, and a 14 x 22 layer matrix.

    python3 benchmarks/bench_measures.py                       # n = 1000 and 5000, every measure
    python3 benchmarks/bench_measures.py --n 1000 --part pair --measures cka rsa
    python3 benchmarks/bench_measures.py --max-seconds 120     # skip runs estimated above this

The measures come from ``simtorch_semantic.list_measures()`` (so measures registered later are
timed too); measures on model outputs and measures that need spatial maps (``semantic_cka``, see
benchmarks/bench_semantic.py) are left out.

pair     ``functional.similarity(X, Y, name)`` on ``X, Y [n, 2048]`` float32 (related data: a shared
         64-dimensional latent plus noise), median of ``--repeats`` runs, and in the same run the
         baseline: a bare ``X @ X.T`` in float64; ratios are to two of them (the ``n x n``
         products of X and Y that most measures need).
matrix   a 14 x 22 layer matrix as ``LayerSimilarity`` computes it (``protocol.prepare_all`` once per
         layer, then ``protocol.score_matrix``: ``score_all_pairs`` where the measure has one), on
         36 synthetic layers ``[n, 2048]``; baseline in the same run: the 36 bare float64 Grams.

Threads: ``--threads`` (default 1, for measures and baselines alike). A run whose estimate (36 prepares plus 308 pair scores, each timed once at this n; an upper bound
for measures with a batched all-pairs form) exceeds ``--max-seconds`` is skipped and its estimate printed instead. Prints one
JSON line per result; the figures go to benchmarks/RESULTS.md by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings

import torch

from simtorch_semantic import describe_measure, list_measures
from simtorch_semantic.functional import similarity
from simtorch_semantic.functional.protocol import prepare_all, score_matrix
from simtorch_semantic.functional.registry import get_measure

WIDTH = 2048
ROWS, COLS = 14, 22


def layers(n: int, count: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    out = []
    for _ in range(count):
        W = torch.randn(64, WIDTH, generator=g) / 8
        out.append(torch.relu(z @ W + 0.5 * torch.randn(n, WIDTH, generator=g)))
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer_costs(name, X, Y):
    """(seconds to prepare one representation, seconds to score one prepared pair)."""
    spec = get_measure(name)
    opts = dict(spec.options)
    if spec.prepare is None:
        start = time.perf_counter()
        similarity(X, Y, name)
        return 0.0, time.perf_counter() - start
    from simtorch_semantic.functional.registry import call_with_options
    start = time.perf_counter()
    px = call_with_options(spec.prepare, X, options=opts)
    prep = time.perf_counter() - start
    py = call_with_options(spec.prepare, Y, options=opts)
    start = time.perf_counter()
    call_with_options(spec.score, px, py, options=opts)
    return prep, time.perf_counter() - start


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--part", choices=("pair", "matrix", "both"), default="both")
    parser.add_argument("--measures", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a loaded 2-core machine two "
                        "OpenMP threads wait on each other and small products run ~10x slower; "
                        "the baselines run with the same setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.measures or [m for m in list_measures()
                              if describe_measure(m)["inputs"] == "representations"
                              and not describe_measure(m)["spatial_input"]]
    emit(machine=platform.machine(), cpus=os.cpu_count(), threads=torch.get_num_threads(),
         torch=torch.__version__, load_average=os.getloadavg())
    warnings.simplefilter("ignore", RuntimeWarning)
    for n in args.n:
        X, Y = layers(n, 2, seed=1)
        X64 = X.double()
        gram = timed(lambda: X64 @ X64.T, args.repeats)
        emit(n=n, part="baseline", what="X @ X.T float64 [n, 2048]", seconds=round(gram, 3))
        pair_time = {}
        for name in names:
            start = time.perf_counter()
            try:
                similarity(X, Y, name)                   # first run: also an estimate
            except ValueError as exc:                    # e.g. CCA with 2048 features on n <= 2049
                emit(n=n, part="pair", measure=name, error=str(exc)[:160])
                continue
            first = time.perf_counter() - start
            if first * args.repeats > args.max_seconds:
                pair_time[name] = None
                emit(n=n, part="pair", measure=name, seconds=round(first, 3), runs=1,
                     ratio_to_two_grams=round(first / (2 * gram), 2))
                continue
            t = timed(lambda: similarity(X, Y, name), args.repeats)
            pair_time[name] = _layer_costs(name, X, Y) if args.part != "pair" else None
            emit(n=n, part="pair", measure=name, seconds=round(t, 3), runs=args.repeats,
                 ratio_to_two_grams=round(t / (2 * gram), 2), load_average=os.getloadavg()[0])
        if args.part == "pair":
            continue
        acts = layers(n, ROWS + COLS, seed=2)
        grams = timed(lambda: [A.double() @ A.double().T for A in acts], 1)
        emit(n=n, part="baseline", what=f"{ROWS + COLS} Grams float64", seconds=round(grams, 3))
        for name in names:
            if name not in pair_time:
                continue
            spec = get_measure(name)
            batched = spec.score_all_pairs is not None
            prep, score = pair_time[name] or (math.inf, math.inf)
            estimate = (ROWS + COLS) * prep + ROWS * COLS * score   # an upper bound when batched
            if estimate > args.max_seconds:
                emit(n=n, part="matrix", measure=name, skipped=True,
                     estimate_seconds=round(estimate, 1), batched=batched)
                continue
            opts = dict(spec.options)
            start = time.perf_counter()
            P1, _ = prepare_all(spec, acts[:ROWS], opts)
            P2, _ = prepare_all(spec, acts[ROWS:], opts)
            prepared = time.perf_counter() - start
            M, _ = score_matrix(spec, P1, P2, opts)
            total = time.perf_counter() - start
            assert M.shape == (ROWS, COLS)
            del P1, P2
            emit(n=n, part="matrix", measure=name, seconds=round(total, 2),
                 prepare_seconds=round(prepared, 2), batched=batched,
                 ratio_to_grams=round(total / grams, 2), load_average=os.getloadavg()[0])


if __name__ == "__main__":
    main()

r"""Assignment solvers: the permutation of positions that maximises an affinity.

Given a batch of square affinity matrices ``A[b]`` of shape ``[S, S]`` (for the semantic
similarity, ``A[b] = V_i V_j^T``: the inner products between the ``S`` concept vectors of one
sample and those of another), every solver returns permutations ``perm[b]`` that (approximately)
maximise the linear assignment objective

.. math::  J(\pi) = \sum_{i=1}^{S} A_{i, \pi(i)},

with ``perm[b, i] = pi(i)``, the column assigned to row ``i``.

Solvers (``SOLVERS``):

``"exact"``
    The optimum, by :func:`scipy.optimize.linear_sum_assignment` (shortest augmenting paths,
    about ``O(S^3)``); a batch runs in a thread pool because scipy releases the GIL.
``"auction"`` (options ``rel_tol`` = 1e-3, ``theta`` = 0.2, ``eps0`` = 0.02, ``max_phases`` = 20)
    Bertsekas' forward auction with epsilon scaling, vectorised over the batch (Jacobi rounds of
    at most ~2^20 scanned affinities, a Gauss-Seidel finish when few persons are left, bids on a
    float32 copy). Guarantee: after each scaling phase the duality gap
    ``D - J`` (``D = sum_i max_j (A_ij - p_j) + sum_j p_j``, an upper bound of the optimum for any
    prices ``p``) is computed in float64, and the solver stops when ``D - J <= rel_tol * |J|``,
    so the returned objective satisfies ``J >= optimum - rel_tol * |J|`` (unless ``max_phases``
    runs out first; each phase's assignment is in any case within ``S * eps`` of the optimum,
    eps-complementary slackness). Constant matrices return the identity. On ReLU affinities with
    S = 3136 it reaches 0.9999 of the optimum in a few percent of the exact solver's time; for
    S below ~300 the exact solver is as fast (benchmarks/RESULTS.md).
``"batch_optimal"`` (option ``k``, default 256)
    The Batch-Optimal approximation of Wald et al., "Decoupling Semantic Similarity from Spatial
    Alignment for Neural Networks" (NeurIPS 2024): rows are sorted by the norm of sample A's
    vectors and columns by the norm of sample B's vectors (``row_norms``/``col_norms``; without
    them the affinity's row and column maxima, which for ``A = V_i V_j^T`` grow with the norms
    and in our benchmark give better blocks than the norms themselves), and exact assignments
    are solved on the aligned ``k x k`` diagonal blocks of the sorted order. No guarantee;
    ``k >= S`` is exact.
``"greedy"``
    Rows, in decreasing order of their best affinity, each take their best still-free column
    (``O(S^2)`` per matrix, vectorised over the batch). No guarantee (it can be far from the
    optimum on adversarial matrices); 0.97-0.99 of the optimum on ReLU affinities.

Costs: ``exact`` ~ ``O(S^3)`` (27 s at S = 3136 on one core; :func:`estimate_exact_seconds`,
:func:`check_exact_feasible`), the others ~ ``O(S^2)`` per round or block.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import linear_sum_assignment

try:  # torch is optional for this module: NumPy arrays work without it
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency of the package
    torch = None

__all__ = [
    "SOLVERS",
    "solve_assignment",
    "assignment_objective",
    "estimate_exact_seconds",
    "resolve_n_workers",
    "check_exact_feasible",
]

SOLVERS = ("exact", "auction", "batch_optimal", "greedy")

# ---------------------------------------------------------------------------------------------
# validation helpers


def _to_numpy(x, name):
    """Return ``x`` (torch tensor, NumPy array or nested sequence) as a NumPy array."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_complex():
            raise TypeError(f"{name} must be real-valued, got a complex tensor ({x.dtype})")
        if x.dtype in (torch.float16, torch.bfloat16):  # no NumPy equivalent for bfloat16
            x = x.double()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(
            f"{name} must be a torch tensor or NumPy array, got {type(x).__name__}"
        ) from exc


def _as_affinity_batch(affinity):
    """Validate ``affinity`` ``[S, S]`` or ``[B, S, S]``; return (float64 ``[B, S, S]``, was_2d)."""
    a = _to_numpy(affinity, "affinity")
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)
    ):
        raise TypeError(f"affinity must hold real numbers, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError("affinity must be real-valued, got a complex array")
    if a.ndim not in (2, 3):
        raise ValueError(
            f"affinity must have shape [S, S] or [B, S, S], got {a.ndim}-D shape {tuple(a.shape)}"
        )
    was_2d = a.ndim == 2
    if was_2d:
        a = a[None]
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"affinity must be square (S x S), got matrices of shape {tuple(a.shape[-2:])}; "
            "both samples need the same number of positions S"
        )
    if a.shape[-1] == 0:
        raise ValueError("affinity must have S >= 1 positions, got S = 0")
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        b, i, j = np.argwhere(~finite)[0]
        where = f"[{i}, {j}]" if was_2d else f"[{b}, {i}, {j}]"
        raise ValueError(
            f"affinity contains NaN or Inf (first at {where}: {a[b, i, j]}); "
            "check the features for NaN/Inf before matching"
        )
    return a, was_2d


def _check_method(method):
    if method not in SOLVERS:
        raise ValueError(
            f"unknown matching method {method!r}; valid methods are: {', '.join(SOLVERS)}"
        )


def resolve_n_workers(n_workers):
    """Threads to use: ``n_workers``, or the CPUs this process may run on when None."""
    if n_workers is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))
    if not isinstance(n_workers, (int, np.integer)) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer or None, got {n_workers!r}")
    return int(n_workers)


_n_workers = resolve_n_workers


def _map_batch(fn, a, n_workers):
    """Apply ``fn`` to every index b of ``a`` ``[B, S, S]`` (threads when B > 1) -> ``[B, S]``."""
    B, S, _ = a.shape
    out = np.empty((B, S), dtype=np.int64)
    workers = min(_n_workers(n_workers), B)
    if workers <= 1:
        for b in range(B):
            out[b] = fn(b)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for b, p in enumerate(pool.map(fn, range(B))):
                out[b] = p
    return out


# ---------------------------------------------------------------------------------------------
# solvers


def _lsa_max(m):
    """Optimal maximising assignment of one square matrix ``m`` ``[s, s]`` -> ``[s]``.

    The matrix is double-centred first (row means, then column means subtracted): that adds the
    same total to every permutation, so the optimum is unchanged, and scipy's shortest augmenting
    path solver, which starts from zero duals, needs 2-3x less time on ReLU-feature affinities.
    """
    m = m - m.mean(axis=1, keepdims=True)
    m -= m.mean(axis=0, keepdims=True)
    rows, cols = linear_sum_assignment(m, maximize=True)
    p = np.empty(m.shape[0], dtype=np.int64)
    p[rows] = cols
    return p


def _solve_exact(a, n_workers=None):
    return _map_batch(lambda b: _lsa_max(a[b]), a, n_workers)


def _norm_option(norms, name, B, S):
    if norms is None:
        return None
    n = np.asarray(_to_numpy(norms, name), dtype=np.float64)
    if n.ndim == 1:
        n = n[None]
    if n.shape != (B, S):
        raise ValueError(f"{name} must have shape [B, S] = [{B}, {S}] (or [S]), got {n.shape}")
    if not np.isfinite(n).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return n


def _solve_batch_optimal(a, k=256, row_norms=None, col_norms=None, n_workers=None):
    """Wald et al. (2024) Batch-Optimal: exact assignments on aligned ``k x k`` blocks.

    Rows are sorted by ``row_norms`` (norm of sample A's vector at each position) and columns by
    ``col_norms``, both descending; block ``t`` pairs sorted rows ``t*k .. t*k+k-1`` with sorted
    columns of the same ranks. Without norms the proxy is the affinity's row maxima (for rows) and
    column maxima (for columns): for ``A = V_i V_j^T`` the row maximum ``max_j <v_i, w_j>`` grows
    with ``|v_i|`` and is available without the features.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (block size of batch_optimal) must be a positive integer, got {k!r}")
    k = int(k)
    B, S, _ = a.shape
    rn = _norm_option(row_norms, "row_norms", B, S)
    cn = _norm_option(col_norms, "col_norms", B, S)
    if rn is None:
        rn = a.max(axis=2)
    if cn is None:
        cn = a.max(axis=1)
    row_order = np.argsort(-rn, axis=1, kind="stable")
    col_order = np.argsort(-cn, axis=1, kind="stable")

    def one(b):
        p = np.empty(S, dtype=np.int64)
        ro, co = row_order[b], col_order[b]
        for start in range(0, S, k):
            r = ro[start:start + k]
            c = co[start:start + k]
            p[r] = c[_lsa_max(a[b][np.ix_(r, c)])]
        return p

    return _map_batch(one, a, n_workers)


def _solve_greedy(a):
    """Rows in decreasing order of their best affinity each take their best free column.

    Vectorised over the batch: step ``t`` handles the ``t``-th row of every matrix at once;
    taken columns are masked with ``-inf``. Cost ``O(B S^2)``.
    """
    B, S, _ = a.shape
    order = np.argsort(-a.max(axis=2), axis=1, kind="stable")  # [B, S]
    taken = np.zeros((B, S), dtype=bool)
    perm = np.empty((B, S), dtype=np.int64)
    bidx = np.arange(B)
    for t in range(S):
        rows = order[:, t]
        vals = np.where(taken, -np.inf, a[bidx, rows])  # [B, S]
        cols = vals.argmax(axis=1)
        perm[bidx, rows] = cols
        taken[bidx, cols] = True
    return perm


_GS_BIDDERS = 128  # fewer unassigned persons than this: finish the phase bid by bid
_ROUND_ELEMS = 1 << 20  # at most this many affinities scanned per Jacobi round (>= 64 bidders)
_CHUNK_ELEMS = 1 << 22  # bidders per block in the auction's row scans: chunk x S <= 4M floats


def _top2(flat, rows, brows, prices, S):
    """Best and second-best net value ``flat[r] - prices[b]`` for every bidder, chunked.

    Args:
        flat: ``[B*S, S]`` affinities; rows: ``[U]`` sorted global person indices;
        brows: ``[U]`` their problem indices (``rows // S``); prices: ``[B, S]``.

    Returns:
        (j1 ``[U]`` best column, w1 ``[U]`` best value, w2 ``[U]`` second-best value).
    Bidders are processed in runs of one problem (prices broadcast, no ``[U, S]`` price copy)
    of at most ``_CHUNK_ELEMS / S`` rows, which bounds the temporary memory.
    """
    U = rows.size
    j1 = np.empty(U, dtype=np.int64)
    w1 = np.empty(U)
    w2 = np.empty(U)
    step = max(1, _CHUNK_ELEMS // S)
    if U * S <= (1 << 16):  # few bidders: one gather is cheaper than a loop over problems
        spans = [(0, U, None)]
    else:
        cuts = np.flatnonzero(np.diff(brows)) + 1
        edges = np.concatenate(([0], cuts, [U]))
        spans = [(lo, min(hi, lo + step), int(brows[lo]))
                 for s0, hi in zip(edges[:-1], edges[1:]) for lo in range(s0, hi, step)]
    for lo, hi, b in spans:
        vals = flat[rows[lo:hi]]
        np.subtract(vals, prices[brows[lo:hi]] if b is None else prices[b], out=vals)
        r = np.arange(hi - lo)
        j = vals.argmax(axis=1)
        j1[lo:hi] = j
        w1[lo:hi] = vals[r, j]
        vals[r, j] = -np.inf
        w2[lo:hi] = vals.max(axis=1)
    return j1, w1, w2


def _row_max_net(m, p, buf):
    """``max_j (m[i, j] - p[j])`` for every row of ``m`` ``[S, S]`` in float64, in row blocks
    that reuse ``buf`` (no ``S x S`` temporary)."""
    S = m.shape[0]
    out = np.empty(S)
    step = buf.shape[0]
    for lo in range(0, S, step):
        hi = min(S, lo + step)
        blk = buf[:hi - lo]
        np.subtract(m[lo:hi], p, out=blk)
        blk.max(axis=1, out=out[lo:hi])
    return out


def _gauss_seidel_tail(U, flat, prices, eps, assign, owner, S):
    """Finish an auction phase bidder by bidder (Gauss-Seidel) from the unassigned persons ``U``.

    When few persons are unassigned, a vectorised Jacobi round costs mostly fixed overhead; one
    bid at a time (a queue of displaced persons) is cheaper and sees every price update at once.
    """
    queue = deque(int(g) for g in U)
    while queue:
        g = queue.pop()
        b, i = divmod(g, S)
        pb = prices[b]
        row = flat[g] - pb
        j = int(row.argmax())
        w1 = row[j]
        row[j] = -np.inf
        pb[j] += (w1 - row.max()) + eps[b]
        go = b * S + j
        prev = int(owner[go])
        owner[go] = i
        assign[g] = j
        if prev >= 0:
            assign[b * S + prev] = -1
            queue.append(b * S + prev)


def _solve_auction(a, rel_tol=1e-3, theta=0.2, eps0=0.02, max_phases=20, gs_bidders=_GS_BIDDERS):
    """Forward auction with epsilon scaling (Bertsekas 1988), bids vectorised over the batch.

    Persons are rows, objects columns. Each round every unassigned person ``i`` bids for its best
    object ``j1 = argmax_j (A_ij - p_j)`` the price ``p_j1 + (w1 - w2) + eps`` (``w1``, ``w2``: best
    and second-best net values); each object goes to its highest bidder, whose previous owner
    becomes unassigned. A phase ends when everyone is assigned; the assignment then satisfies
    eps-complementary slackness, so its objective is within ``S * eps`` of the optimum.

    Epsilon scaling: prices start at the column means of ``A`` (a warm start that removes most of
    the price war when all rows prefer the same high-norm columns) and ``eps`` at ``eps0`` times
    the affinity's range; after each phase ``eps *= theta``, and only the persons that violate
    the new ``eps``-slackness are unassigned. After each phase the duality gap
    ``D - J`` with ``D = sum_i max_j (A_ij - p_j) + sum_j p_j >= optimum`` is computed; a problem
    stops when ``D - J <= rel_tol * |J|``, which certifies ``J >= optimum - rel_tol * |J|``.
    """
    for name, val, lo, hi in (("rel_tol", rel_tol, 0.0, None), ("theta", theta, 0.0, 1.0),
                              ("eps0", eps0, 0.0, None)):
        if not (isinstance(val, (int, float, np.floating)) and np.isfinite(val) and val > lo
                and (hi is None or val < hi)):
            rng = f"in (0, {hi})" if hi is not None else "> 0"
            raise ValueError(f"{name} (auction option) must be a number {rng}, got {val!r}")
    if not isinstance(max_phases, (int, np.integer)) or max_phases < 1:
        raise ValueError(
            f"max_phases (auction option) must be a positive integer, got {max_phases!r}"
        )
    B, S, _ = a.shape
    if S == 1:
        return np.zeros((B, 1), dtype=np.int64)
    flat64 = a.reshape(B * S, S)
    # Bids are computed on a float32 copy (half the memory traffic) while eps is well above
    # float32 resolution of the affinities; below that on the float64 input. The certificate
    # always uses float64, so the precision of the bids never affects the guarantee.
    flat32 = flat64.astype(np.float32)
    fine = np.float64(np.finfo(np.float32).eps) * 256 * max(float(np.abs(a).max()), 1e-300)
    prices = a.mean(axis=1)  # [B, S] column means
    pflat = prices.reshape(-1)
    spread = a.max(axis=(1, 2)) - a.min(axis=(1, 2))
    active = spread > 0  # a constant matrix: every permutation is optimal (identity returned)
    spread[~active] = 1.0
    eps = eps0 * spread
    eps_floor = 1e-12 * spread
    assign = np.full(B * S, -1, dtype=np.int64)  # global person -> local object
    owner = np.full(B * S, -1, dtype=np.int64)   # global object -> local person
    best = np.tile(np.arange(S, dtype=np.int64), (B, 1))
    best_obj = np.full(B, -np.inf)
    ar = np.arange(S)
    buf = np.empty((max(1, min(S, _CHUNK_ELEMS // (8 * S))), S))
    max_bidders = max(64, _ROUND_ELEMS // S)

    for _ in range(max_phases):
        if not active.any():
            break
        pact = np.repeat(active, S)
        flat = flat32 if eps[active].min() > fine else flat64
        while True:
            U = np.flatnonzero((assign < 0) & pact)
            if U.size == 0:
                break
            if U.size <= gs_bidders:
                _gauss_seidel_tail(U, flat, prices, eps, assign, owner, S)
                break
            if U.size > max_bidders:  # block Gauss-Seidel: later blocks see the new prices
                U = U[:max_bidders]
            bU = U // S
            j1, w1, w2 = _top2(flat, U, bU, prices, S)
            gobj = bU * S + j1
            bid = pflat[gobj] + (w1 - w2) + eps[bU]
            order = np.lexsort((-bid, gobj))  # per object, highest bid first
            gs = gobj[order]
            first = np.ones(order.size, dtype=bool)
            first[1:] = gs[1:] != gs[:-1]
            win = order[first]
            wg = gobj[win]
            wp = U[win]
            prev = owner[wg]
            had = prev >= 0
            assign[(wg[had] // S) * S + prev[had]] = -1
            owner[wg] = wp % S
            assign[wp] = wg % S
            pflat[wg] = bid[win]
        # phase end: certificate, best so far, and the next phase's unassignments
        for b in np.flatnonzero(active):
            asg = assign[b * S:(b + 1) * S]
            rowmax = _row_max_net(a[b], prices[b], buf)
            own = a[b][ar, asg] - prices[b][asg]
            obj = float(a[b][ar, asg].sum())
            gap = float(rowmax.sum() + prices[b].sum() - obj)
            if obj > best_obj[b]:
                best_obj[b] = obj
                best[b] = asg
            if gap <= rel_tol * abs(obj) or gap <= 1e3 * S * eps_floor[b] or eps[b] <= eps_floor[b]:
                active[b] = False
                continue
            eps[b] *= theta
            loose = np.flatnonzero(rowmax - own > eps[b])
            owner[b * S + asg[loose]] = -1
            assign[b * S + loose] = -1
        if not active.any():
            break
    return best


# ---------------------------------------------------------------------------------------------
# public API


def solve_assignment(affinity, method="exact", **options):
    """Permutations maximising ``sum_i affinity[b, i, perm[b, i]]``.

    Args:
        affinity: float ``[B, S, S]`` or ``[S, S]`` (torch tensor or NumPy array). Finite.
        method: one of :data:`SOLVERS`.
        **options: solver options:
            ``exact``: ``n_workers`` (threads for B > 1; default ``os.cpu_count()``);
            ``auction``: ``rel_tol`` (default 1e-3; certified relative gap to the optimum),
            ``theta`` (eps reduction per phase, 0.2), ``eps0`` (first eps as a fraction of the
            affinity's range, 0.02), ``max_phases`` (20);
            ``batch_optimal``: ``k`` (block size, default 256), ``row_norms``/``col_norms``
            ``[B, S]`` (norms of the two samples' vectors; default proxies are the affinity's
            row/column maxima), ``n_workers``;
            ``greedy``: none.
            Every method accepts ``n_workers`` (ignored by the vectorised ``auction`` and
            ``greedy``), so callers can pass it uniformly. Unknown options raise ``TypeError``.

    Returns:
        ``np.ndarray[int64]`` ``[B, S]`` (``[S]`` for 2-D input): ``perm[b, i]`` is the column
        assigned to row ``i``.

    Raises:
        ValueError: unknown ``method`` (the message lists :data:`SOLVERS`), input that is not
        ``[S, S]``/``[B, S, S]``, not square, empty, or holds NaN/Inf; bad option values.
    """
    _check_method(method)
    a, was_2d = _as_affinity_batch(affinity)
    allowed = {
        "exact": {"n_workers"},
        "auction": {"rel_tol", "theta", "eps0", "max_phases", "n_workers"},
        "batch_optimal": {"k", "row_norms", "col_norms", "n_workers"},
        "greedy": {"n_workers"},
    }[method]
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for method {method!r}; "
            f"valid options: {sorted(allowed) or 'none'}"
        )
    if method == "exact":
        perm = _solve_exact(a, **options)
    elif method == "auction":
        options.pop("n_workers", None)
        perm = _solve_auction(a, **options)
    elif method == "batch_optimal":
        perm = _solve_batch_optimal(a, **options)
    else:
        options.pop("n_workers", None)
        perm = _solve_greedy(a)
    return perm[0] if was_2d else perm


def assignment_objective(affinity, perm):
    """Objective ``sum_i affinity[b, i, perm[b, i]]`` in float64.

    Args:
        affinity: ``[B, S, S]`` or ``[S, S]``.
        perm: integer ``[B, S]`` or ``[S]`` (a permutation of ``0..S-1`` per row).

    Returns:
        float64 ``[B]`` (a 0-d array for 2-D input).
    """
    a, was_2d = _as_affinity_batch(affinity)
    p = np.asarray(_to_numpy(perm, "perm"))
    if p.ndim == 1:
        p = p[None]
    B, S, _ = a.shape
    if p.shape != (B, S):
        raise ValueError(f"perm must have shape {(B, S)[1 if was_2d else 0:]}, got {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise TypeError(f"perm must hold integers, got dtype {p.dtype}")
    if (p < 0).any() or (p >= S).any():
        raise ValueError(f"perm entries must lie in [0, {S - 1}]")
    obj = np.take_along_axis(a, p[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    return obj[0] if was_2d else obj


# Calibration of the exact solver's time (scipy.optimize.linear_sum_assignment on ReLU
# inner-product affinities of a random-init ResNet-18 on photographs, one thread; CPU time on a
# 2-core AMD EPYC, see benchmarks/RESULTS.md): about 0.3 s at S = 784 and 27 s at
# S = 3136, i.e. t(S) ~= 9e-10 S^3. Random Gaussian matrices are several times faster;
# structured ReLU affinities (every row prefers the same high-norm columns) are the slow case.
_EXACT_C3 = 9.0e-10
_EXACT_C2 = 5.0e-8


def estimate_exact_seconds(S, B=1, n_workers=None):
    """Estimated wall time in seconds of ``solve_assignment(..., "exact")`` on ``B`` ``S x S``.

    A cubic fit ``t(S) = c3 S^3 + c2 S^2`` to measured single-thread times of scipy's solver on
    ReLU feature affinities (see benchmarks/bench_matching.py), times ``B / min(B, n_workers)``.
    """
    if not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"S (positions per sample) must be a positive integer, got {S!r}")
    if not isinstance(B, (int, np.integer)) or B < 0:
        raise ValueError(f"B (number of pairs) must be a non-negative integer, got {B!r}")
    workers = min(_n_workers(n_workers), max(int(B), 1))
    return float((_EXACT_C3 * S**3 + _EXACT_C2 * S**2) * B / workers)


def _fmt_seconds(t):
    if t < 120:
        return f"{t:.1f} s"
    if t < 7200:
        return f"{t / 60:.1f} min"
    if t < 172800:
        return f"{t / 3600:.1f} h"
    return f"{t / 86400:.1f} days"


def check_exact_feasible(S, n_pairs, max_seconds=3600.0, n_workers=None):
    """Raise ``ValueError`` when ``exact`` matching of ``n_pairs`` ``S x S`` problems is too slow.

    The estimate is :func:`estimate_exact_seconds`; the error gives it and suggests an
    approximate solver. Returns the estimate (seconds) when feasible.
    """
    est = estimate_exact_seconds(S, n_pairs, n_workers=n_workers)
    if est > max_seconds:
        raise ValueError(
            f"exact matching of {n_pairs} pairs with S = {S} positions would take about "
            f"{_fmt_seconds(est)} (limit {_fmt_seconds(max_seconds)}); use an approximate "
            "matching: 'auction' (certified within rel_tol = 0.1% of the optimum; about 40x "
            "faster than 'exact' at S = 3136), 'batch_optimal' or 'greedy' (fastest, no "
            "guarantee), or fewer samples, or a coarser layer (smaller S)"
        )
    return est

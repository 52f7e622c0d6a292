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
``"auction"`` (options ``rel_tol`` = 1e-3, ``theta`` = 0.2, ``eps0`` = 0.02, ``max_phases`` = 20,
``max_bids`` = 2000 S)
    Bertsekas' forward auction with epsilon scaling, Gauss-Seidel (one bid at a time), compiled
    by numba and run one problem per thread (the kernel releases the GIL). Guarantee: after each
    scaling phase the duality gap ``D - J`` (``D = sum_i max_j (A_ij - p_j) + sum_j p_j``, an
    upper bound of the optimum for any prices ``p``) is computed in float64, and the solver
    stops when ``D - J <= rel_tol * |J|``, so the returned objective satisfies
    ``J >= optimum - rel_tol * |J|``; ``solve_assignment`` re-solves exactly the rare problem
    that runs out of ``max_phases`` or ``max_bids`` first. Constant matrices return the
    identity. On ResNet-18 affinities it is 30-40x faster than ``exact`` at S = 2304 and
    5-10x at S = 576; below S ~ 150 the exact solver is as fast (benchmarks/RESULTS.md).
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

``"batched"`` (options ``rel_tol`` = 1e-3, ``theta`` = 0.2, ``eps0`` = 0.02, ``max_phases`` = 30,
``bidders`` = 4, ``max_rounds``)
    The same forward auction with epsilon scaling written as torch tensor operations on a whole
    ``[B, S, S]`` block of problems at once, on the block's device (CPU or CUDA): each round up
    to ``bidders`` unassigned persons of every unfinished problem bid at once (a Jacobi round
    inside a problem, Gauss-Seidel-like when ``bidders`` is small), the winning bid per object is
    a ``scatter_reduce(amax)``, and only the loop over rounds is in Python. Every problem gets
    the duality-gap certificate after each phase (:func:`dual_bound`); see
    :func:`batched_auction`, which also returns the objective, the bound and whether it is
    certified. ``solve_assignment(..., "batched")`` returns the permutation only; a problem that
    is not certified (``max_phases``/``max_rounds`` exhausted, or eps at the floor of the
    affinity's precision) is re-solved exactly, so the returned permutation always satisfies
    ``J >= (1 - rel_tol) * optimum`` (for ``J >= 0``).
``"auto"``
    Not a solver but a choice: per problem size (and device), the solver that the calibrated
    cost model (:func:`estimate_seconds`, constants from ``benchmarks/calibrate_matching.py``)
    predicts to be fastest (:func:`choose_solver`): ``exact`` or ``auction`` on the CPU,
    ``exact`` or ``batched`` on a GPU; all are certified.

Costs: ``exact`` ~ ``O(S^3)`` (27 s at S = 3136 on one core; :func:`estimate_exact_seconds`,
:func:`check_exact_feasible`), the others ~ ``O(S^2)`` per round or block.

Certificate. For any prices ``p`` (``[S]``),

.. math::  D(p) = \sum_i \max_j (A_{ij} - p_j) + \sum_j p_j \;\ge\; \max_\pi \sum_i A_{i\pi(i)}

(weak duality of the assignment LP: ``sum_i A_{i pi(i)} = sum_i (A_{i pi(i)} - p_{pi(i)}) +
sum_j p_j <= D(p)``). So ``D(p) - J(pi)`` bounds the distance of ``pi`` to the optimum, problem
by problem, and anyone can check it with :func:`dual_bound`.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
from scipy.optimize import linear_sum_assignment

try:  # torch is optional for this module: NumPy arrays work without it
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency of the package
    torch = None

__all__ = [
    "SOLVERS",
    "MATCHINGS",
    "CertifiedAssignment",
    "batched_auction",
    "dual_bound",
    "estimate_seconds",
    "choose_solver",
    "solve_assignment",
    "check_options",
    "assignment_objective",
    "estimate_exact_seconds",
    "resolve_n_workers",
    "solve_auction",
    "format_seconds",
    "check_exact_feasible",
]

SOLVERS = ("exact", "batched", "auction", "batch_optimal", "greedy")
#: what the ``matching=`` arguments accept: a solver of :data:`SOLVERS`, or "auto"
MATCHINGS = ("auto",) + SOLVERS

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
    if not isinstance(method, str) or method not in MATCHINGS:
        raise ValueError(
            f"unknown matching method {method!r}; valid methods are: {', '.join(MATCHINGS)}"
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


def solve_auction(a, **options):
    """One maximising assignment of affinity ``a [S, S]`` by the auction (see ``_solve_auction``
    for the options); the public name other modules use."""
    return _solve_auction(a, **options)


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


@numba.njit(cache=True, nogil=True)
def _auction_kernel(A, prices, rel_tol, theta, eps0, max_phases, max_bids):  # pragma: no cover
    """Gauss-Seidel forward auction with epsilon scaling on one problem (compiled by numba).

    ``A`` ``[S, S]`` float32 or float64 (read only), ``prices`` float64 ``[S]`` (updated in
    place). Returns ``(perm [S], objective, bound, bids)``: the best complete assignment of all
    phases, its objective and the smallest dual bound, both summed in float64; ``bids`` is -1
    when ``max_bids`` ran out inside a phase (the result is then the last complete phase's).
    Covered by the tests through :func:`_solve_auction` (numba-compiled code is invisible to
    coverage tools).
    """
    S = A.shape[0]
    assign = np.full(S, -1, np.int64)
    owner = np.full(S, -1, np.int64)
    best = np.arange(S)
    best_obj = -np.inf
    best_bound = np.inf
    amax = -np.inf
    amin = np.inf
    for i in range(S):
        for j in range(S):
            v = np.float64(A[i, j])
            amax = max(amax, v)
            amin = min(amin, v)
    spread = amax - amin
    if spread <= 0.0 or S == 1:  # every permutation is optimal: the identity, certified
        obj = 0.0
        for i in range(S):
            obj += np.float64(A[i, i])
        return best, obj, obj, 0
    scale = max(abs(amax), abs(amin))
    eps = eps0 * spread
    eps_floor = 1e-12 * max(spread, scale)
    stack = np.empty(S, np.int64)
    top = 0
    for i in range(S - 1, -1, -1):
        stack[top] = i
        top += 1
    rowmax = np.empty(S)
    bids = 0
    for _ in range(max_phases):
        while top > 0:
            if bids >= max_bids:
                if best_obj == -np.inf:  # no phase ended: the identity, with no bound
                    best_obj = 0.0
                    for k in range(S):
                        best_obj += np.float64(A[k, k])
                return best, best_obj, best_bound, -1
            top -= 1
            i = stack[top]
            w1 = -np.inf
            w2 = -np.inf
            j1 = 0
            for j in range(S):
                v = A[i, j] - prices[j]
                if v > w2:
                    if v > w1:
                        w2 = w1
                        w1 = v
                        j1 = j
                    else:
                        w2 = v
            prices[j1] += (w1 - w2) + eps
            bids += 1
            prev = owner[j1]
            owner[j1] = i
            assign[i] = j1
            if prev >= 0:
                assign[prev] = -1
                stack[top] = prev
                top += 1
        # phase end: every person assigned; objective and dual bound in float64
        obj = 0.0
        bound = 0.0
        for i in range(S):
            obj += np.float64(A[i, assign[i]])
            m = -np.inf
            for j in range(S):
                m = max(m, np.float64(A[i, j]) - prices[j])
            rowmax[i] = m
            bound += m
        for j in range(S):
            bound += prices[j]
        best_bound = min(best_bound, bound)
        if obj > best_obj:
            best_obj = obj
            best[:] = assign
        gap = best_bound - best_obj
        if gap <= rel_tol * abs(best_obj) or gap <= 1e3 * S * eps_floor or eps <= eps_floor:
            break
        eps = max(eps * theta, eps_floor)
        for i in range(S):  # unassign the persons that violate the new eps-slackness
            j = assign[i]
            if np.float64(A[i, j]) - prices[j] < rowmax[i] - eps:
                owner[j] = -1
                assign[i] = -1
                stack[top] = i
                top += 1
    return best, best_obj, best_bound, bids


def _solve_auction(a, rel_tol=1e-3, theta=0.2, eps0=0.02, max_phases=20, max_bids=None,
                   return_bound=False, return_prices=False, n_workers=1):
    """Forward auction with epsilon scaling (Bertsekas 1988), compiled, one problem per thread.

    Persons are rows, objects columns. Gauss-Seidel: one unassigned person ``i`` at a time bids
    for its best object ``j1 = argmax_j (A_ij - p_j)`` the price ``p_j1 + (w1 - w2) + eps``
    (``w1``, ``w2``: best and second-best net values) and displaces its previous owner, who bids
    next. A phase ends when everyone is assigned; the assignment then satisfies
    eps-complementary slackness, so its objective is within ``S * eps`` of the optimum.

    Epsilon scaling: prices start at the column means of ``A`` (a warm start that removes most of
    the price war when all rows prefer the same high-norm columns) and ``eps`` at ``eps0`` times
    the affinity's range; after each phase ``eps *= theta``, and only the persons that violate
    the new ``eps``-slackness are unassigned. After each phase the duality gap
    ``D - J`` with ``D = sum_i max_j (A_ij - p_j) + sum_j p_j >= optimum`` is computed in
    float64; a problem stops when ``D - J <= rel_tol * |J|``, which certifies
    ``J >= optimum - rel_tol * |J|``.

    The kernel (:func:`_auction_kernel`) is compiled by numba and releases the GIL, so a batch
    runs in ``n_workers`` threads. ``a`` may be float32 (bids on float32 affinities read half the
    memory; prices, objective and bound are float64, so the certificate is exact for the
    float32 matrix given) or float64. ``max_bids`` (default ``2000 * S``) bounds the bids of one
    problem; a problem that runs out, or out of ``max_phases``, returns its best complete
    assignment uncertified.

    With ``return_bound`` it returns ``(perm [B, S], J [B], bound [B])``: ``bound`` is the
    smallest ``D`` of all phases (float64, an upper bound of the optimum of ``a``); with
    ``return_prices`` as well, the final prices ``[B, S]`` (float64) come fourth: their dual
    value is an upper bound for any matrix, e.g. the float64 affinity behind a float32 ``a``.
    """
    for name, val, lo, hi in (("rel_tol", rel_tol, 0.0, None), ("theta", theta, 0.0, 1.0),
                              ("eps0", eps0, 0.0, None)):
        if not (isinstance(val, (int, float, np.floating)) and np.isfinite(val) and val > lo
                and (hi is None or val < hi)):
            rng = f"in (0, {hi})" if hi is not None else "> 0"
            raise ValueError(f"{name} (auction option) must be a number {rng}, got {val!r}")
    for name, val in (("max_phases", max_phases), ("max_bids", max_bids)):
        if val is not None and (not isinstance(val, (int, np.integer)) or isinstance(val, bool)
                                or val < 1):
            raise ValueError(f"{name} (auction option) must be a positive integer, got {val!r}")
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    B, S, _ = a.shape
    cap = int(max_bids) if max_bids is not None else 2000 * S
    perm = np.empty((B, S), dtype=np.int64)
    obj = np.empty(B)
    bound = np.empty(B)
    prices = np.empty((B, S))

    def one(b):
        m = np.ascontiguousarray(a[b])
        prices[b] = m.mean(axis=0, dtype=np.float64)
        perm[b], obj[b], bound[b], _ = _auction_kernel(
            m, prices[b], float(rel_tol), float(theta), float(eps0), int(max_phases), cap)
        return perm[b]

    _map_batch(one, a, n_workers)
    if return_bound:
        return (perm, obj, bound, prices) if return_prices else (perm, obj, bound)
    return perm


# ---------------------------------------------------------------------------------------------
# batched auction in torch (CPU and CUDA)


class CertifiedAssignment(NamedTuple):
    """Result of :func:`batched_auction` for ``B`` problems.

    Attributes:
        perm: int64 tensor ``[B, S]`` (on the affinity's device), ``perm[b, i]`` = column of row i.
        objective: float64 tensor ``[B]``, ``J_b = sum_i A[b, i, perm[b, i]]``.
        bound: float64 tensor ``[B]``, an upper bound of the optimum of problem ``b``
            (the dual value :func:`dual_bound` of the final prices, plus the rounding slack of
            the affinity's precision).
        certified: bool tensor ``[B]``, ``bound - objective <= rel_tol * |objective|``.
        prices: tensor ``[B, S]`` of the final prices (a warm start for a similar problem).
    """

    perm: "torch.Tensor"
    objective: "torch.Tensor"
    bound: "torch.Tensor"
    certified: "torch.Tensor"
    prices: "torch.Tensor"


def dual_bound(affinity, prices):
    """Upper bound ``D(p) = sum_i max_j (A_ij - p_j) + sum_j p_j`` of every problem's optimum.

    Computed in float64 (weak duality, module docstring): valid for any prices.

    Args:
        affinity: ``[B, S, S]`` or ``[S, S]`` (torch tensor or NumPy array).
        prices: ``[B, S]`` or ``[S]``.

    Returns:
        float64 NumPy ``[B]`` (0-d for 2-D input).
    """
    a, was_2d = _as_affinity_batch(affinity)
    p = np.asarray(_to_numpy(prices, "prices"), dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.shape != a.shape[:2]:
        raise ValueError(f"prices must have shape {a.shape[:2][1 if was_2d else 0:]} "
                         f"(one per column), got {p.shape}")
    d = (a - p[:, None, :]).max(axis=2).sum(axis=1) + p.sum(axis=1)
    return d[0] if was_2d else d


def _check_positive(name, val, hi=None):
    if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)) \
            or not np.isfinite(val) or val <= 0 or (hi is not None and val >= hi):
        rng = f"in (0, {hi})" if hi is not None else "> 0"
        raise ValueError(f"{name} (batched auction option) must be a number {rng}, got {val!r}")


def _check_count(name, val, allow_none=False):
    if val is None and allow_none:
        return
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
        raise ValueError(f"{name} (batched auction option) must be a positive integer"
                         f"{' or None' if allow_none else ''}, got {val!r}")


# rows x columns of (A - p) materialised at once by the certificate pass
_CERT_ELEMS = 1 << 22


def _row_max_net_t(A, p):
    """``max_j (A[b, i, j] - p[b, j])`` ``[B, S]`` in A's dtype, in blocks of problems."""
    B, S, _ = A.shape
    out = torch.empty((B, S), dtype=A.dtype, device=A.device)
    step = max(1, _CERT_ELEMS // (S * S))
    for lo in range(0, B, step):
        hi = min(B, lo + step)
        torch.amax(A[lo:hi] - p[lo:hi, None, :], dim=2, out=out[lo:hi])
    return out


def batched_auction(affinity, rel_tol=1e-3, theta=0.2, eps0=0.02, max_phases=30, bidders=4,
                    max_rounds=None, prices=None):
    """Forward auction with epsilon scaling on a batch of problems, as torch tensor operations.

    Maximises ``sum_i A[b, i, perm[b, i]]`` for every ``b`` (Bertsekas 1988). Persons are rows,
    objects columns. A round takes, in every unfinished problem, up to ``bidders`` unassigned
    persons; each bids for its best object ``j1 = argmax_j (A_ij - p_j)`` the price
    ``p_j1 + (w1 - w2) + eps`` (``w1``, ``w2``: best and second-best net values); every object
    goes to its highest bid (``scatter_reduce`` amax; ties to the lowest person), whose previous
    owner becomes unassigned. Python loops only over rounds and phases; all problems advance
    together. A phase ends when every person of a problem is assigned (eps-complementary
    slackness, so ``J >= optimum - S * eps``); then the certificate
    ``bound = D(p) + slack >= optimum`` (:func:`dual_bound`; ``slack = S * u * (max|A| +
    max|p|)``, ``u`` the unit roundoff of A's dtype, covers the rounding of ``A_ij - p_j``) is
    computed per problem, and a problem with ``bound - J <= rel_tol * |J|`` is finished.
    Otherwise ``eps *= theta`` and the persons violating the new eps-slackness are unassigned.

    Warm start: prices start at ``prices`` if given, else at the column means of ``A`` (they
    remove most of the bidding war when every row prefers the same high-norm columns); ``eps``
    starts at ``eps0`` times each problem's range of affinities. Constant matrices return the
    identity (certified: every permutation is optimal).

    Args:
        affinity: ``[B, S, S]`` (or ``[S, S]``) float tensor on any device (NumPy accepted);
            float32 bids are fine, the certificate accounts for their rounding.
        rel_tol: certified relative gap, default 1e-3.
        theta: eps reduction per phase, in (0, 1).
        eps0: first eps as a fraction of the affinity's range.
        max_phases: scaling phases at most.
        bidders: unassigned persons per problem and round (larger: fewer rounds, more
            conflicting bids; on a GPU use more).
        max_rounds: bidding rounds at most over all phases (default ``200 * S + 1000``).
        prices: optional ``[B, S]`` initial prices.

    Returns:
        :class:`CertifiedAssignment` (tensors on the affinity's device; ``[S]``-shaped fields
        squeezed for 2-D input). Problems that are not certified when the limits are reached
        return the best assignment found, ``certified = False``.
    """
    _check_positive("rel_tol", rel_tol)
    _check_positive("theta", theta, 1.0)
    _check_positive("eps0", eps0)
    _check_count("max_phases", max_phases)
    _check_count("bidders", bidders)
    _check_count("max_rounds", max_rounds, allow_none=True)
    if isinstance(affinity, torch.Tensor):
        A = affinity.detach()
        if A.is_complex():
            raise TypeError(f"affinity must be real-valued, got a complex tensor ({A.dtype})")
        if not A.is_floating_point() or A.dtype in (torch.float16, torch.bfloat16):
            A = A.float()
        if A.ndim not in (2, 3) or A.shape[-1] != A.shape[-2] or A.shape[-1] == 0:
            _as_affinity_batch(A.cpu())  # raises the shape error
        if not bool(torch.isfinite(A).all()):
            _as_affinity_batch(A.cpu())  # raises the NaN/Inf error with its position
    else:
        A = torch.from_numpy(_as_affinity_batch(affinity)[0])
        if np.ndim(affinity) == 2:
            A = A[0]
    was_2d = A.ndim == 2
    if was_2d:
        A = A[None]
    A = A.contiguous()
    B, S, _ = A.shape
    dev, dt = A.device, A.dtype
    if prices is not None:
        p = torch.as_tensor(prices, dtype=dt, device=dev).reshape(-1)
        if p.numel() != B * S or not bool(torch.isfinite(p).all()):
            raise ValueError(f"prices must be finite with shape [B, S] = [{B}, {S}]")
        p = p.reshape(B, S).clone()
    else:
        p = A.mean(dim=1)
    max_rounds = int(max_rounds) if max_rounds is not None else 200 * S + 1000
    amax = A.amax(dim=(1, 2))
    amin = A.amin(dim=(1, 2))
    spread = amax - amin
    active = spread > 0
    if S == 1:  # one position: the identity is the only permutation
        active.zero_()
    const = ~active
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    eps = eps0 * spread
    u = torch.finfo(dt).eps
    scale = torch.maximum(amax.abs(), amin.abs()).double()
    eps_floor = 64 * u * torch.maximum(scale, spread.double()).to(dt)
    big = B * S  # index of a dummy slot at the end of the flat state vectors
    ar = torch.arange(S, device=dev)
    # state: flat vectors of B*S entries plus one dummy slot that absorbs the writes of losers
    aflat = torch.full((big + 1,), -1, dtype=torch.long, device=dev)   # person -> local object
    owner = torch.full((big + 1,), -1, dtype=torch.long, device=dev)   # object -> local person
    assign = aflat[:big].view(B, S)
    assign[const] = ar
    owner[:big].view(B, S)[const] = ar
    pflat = torch.empty(big + 1, dtype=dt, device=dev)
    pflat[:big] = p.reshape(-1)
    p = pflat[:big].view(B, S)
    flat = A.view(B * S, S)
    best = ar.repeat(B, 1)
    best_obj = torch.full((B,), -math.inf, dtype=torch.float64, device=dev)
    best_bound = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    certified = torch.zeros(B, dtype=torch.bool, device=dev)
    phases = torch.zeros(B, dtype=torch.long, device=dev)
    rounds = 0

    def certify(idx):
        """Phase end of problems ``idx`` (complete assignments): certificate, best, next eps."""
        nonlocal best, best_obj, best_bound
        Ai, pi, ai = A.index_select(0, idx), p.index_select(0, idx), assign.index_select(0, idx)
        own = torch.gather(Ai, 2, ai[:, :, None])[:, :, 0]
        rowmax = _row_max_net_t(Ai, pi)
        obj = own.double().sum(dim=1)
        slack = S * u * (scale.index_select(0, idx) + pi.abs().amax(dim=1).double())
        bound = rowmax.double().sum(dim=1) + pi.double().sum(dim=1) + slack
        better = obj > best_obj.index_select(0, idx)
        best.index_copy_(0, idx, torch.where(better[:, None], ai, best.index_select(0, idx)))
        bo = torch.where(better, obj, best_obj.index_select(0, idx))
        bb = torch.minimum(best_bound.index_select(0, idx), bound)
        best_obj.index_copy_(0, idx, bo)
        best_bound.index_copy_(0, idx, bb)
        ok = bb - bo <= rel_tol * bo.abs()
        certified.index_copy_(0, idx, ok)
        ph = phases.index_select(0, idx) + 1
        phases.index_copy_(0, idx, ph)
        ei = eps.index_select(0, idx)
        go_on = ~ok & (ei > eps_floor.index_select(0, idx)) & (ph < max_phases)
        active.index_copy_(0, idx, go_on)
        ei = torch.where(go_on, torch.maximum(ei * theta, eps_floor.index_select(0, idx)), ei)
        eps.index_copy_(0, idx, ei)
        # unassign the persons that violate the new eps-slackness
        loose = go_on[:, None] & (rowmax - (own - torch.gather(pi, 1, ai)) > ei[:, None])
        gl = (idx[:, None] * S + ar).reshape(-1)
        gl = torch.where(loose.reshape(-1), gl, big)
        gobj = torch.where(loose.reshape(-1), gl - torch.remainder(gl, S) + aflat.index_select(0, gl), big)
        owner.index_fill_(0, gobj, -1)
        aflat.index_fill_(0, gl, -1)

    while rounds < max_rounds:
        un = assign < 0
        ready = active & ~un.any(dim=1)
        if bool(ready.any()):
            certify(torch.nonzero(ready).squeeze(1))
            un = assign < 0
        free = un & active[:, None]
        if bidders < S:
            free &= free.cumsum(dim=1) <= bidders
        U = torch.nonzero(free.view(-1)).squeeze(1)
        if U.numel() == 0:
            break
        rounds += 1
        bU = torch.div(U, S, rounding_mode="floor")
        net = flat.index_select(0, U) - p.index_select(0, bU)   # [U, S]
        w1, j1 = net.max(dim=1)
        net.scatter_(1, j1[:, None], -math.inf)
        w2 = net.amax(dim=1)
        gobj = bU * S + j1
        bid = pflat.index_select(0, gobj) + (w1 - w2) + eps.index_select(0, bU)
        top = torch.full((big + 1,), -math.inf, dtype=dt, device=dev)
        top.scatter_reduce_(0, gobj, bid, "amax")
        is_top = bid == top.index_select(0, gobj)
        first = torch.full((big + 1,), big, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, gobj, torch.where(is_top, U, big), "amin")
        win = is_top & (U == first.index_select(0, gobj))
        tgt = torch.where(win, gobj, big)
        prev = owner.index_select(0, tgt)
        aflat.index_fill_(0, torch.where(win & (prev >= 0), bU * S + prev, big), -1)
        owner.index_copy_(0, tgt, torch.remainder(U, S))
        aflat.index_copy_(0, torch.where(win, U, big), j1)
        pflat.index_copy_(0, tgt, bid)
    if rounds >= max_rounds:  # a phase may be unfinished: the last certified state stands
        active.zero_()
    # constant (or S = 1) problems: identity, objective = bound = sum of the diagonal
    if bool(const.any()):
        diag = A.diagonal(dim1=1, dim2=2).double().sum(dim=1)
        best_obj = torch.where(const, diag, best_obj)
        best_bound = torch.where(const, diag, best_bound)
        best = torch.where(const[:, None], ar, best)
        certified |= const
    never = best_obj == -math.inf  # round limit before the first phase ended: identity, no bound
    if bool(never.any()):
        best = torch.where(never[:, None], ar, best)
        best_obj = torch.where(never, A.diagonal(dim1=1, dim2=2).double().sum(dim=1), best_obj)
        best_bound = torch.where(never, math.inf, best_bound)
    p = p.clone()
    res = CertifiedAssignment(best, best_obj, best_bound, certified, p)
    if was_2d:
        res = CertifiedAssignment(*(t[0] for t in res))
    return res


# ---------------------------------------------------------------------------------------------
# public API


_OPTIONS = {
    "exact": {"n_workers"},
    "batched": {"rel_tol", "theta", "eps0", "max_phases", "bidders", "max_rounds", "n_workers"},
    "auction": {"rel_tol", "theta", "eps0", "max_phases", "max_bids", "n_workers"},
    "batch_optimal": {"k", "row_norms", "col_norms", "n_workers"},
    "greedy": {"n_workers"},
}
_OPTIONS["auto"] = _OPTIONS["exact"] | _OPTIONS["batched"] | _OPTIONS["auction"]


def check_options(method, options, where=""):
    """Raise ``TypeError`` naming the valid keys when ``options`` holds a key that ``method``
    (a name of :data:`MATCHINGS`) does not take; ``where`` prefixes the message. Callers that
    hand options on later (the semantic pipeline, ``SemanticCKA``) check them up front."""
    _check_method(method)
    allowed = _OPTIONS[method]
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(
            f"{where}unknown option(s) {sorted(unknown)} for matching method {method!r}; "
            f"valid options: {sorted(allowed) or 'none'}"
        )


def solve_assignment(affinity, method="exact", **options):
    """Permutations maximising ``sum_i affinity[b, i, perm[b, i]]``.

    Args:
        affinity: float ``[B, S, S]`` or ``[S, S]`` (torch tensor or NumPy array). Finite.
        method: one of :data:`SOLVERS`, or ``"auto"`` (:func:`choose_solver` for this ``S``).
        **options: solver options:
            ``exact``: ``n_workers`` (threads for B > 1; default ``os.cpu_count()``);
            ``batched``: ``rel_tol`` (default 1e-3; certified relative gap to the optimum; the
            few problems that end uncertified are solved exactly), ``theta``, ``eps0``,
            ``max_phases``, ``bidders``, ``max_rounds`` (:func:`batched_auction`);
            ``auction``: ``rel_tol`` (default 1e-3; certified relative gap to the optimum),
            ``theta`` (eps reduction per phase, 0.2), ``eps0`` (first eps as a fraction of the
            affinity's range, 0.02), ``max_phases`` (20);
            ``batch_optimal``: ``k`` (block size, default 256), ``row_norms``/``col_norms``
            ``[B, S]`` (norms of the two samples' vectors; default proxies are the affinity's
            row/column maxima), ``n_workers``;
            ``greedy``: none; ``auto``: those of ``exact``, ``batched`` and ``auction`` (each
            solver takes the ones it knows).
            Every method accepts ``n_workers`` (ignored by the vectorised ``auction``,
            ``batched`` and ``greedy``), so callers can pass it uniformly. Unknown options raise
            ``TypeError``.

    Returns:
        ``np.ndarray[int64]`` ``[B, S]`` (``[S]`` for 2-D input): ``perm[b, i]`` is the column
        assigned to row ``i``.

    Raises:
        ValueError: unknown ``method`` (the message lists :data:`MATCHINGS`), input that is not
        ``[S, S]``/``[B, S, S]``, not square, empty, or holds NaN/Inf; bad option values.
    """
    check_options(method, options)
    a, was_2d = _as_affinity_batch(affinity)
    if method == "auto":
        method = choose_solver(a.shape[-1])
        options = {k: v for k, v in options.items() if k in _OPTIONS[method]}
    if method == "exact":
        perm = _solve_exact(a, **options)
    elif method == "batched":
        workers = options.pop("n_workers", None)
        res = batched_auction(torch.from_numpy(a), **options)
        perm = res.perm.cpu().numpy().astype(np.int64, copy=True)
        bad = ~res.certified.cpu().numpy()
        if bad.any():  # the guarantee holds for every problem: the rest are solved exactly
            perm[bad] = _solve_exact(a[bad], n_workers=workers)
    elif method == "auction":
        rel_tol = options.get("rel_tol", 1e-3)
        perm, obj, bound = _solve_auction(a, return_bound=True, **options)
        bad = ~(bound - obj <= rel_tol * np.abs(obj))
        if bad.any():  # as for "batched": the uncertified few are solved exactly
            perm[bad] = _solve_exact(a[bad], n_workers=options.get("n_workers"))
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
# inner-product affinities of a random-init ResNet-18 on photographs, one thread, on a 2-core
# AMD EPYC at load average ~0.8; benchmarks/calibrate_matching.py, figures in
# benchmarks/RESULTS.md): 0.07 s at S = 576, 5.4 s at S = 2304, 9.9 s at S = 3136. Random
# Gaussian matrices are several times faster; structured ReLU affinities (every row prefers the
# same high-norm columns) are the slow case.
_EXACT_C3 = 3.18e-10
_EXACT_C2 = 4.06e-8


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


# Calibration of the certified auctions (seconds per problem on the same affinities of two
# different photographs, S = 36 ... 3136, one thread; the compiled auction one problem at a time
# on float32 affinities, the torch batched auction on a block of the problems): t(S) ~= c * S^e,
# fitted on S >= 100 (where auto may pick them) and printed by benchmarks/calibrate_matching.py
# in the same run as the exact fit above.
_AUCTION_C = 1.76e-8
_AUCTION_E = 2.083
_BATCHED_C = 2.85e-5
_BATCHED_E = 1.491
# Which solvers "auto" considers: on the CPU exact or the compiled auction (the batched torch
# auction measured 10-30x slower than the compiled one there: its Jacobi rounds cost a fixed
# ~0.3 ms each, and a problem needs thousands). On other devices the batched auction, whose
# rounds run on the device: no GPU was available to calibrate it, so there "auto" takes it from
# S >= _AUTO_DEVICE_MIN_S on (an assumption, not a measurement).
_AUTO_CPU = ("exact", "auction")
# below this S the two are within the per-call overheads of each other (S = 36: 0.1 ms each), and
# the semantic pipeline hands exact several pairs per task: exact, so auto is never slower there
_AUTO_CPU_MIN_S = 100
_AUTO_DEVICE_MIN_S = 576


def _per_problem_seconds(method, S):
    S = float(S)
    if method == "exact":
        return _EXACT_C3 * S ** 3 + _EXACT_C2 * S ** 2
    if method == "auction":
        return _AUCTION_C * S ** _AUCTION_E
    if method == "batched":
        return _BATCHED_C * S ** _BATCHED_E
    raise ValueError(f"estimate_seconds models 'exact', 'auction', 'batched' and 'auto', not "
                     f"{method!r}")


def estimate_seconds(method, S, B=1, n_workers=None, device="cpu"):
    """Estimated wall time in seconds of solving ``B`` ``S x S`` problems with ``method``.

    ``"exact"``: :func:`estimate_exact_seconds`; ``"auction"``, ``"batched"``: the calibrated
    power laws ``c * S^e`` per problem (constants ``_AUCTION_*``, ``_BATCHED_*`` from
    ``benchmarks/calibrate_matching.py``), times ``B / min(B, n_workers)``; ``"auto"``: that of
    :func:`choose_solver` ``(S, device)``. Other methods are not modelled (``ValueError``).
    """
    if method == "auto":
        method = choose_solver(S, device)
    if method == "exact":
        return estimate_exact_seconds(S, B, n_workers=n_workers)
    if not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"S (positions per sample) must be a positive integer, got {S!r}")
    if not isinstance(B, (int, np.integer)) or B < 0:
        raise ValueError(f"B (number of pairs) must be a non-negative integer, got {B!r}")
    per = _per_problem_seconds(method, S)
    workers = min(_n_workers(n_workers), max(int(B), 1))
    return float(per * B / workers)


def choose_solver(S, device="cpu"):
    """The solver ``matching="auto"`` uses for ``S x S`` problems on ``device``.

    On the CPU the candidate with the smallest calibrated time per problem
    (:func:`estimate_seconds`): ``"exact"`` or ``"auction"``; on other devices ``"batched"`` for
    ``S >= 576`` (uncalibrated: no GPU was available), else ``"exact"``. All of them are
    certified (exact: the optimum; the auctions: within ``rel_tol`` of it, the
    uncertified remainder re-solved exactly). ``S < 100`` is always exact on the CPU (there the
    two cost about the same per problem and exact has less overhead per call).
    """
    if not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"S (positions per sample) must be a positive integer, got {S!r}")
    if S <= 2:
        return "exact"
    kind = device.type if torch is not None and isinstance(device, torch.device) \
        else str(device).split(":")[0]
    if kind != "cpu":
        return "batched" if S >= _AUTO_DEVICE_MIN_S else "exact"
    if S < _AUTO_CPU_MIN_S:
        return "exact"
    return min(_AUTO_CPU, key=lambda m: _per_problem_seconds(m, S))


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


#: the public names of helpers other modules use
format_seconds = _fmt_seconds

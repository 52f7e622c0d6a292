r"""Topological measures: compare the shape of the point clouds ``X [n, p1]`` and ``Y [n, p2]``.

* **Multi-scale intrinsic distance (IMD)** (Tsitsulin et al. 2020, ICLR, "The shape of data:
  intrinsic distance for data distributions"; ReSi). Each cloud becomes its symmetric, unweighted
  ``k``-nearest-neighbour graph (Euclidean, ``k = 5``; ``i ~ j`` if either is among the other's
  ``k`` nearest), with normalised Laplacian ``L = I - D^-1/2 A D^-1/2`` and eigenvalues
  ``lambda_1..lambda_n``. Its heat-kernel trace ``h(t) = (1/n) sum_i exp(-t lambda_i)`` (the
  "empty graph" normalisation, scaled by ``10^6`` as the reference code ``msid``) is compared over
  ``256`` log-spaced ``t`` in ``[0.1, 10]``:
  ``IMD = max_t exp(-2 (t + 1/t)) |h_X(t) - h_Y(t)|``.
  ``method="exact"`` (default) takes the whole spectrum (``torch.linalg.eigvalsh``, ``O(n^3)``;
  deterministic); ``method="slq"`` estimates the trace by stochastic Lanczos quadrature as the
  reference code does (``steps`` Lanczos steps, ``probes`` Rademacher vectors, seeded by
  ``seed``; ``O(n^2 steps probes)``), for large ``n``. The samples need not correspond: IMD
  compares the two shapes only.
* **Representation topology divergence (RTD)** (Barannikov et al. 2022, ICML, "Representation
  topology divergence: a method for comparing neural network representations"; ReSi). With the
  Euclidean distance matrices ``R_X``, ``R_Y`` of ``b`` corresponding samples, each divided by its
  0.9-quantile, the ``2b x 2b`` matrix ``[[0, R_X^T], [R_X, min(R_X, R_Y)]]`` is filtered as a
  Vietoris-Rips complex; RTD(X, Y) is the total length of the bars of its homology in dimension 1
  (the R-Cross-Barcode), symmetrised as ``(RTD(X, Y) + RTD(Y, X)) / 2`` and averaged over
  ``trials`` random subsets of ``b = min(batch, n)`` samples (one evaluation when ``batch >= n``).
  Persistent homology is computed by **ripser** (Bauer 2021, the maintained ``ripser`` package on
  PyPI, CPU). The authors' code runs ripser++ on a GPU; this implementation runs on the CPU only,
  so ``batch = 500`` (``1000`` points in the filtration) takes seconds to minutes per pair.

A constant input (all samples identical) has no shape: both raise a ``ValueError`` for it.
Both are distances (0 for identical inputs), symmetric, and invariant to translation, orthogonal
maps, isotropic scaling and permutations of the features (they depend on distance ratios only).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._common import (check_int, check_not_constant, choice, matrix, matrix_pair, similarity_matrix,
                      topk_neighbors)

__all__ = [
    "IMD_METHODS", "heat_trace", "imd", "imd_prepare", "imd_score",
    "rtd", "cross_barcode_h1",
]

IMD_METHODS = ("exact", "slq")
_IMD_TIMES = np.logspace(-1, 1, 256)
_IMD_SCALE = 1e6


def _knn_laplacian(A: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised Laplacian ``[n, n]`` of the symmetric unweighted kNN graph of ``A [n, d]``."""
    n = A.shape[0]
    idx = topk_neighbors(similarity_matrix(A, "euclidean"), k)
    W = torch.zeros((n, n), dtype=torch.float64, device=A.device).scatter_(1, idx, 1.0)
    W = torch.maximum(W, W.T)
    dinv = W.sum(dim=1).rsqrt()
    return torch.eye(n, dtype=torch.float64, device=A.device) - dinv[:, None] * W * dinv[None, :]


def _slq_trace(L: torch.Tensor, ts: torch.Tensor, steps: int, probes: int, seed: int) -> torch.Tensor:
    """Stochastic Lanczos quadrature estimate of ``tr exp(-t L)`` for every ``t`` in ``ts``."""
    n = L.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    V = (torch.randint(0, 2, (n, probes), generator=gen) * 2 - 1).to(L)
    Q = [V / math.sqrt(n)]
    alphas, betas = [], []
    m = min(steps, n)
    for j in range(m):
        w = L @ Q[j]
        a = (Q[j] * w).sum(dim=0)
        w = w - a * Q[j] - (betas[-1] * Q[j - 1] if j else 0.0)
        for q in Q:  # full reorthogonalisation (m is small)
            w = w - (q * w).sum(dim=0) * q
        alphas.append(a)
        if j == m - 1:
            break
        b = torch.linalg.vector_norm(w, dim=0).clamp(min=1e-300)
        betas.append(b)
        Q.append(w / b)
    T = torch.diag_embed(torch.stack(alphas, dim=1))  # [probes, m, m]
    if betas:
        off = torch.stack(betas, dim=1)
        T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, S = torch.linalg.eigh(T)
    tau = S[:, 0, :].square()  # [probes, m]
    est = (tau[:, None, :] * torch.exp(-ts[None, :, None] * theta[:, None, :])).sum(dim=2)
    return n * est.mean(dim=0)


def heat_trace(X, k: int = 5, method: str = "exact", steps: int = 10, probes: int = 100,
               seed: int = 0, **_options) -> torch.Tensor:
    """IMD descriptor of ``X [n, ...]``: ``10^6 / n * tr exp(-t L)`` at the 256 IMD times ``[256]``."""
    method = choice(method, IMD_METHODS, "method", "imd")
    A = matrix(X, "X", min_n=3)
    n = A.shape[0]
    k = check_int(k, "k", "imd")
    if k > n - 1:
        raise ValueError(f"imd: k={k} neighbours need at least k + 1 = {k + 1} samples, got n={n}; "
                         f"pass k <= {n - 1} or more samples.")
    check_not_constant(A, "X", "imd")
    L = _knn_laplacian(A, k)
    ts = torch.as_tensor(_IMD_TIMES, dtype=torch.float64, device=A.device)
    if method == "exact":
        lam = torch.linalg.eigvalsh(L)
        tr = torch.exp(-ts[:, None] * lam[None, :]).sum(dim=1)
    else:
        tr = _slq_trace(L, ts, check_int(steps, "steps", "imd"), check_int(probes, "probes", "imd"),
                        check_int(seed, "seed", "imd", low=0))
    return tr * (_IMD_SCALE / n)


def imd_prepare(X, k: int = 5, method: str = "exact", steps: int = 10, probes: int = 100,
                seed: int = 0, **_options) -> torch.Tensor:
    """The heat-trace descriptor ``[256]`` of ``X [n, ...]`` (see :func:`heat_trace`)."""
    return heat_trace(X, k=k, method=method, steps=steps, probes=probes, seed=seed)


def imd_score(hx: torch.Tensor, hy: torch.Tensor, **_options) -> float:
    """``max_t exp(-2 (t + 1/t)) |hx(t) - hy(t)|`` of two prepared descriptors."""
    ts = torch.as_tensor(_IMD_TIMES, dtype=torch.float64, device=hx.device)
    c = torch.exp(-2.0 * (ts + 1.0 / ts))
    return float((c * (hx - hy.to(hx.device)).abs()).max())


def imd(X, Y, k: int = 5, method: str = "exact", steps: int = 10, probes: int = 100,
        seed: int = 0) -> float:
    """Multi-scale intrinsic distance (Tsitsulin et al. 2020) of ``X [n, ...]`` and ``Y [m, ...]``."""
    opts = dict(k=k, method=method, steps=steps, probes=probes, seed=seed)
    return imd_score(imd_prepare(X, **opts), imd_prepare(Y, **opts))


# --------------------------------------------------------------------------- RTD
def _normalised_distances(A: torch.Tensor) -> np.ndarray:
    D = (-similarity_matrix(A, "euclidean")).sqrt().cpu().numpy()
    q = np.quantile(D, 0.9)
    return D / q if q > 0 else D


def cross_barcode_h1(RX: np.ndarray, RY: np.ndarray) -> np.ndarray:
    """Bars ``[m, 2]`` (birth, death) of the dimension-1 R-Cross-Barcode of two ``[b, b]``
    distance matrices: the Vietoris-Rips homology of ``[[0, RX^T], [RX, min(RX, RY)]]`` (ripser)."""
    from ripser import ripser

    b = RX.shape[0]
    M = np.zeros((2 * b, 2 * b))
    M[b:, :b] = RX
    M[:b, b:] = RX.T
    M[b:, b:] = np.minimum(RX, RY)
    M[M < RX.mean() * 1e-6] = 0.0  # as the authors' code: rounding-level distances are ties at 0
    bars = ripser(M, maxdim=1, distance_matrix=True)["dgms"][1]
    return bars[np.isfinite(bars[:, 1])] if len(bars) else np.zeros((0, 2))


def _rtd_once(A: torch.Tensor, B: torch.Tensor) -> float:
    RX, RY = _normalised_distances(A), _normalised_distances(B)
    total = 0.0
    for P, Q in ((RX, RY), (RY, RX)):
        bars = cross_barcode_h1(P, Q)
        total += float((bars[:, 1] - bars[:, 0]).sum())
    return total / 2.0


def rtd(X, Y, trials: int = 10, batch: int = 500, seed: int = 0) -> float:
    """Representation topology divergence (Barannikov et al. 2022) of ``X [n, ...]``, ``Y [n, ...]``.

    ``trials`` random subsets of ``batch`` corresponding samples (drawn with ``seed``), averaged;
    one evaluation on all samples when ``batch >= n``. ``>= 0``; 0 for identical inputs.
    """
    trials = check_int(trials, "trials", "rtd")
    batch = check_int(batch, "batch", "rtd", low=3)
    seed = check_int(seed, "seed", "rtd", low=0)
    A, B = (M.double() for M in matrix_pair(X, Y, min_n=3))
    check_not_constant(A, "X", "rtd")
    check_not_constant(B, "Y", "rtd")
    n = A.shape[0]
    if batch >= n:
        return _rtd_once(A, B)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(trials):
        idx = torch.as_tensor(rng.choice(n, size=batch, replace=False), device=A.device)
        vals.append(_rtd_once(A[idx], B[idx]))
    return float(np.mean(vals))

r"""Measures on the samples' geometry: distance matrices and column spaces of ``X [n, p1]``,
``Y [n, p2]``.

``D_X[i, j] = ||x_i - x_j||`` is the Euclidean distance matrix (computed by
:func:`simtorch_semantic.functional.rsa.rdm` with ``metric="L2"``), ``H = I - 11^T / n``.

* **RSM norm difference** (ReSi; Shahbazi et al. 2021): ``||triu(D_X) - triu(D_Y)||_2``, the
  Euclidean norm of the difference of the strict upper triangles (``= ||D_X - D_Y||_F / sqrt 2``).
  A distance >= 0, not scale-invariant.
* **Distance correlation** (Székely, Rizzo & Bakirov 2007, Ann. Stat.): with the double-centred
  distance matrices ``A = H D_X H``, ``B = H D_Y H``, ``dCov^2 = mean(A * B)`` and
  ``dCor = sqrt(dCov^2(X, Y) / sqrt(dCov^2(X, X) dCov^2(Y, Y)))``, in [0, 1] (the V-statistic,
  as ReSi). A constant input has ``dCov^2 = 0``: the measure is NaN with one warning.
* **Eigenspace overlap score** (May et al. 2019, NeurIPS, "On the downstream performance of
  compressed word embeddings"): ``||U_X^T U_Y||_F^2 / max(r_X, r_Y)`` with ``U`` the orthonormal
  basis of the (uncentred) column space and ``r`` its numerical rank, in [0, 1]. ReSi divides by
  the widths ``max(p1, p2)`` instead; the two agree when both inputs have full column rank, and
  ours gives 1 for identical inputs also when ``p > n``.
* **GULP** (Boix-Adserà et al. 2022, NeurIPS, "GULP: a prediction-based metric between
  representations"): each input is centred and scaled to total variance 1 (``||Xc||_F^2 = n`` as
  in the paper's code), ``H_X = U diag(sigma / (sigma + lambda)) U^T`` with ``Xc = U S V^T``,
  ``sigma = s^2 / n``; GULP is ``||H_X - H_Y||_F`` (the distance between the ridge-regression
  predictors of every linear target). ``lambda = 0`` (ReSi's default) gives
  ``||P_X - P_Y||_F`` with ``P`` the projections onto the centred column spaces (a CCA-type
  quantity, invariant to invertible linear maps). ReSi reports the square of this value.

``*_prepare(X, **options)`` does the work on one input (an ``O(n^2 d)`` distance matrix or an
``O(n d min(n, d))`` basis); ``*_score_all_pairs`` scores many prepared inputs at once where it is
one matrix product.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._common import check_real, input_eps, matrix, matrix_pair, spectral_basis
from .rsa import rdm

__all__ = [
    "rsm_norm_difference", "rsm_norm_prepare", "rsm_norm_score", "rsm_norm_score_all_pairs",
    "distance_correlation", "distance_correlation_prepare", "distance_correlation_score",
    "distance_correlation_score_all_pairs",
    "eigenspace_overlap", "eigenspace_overlap_prepare", "eigenspace_overlap_score",
    "gulp", "gulp_prepare", "gulp_score",
]


def _same_n(a: int, b: int) -> None:
    if a != b:
        raise ValueError(f"X has {a} samples (rows) but Y has {b}; both must hold the same samples "
                         "in the same order.")


def _distances(X, name: str = "X") -> torch.Tensor:
    A = matrix(X, name, min_n=3)
    return rdm(A, "L2")


# --------------------------------------------------------------------------- RSM norm difference
def rsm_norm_prepare(X, **_options) -> torch.Tensor:
    """Strict upper triangle ``[n (n - 1) / 2]`` of the Euclidean distance matrix of ``X [n, ...]``."""
    D = _distances(X)
    i, j = torch.triu_indices(D.shape[0], D.shape[0], 1, device=D.device)
    return D[i, j]


def rsm_norm_score(px: torch.Tensor, py: torch.Tensor, **_options) -> float:
    """``||px - py||_2`` of two prepared triangles."""
    _same_n(px.numel(), py.numel())
    return float(torch.linalg.vector_norm(px - py))


def rsm_norm_score_all_pairs(pxs: Sequence[torch.Tensor], pys: Sequence[torch.Tensor],
                             **_options) -> np.ndarray:
    """``[a, b]`` RSM norm differences of every pair (one matrix product, float64).

    Pairs whose distance is below ``1e-4`` of the norms are recomputed directly, so nearly equal
    matrices keep full precision.
    """
    P, Q = torch.stack(list(pxs)), torch.stack(list(pys))
    _same_n(P.shape[1], Q.shape[1])
    gp, gq = P.square().sum(dim=1), Q.square().sum(dim=1)
    d2 = (gp[:, None] + gq[None, :] - 2.0 * (P @ Q.T)).clamp(min=0.0)
    close = d2 < 1e-8 * (gp[:, None] + gq[None, :])
    for a, b in close.nonzero().tolist():  # only near-identical pairs
        d2[a, b] = (P[a] - Q[b]).square().sum()
    return d2.sqrt().cpu().numpy()


def rsm_norm_difference(X, Y) -> float:
    """RSM norm difference of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0, see module)."""
    A, B = matrix_pair(X, Y, min_n=3)
    return rsm_norm_score(rsm_norm_prepare(A), rsm_norm_prepare(B))


# --------------------------------------------------------------------------- distance correlation
@dataclass
class DCorPrepared:
    """Double-centred distance matrix ``A [n, n]`` and ``dCov^2(X, X) = mean(A * A)``."""

    A: torch.Tensor
    self_term: torch.Tensor


def distance_correlation_prepare(X, **_options) -> DCorPrepared:
    """Double-centred Euclidean distance matrix of ``X [n, ...]``."""
    D = _distances(X)
    A = D - D.mean(dim=0, keepdim=True) - D.mean(dim=1, keepdim=True) + D.mean()
    return DCorPrepared(A, A.square().mean())


def _dcor(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    den = torch.sqrt(xx * yy)
    ok = den > 0
    out = torch.sqrt((xy / torch.where(ok, den, torch.ones_like(den))).clamp(0.0, 1.0))
    return torch.where(ok, out, torch.full_like(out, math.nan))


def _warn_constant(n_bad: int) -> None:
    warnings.warn(f"distance_correlation: {n_bad} input(s) are constant (all samples identical), "
                  "whose distance variance is 0; the distance correlation is undefined and "
                  "returned as NaN.", RuntimeWarning, stacklevel=3)


def distance_correlation_score(px: DCorPrepared, py: DCorPrepared, **_options) -> float:
    """Distance correlation of two prepared inputs, in [0, 1] (NaN for a constant input)."""
    _same_n(px.A.shape[0], py.A.shape[0])
    if not (bool(px.self_term > 0) and bool(py.self_term > 0)):
        _warn_constant(int(not bool(px.self_term > 0)) + int(not bool(py.self_term > 0)))
        return math.nan
    return float(_dcor((px.A * py.A).mean(), px.self_term, py.self_term))


def distance_correlation_score_all_pairs(pxs: Sequence[DCorPrepared], pys: Sequence[DCorPrepared],
                                         **_options) -> np.ndarray:
    """``[a, b]`` distance correlations of every pair: one ``[a, n^2] x [n^2, b]`` product."""
    P = torch.stack([p.A.reshape(-1) for p in pxs])
    Q = torch.stack([q.A.reshape(-1) for q in pys])
    _same_n(P.shape[1], Q.shape[1])
    xy = (P @ Q.T) / P.shape[1]
    xx = torch.stack([p.self_term for p in pxs])
    yy = torch.stack([q.self_term for q in pys])
    bad = int((~(xx > 0)).sum()) + int((~(yy > 0)).sum())
    if bad:
        _warn_constant(bad)
    return _dcor(xy, xx[:, None], yy[None, :]).cpu().numpy()


def distance_correlation(X, Y) -> float:
    """Distance correlation (Székely et al. 2007) of ``X [n, ...]`` and ``Y [n, ...]`` in [0, 1]."""
    A, B = matrix_pair(X, Y, min_n=3)
    return distance_correlation_score(distance_correlation_prepare(A),
                                      distance_correlation_prepare(B))


# --------------------------------------------------------------------------- eigenspace overlap
def eigenspace_overlap_prepare(X, **_options) -> torch.Tensor:
    """Orthonormal basis ``U [n, r]`` of the column space of ``X [n, ...]`` (numerical rank r)."""
    A = matrix(X, "X")
    U, s = spectral_basis(A, input_eps(X))
    if s.numel() == 0:
        raise ValueError("eigenspace_overlap: X is all zeros, so it has no column space; pass a "
                         "non-zero representation.")
    return U


def eigenspace_overlap_score(px: torch.Tensor, py: torch.Tensor, **_options) -> float:
    """``||U_X^T U_Y||_F^2 / max(r_X, r_Y)`` of two prepared bases, in [0, 1]."""
    _same_n(px.shape[0], py.shape[0])
    return float(((px.T @ py).square().sum() / max(px.shape[1], py.shape[1])).clamp(0.0, 1.0))


def eigenspace_overlap(X, Y) -> float:
    """Eigenspace overlap score (May et al. 2019) of ``X [n, ...]`` and ``Y [n, ...]`` in [0, 1]."""
    A, B = matrix_pair(X, Y)
    return eigenspace_overlap_score(eigenspace_overlap_prepare(A), eigenspace_overlap_prepare(B))


# --------------------------------------------------------------------------- GULP
@dataclass
class GULPPrepared:
    """Basis ``U [n, r]`` of the centred input and the predictor weights ``w = sigma/(sigma+lambda)``."""

    U: torch.Tensor
    w: torch.Tensor


def gulp_prepare(X, lmbda: float = 0.0, **_options) -> GULPPrepared:
    """Centre ``X [n, ...]``, scale to total variance 1 and return its predictor's eigenpairs."""
    lmbda = check_real(lmbda, "lmbda", "gulp", 0.0)
    A = matrix(X, "X", min_n=3)
    Ac = A - A.mean(dim=0, keepdim=True)
    U, s = spectral_basis(Ac, input_eps(X))
    if s.numel() == 0:
        raise ValueError("gulp: X has all samples identical (zero variance after centring); GULP "
                         "is undefined. Pass activations that differ between samples.")
    sigma = s.square() / s.square().sum()  # eigenvalues of the covariance at total variance 1
    w = torch.ones_like(sigma) if lmbda == 0 else sigma / (sigma + lmbda)
    return GULPPrepared(U, w)


def gulp_score(px: GULPPrepared, py: GULPPrepared, **_options) -> float:
    """``||H_X - H_Y||_F`` of two prepared inputs (see module), >= 0."""
    _same_n(px.U.shape[0], py.U.shape[0])
    n = px.U.shape[0]
    if px.U is py.U:
        return 0.0
    if max(px.U.shape[1], py.U.shape[1]) >= n - 1 and bool((px.w == 1).all()):
        warnings.warn(f"gulp(lmbda=0): an input has rank n - 1 = {n - 1} after centring, so its "
                      "predictor fits every target and GULP cannot tell such inputs apart; use "
                      "lmbda > 0, more samples than features, or fewer dimensions.",
                      RuntimeWarning, stacklevel=3)
    M = px.U.T @ py.U
    cross = (px.w[:, None] * M.square() * py.w[None, :]).sum()
    tx, ty = px.w.square().sum(), py.w.square().sum()
    d2 = tx + ty - 2.0 * cross
    if bool(d2 < 1e-6 * (tx + ty)):
        # nearly equal predictors: evaluate ||H_X - H_Y|| inside span[U_X, U_Y] (no cancellation)
        Qb, _ = torch.linalg.qr(torch.cat([px.U, py.U], dim=1))
        Bx, By = Qb.T @ px.U, Qb.T @ py.U
        d2 = torch.linalg.matrix_norm((Bx * px.w) @ Bx.T - (By * py.w) @ By.T).square()
    return float(d2.clamp(min=0.0).sqrt())


def gulp(X, Y, lmbda: float = 0.0) -> float:
    """GULP distance (Boix-Adserà et al. 2022) of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0).

    ``lmbda >= 0``: ridge penalty of the predictors; 0 (default, as ReSi) is plain least squares.
    """
    lmbda = check_real(lmbda, "lmbda", "gulp", 0.0)
    A, B = matrix_pair(X, Y, min_n=3)
    return gulp_score(gulp_prepare(A, lmbda=lmbda), gulp_prepare(B, lmbda=lmbda))

r"""Alignment-based measures: fit a map between the features of ``X [n, p1]`` and ``Y [n, p2]``,
then score how well it aligns them.

Notation: ``Xc`` is ``X`` with column (feature) means removed; ``||.||_F`` Frobenius, ``||.||_*``
nuclear norm (sum of singular values). Where widths differ, the narrower matrix is zero-padded
(as ReSi does), which changes none of the quantities below.

* **Aligned cosine similarity** (Hamilton et al. 2016, ACL, "Diachronic word embeddings reveal
  statistical laws of semantic change"; ReSi): with the orthogonal Procrustes map
  ``Q = argmax_{Q^T Q = I} tr(Q^T X^T Y)`` of the *uncentred* data,
  ``mean_i cos((X Q)_i, y_i)``. In [-1, 1]; 1 for identical inputs. Rows that are all zero in
  either input have no cosine: they are left out of the mean with one ``RuntimeWarning``.
* **Hard / soft correlation matching** (Li et al. 2016, ICLR, "Convergent learning"; ReSi):
  ``C[i, j]`` = Pearson correlation of neuron ``i`` of ``X`` with neuron ``j`` of ``Y`` over the
  samples. Hard: the mean of ``C`` over the one-to-one matching of ``min(p1, p2)`` neurons that
  maximises its sum (``scipy.optimize.linear_sum_assignment``). Soft: each neuron takes its best
  partner, ``(mean_i max_j C + mean_j max_i C) / 2``. Constant neurons have no correlation: they
  count as correlation 0, with one ``RuntimeWarning``; when every neuron of an input is constant
  the measure is NaN (one warning).
* **Linear regression** (predictability; Kornblith et al. 2019, ICML; ReSi): the ``R^2`` of the
  least-squares fit of ``Xc`` from ``Yc``, ``||P_Y Xc||_F^2 / ||Xc||_F^2`` with ``P_Y`` the
  orthogonal projection onto the column space of ``Yc``. ReSi reports this one direction
  (``direction="x_from_y"``); the default ``direction="mean"`` averages both directions, which
  makes the measure symmetric. In [0, 1].
* **Permutation Procrustes** (ReSi; Williams et al. 2021): ``min_P ||X P - Y||_F`` over
  permutations ``P`` of the (zero-padded) features, uncentred, unscaled. A distance >= 0.
* **Procrustes size-and-shape distance** (Dryden & Mardia 2016; Williams et al. 2021; ReSi):
  ``min_Q ||Xc Q - Yc||_F = sqrt(||Xc||_F^2 + ||Yc||_F^2 - 2 ||Xc^T Yc||_*)`` over orthogonal
  ``Q``. A metric; not scale-invariant (compare :func:`procrustes_angular` of ``procrustes.py``,
  which normalises).
* **Generalised shape metric** (Williams et al. 2021, NeurIPS, "Generalized shape metrics on
  neural representations", section 3): partial whitening
  ``phi_alpha(X) = Xc (alpha I + (1 - alpha) C_X)^(-1/2)``, ``C_X = Xc^T Xc / n``, then the angular
  Procrustes distance ``arccos(||phi(X)^T phi(Y)||_* / (||phi(X)||_F ||phi(Y)||_F))``, in
  ``[0, pi/2]``. ``alpha = 1`` is the angular Procrustes distance; ``alpha = 0`` whitens fully and
  gives ``arccos(sum_i rho_i / sqrt(rank X * rank Y))`` with ``rho_i`` the canonical correlations
  (CCA). For ``0 < alpha < 1`` the metric depends on the overall scale of the data (the paper's
  definition: ``alpha I`` is not rescaled).
* **Soft-matching distance** (Khosla & Williams 2023, "Soft matching distance: a metric on neural
  representations that captures single-neuron tuning"): the neurons of ``X`` and ``Y`` are
  points in ``R^n`` (columns, centred by default) with uniform masses ``1/p1`` and ``1/p2``;
  the distance is ``sqrt(min_T sum_ij T_ij ||x_i - y_j||^2)`` over transport plans ``T`` with those
  marginals (exact optimal transport, POT's ``ot.emd``). For ``p1 == p2`` it is the permutation
  distance of the neurons scaled by ``1/sqrt(p)``.

Every measure has a ``*_prepare(X, **options)`` (work on one representation: centring, bases,
factors) and a ``*_score(px, py, **options)``; the plain function is ``score(prepare(X),
prepare(Y))``. Orthogonal fits use the ``[n, min(n, p)]`` factor ``F`` with ``F F^T = X X^T`` (thin
QR of ``X^T`` when ``p > n``), so their SVDs are at most ``n x n``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ._common import (check_real, choice, input_eps, matrix, matrix_pair, reduced_factor,
                      spectral_basis)

__all__ = [
    "aligned_cosine", "aligned_cosine_prepare", "aligned_cosine_score",
    "correlation_match", "hard_correlation_match", "soft_correlation_match",
    "correlation_match_prepare", "correlation_match_score", "CORRELATION_MATCH_MODES",
    "hard_correlation_match_score", "soft_correlation_match_score",
    "linear_regression", "linear_regression_prepare", "linear_regression_score",
    "REGRESSION_DIRECTIONS",
    "permutation_procrustes", "permutation_procrustes_prepare", "permutation_procrustes_score",
    "procrustes_size_shape", "procrustes_size_shape_prepare", "procrustes_size_shape_score",
    "shape_metric", "shape_metric_prepare", "shape_metric_score",
    "soft_matching_distance", "soft_matching_prepare", "soft_matching_score",
]

CORRELATION_MATCH_MODES = ("hard", "soft")
REGRESSION_DIRECTIONS = ("mean", "x_from_y", "y_from_x")

# below this relative residual the Procrustes residual is recomputed at the optimal rotation
_PRECISE_BELOW = 1e-4


def _pad(A: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(A, (0, width - A.shape[1])) if A.shape[1] < width else A


def _orthogonal_fit(Fx: torch.Tensor, Fy: torch.Tensor) -> torch.Tensor:
    """The orthogonal ``Q [m, m]`` maximising ``tr(Q^T Fx^T Fy)`` on zero-padded factors."""
    m = max(Fx.shape[1], Fy.shape[1])
    U, _, Vh = torch.linalg.svd(_pad(Fx, m).T @ _pad(Fy, m))
    return U @ Vh


# --------------------------------------------------------------------------- aligned cosine
@dataclass
class AlignedCosinePrepared:
    """``F [n, min(n, p)]`` factor of the uncentred ``X`` and the row norms ``[n]``."""

    F: torch.Tensor
    norms: torch.Tensor


def aligned_cosine_prepare(X, **_options) -> AlignedCosinePrepared:
    """Validate ``X [n, ...]`` and return its factor and row norms for :func:`aligned_cosine_score`."""
    A = matrix(X, "X")
    if not bool((A != 0).any()):
        raise ValueError("aligned_cosine: X is all zeros, so no cosine similarity is defined; pass "
                         "a representation with non-zero samples.")
    return AlignedCosinePrepared(reduced_factor(A), torch.linalg.vector_norm(A, dim=1))


def aligned_cosine_score(px: AlignedCosinePrepared, py: AlignedCosinePrepared, **_options) -> float:
    """Mean row cosine of ``X Q`` and ``Y`` after the orthogonal Procrustes fit (see module)."""
    _same_n(px.F, py.F)
    m = max(px.F.shape[1], py.F.shape[1])
    Q = _orthogonal_fit(px.F, py.F)
    dots = ((_pad(px.F, m) @ Q) * _pad(py.F, m)).sum(dim=1)
    ok = (px.norms > 0) & (py.norms > 0)
    bad = int((~ok).sum())
    if bad == ok.numel():
        raise ValueError("aligned_cosine: every sample is all zeros in X or in Y; the measure is "
                         "undefined.")
    if bad:
        warnings.warn(f"aligned_cosine: {bad} sample(s) are all zeros in X or Y and have no cosine "
                      "similarity; they are left out of the mean.", RuntimeWarning, stacklevel=3)
    cos = dots[ok] / (px.norms[ok] * py.norms[ok])
    return float(cos.clamp(-1.0, 1.0).mean())


def aligned_cosine(X, Y) -> float:
    """Aligned cosine similarity of ``X [n, ...]`` and ``Y [n, ...]`` in [-1, 1] (see module)."""
    A, B = matrix_pair(X, Y)
    return aligned_cosine_score(aligned_cosine_prepare(A), aligned_cosine_prepare(B))


def _same_n(A: torch.Tensor, B: torch.Tensor) -> None:
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"X has {A.shape[0]} samples (rows) but Y has {B.shape[0]}; both must "
                         "hold the same samples in the same order.")


# --------------------------------------------------------------------------- correlation matching
@dataclass
class CorrelationPrepared:
    """Centred, unit-norm neurons ``Z [n, p]`` (constant neurons are zero) and their count."""

    Z: torch.Tensor
    constant: int


def correlation_match_prepare(X, **_options) -> CorrelationPrepared:
    """Centre each neuron of ``X [n, ...]`` and scale it to unit norm (``Z^T Z'`` = Pearson r)."""
    A = matrix(X, "X", min_n=3)
    Z = A - A.mean(dim=0, keepdim=True)
    norms = torch.linalg.vector_norm(Z, dim=0)
    # a neuron whose spread is at rounding level is constant
    const = norms <= torch.linalg.vector_norm(A, dim=0) * 1e-12
    Z = Z / torch.where(const, torch.ones_like(norms), norms)
    Z[:, const] = 0.0
    return CorrelationPrepared(Z, int(const.sum()))


def correlation_match_score(px: CorrelationPrepared, py: CorrelationPrepared, mode: str = "hard",
                            **_options) -> float:
    """Hard or soft correlation matching of two prepared representations (see module)."""
    mode = choice(mode, CORRELATION_MATCH_MODES, "mode", "correlation_match")
    _same_n(px.Z, py.Z)
    const = px.constant + py.constant
    if px.constant == px.Z.shape[1] or py.constant == py.Z.shape[1]:
        warnings.warn("correlation_match: every neuron of X or of Y is constant over the samples, "
                      "so no correlation is defined; returning NaN.", RuntimeWarning, stacklevel=3)
        return math.nan
    if const:
        warnings.warn(f"correlation_match: {const} neuron(s) are constant over the samples and "
                      "have no correlation; they count as correlation 0.", RuntimeWarning,
                      stacklevel=3)
    C = (px.Z.T @ py.Z).clamp_(-1.0, 1.0)
    if mode == "soft":
        return float(0.5 * (C.amax(dim=1).mean() + C.amax(dim=0).mean()))
    from scipy.optimize import linear_sum_assignment

    Cn = C.cpu().numpy()
    rows, cols = linear_sum_assignment(Cn, maximize=True)
    return float(Cn[rows, cols].mean())


def correlation_match(X, Y, mode: str = "hard") -> float:
    """Correlation matching of the neurons of ``X [n, ...]`` and ``Y [n, ...]`` in [-1, 1]."""
    mode = choice(mode, CORRELATION_MATCH_MODES, "mode", "correlation_match")
    A, B = matrix_pair(X, Y, min_n=3)
    return correlation_match_score(correlation_match_prepare(A), correlation_match_prepare(B),
                                   mode=mode)


def hard_correlation_match(X, Y) -> float:
    """Mean correlation of the best one-to-one matching of neurons (``mode="hard"``)."""
    return correlation_match(X, Y, "hard")


def hard_correlation_match_score(px: CorrelationPrepared, py: CorrelationPrepared, **_options) -> float:
    """:func:`correlation_match_score` with ``mode="hard"``."""
    return correlation_match_score(px, py, mode="hard")


def soft_correlation_match_score(px: CorrelationPrepared, py: CorrelationPrepared, **_options) -> float:
    """:func:`correlation_match_score` with ``mode="soft"``."""
    return correlation_match_score(px, py, mode="soft")


def soft_correlation_match(X, Y) -> float:
    """Mean best-partner correlation of the neurons, both directions (``mode="soft"``)."""
    return correlation_match(X, Y, "soft")


# --------------------------------------------------------------------------- linear regression
@dataclass
class RegressionPrepared:
    """Orthonormal basis ``U [n, r]`` of the centred columns, singular values ``s [r]``."""

    U: torch.Tensor
    s: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.s.numel())


def _centred_basis(X, where: str, name: str = "X"):
    A = matrix(X, name, min_n=3)
    Ac = A - A.mean(dim=0, keepdim=True)
    U, s = spectral_basis(Ac, input_eps(X))
    if s.numel() == 0:
        raise ValueError(f"{where}: {name} has all samples identical (zero variance after centring); "
                         "the measure is undefined. Pass activations that differ between samples.")
    return U, s


def linear_regression_prepare(X, **_options) -> RegressionPrepared:
    """Centre ``X [n, ...]`` and return its orthonormal basis and singular values."""
    return RegressionPrepared(*_centred_basis(X, "linear_regression"))


def _r2(target: RegressionPrepared, source: RegressionPrepared) -> torch.Tensor:
    """``||P_source Xc_target||_F^2 / ||Xc_target||_F^2``."""
    M = (source.U.T @ target.U) * target.s[None, :]
    return (M.square().sum() / target.s.square().sum()).clamp(0.0, 1.0)


def linear_regression_score(px: RegressionPrepared, py: RegressionPrepared, direction: str = "mean",
                            **_options) -> float:
    """``R^2`` of the least-squares fit between two prepared representations (see module)."""
    direction = choice(direction, REGRESSION_DIRECTIONS, "direction", "linear_regression")
    _same_n(px.U, py.U)
    n = px.U.shape[0]
    used = {"x_from_y": (py,), "y_from_x": (px,), "mean": (px, py)}[direction]
    for p in used:
        if p.rank >= n - 1:
            warnings.warn(
                f"linear_regression: a predictor has rank {p.rank} = n - 1 (n={n}) after centring, "
                "so it fits any target exactly and R^2 is 1 by construction; use more samples "
                "than features or reduce the dimension first.", RuntimeWarning, stacklevel=3)
            break
    if direction == "x_from_y":
        return float(_r2(px, py))
    if direction == "y_from_x":
        return float(_r2(py, px))
    return float(0.5 * (_r2(px, py) + _r2(py, px)))


def linear_regression(X, Y, direction: str = "mean") -> float:
    """Linear predictability ``R^2`` in [0, 1] between ``X [n, ...]`` and ``Y [n, ...]``.

    ``direction``: ``"x_from_y"`` (ReSi's: predict ``X`` from ``Y``), ``"y_from_x"``, or
    ``"mean"`` of both (default; symmetric).
    """
    direction = choice(direction, REGRESSION_DIRECTIONS, "direction", "linear_regression")
    A, B = matrix_pair(X, Y, min_n=3)
    return linear_regression_score(linear_regression_prepare(A), linear_regression_prepare(B),
                                   direction=direction)


# --------------------------------------------------------------------------- permutation Procrustes
def permutation_procrustes_prepare(X, **_options) -> torch.Tensor:
    """``X [n, ...]`` as validated float64 ``[n, p]`` (nothing else depends on one input)."""
    return matrix(X, "X")


def permutation_procrustes_score(px: torch.Tensor, py: torch.Tensor, **_options) -> float:
    """``min_P ||X P - Y||_F`` over permutations of the zero-padded features (see module)."""
    from scipy.optimize import linear_sum_assignment

    _same_n(px, py)
    C = (px.T @ py).cpu().numpy()
    rows, cols = linear_sum_assignment(C, maximize=True)
    rows_t = torch.as_tensor(rows, device=px.device)
    cols_t = torch.as_tensor(cols, device=px.device)
    # residual evaluated directly (no cancellation): matched columns, plus unmatched ones vs 0
    total = (px[:, rows_t] - py[:, cols_t]).square().sum()
    for A, used in ((px, rows_t), (py, cols_t)):
        rest = torch.ones(A.shape[1], dtype=torch.bool, device=A.device)
        rest[used] = False
        total = total + A[:, rest].square().sum()
    return float(total.sqrt())


def permutation_procrustes(X, Y) -> float:
    """Permutation Procrustes distance of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0, see module)."""
    A, B = matrix_pair(X, Y)
    return permutation_procrustes_score(A.double(), B.double())


# --------------------------------------------------------------------------- size-and-shape
@dataclass
class ShapePrepared:
    """Factor ``F [n, r]`` of the (transformed) centred data and its squared Frobenius norm."""

    F: torch.Tensor
    sq_norm: torch.Tensor


def procrustes_size_shape_prepare(X, **_options) -> ShapePrepared:
    """Centre ``X [n, ...]`` and reduce it to an ``[n, min(n, p)]`` factor."""
    A = matrix(X, "X")
    F = reduced_factor(A - A.mean(dim=0, keepdim=True))
    return ShapePrepared(F, F.square().sum())


def _residual2(Fx: torch.Tensor, Fy: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """``min_Q ||Fx - Fy Q||_F^2`` over orthogonal ``Q`` (zero-padded widths).

    From the nuclear norm; when it is below ``1e-4 (sx + sy)`` it is evaluated at the optimal ``Q``
    instead, which keeps full relative precision for nearly identical inputs.
    """
    if Fx is Fy:
        return torch.zeros((), dtype=Fx.dtype, device=Fx.device)
    d2 = sx + sy - 2.0 * torch.linalg.svdvals(Fy.T @ Fx).sum()
    if bool(d2 >= _PRECISE_BELOW * (sx + sy)):
        return d2
    m = max(Fx.shape[1], Fy.shape[1])
    Q = _orthogonal_fit(Fy, Fx)
    return torch.linalg.matrix_norm(_pad(Fx, m) - _pad(Fy, m) @ Q).square()


def procrustes_size_shape_score(px: ShapePrepared, py: ShapePrepared, **_options) -> float:
    """``sqrt(||Xc||^2 + ||Yc||^2 - 2 ||Xc^T Yc||_*)`` of two prepared inputs (see module)."""
    _same_n(px.F, py.F)
    return float(_residual2(px.F, py.F, px.sq_norm, py.sq_norm).clamp(min=0.0).sqrt())


def procrustes_size_shape(X, Y) -> float:
    """Procrustes size-and-shape distance of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0, a metric)."""
    A, B = matrix_pair(X, Y)
    return procrustes_size_shape_score(procrustes_size_shape_prepare(A),
                                       procrustes_size_shape_prepare(B))


# --------------------------------------------------------------------------- shape metric
def shape_metric_prepare(X, alpha: float = 0.5, **_options) -> ShapePrepared:
    """Partially whiten the centred ``X [n, ...]`` (see module) and scale it to unit norm.

    Returns the factor ``U diag(f)`` of ``phi_alpha(X)`` with
    ``f = s / sqrt(alpha + (1 - alpha) s^2 / n)`` over the numerical rank (``s`` the singular
    values of ``Xc``), divided by ``||f||``: the same Gram matrix as ``phi_alpha(X)`` up to scale.
    """
    alpha = check_real(alpha, "alpha", "shape_metric", 0.0, 1.0)
    U, s = _centred_basis(X, "shape_metric")
    n = U.shape[0]
    f = s / torch.sqrt(alpha + (1.0 - alpha) * s.square() / n)
    f = f / torch.linalg.vector_norm(f)
    return ShapePrepared(U * f[None, :], torch.ones((), dtype=s.dtype, device=s.device))


def shape_metric_score(px: ShapePrepared, py: ShapePrepared, alpha: float = 0.5, **_options) -> float:
    """Angular distance ``arccos ||phi(X)^T phi(Y)||_*`` of two prepared inputs, in [0, pi/2]."""
    _same_n(px.F, py.F)
    n = px.F.shape[0]
    if alpha == 0 and max(px.F.shape[1], py.F.shape[1]) >= n - 1:
        warnings.warn(
            f"shape_metric(alpha=0): an input has rank n - 1 = {n - 1} after centring, so full "
            "whitening makes every such input identical; use alpha > 0, more samples than "
            "features, or reduce the dimension first.", RuntimeWarning, stacklevel=3)
    c2 = _residual2(px.F, py.F, px.sq_norm, py.sq_norm).clamp(0.0, 2.0)
    return float(2.0 * torch.asin((0.5 * c2.sqrt()).clamp(0.0, 1.0)).clamp(max=math.pi / 2))


def shape_metric(X, Y, alpha: float = 0.5) -> float:
    """Generalised shape metric of Williams et al. 2021 in ``[0, pi/2]`` (see module).

    ``alpha = 1``: angular Procrustes distance; ``alpha = 0``: CCA (full whitening).
    """
    alpha = check_real(alpha, "alpha", "shape_metric", 0.0, 1.0)
    A, B = matrix_pair(X, Y, min_n=3)
    return shape_metric_score(shape_metric_prepare(A, alpha=alpha),
                              shape_metric_prepare(B, alpha=alpha), alpha=alpha)


# --------------------------------------------------------------------------- soft matching
def soft_matching_prepare(X, center: bool = True, **_options) -> torch.Tensor:
    """``X [n, ...]`` as float64 ``[n, p]``, each neuron centred over the samples if ``center``."""
    A = matrix(X, "X")
    return A - A.mean(dim=0, keepdim=True) if center else A


def soft_matching_score(px: torch.Tensor, py: torch.Tensor, **_options) -> float:
    """Soft-matching distance of two prepared representations (exact optimal transport)."""
    import ot

    _same_n(px, py)
    p1, p2 = px.shape[1], py.shape[1]
    gx, gy = px.square().sum(dim=0), py.square().sum(dim=0)
    cost = (gx[:, None] + gy[None, :] - 2.0 * (px.T @ py)).clamp_(min=0.0)
    a = np.full(p1, 1.0 / p1)
    b = np.full(p2, 1.0 / p2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # POT warns when it stops early: make it loud
        try:
            plan = ot.emd(a, b, cost.cpu().numpy(), numItermax=max(100_000, 50 * p1 * p2))
        except UserWarning as exc:  # pragma: no cover - needs a huge problem
            raise RuntimeError(f"soft_matching_distance: the optimal transport solver did not "
                               f"converge ({exc}).") from exc
    # the cost of the plan's (at most p1 + p2 - 1) pairs, evaluated without cancellation
    i, j = np.nonzero(plan > 0)
    w = torch.as_tensor(plan[i, j], dtype=px.dtype, device=px.device)
    it = torch.as_tensor(i, device=px.device)
    jt = torch.as_tensor(j, device=px.device)
    d2 = ((px[:, it] - py[:, jt]).square().sum(dim=0) * w).sum()
    return float(d2.clamp(min=0.0).sqrt())


def soft_matching_distance(X, Y, center: bool = True) -> float:
    """Soft-matching distance (Khosla & Williams 2023) of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0).

    ``center``: centre each neuron over the samples first (translation invariance).
    """
    if not isinstance(center, bool):
        raise ValueError(f"soft_matching_distance: center must be True or False, got {center!r}.")
    A, B = matrix_pair(X, Y)
    return soft_matching_score(soft_matching_prepare(A, center=center),
                               soft_matching_prepare(B, center=center))

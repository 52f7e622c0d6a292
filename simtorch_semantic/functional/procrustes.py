r"""Orthogonal Procrustes distances between two representations of the same ``n`` samples.

Both data matrices ``X [n, p1]`` and ``Y [n, p2]`` are centred (column means removed) and scaled to
unit Frobenius norm: ``Xn = Xc / ||Xc||_F``. If the widths differ, the narrower matrix is
zero-padded, which changes none of the quantities below. With ``||.||_*`` the nuclear norm (sum of
singular values),

    max over orthogonal Q of <Xn, Yn Q> = ||Xn^T Yn||_*        (in [0, 1])

    procrustes_disparity(X, Y) = min_{Q, s} ||Xn - s Yn Q||_F^2 = 1 - ||Xn^T Yn||_*^2
                               = scipy.spatial.procrustes(X, Y)[2]

    procrustes_angular(X, Y)   = arccos ||Xn^T Yn||_*           (in [0, pi/2])

The angular form is the Procrustes shape metric (Kendall's shape space; Williams et al. 2021,
"Generalized shape metrics on neural representations"): symmetric, zero exactly when ``Y`` is a
translated, scaled, rotated/reflected copy of ``X``, and it obeys the triangle inequality. The
disparity is ``sin^2`` of that angle and is not a metric. Both are distances: lower is more
similar.

When ``p > n`` the data are first replaced by an ``[n, <= n]`` matrix with the same Gram matrix
(thin QR of ``X^T``), so the SVD is at most ``n x n``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from simtorch_semantic.functional._validation import DegenerateInputError, check_same_n, data_matrix

__all__ = ["procrustes_disparity", "procrustes_angular", "procrustes_nuclear_norm",
           "procrustes_prepare", "procrustes_score", "procrustes_score_all_pairs"]


def _normalized(X: torch.Tensor, name: str) -> torch.Tensor:
    """Centre the columns, scale to unit Frobenius norm and reduce the width to at most ``n``."""
    Xc = X - X.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(Xc)
    if not bool(norm > 0):
        raise DegenerateInputError(
            f"{name} has all samples identical (zero variance after centring), so its shape is "
            "undefined for Procrustes; pass activations that differ between samples."
        )
    Xn = Xc / norm
    n, p = Xn.shape
    if p > n:
        # Xn = R^T Q^T with Q orthonormal columns: same Gram matrix, orthogonally equivalent.
        R = torch.linalg.qr(Xn.T, mode="r").R  # [n, n]
        Xn = R.T
    return Xn


# below this value of 2 - 2 rho the residual is recomputed at the optimal rotation
_PRECISE_BELOW = 1e-4


def _chord2(Xn: torch.Tensor, Yn: torch.Tensor) -> torch.Tensor:
    """``min_Q ||Xn - Yn Q||_F^2 = 2 - 2 ||Xn^T Yn||_*`` of normalised data, in [0, 2].

    From the singular values of ``Yn^T Xn`` alone; when the shapes are nearly identical
    (``2 - 2 rho < 1e-4``) the residual is evaluated at the optimal ``Q = U V^T`` instead, so it
    keeps full relative precision without cancellation.
    """
    if Xn is Yn:
        return torch.zeros((), dtype=Xn.dtype, device=Xn.device)
    M = Yn.T @ Xn
    c2 = 2.0 - 2.0 * torch.linalg.svdvals(M).sum()
    if bool(c2 >= _PRECISE_BELOW):
        return c2.clamp(0.0, 2.0)
    p = max(Xn.shape[1], Yn.shape[1])  # zero-pad to a common width: Q is then square orthogonal
    pad_x, pad_y = p - Xn.shape[1], p - Yn.shape[1]
    Xp = torch.nn.functional.pad(Xn, (0, pad_x))
    Yp = torch.nn.functional.pad(Yn, (0, pad_y))
    U, _, Vh = torch.linalg.svd(torch.nn.functional.pad(M, (0, pad_x, 0, pad_y)))
    return torch.linalg.matrix_norm(Xp - Yp @ (U @ Vh)).square().clamp(0.0, 2.0)


def _prepare(X, Y):
    X = data_matrix(X, "X")
    Y = data_matrix(Y, "Y", device=X.device)
    check_same_n(X, Y)
    return _normalized(X, "X"), _normalized(Y, "Y")


def procrustes_nuclear_norm(X, Y) -> float:
    """``||Xn^T Yn||_*`` in [0, 1] for centred, unit-Frobenius-norm ``X [n, ...]`` and ``Y [n, ...]``.

    The cosine of the Procrustes angle: 1 when ``Y`` is a rotated/reflected, scaled and shifted
    copy of ``X``.
    """
    Xn, Yn = _prepare(X, Y)
    return float(1.0 - 0.5 * _chord2(Xn, Yn))


def procrustes_disparity(X, Y) -> float:
    """Procrustes disparity ``1 - ||Xn^T Yn||_*^2`` of ``X [n, ...]`` and ``Y [n, ...]`` (float64).

    Equal to ``scipy.spatial.procrustes(X, Y)[2]`` (the sum of squared residuals after optimal
    translation, scaling and rotation/reflection of the standardised data); different widths are
    handled by zero-padding the narrower matrix. In [0, 1]; 0 for identical shapes.
    """
    Xn, Yn = _prepare(X, Y)
    return float(_disparity_from_chord2(_chord2(Xn, Yn)))


def procrustes_angular(X, Y) -> float:
    """Angular Procrustes shape distance ``arccos ||Xn^T Yn||_*`` in ``[0, pi/2]`` (a metric).

    ``X [n, ...]`` and ``Y [n, ...]`` are centred and scaled to unit Frobenius norm; widths may
    differ. Williams et al. 2021. Computed as ``2 asin(c / 2)`` from the optimal residual ``c``
    (same value, no loss of precision near 0).
    """
    Xn, Yn = _prepare(X, Y)
    return float(_angle_from_chord2(_chord2(Xn, Yn)))


def _disparity_from_chord2(c2: torch.Tensor) -> torch.Tensor:
    # 1 - rho^2 = (1 - rho)(1 + rho) with 1 - rho = c2 / 2
    h = 0.5 * c2
    return (h * (2.0 - h)).clamp(0.0, 1.0)


def _angle_from_chord2(c2: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.asin((0.5 * c2.sqrt()).clamp(0.0, 1.0)).clamp(max=math.pi / 2)


# ------------------------------------------------------------------------ prepare / score protocol
def procrustes_prepare(X, name: str = "X") -> torch.Tensor:
    """Prepare ``X [n, ...]`` (n >= 3) once: centred, unit Frobenius norm, width reduced to at
    most ``n`` (same Gram matrix): float64 ``[n, <= n]``.

    Raises :class:`~simtorch_semantic.functional._validation.DegenerateInputError` (a
    ``ValueError``) when every sample is identical.
    """
    return _normalized(data_matrix(X, name), name)


def procrustes_score(px: torch.Tensor, py: torch.Tensor, angular: bool = False) -> float:
    """Procrustes disparity (or, with ``angular``, the angular shape distance) of two prepared
    representations (:func:`procrustes_prepare`) of the same samples."""
    check_same_n(px, py)
    c2 = _chord2(px, py.to(px.device))
    return float(_angle_from_chord2(c2) if angular else _disparity_from_chord2(c2))


#: bytes of ``[rows, p, p]`` cross-products formed at once by procrustes_score_all_pairs
_PAIR_BLOCK_BYTES = 2**28


def procrustes_score_all_pairs(pxs: Sequence[torch.Tensor], pys: Sequence[torch.Tensor],
                               angular: bool = False) -> np.ndarray:
    """``[a, b]`` Procrustes distances of every prepared representation in ``pxs`` with every one
    in ``pys`` (:func:`procrustes_prepare`, same ``n``).

    Every prepared matrix is zero-padded to the common width ``p`` (which changes no singular
    value), the cross-products ``Xn_i^T Yn_j`` of a block of pairs come from one batched product
    and their nuclear norms from one batched ``svdvals``; pairs whose shapes nearly coincide
    (``2 - 2 rho < 1e-4``) are recomputed at the optimal rotation for full precision, as
    :func:`procrustes_score` does. float64 NumPy.
    """
    pxs, pys = list(pxs), list(pys)
    if not pxs or not pys:
        raise ValueError("procrustes_score_all_pairs: pxs and pys must be non-empty.")
    dev = pxs[0].device
    n = pxs[0].shape[0]
    for P in pxs + pys:
        if P.dim() != 2 or P.shape[0] != n:
            raise ValueError(
                f"procrustes_score_all_pairs: every prepared matrix must be [n, p] with n={n} "
                f"(from procrustes_prepare of the same samples), got {tuple(P.shape)}.")
    p = max(P.shape[1] for P in pxs + pys)
    A = torch.stack([torch.nn.functional.pad(P.to(dev, torch.float64), (0, p - P.shape[1])) for P in pxs])
    B = torch.stack([torch.nn.functional.pad(P.to(dev, torch.float64), (0, p - P.shape[1])) for P in pys])
    c2 = torch.empty(len(pxs), len(pys), dtype=torch.float64, device=dev)
    step = max(1, _PAIR_BLOCK_BYTES // max(1, len(pys) * p * p * 8))
    for s in range(0, len(pxs), step):
        e = min(len(pxs), s + step)
        M = torch.einsum("anp,bnq->abpq", A[s:e], B)           # [e - s, b, p, p]
        c2[s:e] = 2.0 - 2.0 * torch.linalg.svdvals(M).sum(-1)
    close = (c2 < _PRECISE_BELOW).nonzero().tolist()
    for i, j in close:  # nearly identical shapes: the residual at the optimal rotation
        c2[i, j] = _chord2(pxs[i].to(dev, torch.float64), pys[j].to(dev, torch.float64))
    c2 = c2.clamp(0.0, 2.0)
    out = _angle_from_chord2(c2) if angular else _disparity_from_chord2(c2)
    return out.cpu().numpy().astype(np.float64)

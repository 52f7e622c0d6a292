r"""Canonical correlation analysis (CCA) and its similarity indices: mean CCA, SVCCA, PWCCA.

For centred data ``Xc [n, p1]``, ``Yc [n, p2]`` with orthonormal bases ``Qx [n, rx]``, ``Qy [n, ry]``
of their column spaces (thin QR, or the left singular vectors when a matrix is rank deficient),
the canonical correlations are the singular values of ``Qx^T Qy``:

    rho_1 >= ... >= rho_k >= 0,   k = min(rx, ry)

equal to the square roots of the eigenvalues of ``Sxx^-1 Sxy Syy^-1 Syx`` (Hotelling 1936;
Björck & Golub 1973). They are invariant to any invertible linear map of either input.

Ridge CCA (``epsilon > 0``) whitens with ``(Sxx + epsilon I)^-1/2`` where ``Sxx = Xc^T Xc / (n-1)``.
With the thin SVD ``Xc = Ux diag(s) Vx^T`` this is
``rho = svd(diag(fx) Ux^T Uy diag(fy))``, ``f = s / sqrt(s^2 + epsilon (n-1))``, well defined
for any width.

Similarity indices (all in [0, 1], higher is more similar):

* ``mean_rho``: mean of the ``k`` canonical correlations (Kornblith et al. 2019, rho-bar);
* ``r2``: mean of ``rho^2`` (Yanai's / Kornblith's R^2_CCA);
* ``svcca``: each input reduced by SVD to the fewest directions keeping ``keep`` of its variance,
  then ``mean_rho`` (Raghu et al. 2017);
* ``pwcca``: ``sum_i alpha_i rho_i / sum_i alpha_i`` with ``alpha_i = sum_j |<h_i, x_j>|``, the
  projection of the canonical variates ``h_i`` onto the centred neurons ``x_j`` of the input with
  the smaller rank (Morcos et al. 2018).

Rank: singular values below ``max(s) * max(n, p) * eps`` count as zero, with ``eps`` the machine
epsilon of the precision the input was *given* in (float32: 1.2e-7), not of the float64 the
decompositions run in; otherwise the round-off of a float32 layer counts as rank (a float32
``Linear(16 -> 64)`` would get rank 40 instead of 16). An input already converted to float64
carries no trace of its origin: pass it in its own dtype.

Small n: when the centred data has rank ``n - 1`` (e.g. ``p >= n - 1``) it spans every centred
direction and all canonical correlations are 1; the functions raise an error saying how to reduce
the dimension (``dims=k`` keeps the top-k principal components, ``svcca``, or ``epsilon > 0``).
When ``rx + ry > n - 1`` at least ``rx + ry - (n - 1)`` correlations are 1 by construction; a
``RuntimeWarning`` says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from simtorch_semantic.functional._validation import (DegenerateInputError, check_choice, check_same_n,
                                                      data_matrix)

__all__ = ["CCA_VARIANTS", "cca", "cca_similarity", "svcca", "pwcca", "input_eps", "CCABasis",
           "check_cca_options", "cca_prepare", "cca_score", "cca_score_all_pairs"]

_canonical = check_choice
_data_matrix = data_matrix

CCA_VARIANTS = ("mean_rho", "r2", "svcca", "pwcca")


@dataclass
class CCABasis:
    """One input reduced to what CCA needs: ``U [n, r]`` orthonormal, weights ``f [r]`` (1 for plain
    CCA), ``P = U^T Xc [r, p]`` (for PWCCA weights) and the sample count ``n``."""

    U: torch.Tensor
    f: torch.Tensor
    P: torch.Tensor
    n: int

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])


def input_eps(X) -> float:
    """Machine epsilon of the precision ``X`` was given in (before any conversion to float64).

    Floating torch tensors and NumPy arrays give their dtype's epsilon (float32: 1.2e-7, float16:
    9.8e-4); integer, boolean and other inputs are exact and get float64's (2.2e-16).
    """
    dtype = getattr(X, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    if dtype is not None and np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)


def _rank_tol(s: torch.Tensor, shape, eps: float | None = None) -> float:
    """Rank cut-off ``max(s) * max(shape) * eps`` for singular values ``s`` of an ``[n, p]`` matrix.

    ``eps`` is the machine epsilon of the precision the data was *produced* in (default: that of
    ``s``): float32 activations converted to float64 still carry float32 round-off, whose singular
    values (~1e-7 relative) would otherwise count as extra rank.
    """
    if s.numel() == 0:
        return 0.0
    if eps is None:
        eps = torch.finfo(s.dtype).eps
    return float(s.max()) * max(shape) * eps


def _basis(X: torch.Tensor, name: str, epsilon: float = 0.0, dims: int | None = None,
           keep: float | None = None, eps: float | None = None) -> CCABasis:
    """Centre ``X [n, p]`` and return its CCA basis (plain, ridge, top-``dims`` or ``keep`` variance).

    ``eps``: machine epsilon of the input's original precision (see :func:`input_eps`); the rank
    cut-off follows it, so a float32 layer gives the same rank whether or not it was converted to
    float64 first. Default: the epsilon of ``X.dtype``.
    """
    n, p = X.shape
    Xc = X - X.mean(dim=0, keepdim=True)
    if epsilon == 0.0 and dims is None and keep is None and n > p:
        Q, R = torch.linalg.qr(Xc)
        d = R.diagonal().abs()
        if bool((d > _rank_tol(d, (n, p), eps)).all()):
            return CCABasis(Q, torch.ones(p, dtype=X.dtype, device=X.device), R, n)
    U, s, Vh = torch.linalg.svd(Xc, full_matrices=False)
    r = int((s > _rank_tol(s, (n, p), eps)).sum())
    if r == 0:
        raise DegenerateInputError(
            f"{name} has all samples identical (zero variance after centring); CCA is undefined. "
            "Pass activations that differ between samples."
        )
    if keep is not None:
        var = s[:r].square()
        frac = var.cumsum(0) / var.sum()
        r = min(r, int((frac < keep - 1e-12).sum()) + 1)
    if dims is not None:
        r = min(r, dims)
    U, s, Vh = U[:, :r], s[:r], Vh[:r]
    if epsilon > 0:
        f = s / torch.sqrt(s.square() + epsilon * (n - 1))
    else:
        f = torch.ones_like(s)
    return CCABasis(U, f, s[:, None] * Vh, n)


def _check_full_rank(b: CCABasis, epsilon: float, name: str, func: str) -> None:
    """Raise when one input spans every centred direction (all its correlations would be 1)."""
    if epsilon == 0 and b.rank >= b.n - 1:
        raise ValueError(
            f"{func}: {name} has rank {b.rank} = n - 1 after centring (n={b.n} samples), so it "
            "spans every centred direction and every canonical correlation is 1. Reduce the "
            "dimension first: pass dims=k with k < n - 1 to keep the top-k principal "
            "components of each input, use svcca(X, Y, keep=0.99), regularise with "
            "epsilon > 0 (ridge CCA), or use more samples than features."
        )


def _check_degenerate(bx: CCABasis, by: CCABasis, epsilon: float, func: str) -> None:
    """Raise when an input spans all centred directions; warn when correlations are forced to 1."""
    if epsilon > 0:
        return
    n = bx.n
    for b, name in ((bx, "X"), (by, "Y")):
        _check_full_rank(b, epsilon, name, func)
    forced = bx.rank + by.rank - (n - 1)
    if forced > 0:
        warnings.warn(
            f"{func}: ranks {bx.rank} + {by.rank} exceed n - 1 = {n - 1}, so at least {forced} "
            "canonical correlations are 1 by construction and the similarity is inflated; use "
            "more samples or fewer dimensions (dims=k, svcca).",
            RuntimeWarning,
            stacklevel=4,
        )


def _correlations(bx: CCABasis, by: CCABasis, vectors: bool = False):
    """Canonical correlations ``[k]`` (descending) and, with ``vectors``, the left singular vectors."""
    k = min(bx.rank, by.rank)
    M = (bx.f[:, None] * (bx.U.T @ by.U)) * by.f[None, :]
    if vectors:
        Ua, rho, _ = torch.linalg.svd(M, full_matrices=False)
        return rho[:k].clamp(0.0, 1.0), Ua[:, :k]
    return torch.linalg.svdvals(M)[:k].clamp(0.0, 1.0), None


def _pwcca_from_bases(bx: CCABasis, by: CCABasis) -> torch.Tensor:
    """Projection-weighted mean correlation; weights from the input with the smaller rank."""
    if by.rank < bx.rank:
        bx, by = by, bx
    rho, Ua = _correlations(bx, by, vectors=True)
    # canonical variates of bx: H = U diag(f) Ua (columns normalised); H^T Xc = (diag(f) Ua)^T P
    A = bx.f[:, None] * Ua  # [r, k]
    A = A / torch.linalg.vector_norm(A, dim=0, keepdim=True)
    alpha = (A.T @ bx.P).abs().sum(dim=1)
    return (alpha * rho).sum() / alpha.sum()


def _similarity_from_bases(bx: CCABasis, by: CCABasis, variant: str) -> torch.Tensor:
    if variant == "pwcca":
        return _pwcca_from_bases(bx, by)
    rho, _ = _correlations(bx, by)
    if variant == "r2":
        return rho.square().mean()
    return rho.mean()  # mean_rho and svcca


def check_cca_options(epsilon, dims, keep, func: str = "cca") -> None:
    """Validate the CCA options (``epsilon >= 0``, ``dims`` a positive int or None, ``keep`` in
    (0, 1] or None); errors name ``func``."""
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not epsilon >= 0:
        raise ValueError(f"{func}: epsilon must be a number >= 0, got {epsilon!r}.")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise ValueError(f"{func}: dims must be a positive integer or None, got {dims!r}.")
    if keep is not None and (not isinstance(keep, (int, float)) or not 0 < keep <= 1):
        raise ValueError(
            f"{func}: keep must be a fraction of variance in (0, 1], e.g. 0.99, got {keep!r}."
        )


def _prepare(X, Y, epsilon, dims, keep, func):
    check_cca_options(epsilon, dims, keep, func)
    eps_x, eps_y = input_eps(X), input_eps(Y)
    X = _data_matrix(X, "X")
    Y = _data_matrix(Y, "Y", device=X.device)
    check_same_n(X, Y)
    bx = _basis(X, "X", float(epsilon), dims, keep, eps=eps_x)
    by = _basis(Y, "Y", float(epsilon), dims, keep, eps=eps_y)
    _check_degenerate(bx, by, float(epsilon), func)
    return bx, by


def cca(X, Y, epsilon: float = 0.0, dims: int | None = None) -> torch.Tensor:
    """Canonical correlations between ``X [n, ...]`` and ``Y [n, ...]``, descending, float64 ``[k]``.

    ``k = min(rank(Xc), rank(Yc))`` (or ``min(dims, ...)``). ``epsilon > 0``: ridge CCA with
    ``Sxx + epsilon I`` (covariances divided by ``n - 1``). ``dims=k``: keep only the top-k
    principal components of each input first (needed when ``p >= n - 1``, see the module
    docstring).
    """
    bx, by = _prepare(X, Y, epsilon, dims, None, "cca")
    return _correlations(bx, by)[0]


def cca_similarity(X, Y, variant: str = "mean_rho", epsilon: float = 0.0, dims: int | None = None,
                   keep: float = 0.99) -> float:
    """CCA similarity in [0, 1]: ``variant`` is ``"mean_rho"``, ``"r2"``, ``"svcca"`` or ``"pwcca"``.

    ``keep`` is used by ``"svcca"`` only. See the module docstring for the formulas.
    """
    variant = _canonical(variant, CCA_VARIANTS, "variant", "cca_similarity")
    bx, by = _prepare(X, Y, epsilon, dims, keep if variant == "svcca" else None, variant)
    return float(_similarity_from_bases(bx, by, variant))


def svcca(X, Y, keep: float = 0.99, epsilon: float = 0.0) -> float:
    """SVCCA (Raghu et al. 2017) of ``X [n, ...]`` and ``Y [n, ...]``, in [0, 1].

    Each centred input is reduced by SVD to the fewest directions that keep ``keep`` of its
    variance, then the mean canonical correlation of the reduced data is returned.
    """
    return cca_similarity(X, Y, "svcca", epsilon=epsilon, keep=keep)


def pwcca(X, Y, epsilon: float = 0.0, dims: int | None = None) -> float:
    """Projection-weighted CCA (Morcos et al. 2018) of ``X [n, ...]`` and ``Y [n, ...]``, in [0, 1].

    ``sum_i alpha_i rho_i / sum_i alpha_i`` with ``alpha_i = sum_j |<h_i, x_j>|`` over the centred
    neurons ``x_j`` of the input with the smaller rank (``X`` on ties), ``h_i`` its unit-norm
    canonical variates.
    """
    return cca_similarity(X, Y, "pwcca", epsilon=epsilon, dims=dims)


# ------------------------------------------------------------------------ prepare / score protocol
def cca_prepare(X, variant: str = "mean_rho", epsilon: float = 0.0, dims: int | None = None,
                keep: float = 0.99, name: str = "X") -> CCABasis:
    """Prepare ``X [n, ...]`` (n >= 3) once for CCA: centred and decomposed into its
    :class:`CCABasis` (QR, or SVD with the ``variant="svcca"`` reduction to ``keep`` of the
    variance, the top-``dims`` components or the ridge weights of ``epsilon``).

    Raises :class:`~simtorch_semantic.functional._validation.DegenerateInputError` for a constant
    ``X`` and ``ValueError`` when ``X`` spans every centred direction (rank n - 1, unless
    ``epsilon > 0``), with what to do about it.
    """
    variant = check_choice(variant, CCA_VARIANTS, "variant", "cca_prepare")
    check_cca_options(epsilon, dims, keep, "cca_prepare")
    eps = input_eps(X)  # the rank cut-off follows the input's own precision
    X = data_matrix(X, name)
    b = _basis(X, name, float(epsilon), dims, keep if variant == "svcca" else None, eps=eps)
    _check_full_rank(b, float(epsilon), name, variant)
    return b


def cca_score(bx: CCABasis, by: CCABasis, variant: str = "mean_rho") -> float:
    """CCA similarity ``variant`` of two prepared representations (:func:`cca_prepare`, same n);
    a ``RuntimeWarning`` when their ranks add up to more than ``n - 1`` (correlations forced to 1).
    """
    variant = check_choice(variant, CCA_VARIANTS, "variant", "cca_score")
    if bx.n != by.n:
        raise ValueError(f"cca_score: the bases hold {bx.n} and {by.n} samples; both must come "
                         "from the same samples.")
    _check_degenerate(bx, by, 0.0 if bool((bx.f == 1).all()) else 1.0, variant)
    return float(_similarity_from_bases(bx, by, variant))


def cca_score_all_pairs(bxs: Sequence[CCABasis], bys: Sequence[CCABasis],
                        variant: str = "mean_rho") -> np.ndarray:
    """``[a, b]`` CCA similarities of every basis in ``bxs`` with every one in ``bys``.

    ``mean_rho``, ``r2`` and ``svcca``: every basis is zero-padded to the common rank (extra zero
    columns add only zero singular values), the ``[r, r]`` products of each block of pairs come
    from one batched product and the canonical correlations from one batched ``svdvals``; only the
    ``min(rank_i, rank_j)`` largest count. ``pwcca`` needs each pair's singular vectors and runs
    pair by pair. One ``RuntimeWarning`` lists how many pairs have correlations forced to 1.
    """
    variant = check_choice(variant, CCA_VARIANTS, "variant", "cca_score_all_pairs")
    bxs, bys = list(bxs), list(bys)
    if not bxs or not bys or not all(isinstance(b, CCABasis) for b in bxs + bys):
        raise TypeError("bxs and bys must be non-empty sequences of CCABasis (from cca_prepare).")
    n = bxs[0].n
    if any(b.n != n for b in bxs + bys):
        raise ValueError("cca_score_all_pairs: every basis must come from the same samples (n).")
    rx = torch.tensor([b.rank for b in bxs])
    ry = torch.tensor([b.rank for b in bys])
    plain = all(bool((b.f == 1).all()) for b in bxs + bys)
    forced = int(((rx[:, None] + ry[None, :]) > n - 1).sum()) if plain else 0
    if forced:
        warnings.warn(
            f"{variant}: for {forced} pairs the ranks add up to more than n - 1 = {n - 1}, so some "
            "canonical correlations are 1 by construction and the similarity is inflated; use "
            "more samples or fewer dimensions (dims=k, svcca).", RuntimeWarning, stacklevel=2)
    if variant == "pwcca":
        return np.array([[float(_pwcca_from_bases(bx, by)) for by in bys] for bx in bxs])
    dev = bxs[0].U.device
    r = max(b.rank for b in bxs + bys)

    def padded(bs):
        W = [torch.nn.functional.pad(b.U * b.f[None, :], (0, r - b.rank)) for b in bs]
        return torch.stack([w.to(dev) for w in W])        # [k, n, r]: U diag(f), zero-padded

    A, B = padded(bxs), padded(bys)
    out = torch.empty(len(bxs), len(bys), dtype=torch.float64, device=dev)
    k = torch.minimum(rx[:, None], ry[None, :]).to(dev)   # [a, b] correlations that count
    idx = torch.arange(r, device=dev)
    step = max(1, 2**28 // max(1, len(bys) * r * r * 8))
    for s in range(0, len(bxs), step):
        e = min(len(bxs), s + step)
        rho = torch.linalg.svdvals(torch.einsum("anp,bnq->abpq", A[s:e], B)).clamp(0.0, 1.0)
        keep = idx[None, None, :] < k[s:e, :, None]
        vals = rho.square() if variant == "r2" else rho
        out[s:e] = (vals * keep).sum(-1) / k[s:e]
    return out.cpu().numpy().astype(np.float64)

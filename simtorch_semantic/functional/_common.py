"""Shared steps of the catalogue families (alignment, neighbors, rsm_measures, statistics,
topology, outputs): input checks with the package's error vocabulary, an orthonormal basis of a
centred representation, and the top-k neighbour graph.

Every function here is public within ``functional/`` (no private name crosses a module boundary);
none of them is part of the package's user-facing API.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ._validation import as_matrix, check_same_n

__all__ = ["matrix", "matrix_pair", "choice", "check_int", "check_real", "spectral_basis",
           "reduced_factor", "similarity_matrix", "topk_neighbors", "check_nonzero_rows", "check_k",
           "check_not_constant", "input_eps",
           "NEIGHBOR_METRICS"]

#: how kNN measures compare samples: cosine similarity (ReSi's and Huh et al.'s default) or
#: Euclidean distance
NEIGHBOR_METRICS = ("cosine", "euclidean")


def matrix(X, name: str = "X", min_n: int = 2, device=None,
           dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Validate ``X [n, ...]`` and return it as a tensor ``[n, d]`` in ``dtype`` (float64 by
    default; ``None`` keeps the validated precision, at least float32), on ``device`` if given,
    else on ``X``'s device. Raises ``ValueError`` naming ``name`` for fewer than ``min_n`` samples
    (and everything :func:`~simtorch_semantic.functional._validation.as_matrix` rejects)."""
    M = as_matrix(X, name=name)
    if M.shape[0] < min_n:
        raise ValueError(
            f"{name} has n={M.shape[0]} samples; this measure needs at least {min_n} (pass an "
            f"array of shape [n, ...] with n >= {min_n} samples in the first dimension).")
    return M.to(device=M.device if device is None else device, dtype=dtype or M.dtype)


def matrix_pair(X, Y, min_n: int = 2, equal_widths: bool = False):
    """Validate both inputs: ``[n, p1]`` and ``[n, p2]`` tensors on ``X``'s device with the same
    ``n``, each in its own precision (at least float32); the ``*_prepare`` functions convert to
    float64 and read the input precision from the dtype (see :func:`input_eps`)."""
    A = matrix(X, "X", min_n, dtype=None)
    B = matrix(Y, "Y", min_n, device=A.device, dtype=None)
    check_same_n(A, B)
    if equal_widths and A.shape[1] != B.shape[1]:
        raise ValueError(
            f"X has {A.shape[1]} features and Y has {B.shape[1]}; this measure compares the "
            "same features in both and needs equal widths. Reduce both to the same number of "
            "features first (e.g. the top principal components).")
    return A, B


def input_eps(X) -> float:
    """Machine epsilon of ``X``'s floating dtype (0 for integer/bool input, which is exact)."""
    dt = getattr(X, "dtype", None)
    if isinstance(dt, torch.dtype):
        return torch.finfo(dt).eps if dt.is_floating_point else 0.0
    try:
        import numpy as np

        dt = np.asarray(X).dtype
        return float(np.finfo(dt).eps) if dt.kind == "f" else 0.0
    except (TypeError, ValueError):  # pragma: no cover - validation rejects these later
        return 0.0


def choice(value, valid: Sequence[str], what: str, where: str) -> str:
    """Map ``value`` case-insensitively onto one of ``valid`` or raise a ``ValueError`` naming
    ``where``, the option ``what`` and the valid values."""
    if isinstance(value, str):
        for v in valid:
            if value.lower() == v.lower():
                return v
    raise ValueError(f"{where}: unknown {what} {value!r}; valid {what}s are "
                     + ", ".join(repr(v) for v in valid) + ".")


def check_int(value, name: str, where: str, low: int = 1) -> int:
    """Return ``value`` as an int; raise ``ValueError`` unless it is an integer ``>= low``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or int(value) < low):
        raise ValueError(f"{where}: {name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_real(value, name: str, where: str, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
    """Return ``value`` as a float; raise ``ValueError`` unless it is a finite real in the range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = value == value and abs(value) != float("inf")
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value <= high
    if not ok:
        lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
        hi = "" if high is None else f" and <= {high}"
        raise ValueError(f"{where}: {name} must be a finite number{lo}{hi}, got {value!r}.")
    return value


def spectral_basis(Xc: torch.Tensor, eps_in: float = 0.0):
    """Thin SVD of a (centred) matrix ``Xc [n, p]`` through the smaller Gram matrix.

    Returns ``(U [n, r], s [r])``, ``s`` descending, ``Xc = U diag(s) V^T``, keeping the ``r``
    singular values above ``s_max * max(sqrt(m * eps64), m * eps_in)``, ``m = max(n, p)``: the
    numerical rank, at the resolution of the Gram matrix (``sqrt(eps64)``) or of the input's own
    precision ``eps_in`` (float32 input: rounding noise is not counted as rank).
    The eigendecomposition of ``Xc^T Xc`` (``p <= n``) or ``Xc Xc^T`` (``p > n``) costs one matrix
    product plus an eigensolver of size ``min(n, p)``, a few times less than an SVD of ``Xc``.
    """
    n, p = Xc.shape
    if p <= n:
        lam, V = torch.linalg.eigh(Xc.T @ Xc)
    else:
        lam, U = torch.linalg.eigh(Xc @ Xc.T)
    lam = lam.flip(0)
    top = lam[:1].clamp(min=0.0)
    m = max(n, p)
    rel = max(m * torch.finfo(torch.float64).eps, (m * eps_in) ** 2)
    keep = lam > top * rel
    r = int(keep.sum())
    s = lam[:r].sqrt()
    if p <= n:
        U = (Xc @ V.flip(1)[:, :r]) / s
    else:
        U = U.flip(1)[:, :r]
    return U, s


def reduced_factor(X: torch.Tensor) -> torch.Tensor:
    """``F [n, min(n, p)]`` with ``F F^T = X X^T`` (so ``X = F A^T`` with orthonormal ``A``).

    ``X`` itself when ``p <= n``, else ``R^T`` of the thin QR of ``X^T``: every quantity that is
    invariant to an orthogonal map of the features (Procrustes fits, nuclear norms, Grams) is the
    same on ``F``, at ``n x n`` cost.
    """
    n, p = X.shape
    if p <= n:
        return X
    return torch.linalg.qr(X.T, mode="r").R.T


def similarity_matrix(X: torch.Tensor, metric: str) -> torch.Tensor:
    """``[n, n]`` affinity of the rows of ``X [n, d]`` (larger = closer).

    ``"cosine"``: ``<u_i, u_j>`` with ``u_i = x_i / ||x_i||`` (rows must be non-zero);
    ``"euclidean"``: ``-||x_i - x_j||^2`` (centred Gram trick, clamped, exact zero diagonal).
    """
    if metric == "cosine":
        U = X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
        return U @ U.T
    Xc = X - X.mean(dim=0, keepdim=True)
    g = (Xc * Xc).sum(dim=1)
    D = (g[:, None] + g[None, :] - 2.0 * (Xc @ Xc.T)).clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D.neg_()


def check_nonzero_rows(X: torch.Tensor, name: str, where: str) -> None:
    """Raise ``ValueError`` when a row of ``X`` is all zeros (no direction for cosine)."""
    zero = ~(X != 0).any(dim=1)
    if bool(zero.any()):
        rows = zero.nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"{where}: rows {rows} of {name} are all zeros, so their cosine similarity is "
            "undefined; drop those samples or use metric='euclidean'.")


def check_not_constant(X: torch.Tensor, name: str, where: str) -> None:
    """Raise ``ValueError`` when all rows of ``X`` are identical (every distance is 0, so the
    nearest neighbours or the shape of ``X`` are undefined)."""
    if bool((X == X[:1]).all()):
        raise ValueError(
            f"{where}: {name} has all {X.shape[0]} samples identical (a constant representation), "
            "so its neighbourhoods are undefined; drop constant layers or pass activations that "
            "differ between samples.")


def topk_neighbors(S: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[n, k]`` of each row's ``k`` largest off-diagonal entries of ``S [n, n]``,
    nearest first (the sample itself is never its own neighbour)."""
    S = S.clone()
    S.fill_diagonal_(float("-inf"))
    return torch.topk(S, k, dim=1, largest=True, sorted=True).indices


def check_k(k, n: int, where: str) -> int:
    """``k`` neighbours need ``1 <= k <= n - 1``; raise a ``ValueError`` saying so otherwise."""
    k = check_int(k, "k", where)
    if k > n - 1:
        raise ValueError(
            f"{where}: k={k} neighbours need at least k + 1 = {k + 1} samples, got n={n}; pass "
            f"k <= {n - 1} or more samples.")
    return k

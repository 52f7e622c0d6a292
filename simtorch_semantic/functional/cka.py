r"""Centered Kernel Alignment (CKA; Kornblith et al., 2019, "Similarity of Neural Network
Representations Revisited").

.. math::
   \mathrm{CKA}(K, L) = \frac{\mathrm{HSIC}(K, L)}{\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}}

with ``K``, ``L`` the Gram matrices of two representations ``X [n, d1]`` and ``Y [n, d2]`` of the
same ``n`` samples (widths may differ), and HSIC the biased estimator
:math:`\operatorname{tr}(KHLH)/(n-1)^2` (default) or the unbiased one of Song et al. (2012)
(``unbiased=True``, ``n >= 4``); see :mod:`simtorch_semantic.functional.hsic`.

* Linear CKA uses :math:`K = X_c X_c^\top`; biased linear CKA equals
  :math:`\|Y_c^\top X_c\|_F^2 / (\|X_c^\top X_c\|_F \|Y_c^\top Y_c\|_F)`. It is invariant to
  orthogonal transforms and isotropic scaling of either representation. When ``n`` exceeds both
  widths it is computed in feature space (``d x d`` products) instead of with ``n x n`` Grams.
* RBF CKA uses the Gaussian kernel with bandwidth ``sigma_frac`` times the median pairwise
  distance (Kornblith et al. use 0.8 as the default fraction) or a fixed ``sigma``.

Inputs are torch tensors or NumPy arrays ``[n, ...]`` (flattened per sample); integer and half
inputs are accepted; everything is computed in float64 on the first input's device and returned
as a Python float.

Constant representations. If every sample of ``X`` (or ``Y``) is identical, HSIC(X, X) = 0 and
CKA is undefined: the result is NaN and a ``RuntimeWarning`` names the constant argument.
:func:`cka_from_hsic` likewise returns NaN wherever a self-HSIC is 0 (or, for the unbiased
estimator on very few samples, negative); callers such as the streaming measures raise the
warning there, since they know the layer names.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._validation import (as_f64, as_gram, as_matrix, check_min_samples, check_positive,
                          check_same_n, is_constant, warn_constant)
from .hsic import HSICStack, hsic_biased, hsic_cross, hsic_prepare, hsic_self, hsic_unbiased
from .kernels import center_gram, linear_gram, rbf_gram

__all__ = ["linear_cka", "rbf_cka", "cka_from_grams", "cka_from_hsic", "CKA_KERNELS",
           "PreparedGram", "cka_prepare", "cka_prepare_gram", "cka_score", "cka_score_all_pairs"]

#: kernel names of the CKA family (``"ip"`` is accepted with a warning as the old name of linear)
CKA_KERNELS = ("linear", "rbf")



def cka_from_hsic(xy, xx, yy) -> torch.Tensor:
    r"""CKA from HSIC terms: :math:`xy / \sqrt{xx \cdot yy}` as a float64 tensor.

    Shapes broadcast; in particular ``xy [a, b]`` with ``xx [a]`` and ``yy [b]`` (the output of
    :func:`~simtorch_semantic.functional.hsic.hsic_all_pairs`) gives the ``[a, b]`` CKA matrix.
    Where ``xx`` or ``yy`` is not positive (0 for a constant representation; an unbiased estimate
    on few samples can also be negative) the result is NaN; the caller should warn, naming the
    layer. No host synchronisation.
    """
    xy = as_f64(xy)
    xx = as_f64(xx, xy.device)
    yy = as_f64(yy, xy.device)
    if xy.dim() == 2 and xx.dim() == 1 and yy.dim() == 1:
        xx, yy = xx[:, None], yy[None, :]
    valid = (xx > 0) & (yy > 0)
    den = xx.clamp_min(0.0).sqrt() * yy.clamp_min(0.0).sqrt()
    out = xy / torch.where(valid, den, torch.ones_like(den))
    return torch.where(valid, out, torch.full_like(out, math.nan))


def _warn_constant(name: str, n: int, stacklevel: int = 5) -> None:
    warn_constant(name, n, "CKA (its self-HSIC is 0)", stacklevel=stacklevel)


def _finish(xy, xx, yy, names=("X", "Y")) -> float:
    """Turn 0-d HSIC terms into a Python float, warning when a self-HSIC is not positive."""
    for name, v in zip(names, (xx, yy)):
        v = float(v)
        if not v > 0:
            warnings.warn(
                f"HSIC({name}, {name}) = {v:.3g} is not positive ({name} is (nearly) constant, or "
                f"the unbiased estimator has too few samples); CKA is returned as NaN.",
                RuntimeWarning, stacklevel=3)
    return float(cka_from_hsic(xy, xx, yy))


def _hsic_terms(K, L, unbiased: bool):
    h = hsic_unbiased if unbiased else hsic_biased
    return h(K, L), h(K, K), h(L, L)


def _linear_hsic_features(X: torch.Tensor, Y: torch.Tensor, unbiased: bool):
    """Linear-kernel HSIC terms from ``d x d`` feature products (no ``n x n`` Gram); float64."""
    n = X.shape[0]
    Xc = X - X.mean(dim=0, keepdim=True)
    Yc = Y - Y.mean(dim=0, keepdim=True)
    fxy = (Xc.T @ Yc).square().sum()        # tr(K L)
    fxx = (Xc.T @ Xc).square().sum()        # tr(K K)
    fyy = (Yc.T @ Yc).square().sum()
    if not unbiased:
        norm = 1.0 / float((n - 1) ** 2)
        return fxy * norm, fxx * norm, fyy * norm
    kx = Xc.square().sum(dim=1)             # diag(K)
    ly = Yc.square().sum(dim=1)
    sx, sy = Xc.sum(dim=0), Yc.sum(dim=0)
    rx = Xc @ sx - kx                       # row sums of K with zeroed diagonal
    ry = Yc @ sy - ly
    tx, ty = rx.sum(), ry.sum()             # 1' K~ 1
    c1 = 1.0 / float((n - 1) * (n - 2))
    c2 = 2.0 / float(n - 2)
    norm = 1.0 / float(n * (n - 3))

    def term(tr, d1, d2, s1, s2, r1, r2):
        return (tr - (d1 * d2).sum() + c1 * s1 * s2 - c2 * (r1 * r2).sum()) * norm

    return (term(fxy, kx, ly, tx, ty, rx, ry), term(fxx, kx, kx, tx, tx, rx, rx),
            term(fyy, ly, ly, ty, ty, ry, ry))


def _prepare(X, Y, unbiased: bool, what: str):
    X = as_matrix(X, "X", min_dtype=torch.float64)
    Y = as_matrix(Y, "Y", min_dtype=torch.float64).to(X.device)
    n = check_same_n(X, Y)
    check_min_samples(n, unbiased, what)
    return X, Y, n


def _constant_check(X, Y, n) -> bool:
    const = False
    for name, T in (("X", X), ("Y", Y)):
        if is_constant(T):
            _warn_constant(name, n)
            const = True
    return const


def linear_cka(X, Y, unbiased: bool = False) -> float:
    r"""Linear CKA of two representations ``X [n, ...]`` and ``Y [n, ...]`` of the same samples.

    Biased (default): :math:`\|Y_c^\top X_c\|_F^2/(\|X_c^\top X_c\|_F\|Y_c^\top Y_c\|_F)`;
    ``unbiased=True`` uses the unbiased HSIC of Song et al. (2012) (``n >= 4``). Widths may differ.
    Returns a Python float in [0, 1] (the unbiased value can leave [0, 1] slightly on few
    samples); NaN with a ``RuntimeWarning`` when ``X`` or ``Y`` is constant.
    """
    X, Y, n = _prepare(X, Y, unbiased, "the unbiased CKA estimator")
    if _constant_check(X, Y, n):
        return math.nan
    if n > max(X.shape[1], Y.shape[1]):
        xy, xx, yy = _linear_hsic_features(X, Y, unbiased)
    else:
        xy, xx, yy = _hsic_terms(linear_gram(X), linear_gram(Y), unbiased)
    return _finish(xy, xx, yy)


def rbf_cka(X, Y, sigma_frac: float = 0.8, sigma=None, unbiased: bool = False) -> float:
    r"""CKA with Gaussian kernels :math:`\exp(-\|x_i - x_j\|^2/(2\sigma^2))` (Kornblith et al. 2019).

    ``X [n, ...]``, ``Y [n, ...]``: two representations of the same samples. The bandwidth of each
    representation is ``sigma_frac`` times its median non-zero pairwise distance, unless a fixed
    ``sigma`` (> 0, used for both) is given. ``unbiased`` selects the HSIC estimator (``n >= 4``).
    Returns a Python float; NaN with a ``RuntimeWarning`` when ``X`` or ``Y`` is constant.
    """
    check_positive(sigma_frac, "sigma_frac")
    check_positive(sigma, "sigma", allow_none=True)
    X, Y, n = _prepare(X, Y, unbiased, "the unbiased CKA estimator")
    if _constant_check(X, Y, n):
        return math.nan
    K = rbf_gram(X, sigma=sigma, sigma_frac=sigma_frac)
    L = rbf_gram(Y, sigma=sigma, sigma_frac=sigma_frac)
    return _finish(*_hsic_terms(K, L, unbiased))


def cka_from_grams(K, L, unbiased: bool = False) -> float:
    r"""CKA of two Gram matrices ``K, L [n, n]`` of the same samples (any kernel).

    :math:`\mathrm{HSIC}(K, L)/\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}` with the biased or
    (``unbiased=True``, ``n >= 4``) unbiased HSIC, in float64. Grams need not be centred. Returns a
    Python float; NaN with a ``RuntimeWarning`` when a Gram is constant after centring.
    """
    K = as_gram(K, "K")
    L = as_gram(L, "L").to(K.device)
    n = check_same_n(K, L, ("K", "L"))
    check_min_samples(n, unbiased, "the unbiased CKA estimator")
    const = False
    for name, G in (("K", K), ("L", L)):
        Gc = center_gram(G)
        scale = float(G.abs().max())
        if float(Gc.abs().max()) <= 1e-12 * scale:
            warnings.warn(
                f"{name} is constant after centring (a constant representation): CKA is undefined "
                f"and returned as NaN.", RuntimeWarning, stacklevel=2)
            const = True
    if const:
        return math.nan
    return _finish(*_hsic_terms(K, L, unbiased), names=("K", "L"))


# ------------------------------------------------------------------------ prepare / score protocol
#: bytes of flattened Grams concatenated at once by :func:`cka_score_all_pairs` (per side)
_BLOCK_BYTES = 2**29


@dataclass
class PreparedGram:
    """One representation prepared for CKA: its Gram as a one-element :class:`HSICStack`, its
    HSIC with itself (0-d float64) and whether it is constant (CKA with it is NaN)."""

    stack: HSICStack
    self_hsic: torch.Tensor
    constant: bool

    @property
    def n(self) -> int:
        return self.stack.n


def check_kernel(kernel, where: str) -> str:
    """Canonical CKA kernel name; ``"ip"`` (the old name of ``"linear"``) is accepted with a
    ``DeprecationWarning``."""
    if kernel == "ip":
        warnings.warn(f"{where}: kernel='ip' is the old name of kernel='linear'; use 'linear'.",
                      DeprecationWarning, stacklevel=3)
        return "linear"
    if kernel not in CKA_KERNELS:
        raise ValueError(f"{where}: kernel must be one of {list(CKA_KERNELS)}, got {kernel!r}.")
    return kernel


def cka_prepare_gram(K, unbiased: bool = False, name: str = "K") -> PreparedGram:
    """Prepare a Gram matrix ``K [n, n]`` (any kernel; need not be centred) once for CKA.

    Returns a :class:`PreparedGram`; a Gram that is constant after centring is flagged (its CKA
    is NaN) with one ``RuntimeWarning`` naming ``name``.
    """
    K = as_gram(K, name)
    check_min_samples(K.shape[0], unbiased, "the unbiased CKA estimator")
    Kc = center_gram(K)
    constant = bool(Kc.abs().max() <= 1e-12 * K.abs().max())
    if constant:
        warn_constant(name, K.shape[0], "CKA (its centred Gram is 0)", stacklevel=3)
    P = hsic_prepare(K[None], unbiased)
    return PreparedGram(P, hsic_self(P)[0], constant)


def cka_prepare(X, kernel: str = "linear", unbiased: bool = False, sigma_frac: float = 0.8,
                sigma=None, name: str = "X") -> PreparedGram:
    r"""Prepare one representation ``X [n, ...]`` for CKA: its Gram, centred (biased HSIC) or with
    zeroed diagonal and row sums (unbiased, ``n >= 4``), in float64.

    ``kernel``: ``"linear"`` (:math:`X_c X_c^\top`) or ``"rbf"`` (bandwidth ``sigma_frac`` x the
    median distance of this ``X``, or a fixed ``sigma``). A constant ``X`` is flagged (CKA NaN)
    with one ``RuntimeWarning``. Score pairs with :func:`cka_score` / :func:`cka_score_all_pairs`:
    ``cka_score(cka_prepare(X), cka_prepare(Y)) == linear_cka(X, Y)``.
    """
    kernel = check_kernel(kernel, "cka_prepare")
    check_positive(sigma_frac, "sigma_frac")
    check_positive(sigma, "sigma", allow_none=True)
    X = as_matrix(X, name, min_dtype=torch.float64)
    n = X.shape[0]
    check_min_samples(n, unbiased, "the unbiased CKA estimator")
    constant = is_constant(X)
    if constant:
        warn_constant(name, n, "CKA (its self-HSIC is 0)", stacklevel=3)
    K = linear_gram(X) if kernel == "linear" else rbf_gram(X, sigma=sigma, sigma_frac=sigma_frac)
    P = hsic_prepare(K[None], unbiased)
    return PreparedGram(P, hsic_self(P)[0], constant)


def _check_prepared(ps, name: str) -> list:
    ps = list(ps)
    if not ps or not all(isinstance(p, PreparedGram) for p in ps):
        raise TypeError(f"{name} must be a non-empty sequence of PreparedGram (from cka_prepare).")
    return ps


def cka_score(px: PreparedGram, py: PreparedGram) -> float:
    """CKA of two prepared representations (:func:`cka_prepare`) of the same ``n`` samples.

    NaN when either is constant (warned once at prepare time).
    """
    return float(cka_score_all_pairs([px], [py])[0, 0])


def _flat_blocks(ps: Sequence[PreparedGram]):
    """Consecutive index ranges of ``ps`` whose flattened Grams fit in ``_BLOCK_BYTES``."""
    per = max(1, ps[0].stack.flat.numel() * 8)
    step = max(1, _BLOCK_BYTES // per)
    return [(s, min(len(ps), s + step)) for s in range(0, len(ps), step)]


def cka_score_all_pairs(pxs: Sequence[PreparedGram], pys: Sequence[PreparedGram]) -> np.ndarray:
    """``[a, b]`` CKA of every prepared representation in ``pxs`` with every one in ``pys``.

    All pairs come from ``[a, n*n] @ [n*n, b]`` products of the prepared Grams, concatenated in
    blocks of at most ``2**29`` bytes per side, so the memory beyond the prepared Grams stays
    bounded; float64 NumPy, NaN for constant representations.
    """
    pxs, pys = _check_prepared(pxs, "pxs"), _check_prepared(pys, "pys")
    n, unbiased = pxs[0].n, pxs[0].stack.unbiased
    for p in pxs + pys:
        if p.n != n or p.stack.unbiased != unbiased:
            raise ValueError(
                f"all prepared representations must hold the same n={n} samples and the same "
                f"estimator (unbiased={unbiased}); got n={p.n}, unbiased={p.stack.unbiased}.")
    dev = pxs[0].stack.flat.device
    xy = torch.empty(len(pxs), len(pys), dtype=torch.float64, device=dev)

    def cat(ps):
        parts = [p.stack for p in ps]
        return HSICStack(torch.cat([q.flat.to(dev) for q in parts]),
                         None if not unbiased else torch.cat([q.rows.to(dev) for q in parts]),
                         None if not unbiased else torch.cat([q.totals.to(dev) for q in parts]),
                         n, unbiased)

    for a0, a1 in _flat_blocks(pxs):
        A = cat(pxs[a0:a1])
        for b0, b1 in _flat_blocks(pys):
            xy[a0:a1, b0:b1] = hsic_cross(A, cat(pys[b0:b1]))
    xx = torch.stack([p.self_hsic.to(dev) for p in pxs])
    yy = torch.stack([p.self_hsic.to(dev) for p in pys])
    out = cka_from_hsic(xy, xx, yy)
    cx = torch.tensor([p.constant for p in pxs], device=dev)
    cy = torch.tensor([p.constant for p in pys], device=dev)
    out = torch.where(cx[:, None] | cy[None, :], torch.full_like(out, math.nan), out)
    return out.cpu().numpy().astype(np.float64)

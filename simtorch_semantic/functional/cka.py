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

import torch

from ._validation import (as_gram, as_matrix, check_min_samples, check_positive, check_same_n,
                          is_constant, to_tensor)
from .hsic import hsic_biased, hsic_unbiased
from .kernels import center_gram, linear_gram, rbf_gram

__all__ = ["linear_cka", "rbf_cka", "cka_from_grams", "cka_from_hsic"]


def _as_f64(v, device=None) -> torch.Tensor:
    if isinstance(v, (int, float)):
        return torch.tensor(float(v), dtype=torch.float64, device=device)
    if not isinstance(v, torch.Tensor):
        v = to_tensor(v, "value")
    v = v.detach().to(torch.float64)
    return v if device is None else v.to(device)


def cka_from_hsic(xy, xx, yy) -> torch.Tensor:
    r"""CKA from HSIC terms: :math:`xy / \sqrt{xx \cdot yy}` as a float64 tensor.

    Shapes broadcast; in particular ``xy [a, b]`` with ``xx [a]`` and ``yy [b]`` (the output of
    :func:`~simtorch_semantic.functional.hsic.hsic_all_pairs`) gives the ``[a, b]`` CKA matrix.
    Where ``xx`` or ``yy`` is not positive (0 for a constant representation; an unbiased estimate
    on few samples can also be negative) the result is NaN; the caller should warn, naming the
    layer. No host synchronisation.
    """
    xy = _as_f64(xy)
    xx = _as_f64(xx, xy.device)
    yy = _as_f64(yy, xy.device)
    if xy.dim() == 2 and xx.dim() == 1 and yy.dim() == 1:
        xx, yy = xx[:, None], yy[None, :]
    valid = (xx > 0) & (yy > 0)
    den = xx.clamp_min(0.0).sqrt() * yy.clamp_min(0.0).sqrt()
    out = xy / torch.where(valid, den, torch.ones_like(den))
    return torch.where(valid, out, torch.full_like(out, math.nan))


def _warn_constant(name: str, n: int, stacklevel: int = 4) -> None:
    warnings.warn(
        f"{name} is constant (all {n} samples are identical): its self-HSIC is 0, so CKA is "
        f"undefined and returned as NaN.", RuntimeWarning, stacklevel=stacklevel)


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

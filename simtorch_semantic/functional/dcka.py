r"""Deconfounded CKA (dCKA; Cui et al., NeurIPS 2022, "Deconfounded Representation Similarity for
Comparison of Neural Networks").

Two networks look similar partly because both inherit the similarity structure of their common
input. dCKA removes it: each representation's Gram matrix ``K`` is regressed on the Gram matrix
``K_Z`` of a confounder ``Z`` (by default the input itself), and CKA is computed on the residuals.
With the HSIC inner product :math:`\langle A, B\rangle = \mathrm{HSIC}(A, B)` (biased: the
Frobenius product of centred Grams up to a constant; unbiased: the estimator of Song et al. 2012):

.. math::
   \alpha_K = \frac{\langle K, K_Z\rangle}{\langle K_Z, K_Z\rangle},\qquad
   \hat K = H K H - \alpha_K\, H K_Z H,\qquad
   \mathrm{dCKA}(X, Y) = \frac{\langle \hat K, \hat L\rangle}
                              {\sqrt{\langle \hat K, \hat K\rangle\langle \hat L, \hat L\rangle}}.

The residual need not be positive semi-definite; ``remove_negative_eig=True`` replaces it by its
PSD part :math:`V \max(\Lambda, 0) V^\top` (from ``eigh``) before CKA, as Cui et al. offer.

Streaming form. Everything above is bilinear, so with the six HSIC terms
``xy = <K, L>``, ``xx = <K, K>``, ``yy = <L, L>``, ``xz = <K, K_Z>``, ``yz = <L, K_Z>``,
``zz = <K_Z, K_Z>`` (each summed over minibatches when using the unbiased estimator),
:math:`a = xz/zz`, :math:`b = yz/zz` and

.. math::
   \langle \hat K, \hat L\rangle = xy - b\,xz - a\,yz + ab\,zz = xy - xz\,yz/zz,\quad
   \langle \hat K, \hat K\rangle = xx - xz^2/zz,\quad \langle \hat L, \hat L\rangle = yy - yz^2/zz.

:func:`dcka_from_hsic` evaluates this for whole ``[a, b]`` layer grids; the regression coefficient
is then estimated over the whole data set rather than per batch. (The PSD projection is not
bilinear and has no streaming form.)

Constant ``X``/``Y`` (or a representation fully explained by ``Z``) gives NaN with a
``RuntimeWarning``; a constant ``Z`` is an error (there is nothing to regress on).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch

from ._validation import (as_f64, as_matrix, check_min_samples, check_positive, check_same_n,
                          is_constant, to_tensor, warn_constant)
from .cka import cka_from_hsic
from .hsic import check_gram_stacks, gram_stack, hsic_biased, hsic_cross, hsic_prepare, hsic_self, hsic_unbiased
from .kernels import center_gram, linear_gram, rbf_gram

__all__ = ["dcka", "deconfound_gram", "dcka_from_hsic", "dcka_hsic_terms", "DeconfoundedHSIC"]


@dataclass
class DeconfoundedHSIC:
    """The six HSIC terms dCKA needs, for ``a`` layers of one model and ``b`` of the other.

    Fields (float64 tensors): ``xy [a, b]`` = HSIC(K_i, L_j); ``xx [a]`` = HSIC(K_i, K_i);
    ``yy [b]`` = HSIC(L_j, L_j); ``xz [a]`` = HSIC(K_i, K_Z); ``yz [b]`` = HSIC(L_j, K_Z);
    ``zz []`` = HSIC(K_Z, K_Z). ``h1 + h2`` adds field by field (to sum over minibatches).
    """

    xy: torch.Tensor
    xx: torch.Tensor
    yy: torch.Tensor
    xz: torch.Tensor
    yz: torch.Tensor
    zz: torch.Tensor

    def __add__(self, other: "DeconfoundedHSIC") -> "DeconfoundedHSIC":
        return DeconfoundedHSIC(*(getattr(self, f.name) + getattr(other, f.name)
                                  for f in fields(self)))


def dcka_hsic_terms(Ks, Ls, KZ, unbiased: bool = True) -> DeconfoundedHSIC:
    """HSIC terms of Grams ``Ks [a, n, n]``, ``Ls [b, n, n]`` and confounder Gram ``KZ [n, n]``.

    Returns a :class:`DeconfoundedHSIC` in float64 computed with a few matrix products (no per-pair
    loop, no host sync); sum these over minibatches (unbiased estimator) and pass the sum to
    :func:`dcka_from_hsic`.
    """
    K = gram_stack(Ks, "Ks")
    L = gram_stack(Ls, "Ls")
    KZ = KZ if isinstance(KZ, torch.Tensor) else to_tensor(KZ, "KZ")
    Z = gram_stack(KZ[None] if KZ.dim() == 2 else KZ, "KZ")
    check_gram_stacks(K, L)
    check_gram_stacks(K, Z)
    P, Q, R = (hsic_prepare(T, unbiased) for T in (K, L, Z))
    return DeconfoundedHSIC(
        xy=hsic_cross(P, Q), xx=hsic_self(P), yy=hsic_self(Q),
        xz=hsic_cross(P, R)[:, 0], yz=hsic_cross(Q, R)[:, 0], zz=hsic_self(R)[0])


def dcka_from_hsic(h) -> torch.Tensor:
    r"""dCKA from (summed) HSIC terms: :math:`(xy - xz\,yz/zz)/\sqrt{(xx - xz^2/zz)(yy - yz^2/zz)}`.

    ``h``: a :class:`DeconfoundedHSIC` or a mapping with keys ``xy, xx, yy, xz, yz, zz``. With
    ``xy [..., a, b]``, ``xx, xz [..., a]``, ``yy, yz [..., b]`` and ``zz [...]`` the result is the
    ``[..., a, b]`` dCKA matrix (leading dimensions, e.g. ``R`` bootstrap replicates of summed
    terms, are kept); all scalars give a 0-d tensor. float64; NaN where ``zz <= 0`` (constant
    confounder) or a residual self-HSIC is not positive (constant layer, or a layer fully
    explained by the confounder). Equals :func:`dcka` without ``remove_negative_eig`` when the
    terms come from the full data.
    """
    if isinstance(h, DeconfoundedHSIC):
        t = {f.name: getattr(h, f.name) for f in fields(h)}
    else:
        try:
            t = {k: h[k] for k in ("xy", "xx", "yy", "xz", "yz", "zz")}
        except (KeyError, TypeError) as exc:
            raise TypeError(
                "h must be a DeconfoundedHSIC or a mapping with keys 'xy', 'xx', 'yy', 'xz', "
                f"'yz', 'zz' (missing {exc}).") from exc
    xy = as_f64(t["xy"])
    xx, yy, xz, yz, zz = (as_f64(t[k], xy.device) for k in ("xx", "yy", "xz", "yz", "zz"))
    outer = xy.dim() >= 2 and xz.dim() == yz.dim() == xy.dim() - 1
    if outer:  # a layer grid: the confounder terms broadcast over rows and columns
        zz = zz[..., None]
    zz_safe = torch.where(zz > 0, zz, torch.ones_like(zz))
    rxx = xx - xz * xz / zz_safe
    ryy = yy - yz * yz / zz_safe
    if outer:
        rxy = xy - xz[..., :, None] * yz[..., None, :] / zz_safe[..., None]
        out = cka_from_hsic(rxy, rxx[..., :, None], ryy[..., None, :])
        zz = zz[..., None]
    else:
        out = cka_from_hsic(xy - xz * yz / zz_safe, rxx, ryy)
    return torch.where(zz > 0, out, torch.full_like(out, math.nan))


def deconfound_gram(K, KZ, remove_negative_eig: bool = False,
                    unbiased: bool = False) -> torch.Tensor:
    r"""Residual of Gram ``K [n, n]`` (or of each of a stack ``[a, n, n]``) after regressing it on
    the confounder Gram ``KZ [n, n]``.

    :math:`\hat K = HKH - \alpha\, H K_Z H` with
    :math:`\alpha = \mathrm{HSIC}(K, K_Z)/\mathrm{HSIC}(K_Z, K_Z)` (biased HSIC, i.e. the
    Frobenius product of centred Grams; the unbiased one when ``unbiased``), one
    :math:`\alpha` per Gram of a stack. With ``remove_negative_eig`` the residual is projected
    onto the PSD cone (negative eigenvalues clipped to 0). Returns float64 centred matrices of
    ``K``'s shape. A constant confounder (``HSIC(K_Z, K_Z) = 0``) gives NaN; :func:`dcka` raises a
    clear error for it instead.
    """
    K = as_f64(K)
    KZ = as_f64(KZ, K.device)
    single = K.dim() == 2
    Ks = K[None] if single else K
    P, Z = hsic_prepare(Ks, unbiased), hsic_prepare(KZ[None], unbiased)
    zz = hsic_self(Z)[0]
    alpha = hsic_cross(P, Z)[:, 0] / torch.where(zz > 0, zz, torch.full_like(zz, math.nan))
    R = center_gram(Ks) - alpha[:, None, None] * center_gram(KZ)
    if remove_negative_eig:
        w, V = torch.linalg.eigh(0.5 * (R + R.mT))
        R = (V * w.clamp_min(0.0)[:, None, :]) @ V.mT
    return R[0] if single else R


def dcka(X, Y, Z, kernel: str = "linear", unbiased: bool = False,
         remove_negative_eig: bool = False, sigma_frac: float = 0.8) -> float:
    r"""Deconfounded CKA of ``X [n, ...]`` and ``Y [n, ...]`` given the confounder ``Z [n, ...]``.

    Each of ``X``, ``Y`` and ``Z`` gets a Gram matrix with the same ``kernel`` (``"linear"`` or
    ``"rbf"`` with bandwidth ``sigma_frac`` x its median pairwise distance); the Grams of ``X`` and
    ``Y`` are regressed on that of ``Z`` (:func:`deconfound_gram`) and CKA of the residuals is
    returned as a Python float (Cui et al., NeurIPS 2022). ``unbiased`` uses the unbiased HSIC of
    Song et al. (2012) as the inner product (``n >= 4``); ``remove_negative_eig`` projects each
    residual onto its PSD part first. NaN with a ``RuntimeWarning`` when ``X``/``Y`` is constant or
    fully explained by ``Z``; ``ValueError`` when ``Z`` is constant.
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}.")
    check_positive(sigma_frac, "sigma_frac")
    X = as_matrix(X, "X", min_dtype=torch.float64)
    Y = as_matrix(Y, "Y", min_dtype=torch.float64).to(X.device)
    Z = as_matrix(Z, "Z", min_dtype=torch.float64).to(X.device)
    n = check_same_n(X, Y)
    check_same_n(X, Z, ("X", "Z"))
    check_min_samples(n, unbiased, "the unbiased dCKA estimator")
    if is_constant(Z):
        raise ValueError(
            f"Z (the confounder) is constant (all {n} samples identical): there is nothing to "
            f"regress on; pass a confounder that varies over the samples, or use plain CKA.")
    const = False
    for name, T in (("X", X), ("Y", Y)):
        if is_constant(T):
            warn_constant(name, n, "dCKA", stacklevel=3)
            const = True
    if const:
        return math.nan
    if kernel == "linear":
        Kx, Ky, Kz = linear_gram(X), linear_gram(Y), linear_gram(Z)
    else:
        Kx, Ky, Kz = (rbf_gram(T, sigma_frac=sigma_frac) for T in (X, Y, Z))
    Rx = deconfound_gram(Kx, Kz, remove_negative_eig, unbiased)
    Ry = deconfound_gram(Ky, Kz, remove_negative_eig, unbiased)
    h = hsic_unbiased if unbiased else hsic_biased
    xx, yy = float(h(Rx, Rx)), float(h(Ry, Ry))
    for name, v, K in (("X", xx, Kx), ("Y", yy, Ky)):
        if not v > 1e-10 * abs(float(h(K, K))):
            if v > 0:
                xx, yy = (math.nan, yy) if name == "X" else (xx, math.nan)
            warnings.warn(
                f"the residual of {name} after regressing on Z has HSIC {v:.3g}, not positive ({name} is "
                f"explained by the confounder Z, or too few samples for the unbiased estimator); "
                f"dCKA is returned as NaN.", RuntimeWarning, stacklevel=2)
    return float(cka_from_hsic(h(Rx, Ry), xx, yy))

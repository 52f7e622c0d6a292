r"""Hilbert-Schmidt Independence Criterion (HSIC) estimators on Gram matrices.

For Gram matrices ``K, L`` of the same ``n`` samples:

* biased (Gretton et al., 2005):
  :math:`\mathrm{HSIC}_b(K, L) = \operatorname{tr}(K H L H) / (n-1)^2`,
  :math:`H = I_n - \tfrac{1}{n} 1 1^\top`;
* unbiased (Song et al., 2012, "Feature selection via dependence maximization"), with
  :math:`\tilde K, \tilde L` the Grams with their diagonals set to zero:

  .. math::
     \mathrm{HSIC}_u(K, L) = \frac{1}{n(n-3)} \Big[ \operatorname{tr}(\tilde K \tilde L)
        + \frac{1^\top \tilde K 1 \; 1^\top \tilde L 1}{(n-1)(n-2)}
        - \frac{2}{n-2} 1^\top \tilde K \tilde L 1 \Big],

  defined for ``n >= 4``. It is an unbiased estimate of the population HSIC, so sums of it over
  minibatches estimate the full-data quantity (Nguyen et al., 2021, "Do Wide and Deep Networks
  Learn the Same Things?"), which is how the streaming CKA works.

Both are bilinear in ``(K, L)`` and invariant to shifting every sample's features by the same
vector (so centring features before a Gram changes nothing but float rounding).

:func:`hsic_all_pairs` computes every pair of ``a`` Grams with ``b`` Grams with a few matrix
products on flattened ``[a, n*n]`` / ``[b, n*n]`` matrices, in float64, without host sync.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._validation import check_min_samples, to_tensor
from .kernels import center_gram

__all__ = ["hsic_biased", "hsic_unbiased", "hsic_all_pairs"]


def _f64(K) -> torch.Tensor:
    if not isinstance(K, torch.Tensor):
        K = to_tensor(K)
    return K.detach().to(torch.float64)


def _stack(Ks, name: str) -> torch.Tensor:
    """``[a, n, n]`` tensor (or a sequence of ``[n, n]`` Grams) -> float64 ``[a, n, n]``."""
    if not isinstance(Ks, torch.Tensor):
        if isinstance(Ks, Sequence) and len(Ks) > 0 and isinstance(Ks[0], torch.Tensor):
            Ks = torch.stack([k.detach() for k in Ks])
        else:
            Ks = to_tensor(Ks, name)
    if Ks.dim() != 3 or Ks.shape[-1] != Ks.shape[-2]:
        raise ValueError(
            f"{name} must be a stack of square Gram matrices [count, n, n], got shape "
            f"{tuple(Ks.shape)}.")
    return _f64(Ks)


def _check_pair(K: torch.Tensor, L: torch.Tensor) -> int:
    if K.dim() != 2 or K.shape[0] != K.shape[1] or K.shape != L.shape:
        raise ValueError(
            f"K and L must be square Gram matrices of the same samples [n, n]; got shapes "
            f"{tuple(K.shape)} and {tuple(L.shape)}.")
    return K.shape[0]


def hsic_biased(K, L) -> torch.Tensor:
    r"""Biased HSIC :math:`\operatorname{tr}(K H L H)/(n-1)^2` of Grams ``K, L [n, n]``.

    Returns a float64 0-d tensor (on the inputs' device).
    """
    K, L = _f64(K), _f64(L)
    n = _check_pair(K, L)
    return (center_gram(K) * L).sum() / float((n - 1) ** 2)


def hsic_unbiased(K, L) -> torch.Tensor:
    r"""Unbiased HSIC of Song et al. (2012) of Grams ``K, L [n, n]``; needs ``n >= 4``.

    With zeroed diagonals :math:`\tilde K, \tilde L`:
    :math:`[\operatorname{tr}(\tilde K\tilde L) + 1^\top\tilde K 1\, 1^\top\tilde L 1/((n-1)(n-2))
    - \tfrac{2}{n-2} 1^\top \tilde K \tilde L 1] / (n(n-3))`. Returns a float64 0-d tensor.
    """
    K, L = _f64(K), _f64(L)
    n = _check_pair(K, L)
    check_min_samples(n, True)
    K = K - torch.diag_embed(K.diagonal())
    L = L - torch.diag_embed(L.diagonal())
    rk, rl = K.sum(dim=1), L.sum(dim=1)
    tr = (K * L).sum()
    total = rk.sum() * rl.sum() / float((n - 1) * (n - 2))
    cross = (rk * rl).sum() * (2.0 / (n - 2))
    return (tr + total - cross) / float(n * (n - 3))


def _prep_stack(K: torch.Tensor, unbiased: bool):
    """Per-Gram quantities for :func:`_cross`: flattened Grams, row sums and totals (float64)."""
    n = K.shape[-1]
    if unbiased:
        eye = torch.eye(n, dtype=torch.bool, device=K.device)
        K = K.masked_fill(eye, 0.0)
        r = K.sum(dim=-1)                               # [a, n]
        return K.reshape(K.shape[0], -1), r, r.sum(dim=-1)
    return center_gram(K).reshape(K.shape[0], -1), None, None


def _cross(P, Q, n: int, unbiased: bool) -> torch.Tensor:
    """``[a, b]`` HSIC between prepared stacks ``P`` and ``Q`` (see :func:`_prep_stack`)."""
    if unbiased:
        c1 = 1.0 / float((n - 1) * (n - 2))
        c2 = 2.0 / float(n - 2)
        return (P[0] @ Q[0].T + c1 * P[2][:, None] * Q[2][None, :]
                - c2 * (P[1] @ Q[1].T)) / float(n * (n - 3))
    return (P[0] @ Q[0].T) / float((n - 1) ** 2)


def _self(P, n: int, unbiased: bool) -> torch.Tensor:
    """``[a]`` HSIC of each prepared Gram with itself."""
    if unbiased:
        c1 = 1.0 / float((n - 1) * (n - 2))
        c2 = 2.0 / float(n - 2)
        return ((P[0] * P[0]).sum(-1) + c1 * P[2] * P[2]
                - c2 * (P[1] * P[1]).sum(-1)) / float(n * (n - 3))
    return (P[0] * P[0]).sum(-1) / float((n - 1) ** 2)


def _check_stacks(K: torch.Tensor, L: torch.Tensor, unbiased: bool) -> int:
    n = K.shape[-1]
    if L.shape[-1] != n:
        raise ValueError(
            f"Ks hold Grams of {n} samples but Ls of {L.shape[-1]}; both must come from the same "
            f"batch of samples.")
    check_min_samples(n, unbiased)
    return n


def hsic_all_pairs(Ks, Ls, unbiased: bool = True):
    r"""HSIC of every Gram in ``Ks [a, n, n]`` with every Gram in ``Ls [b, n, n]``, plus self terms.

    Returns ``(xy [a, b], xx [a], yy [b])`` float64 tensors on the inputs' device, with
    ``xy[i, j] = HSIC(Ks[i], Ls[j])``, ``xx[i] = HSIC(Ks[i], Ks[i])``, ``yy[j] = HSIC(Ls[j], Ls[j])``,
    using the unbiased estimator of Song et al. (2012) (``unbiased=True``, needs ``n >= 4``) or the
    biased one. Inputs may be float32 (promoted to float64 here) or sequences of ``[n, n]`` Grams.
    All pairs come from one ``[a, n*n] @ [n*n, b]`` product and a few small ones (with zeroed
    diagonals, row sums ``r`` and totals ``s``:
    ``xy = (K~ L~' + s_K s_L'/((n-1)(n-2)) - 2/(n-2) r_K r_L') / (n(n-3))``); nothing is copied to
    the host, so it can run inside a per-batch loop.
    """
    K = _stack(Ks, "Ks")
    L = _stack(Ls, "Ls")
    n = _check_stacks(K, L, unbiased)
    P, Q = _prep_stack(K, unbiased), _prep_stack(L, unbiased)
    return _cross(P, Q, n, unbiased), _self(P, n, unbiased), _self(Q, n, unbiased)

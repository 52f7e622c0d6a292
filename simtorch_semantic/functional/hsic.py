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

from dataclasses import dataclass
from typing import Sequence

import torch

from ._validation import check_min_samples, to_tensor
from .kernels import center_gram

__all__ = ["hsic_biased", "hsic_unbiased", "hsic_all_pairs", "HSICStack", "gram_stack",
           "hsic_prepare", "hsic_cross", "hsic_self", "check_gram_stacks"]


def _f64(K) -> torch.Tensor:
    if not isinstance(K, torch.Tensor):
        K = to_tensor(K)
    return K.detach().to(torch.float64)


def gram_stack(Ks, name: str = "Ks") -> torch.Tensor:
    """``[a, n, n]`` tensor (or a sequence of ``[n, n]`` Grams) -> float64 ``[a, n, n]``.

    Raises ``ValueError`` naming ``name`` unless the input is a stack of square matrices.
    """
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


@dataclass
class HSICStack:
    """``a`` Gram matrices of ``n`` samples prepared for HSIC with any other stack.

    ``flat [a, n*n]``: the centred Grams (biased) or the Grams with zeroed diagonals (unbiased),
    flattened; ``rows [a, n]`` and ``totals [a]``: row sums and totals of the zero-diagonal
    Grams (unbiased only, else None); float64, on the Grams' device.
    """

    flat: torch.Tensor
    rows: torch.Tensor | None
    totals: torch.Tensor | None
    n: int
    unbiased: bool

    def __len__(self) -> int:
        return int(self.flat.shape[0])


def hsic_prepare(Ks, unbiased: bool = False) -> HSICStack:
    r"""Prepare Grams ``Ks [a, n, n]`` (or a sequence of ``[n, n]``) once for :func:`hsic_cross`.

    Biased: :math:`\operatorname{vec}(H K H)`; unbiased (``n >= 4``): :math:`\operatorname{vec}
    (\tilde K)`, row sums and total of the zero-diagonal Gram. Returns an :class:`HSICStack`.
    """
    K = gram_stack(Ks, "Ks")
    n = K.shape[-1]
    check_min_samples(n, unbiased)
    if unbiased:
        eye = torch.eye(n, dtype=torch.bool, device=K.device)
        K = K.masked_fill(eye, 0.0)
        r = K.sum(dim=-1)                               # [a, n]
        return HSICStack(K.reshape(K.shape[0], -1), r, r.sum(dim=-1), n, True)
    return HSICStack(center_gram(K).reshape(K.shape[0], -1), None, None, n, False)


def _constants(n: int):
    return 1.0 / float((n - 1) * (n - 2)), 2.0 / float(n - 2), float(n * (n - 3))


def hsic_cross(P: HSICStack, Q: HSICStack) -> torch.Tensor:
    """``[a, b]`` HSIC between every Gram of ``P`` and every Gram of ``Q`` (prepared stacks).

    Biased: ``P.flat @ Q.flat.T / (n-1)^2``; unbiased: the estimator of Song et al. (2012) from
    one ``[a, n*n] @ [n*n, b]`` product plus row-sum terms. float64, no host sync.
    """
    check_gram_stacks(P, Q)
    n = P.n
    if P.unbiased:
        c1, c2, den = _constants(n)
        return (P.flat @ Q.flat.T + c1 * P.totals[:, None] * Q.totals[None, :]
                - c2 * (P.rows @ Q.rows.T)) / den
    return (P.flat @ Q.flat.T) / float((n - 1) ** 2)


def hsic_self(P: HSICStack) -> torch.Tensor:
    """``[a]`` HSIC of each prepared Gram with itself (float64)."""
    n = P.n
    if P.unbiased:
        c1, c2, den = _constants(n)
        return ((P.flat * P.flat).sum(-1) + c1 * P.totals * P.totals
                - c2 * (P.rows * P.rows).sum(-1)) / den
    return (P.flat * P.flat).sum(-1) / float((n - 1) ** 2)


def check_gram_stacks(P, Q) -> int:
    """Check that two Gram stacks (tensors ``[a, n, n]`` or :class:`HSICStack`) share ``n`` and,
    for prepared stacks, the estimator; return ``n``."""
    n = P.n if isinstance(P, HSICStack) else P.shape[-1]
    m = Q.n if isinstance(Q, HSICStack) else Q.shape[-1]
    if m != n:
        raise ValueError(
            f"Ks hold Grams of {n} samples but Ls of {m}; both must come from the same "
            f"batch of samples.")
    if isinstance(P, HSICStack) and isinstance(Q, HSICStack) and P.unbiased != Q.unbiased:
        raise ValueError("both Gram stacks must be prepared with the same estimator (unbiased=).")
    return n


def hsic_all_pairs(Ks, Ls, unbiased: bool = False):
    r"""HSIC of every Gram in ``Ks [a, n, n]`` with every Gram in ``Ls [b, n, n]``, plus self terms.

    Returns ``(xy [a, b], xx [a], yy [b])`` float64 tensors on the inputs' device, with
    ``xy[i, j] = HSIC(Ks[i], Ls[j])``, ``xx[i] = HSIC(Ks[i], Ks[i])``, ``yy[j] = HSIC(Ls[j], Ls[j])``,
    using the biased estimator (default, as every CKA function) or the unbiased one of Song et al.
    (2012) (``unbiased=True``, needs ``n >= 4``; what the minibatch CKA sums). Inputs may be float32 (promoted to float64 here) or sequences of ``[n, n]`` Grams.
    All pairs come from one ``[a, n*n] @ [n*n, b]`` product and a few small ones (with zeroed
    diagonals, row sums ``r`` and totals ``s``:
    ``xy = (K~ L~' + s_K s_L'/((n-1)(n-2)) - 2/(n-2) r_K r_L') / (n(n-3))``); nothing is copied to
    the host, so it can run inside a per-batch loop.
    """
    K = gram_stack(Ks, "Ks")
    L = gram_stack(Ls, "Ls")
    check_gram_stacks(K, L)
    P, Q = hsic_prepare(K, unbiased), hsic_prepare(L, unbiased)
    return hsic_cross(P, Q), hsic_self(P), hsic_self(Q)

r"""Differences of one summary statistic of ``X [n, p1]`` and ``Y [n, p2]`` (ReSi, Klabunde et al.
2025): each measure is ``|s(X) - s(Y)|`` for a statistic ``s`` of one representation, so it is
0 for identical inputs, symmetric, and blind to everything the statistic ignores.

* **Magnitude** (ReSi; Wang et al. 2020): ``s(X) = ||mean_i x_i||_2``, the norm of the mean
  sample. Invariant to orthogonal maps and permutations of the features; streamable (the
  feature sums are a sufficient statistic).
* **Concentricity** (ReSi; Wang et al. 2020): ``s(X) = mean_i cos(x_i, mean_j x_j)``, the mean
  cosine of each sample with the mean sample. Also invariant to isotropic scaling. Undefined when
  the mean sample or a sample is zero (one ``RuntimeWarning``; those samples count as cosine 0,
  and an all-zero mean gives NaN).
* **Uniformity** (Wang & Isola 2020, ICML, "Understanding contrastive representation learning
  through alignment and uniformity"; ReSi): ``s(X) = log(mean_{i, j} exp(-t ||x_i - x_j||^2))``
  over all ordered pairs including ``i = j`` (as ReSi), ``t = 2``. Invariant to translation,
  orthogonal maps and permutations. Computed with ``logsumexp`` (no underflow for spread-out data).

``*_prepare(X, **options)`` returns the statistic (a float64 scalar tensor); ``statistic_score``
and ``statistic_score_all_pairs`` take absolute differences.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from ._common import check_real, matrix, matrix_pair

__all__ = [
    "magnitude", "magnitude_difference",
    "concentricity", "concentricity_difference",
    "uniformity", "uniformity_difference",
    "statistic_score", "statistic_score_all_pairs",
]


def statistic_score(sx: torch.Tensor, sy: torch.Tensor, **_options) -> float:
    """``|sx - sy|`` of two prepared statistics (NaN if either is NaN)."""
    return float((torch.as_tensor(sx) - torch.as_tensor(sy)).abs())


def statistic_score_all_pairs(sxs: Sequence[torch.Tensor], sys: Sequence[torch.Tensor],
                              **_options) -> np.ndarray:
    """``[a, b]`` absolute differences of every pair of prepared statistics."""
    a = torch.stack([torch.as_tensor(s, dtype=torch.float64).cpu() for s in sxs])
    b = torch.stack([torch.as_tensor(s, dtype=torch.float64).cpu() for s in sys])
    return (a[:, None] - b[None, :]).abs().numpy()


# --------------------------------------------------------------------------- magnitude
def magnitude(X, **_options) -> torch.Tensor:
    """``||mean_i x_i||_2`` of ``X [n, ...]`` (float64 scalar tensor)."""
    A = matrix(X, "X")
    return torch.linalg.vector_norm(A.mean(dim=0))


def magnitude_difference(X, Y) -> float:
    """``| ||mean X|| - ||mean Y|| |`` of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0)."""
    A, B = matrix_pair(X, Y)
    return statistic_score(magnitude(A), magnitude(B))


# --------------------------------------------------------------------------- concentricity
def concentricity(X, **_options) -> torch.Tensor:
    """Mean cosine of the samples of ``X [n, ...]`` with their mean (float64 scalar tensor)."""
    A = matrix(X, "X")
    mu = A.mean(dim=0)
    mu_norm = torch.linalg.vector_norm(mu)
    norms = torch.linalg.vector_norm(A, dim=1)
    if not bool(mu_norm > 0):
        warnings.warn("concentricity: the mean sample of X is zero, so its cosine with the samples "
                      "is undefined; returning NaN.", RuntimeWarning, stacklevel=2)
        return torch.tensor(math.nan, dtype=torch.float64, device=A.device)
    zero = ~(norms > 0)
    if bool(zero.any()):
        warnings.warn(f"concentricity: {int(zero.sum())} sample(s) of X are all zeros and have no "
                      "cosine with the mean; they count as cosine 0.", RuntimeWarning, stacklevel=2)
    cos = (A @ mu) / (torch.where(zero, torch.ones_like(norms), norms) * mu_norm)
    return cos.clamp(-1.0, 1.0).mean()


def concentricity_difference(X, Y) -> float:
    """``|concentricity(X) - concentricity(Y)|`` of ``X [n, ...]`` and ``Y [n, ...]`` in [0, 2]."""
    A, B = matrix_pair(X, Y)
    return statistic_score(concentricity(A), concentricity(B))


# --------------------------------------------------------------------------- uniformity
def uniformity(X, t: float = 2.0, **_options) -> torch.Tensor:
    """``log mean_{i,j} exp(-t ||x_i - x_j||^2)`` of ``X [n, ...]`` (all ordered pairs, i = j included)."""
    t = check_real(t, "t", "uniformity", 0.0, low_open=True)
    A = matrix(X, "X")
    n = A.shape[0]
    Ac = A - A.mean(dim=0, keepdim=True)
    g = Ac.square().sum(dim=1)
    D = (g[:, None] + g[None, :] - 2.0 * (Ac @ Ac.T)).clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return torch.logsumexp((-t * D).reshape(-1), dim=0) - 2.0 * math.log(n)


def uniformity_difference(X, Y, t: float = 2.0) -> float:
    """``|uniformity(X) - uniformity(Y)|`` of ``X [n, ...]`` and ``Y [n, ...]`` (>= 0)."""
    A, B = matrix_pair(X, Y)
    return statistic_score(uniformity(A, t=t), uniformity(B, t=t))

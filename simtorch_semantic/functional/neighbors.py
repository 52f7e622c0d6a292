r"""Neighbourhood measures: compare the k-nearest-neighbour graphs of ``X [n, p1]`` and ``Y [n, p2]``.

``N_X(i)`` is the set of the ``k`` samples most similar to sample ``i`` in ``X`` (the sample
itself excluded), by cosine similarity of the rows (default, as ReSi and Huh et al.) or by
Euclidean distance (``metric="euclidean"``). ``r_X(i, j) in {1..k}`` is the rank of ``j`` in
``N_X(i)`` (1 = nearest).

* **kNN Jaccard similarity** (ReSi; Schumacher et al. 2021, Klabunde et al. 2023):
  ``mean_i |N_X(i) & N_Y(i)| / |N_X(i) | N_Y(i)|``, in [0, 1].
* **Mutual kNN alignment** (Huh et al. 2024, ICML, "The Platonic Representation Hypothesis"):
  ``mean_i |N_X(i) & N_Y(i)| / k``, in [0, 1].
* **CKNNA** (Huh et al. 2024): CKA restricted to mutual neighbours. With the linear kernels
  ``K = X X^T``, ``L = Y Y^T`` (rows L2-normalised first when ``normalize=True``, the paper's
  setting) and the mask ``M_ij = [j in N_X(i) and j in N_Y(i)]``,
  ``CKNNA = h(K, L) / sqrt(h(K, K) h(L, L))`` with ``h(A, B) = HSIC_u(M_AB * A, M_AB * B)``,
  ``M_AB`` the mask of ``A``'s and ``B``'s neighbours (so ``M_KK`` is ``K``'s kNN mask), and
  ``HSIC_u`` the unbiased estimator of Song et al. 2012 (``unbiased=False``: the biased
  ``tr(A H B H) / (n-1)^2``). Neighbours come from the same kernel (largest ``K_ij``).
  Huh et al. add ``1e-6`` to the denominator; we do not, and return NaN with one warning when a
  self-term is not positive.
* **Rank similarity** (ReSi; Wang et al. 2020): for the common neighbours ``J_i = N_X(i) & N_Y(i)``
  ``v_i = (1 / sum_{l=1}^{|J_i|} 1/l) sum_{j in J_i} 2 / ((1 + |r_X(i,j) - r_Y(i,j)|)
  (r_X(i,j) + r_Y(i,j)))`` (0 when ``J_i`` is empty); the measure is ``mean_i v_i``, in [0, 1].
* **Second-order cosine similarity** (Hamilton et al. 2016, EMNLP, "Cultural shift or linguistic
  drift?"; ReSi): for ``U_i = N_X(i) | N_Y(i)`` the cosine of the vectors
  ``(s_X(i, j))_{j in U_i}`` and ``(s_Y(i, j))_{j in U_i}``, averaged over ``i``. ``s`` is the
  cosine similarity of the rows (``vectors="similarity"``, the paper's definition); ReSi's code
  compares cosine *distances* ``1 - s`` (``vectors="distance"``). In [-1, 1].

A constant representation (all samples identical) has no neighbourhoods: every function raises a
``ValueError`` for it, as for ``k > n - 1``.

Cost: one ``[n, n]`` similarity matrix (one matrix product) and one top-k per representation; the
comparisons are ``O(n k^2)`` or ``O(n^2)`` elementwise, with no Python loop over samples. Ties in
the similarity are broken by ``torch.topk`` (the lower index is not guaranteed to win), so inputs
with many exactly equal distances may give neighbour sets that differ from another library's.
``*_prepare(X, **options)`` builds the graph once per representation and ``*_score`` compares two;
``k`` and ``metric`` must be the same in both.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ._common import (NEIGHBOR_METRICS, check_k, check_nonzero_rows, check_not_constant, choice,
                      matrix, matrix_pair, similarity_matrix, topk_neighbors)

__all__ = [
    "KNNGraph", "knn_prepare",
    "jaccard_knn", "jaccard_knn_score",
    "mutual_knn", "mutual_knn_score",
    "rank_similarity", "rank_similarity_score",
    "second_order_cosine", "second_order_cosine_prepare", "second_order_cosine_score",
    "SECOND_ORDER_VECTORS",
    "cknna", "cknna_prepare", "cknna_score",
]

SECOND_ORDER_VECTORS = ("similarity", "distance")


@dataclass
class KNNGraph:
    """A representation's neighbour graph: ``idx [n, k]`` (nearest first), the metric, and the
    ``[n, n]`` similarity/kernel matrix ``S`` where the measure needs it (else None)."""

    idx: torch.Tensor
    metric: str
    S: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return int(self.idx.shape[1])


def _graph(X, k, metric, where, keep_matrix=False, name="X") -> KNNGraph:
    metric = choice(metric, NEIGHBOR_METRICS, "metric", where)
    A = matrix(X, name, min_n=2)
    k = check_k(k, A.shape[0], where)
    check_not_constant(A, name, where)
    if metric == "cosine":
        check_nonzero_rows(A, name, where)
    S = similarity_matrix(A, metric)
    return KNNGraph(topk_neighbors(S, k), metric, S if keep_matrix else None)


def knn_prepare(X, k: int = 10, metric: str = "cosine", **_options) -> KNNGraph:
    """The ``k``-nearest-neighbour graph of ``X [n, ...]`` (``idx [n, k]``, self excluded)."""
    return _graph(X, k, metric, "knn_prepare")


def _check_graphs(gx: KNNGraph, gy: KNNGraph, where: str) -> None:
    if gx.idx.shape[0] != gy.idx.shape[0]:
        raise ValueError(f"{where}: X has {gx.idx.shape[0]} samples but Y has {gy.idx.shape[0]}; both "
                         "must hold the same samples in the same order.")
    if gx.k != gy.k or gx.metric != gy.metric:
        raise ValueError(f"{where}: the two graphs were prepared with different k or metric "
                         f"({gx.k}, {gx.metric!r}) vs ({gy.k}, {gy.metric!r}); prepare both alike.")


def _matches(gx: KNNGraph, gy: KNNGraph) -> torch.Tensor:
    """``E [n, k, k]``: ``E[i, a, b]`` = the a-th neighbour of i in X is the b-th in Y."""
    return gx.idx[:, :, None] == gy.idx[:, None, :]


def _pair_graphs(X, Y, k, metric, where, keep_matrix=False):
    A, B = matrix_pair(X, Y)
    return (_graph(A, k, metric, where, keep_matrix, "X"),
            _graph(B, k, metric, where, keep_matrix, "Y"))


# --------------------------------------------------------------------------- Jaccard / mutual kNN
def jaccard_knn_score(gx: KNNGraph, gy: KNNGraph, **_options) -> float:
    """Mean Jaccard index of the neighbour sets of two prepared graphs."""
    _check_graphs(gx, gy, "jaccard_knn")
    inter = _matches(gx, gy).sum(dim=(1, 2)).to(torch.float64)
    return float((inter / (2 * gx.k - inter)).mean())


def jaccard_knn(X, Y, k: int = 10, metric: str = "cosine") -> float:
    """kNN Jaccard similarity of ``X [n, ...]`` and ``Y [n, ...]`` in [0, 1] (see module)."""
    return jaccard_knn_score(*_pair_graphs(X, Y, k, metric, "jaccard_knn"))


def mutual_knn_score(gx: KNNGraph, gy: KNNGraph, **_options) -> float:
    """Mean fraction of shared neighbours ``|N_X(i) & N_Y(i)| / k`` of two prepared graphs."""
    _check_graphs(gx, gy, "mutual_knn")
    inter = _matches(gx, gy).sum(dim=(1, 2)).to(torch.float64)
    return float((inter / gx.k).mean())


def mutual_knn(X, Y, k: int = 10, metric: str = "cosine") -> float:
    """Mutual kNN alignment (Huh et al. 2024) of ``X [n, ...]`` and ``Y [n, ...]`` in [0, 1]."""
    return mutual_knn_score(*_pair_graphs(X, Y, k, metric, "mutual_knn"))


# --------------------------------------------------------------------------- rank similarity
def rank_similarity_score(gx: KNNGraph, gy: KNNGraph, **_options) -> float:
    """Rank similarity of two prepared graphs (see module), in [0, 1]."""
    _check_graphs(gx, gy, "rank_similarity")
    k = gx.k
    E = _matches(gx, gy).to(torch.float64)  # [n, k, k]
    r = torch.arange(1, k + 1, dtype=torch.float64, device=E.device)
    ra, rb = r[:, None], r[None, :]
    w = 2.0 / ((1.0 + (ra - rb).abs()) * (ra + rb))  # [k, k]
    raw = (E * w).sum(dim=(1, 2))
    count = E.sum(dim=(1, 2)).long()
    harmonic = torch.cat([torch.zeros(1, dtype=torch.float64, device=E.device), (1.0 / r).cumsum(0)])
    norm = harmonic[count]
    v = torch.where(count > 0, raw / norm.clamp(min=1.0), torch.zeros_like(raw))
    return float(v.mean())


def rank_similarity(X, Y, k: int = 10, metric: str = "cosine") -> float:
    """Rank similarity (ReSi) of ``X [n, ...]`` and ``Y [n, ...]`` in [0, 1] (see module)."""
    return rank_similarity_score(*_pair_graphs(X, Y, k, metric, "rank_similarity"))


# --------------------------------------------------------------------------- second-order cosine
def second_order_cosine_prepare(X, k: int = 10, **_options) -> KNNGraph:
    """Cosine kNN graph of ``X [n, ...]`` keeping the ``[n, n]`` cosine similarity matrix."""
    return _graph(X, k, "cosine", "second_order_cosine", keep_matrix=True)


def second_order_cosine_score(gx: KNNGraph, gy: KNNGraph, vectors: str = "similarity",
                              **_options) -> float:
    """Mean cosine of the similarity vectors over the union of the neighbour sets (see module)."""
    vectors = choice(vectors, SECOND_ORDER_VECTORS, "vectors", "second_order_cosine")
    _check_graphs(gx, gy, "second_order_cosine")
    n = gx.idx.shape[0]
    union = torch.zeros((n, n), dtype=torch.bool, device=gx.idx.device)
    union.scatter_(1, gx.idx, True).scatter_(1, gy.idx, True)
    Sx, Sy = gx.S, gy.S
    if vectors == "distance":
        Sx, Sy = 1.0 - Sx, 1.0 - Sy
    Sx = torch.where(union, Sx, torch.zeros_like(Sx))
    Sy = torch.where(union, Sy, torch.zeros_like(Sy))
    dot = (Sx * Sy).sum(dim=1)
    den = torch.linalg.vector_norm(Sx, dim=1) * torch.linalg.vector_norm(Sy, dim=1)
    bad = ~(den > 0)
    if bool(bad.any()):
        warnings.warn(f"second_order_cosine: {int(bad.sum())} sample(s) have an all-zero "
                      "neighbour vector, whose cosine is undefined; they are left out of the mean.",
                      RuntimeWarning, stacklevel=3)
        if bool(bad.all()):
            return math.nan
    return float((dot[~bad] / den[~bad]).clamp(-1.0, 1.0).mean())


def second_order_cosine(X, Y, k: int = 10, vectors: str = "similarity") -> float:
    """Second-order cosine similarity of ``X [n, ...]`` and ``Y [n, ...]`` (see module)."""
    vectors = choice(vectors, SECOND_ORDER_VECTORS, "vectors", "second_order_cosine")
    A, B = matrix_pair(X, Y)
    return second_order_cosine_score(second_order_cosine_prepare(A, k=k),
                                     second_order_cosine_prepare(B, k=k), vectors=vectors)


# --------------------------------------------------------------------------- CKNNA
def cknna_prepare(X, k: int = 10, normalize: bool = True, **_options) -> KNNGraph:
    """Linear kernel ``K = X X^T`` of ``X [n, ...]`` (rows L2-normalised if ``normalize``) and
    its kNN graph by largest kernel value."""
    if not isinstance(normalize, bool):
        raise ValueError(f"cknna: normalize must be True or False, got {normalize!r}.")
    A = matrix(X, "X", min_n=2)
    k = check_k(k, A.shape[0], "cknna")
    check_not_constant(A, "X", "cknna")
    if normalize:
        check_nonzero_rows(A, "X", "cknna")
        A = A / torch.linalg.vector_norm(A, dim=1, keepdim=True)
    K = A @ A.T
    return KNNGraph(topk_neighbors(K, k), "kernel", K)


def _masked_hsic(A: torch.Tensor, B: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """HSIC of two (masked, not necessarily symmetric) ``[n, n]`` matrices."""
    n = A.shape[0]
    if unbiased:
        A = A.clone().fill_diagonal_(0.0)
        B = B.clone().fill_diagonal_(0.0)
        # tr(A B) + 1'A1 1'B1 / ((n-1)(n-2)) - 2/(n-2) 1'AB1, over n(n-3)
        t1 = (A * B.T).sum()
        t2 = A.sum() * B.sum() / ((n - 1) * (n - 2))
        t3 = 2.0 / (n - 2) * (A.sum(dim=0) @ B.sum(dim=1))
        return (t1 + t2 - t3) / (n * (n - 3))
    Ac = A - A.mean(dim=0, keepdim=True) - A.mean(dim=1, keepdim=True) + A.mean()
    return (Ac * B.T).sum() / (n - 1) ** 2


def _mask(n: int, idx: torch.Tensor) -> torch.Tensor:
    m = torch.zeros((n, n), dtype=torch.float64, device=idx.device)
    return m.scatter_(1, idx, 1.0)


def cknna_score(gx: KNNGraph, gy: KNNGraph, unbiased: bool = True, **_options) -> float:
    """CKNNA of two prepared kernels (see module); NaN with a warning if a self-term is <= 0."""
    _check_graphs(gx, gy, "cknna")
    n = gx.idx.shape[0]
    if unbiased and n < 4:
        raise ValueError(f"cknna: the unbiased HSIC estimator needs at least 4 samples, got n={n}; "
                         "use more samples or unbiased=False.")
    mx, my = _mask(n, gx.idx), _mask(n, gy.idx)
    m = mx * my
    xy = _masked_hsic(m * gx.S, m * gy.S, unbiased)
    xx = _masked_hsic(mx * gx.S, mx * gx.S, unbiased)
    yy = _masked_hsic(my * gy.S, my * gy.S, unbiased)
    if not (bool(xx > 0) and bool(yy > 0)):
        warnings.warn("cknna: the neighbour-restricted HSIC of X or Y with itself is not positive "
                      f"(HSIC(X,X)={float(xx):.3g}, HSIC(Y,Y)={float(yy):.3g}), so CKNNA is undefined "
                      "and returned as NaN; use a larger k or more samples.", RuntimeWarning,
                      stacklevel=3)
        return math.nan
    return float(xy / torch.sqrt(xx * yy))


def cknna(X, Y, k: int = 10, normalize: bool = True, unbiased: bool = True) -> float:
    """CKNNA (Huh et al. 2024) of ``X [n, ...]`` and ``Y [n, ...]`` (see module); 1 for identical."""
    if not isinstance(unbiased, bool):
        raise ValueError(f"cknna: unbiased must be True or False, got {unbiased!r}.")
    A, B = matrix_pair(X, Y)
    return cknna_score(cknna_prepare(A, k=k, normalize=normalize),
                       cknna_prepare(B, k=k, normalize=normalize), unbiased=unbiased)

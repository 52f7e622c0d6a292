r"""Semantic CKA on stored activations: CKA between permutation-invariant RSMs.

Wald et al., "Decoupling Semantic Similarity from Spatial Alignment for Neural Networks"
(NeurIPS 2024). For a representation ``X [n, C, H, W]`` (or tokens ``[n, T, D]``) the semantic
RSM is ``K[i, j] = kernel(x_i, pi*(x_j))`` with the permutation of positions ``pi*`` that
maximises the inner product of the two samples
(:func:`~simtorch_semantic.functional.semantic.semantic_sim_parallel`); semantic CKA is

.. math:: \mathrm{CKA}(K, L) = \frac{\mathrm{HSIC}(K, L)}{\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}}

with the biased HSIC (default) or the unbiased one of Song et al. (2012). ``baseline=True`` uses
the spatio-semantic baseline RSM (identity permutation) instead. Representations without
positions (2-D ``[n, d]``, or one position) have nothing to permute: their RSM is the baseline.

The RSM need not be positive semi-definite; ``psd="clip"`` projects it onto the PSD cone first
(negative eigenvalues set to 0), ``psd=None`` (default) uses it as given, as the paper does.

This is the functional form behind the registry entry ``"semantic_cka"`` (its ``prepare`` builds
the RSM once per representation); :class:`~simtorch_semantic.SemanticCKA` is the layer x layer
class with notes, feasibility checks and the exact-solver time estimate.
"""
from __future__ import annotations

import numpy as np
import torch

from ._validation import check_bool, check_choice, to_tensor
from .cka import PreparedGram, cka_prepare_gram, cka_score
from .matching import SOLVERS
from .semantic import KERNELS, LAYOUTS, semantic_sim_parallel, similarity_calculation

__all__ = ["PSD_MODES", "semantic_rsm", "psd_project", "semantic_cka_prepare", "semantic_cka"]

PSD_MODES = (None, "clip")


def psd_project(K) -> np.ndarray:
    """Nearest positive semi-definite matrix in Frobenius norm, ``V max(w, 0) V^T``: float64
    ``[n, n]`` from a symmetric ``[n, n]`` array or tensor."""
    K = np.asarray(K, dtype=np.float64)
    K = 0.5 * (K + K.T)
    w, V = np.linalg.eigh(K)
    return (V * np.maximum(w, 0.0)) @ V.T


def _positions(T: torch.Tensor, layout: str) -> int:
    if T.dim() <= 2:
        return 0
    if T.dim() == 3 and layout in ("auto", "nsc"):
        return int(T.shape[1])
    if layout == "nsc":
        return int(np.prod(T.shape[1:-1]))
    return int(np.prod(T.shape[2:]))


def semantic_rsm(X, kernel: str = "rbf", matching: str = "exact", baseline: bool = False,
                 layout: str = "auto", n_workers=None, progress: bool = False,
                 **matching_options) -> np.ndarray:
    """The ``[n, n]`` semantic RSM (float64 NumPy) of one representation ``X [n, ...]``.

    4-D+ ``[n, C, *positions]`` and 3-D tokens ``[n, T, D]`` (``layout="auto"``; ``"ncs"`` reads
    3-D as ``[n, C, S]``) are matched position by position with ``matching`` (a solver of
    ``functional.matching.SOLVERS``); 2-D ``[n, d]`` and single-position inputs get the baseline
    RSM. ``baseline=True``: the baseline RSM for every input.
    """
    if kernel != "ip":
        kernel = check_choice(kernel, KERNELS, "kernel", "semantic_rsm")
    matching = check_choice(matching, SOLVERS, "matching (solver)", "semantic_rsm")
    layout = check_choice(layout, LAYOUTS, "layout", "semantic_rsm")
    baseline = check_bool(baseline, "baseline", "semantic_rsm")
    T = to_tensor(X, "X")
    if T.dim() < 2:
        raise ValueError(f"X must have shape [n, ...] with one row per sample, got {tuple(T.shape)}.")
    if T.dim() > 4:
        T = T.reshape(T.shape[0], T.shape[1], T.shape[2], -1)
    S = _positions(T, layout)
    if S == 0:
        return similarity_calculation(T.reshape(T.shape[0], -1)[:, :, None], kernel=kernel, layout="ncs")
    if baseline or S == 1:
        return similarity_calculation(T, kernel=kernel, layout=layout)
    return semantic_sim_parallel(T, kernel=kernel, matching=matching, n_workers=n_workers,
                                 layout=layout, progress=progress, **matching_options)


def semantic_cka_prepare(X, kernel: str = "rbf", matching: str = "exact", baseline: bool = False,
                         unbiased: bool = False, psd=None, layout: str = "auto",
                         name: str = "X") -> PreparedGram:
    """Prepare ``X [n, ...]`` once for semantic CKA: its semantic RSM (:func:`semantic_rsm`),
    PSD-projected when ``psd="clip"``, as a :class:`~simtorch_semantic.functional.cka.PreparedGram`
    (score with ``cka_score`` / ``cka_score_all_pairs``)."""
    if psd not in PSD_MODES:
        raise ValueError(f"semantic_cka: psd must be None (RSM as given) or 'clip' (PSD "
                         f"projection), got {psd!r}.")
    K = semantic_rsm(X, kernel=kernel, matching=matching, baseline=baseline, layout=layout)
    if psd == "clip":
        K = psd_project(K)
    return cka_prepare_gram(torch.as_tensor(K), unbiased=check_bool(unbiased, "unbiased", "semantic_cka"),
                            name=name)


def semantic_cka(X, Y, kernel: str = "rbf", matching: str = "exact", baseline: bool = False,
                 unbiased: bool = False, psd=None, layout: str = "auto") -> float:
    """Semantic CKA (Wald et al. 2024) of ``X [n, ...]`` and ``Y [n, ...]`` (same ``n``; channel
    and position counts may differ): CKA of their semantic RSMs. Python float; NaN with a
    ``RuntimeWarning`` when an RSM is constant after centring."""
    px = semantic_cka_prepare(X, kernel, matching, baseline, unbiased, psd, layout, name="X")
    py = semantic_cka_prepare(Y, kernel, matching, baseline, unbiased, psd, layout, name="Y")
    if px.n != py.n:
        raise ValueError(f"X has {px.n} samples (rows) but Y has {py.n}; both must hold the same "
                         "samples in the same order.")
    return cka_score(px, py)

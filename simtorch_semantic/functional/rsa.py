r"""Representational dissimilarity matrices (RDMs) and their comparison (RSA).

An RDM of a representation ``X`` of ``n`` samples is the ``[n, n]`` matrix of pairwise
dissimilarities between the samples' activation patterns (Kriegeskorte et al. 2008).

Metrics (``x_i`` is row ``i`` of ``X`` flattened to ``d`` features)::

    "L2squared"            ||x_i - x_j||^2
    "L2"                   ||x_i - x_j||
    "L2squared_normalize"  ||u_i - u_j||^2          u_i = x_i / ||x_i||
    "L2_normalize"         ||u_i - u_j||
    "cosine"               1 - <u_i, u_j>           = ||u_i - u_j||^2 / 2
    "pearson"              1 - r(x_i, x_j)          = ||z_i - z_j||^2 / 2,
                                                      z_i = (x_i - mean(x_i)) / ||x_i - mean(x_i)||

Every metric is evaluated as a squared Euclidean distance of a transformed matrix ``Z`` with the
centred Gram trick: ``Zc = Z - mean over samples`` (which leaves distances unchanged but protects
precision), ``D_ij = g_i + g_j - 2 <zc_i, zc_j>`` with ``g_i = ||zc_i||^2``, clamped at 0, with an
exactly zero diagonal and exact symmetry. Where the trick cancels catastrophically
(``D_ij <= sqrt(eps) (g_i + g_j)``: duplicates and near-duplicates) the entry is recomputed
directly as ``sum((z_i - z_j)^2)``, so identical samples are exactly 0 apart in every metric and
close ones keep their digits. Rows are processed in blocks of ``chunk_size`` and only
the upper block triangle is multiplied, so the temporary memory is ``chunk_size x n``.

Undefined entries: a constant pattern has no Pearson correlation with anything, and an all-zero
pattern has no direction (``cosine``, ``*_normalize``). Their rows and columns of the RDM are NaN
and a ``RuntimeWarning`` names the rows.

RDM comparison (``compare_rdms``) correlates the upper triangles (``i < j``) by cosine, Pearson,
Spearman or Kendall's tau-b. With ``center=True`` both full matrices are double-centred first
(``H R H`` with ``H = I - 11^T/n``) and compared whole, the diagonal included. This makes the
link with CKA exact (Williams 2024, "Equivalence between representational similarity analysis,
centered kernel alignment, and canonical correlations analysis"): for squared Euclidean RDMs
``H D H = -2 H X X^T H`` (note the sign), so

    compare_rdms(rdm(X, "L2squared"), rdm(Y, "L2squared"), "cosine", center=True)
        == linear_cka(X, Y)                                  (biased linear CKA)

and likewise ``"L2squared_normalize"`` / ``"cosine"`` RDMs give linear CKA of row-normalised data,
and ``"pearson"`` RDMs give linear CKA of row-z-scored data. Comparisons of the upper triangles
alone (``center=False``, the classic RSA) are related to these values but not equal to them: they
drop the diagonal and remove at most the overall mean of the entries (``"pearson"``), not the row
and column means that double-centring removes, so they can differ noticeably from CKA.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from simtorch_semantic.functional._validation import check_choice, check_same_n, data_matrix

__all__ = [
    "RDM_METRICS",
    "COMPARE_METHODS",
    "rdm",
    "compare_rdms",
    "compare_rdms_all_pairs",
    "double_center",
    "upper_triangle",
    "rdm_vectors",
    "rdm_similarities",
    "PreparedRDM",
    "rsa_prepare",
    "rsa_score",
    "rsa_score_all_pairs",
    "rsa",
]

RDM_METRICS = ("pearson", "L2", "L2squared", "L2_normalize", "L2squared_normalize", "cosine")
COMPARE_METHODS = ("cosine", "pearson", "spearman", "kendall")

# temporary block of the RDM computation is at most this many elements unless chunk_size is given
_AUTO_BLOCK_ELEMENTS = 2**25


# --------------------------------------------------------------------------- helpers (shared)
# the shared validation vocabulary (functional/_validation.py) under this module's short names
_data_matrix = data_matrix
_canonical = check_choice


def _row_list(rows: torch.Tensor, limit: int = 10) -> str:
    idx = rows.tolist()
    text = ", ".join(str(i) for i in idx[:limit])
    if len(idx) > limit:
        text += f", ... ({len(idx)} in total)"
    return "[" + text + "]"


# --------------------------------------------------------------------------- RDM
def rdm(
    X,
    metric: str = "pearson",
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
    device=None,
) -> torch.Tensor:
    """Representational dissimilarity matrix of the ``n`` patterns in ``X``.

    Args:
        X: activations ``[n, ...]`` (torch tensor or NumPy array); each sample is flattened.
        metric: one of ``"pearson"`` (1 - Pearson r), ``"L2"``, ``"L2squared"``,
            ``"L2_normalize"``, ``"L2squared_normalize"`` (rows L2-normalised first),
            ``"cosine"`` (1 - cosine similarity). See the module docstring for the formulas.
        dtype: precision of the computation and the result (float64 by default; float32 is
            faster on GPUs).
        chunk_size: rows per block; the temporary memory is ``chunk_size x n`` entries. ``None``
            picks about ``n / 4`` rows (at least 512), capped at 2**25 entries per block.
        device: where to compute (default: the device of ``X``).

    Returns:
        ``[n, n]`` symmetric tensor with a zero diagonal and non-negative entries. Rows/columns of
        constant patterns (``"pearson"``) or all-zero patterns (``"cosine"``, ``"*_normalize"``)
        are NaN, with a ``RuntimeWarning`` naming them.
    """
    metric = _canonical(metric, RDM_METRICS, "metric", "rdm")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"rdm: dtype must be a floating torch dtype such as torch.float64, got {dtype!r}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"rdm: chunk_size must be a positive integer or None, got {chunk_size!r}.")
    Z = _data_matrix(X, "X", dtype=dtype, device=device)

    undefined = None
    if metric == "pearson":
        undefined = Z.amax(dim=1) == Z.amin(dim=1)
        Z = Z - Z.mean(dim=1, keepdim=True)
    elif metric in ("cosine", "L2_normalize", "L2squared_normalize"):
        undefined = ~(Z != 0).any(dim=1)
    if undefined is not None:
        norms = torch.linalg.vector_norm(Z, dim=1, keepdim=True)
        norms = torch.where(undefined[:, None], torch.ones_like(norms), norms)
        Z = Z / norms
        Z[undefined] = 0
        if bool(undefined.any()):
            rows = torch.nonzero(undefined).flatten().cpu()
            kind = "constant" if metric == "pearson" else "all-zero"
            why = (
                "the Pearson correlation with a constant pattern is undefined"
                if metric == "pearson"
                else "an all-zero pattern has no direction"
            )
            warnings.warn(
                f"rdm(metric={metric!r}): rows {_row_list(rows)} of X are {kind}; {why}, so "
                "those rows and columns of the RDM are NaN. Drop those samples, or use "
                "metric='L2squared', for a NaN-free RDM.",
                RuntimeWarning,
                stacklevel=2,
            )

    D = _squared_distances(Z, chunk_size)
    if metric in ("L2", "L2_normalize"):
        D.sqrt_()
    elif metric in ("cosine", "pearson"):
        D.mul_(0.5).clamp_(max=2.0)
    if undefined is not None and bool(undefined.any()):
        D[undefined, :] = float("nan")
        D[:, undefined] = float("nan")
    return D


def _squared_distances(Z: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """Exactly symmetric ``[n, n]`` squared Euclidean distances between the rows of ``Z``.

    Centred Gram trick over row blocks; only blocks on or above the diagonal are multiplied.
    """
    n = Z.shape[0]
    Zc = Z - Z.mean(dim=0, keepdim=True)
    g = (Zc * Zc).sum(dim=1)
    if chunk_size is None:
        # a few blocks halve the work (only the upper block triangle is multiplied) while each
        # product stays large enough to run at full BLAS speed
        chunk_size = max(1, min(n, _AUTO_BLOCK_ELEMENTS // n, max(512, -(-n // 4))))
    out = torch.empty((n, n), dtype=Z.dtype, device=Z.device)
    # Gram-trick entries below tau * (g_i + g_j) have lost more than half of their digits to
    # cancellation (relative error ~ eps (g_i + g_j) / D_ij); they are recomputed directly.
    tau = torch.finfo(Z.dtype).eps ** 0.5
    screen = tau * 2.0 * g.max()  # no entry above this can need it (0-dim tensor, no sync)
    for s in range(0, n, chunk_size):
        e = min(n, s + chunk_size)
        blk = Zc[s:e] @ Zc[s:].T  # [e - s, n - s]
        blk.mul_(-2.0).add_(g[s:e, None]).add_(g[None, s:])
        blk.clamp_(min=0.0)
        c = e - s
        diag_blk = blk[:, :c]
        diag_blk.copy_((diag_blk + diag_blk.T) * 0.5)
        _refine_close_pairs(blk, Z, g, s, c, tau, screen, chunk_size)
        diag_blk.fill_diagonal_(0.0)
        out[s:e, s:] = blk
        out[e:, s:e] = blk[:, c:].T
    return out


def _refine_close_pairs(blk: torch.Tensor, Z: torch.Tensor, g: torch.Tensor, s: int, c: int,
                        tau: float, screen: torch.Tensor, chunk_size: int) -> None:
    """Recompute, in place, the entries of one block that the Gram trick cannot resolve.

    ``blk [c, n - s]`` holds rows ``s .. s + c`` against columns ``s .. n`` of the squared
    distances; an off-diagonal entry with ``D_ij <= tau (g_i + g_j)`` (near or exact duplicates)
    is replaced by ``sum((z_i - z_j)^2)`` evaluated directly: exactly 0 for identical rows,
    accurate for close ones, and symmetric because ``(a - b)^2 == (b - a)^2`` in floating point.
    The common case (no such pair) costs one ``amin`` over the block: entries above
    ``screen = 2 tau max(g)`` cannot qualify. Candidates are then filtered pair by pair and
    recomputed in slices of at most ``chunk_size`` pairs. The diagonal of the block's first
    ``c`` columns is left as +inf (the caller zeroes it).
    """
    blk[:, :c].fill_diagonal_(float("inf"))
    if not bool(blk.amin() <= screen):
        return
    idx = (blk <= screen).nonzero()
    r, k = idx[:, 0], idx[:, 1]
    keep = blk[r, k] <= tau * (g[s + r] + g[s + k])
    r, k = r[keep], k[keep]
    step = max(1, min(chunk_size, _AUTO_BLOCK_ELEMENTS // max(1, Z.shape[1])))
    for t in range(0, r.shape[0], step):
        rr, kk = r[t:t + step], k[t:t + step]
        diff = Z[s + rr] - Z[s + kk]
        blk[rr, kk] = (diff * diff).sum(dim=1)


# --------------------------------------------------------------------------- comparison
def double_center(R) -> torch.Tensor:
    """Double-centred matrix ``H R H`` (``H = I - 11^T / n``) of a square ``[n, n]`` matrix, float64."""
    R = _as_rdm(R, "R")
    return _double_center(R)


def _double_center(R: torch.Tensor) -> torch.Tensor:
    R = R - R.mean(dim=0, keepdim=True)
    return R - R.mean(dim=1, keepdim=True)


def upper_triangle(R) -> torch.Tensor:
    """Entries above the diagonal (``i < j``, row-major) of a square ``[n, n]`` matrix: ``[n(n-1)/2]``."""
    R = _as_rdm(R, "R")
    return _upper(R)


def _upper(R: torch.Tensor) -> torch.Tensor:
    """Row-major entries ``i < j`` as one vector (row slices: no ``n x n`` index or mask)."""
    n = R.shape[0]
    return torch.cat([R[i, i + 1:] for i in range(n - 1)])


def _as_rdm(R, name: str) -> torch.Tensor:
    """Validate a square RDM ``[n, n]`` (n >= 3, no NaN) and return it as float64 tensor."""
    if isinstance(R, np.ndarray):
        if R.dtype == object or R.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a numeric [n, n] array, got dtype {R.dtype}.")
        R = torch.from_numpy(np.ascontiguousarray(R))
    elif not isinstance(R, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape [n, n], got {type(R).__name__}."
        )
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(
            f"{name} must be a square RDM of shape [n, n], got shape {tuple(R.shape)}; build one "
            "with rdm(X, metric)."
        )
    if R.shape[0] < 3:
        raise ValueError(
            f"{name} is {R.shape[0]}x{R.shape[0]}; comparing RDMs needs n >= 3 samples (at least "
            "3 entries above the diagonal)."
        )
    R = R.to(torch.float64)
    bad = ~torch.isfinite(R)
    if bool(bad.any()):
        whole = bad.sum(dim=1) >= R.shape[0] - 1  # samples whose whole row is undefined
        rows = torch.nonzero(whole if bool(whole.any()) else bad.any(dim=1)).flatten().cpu()
        raise ValueError(
            f"{name} contains NaN/Inf in rows {_row_list(rows)} (e.g. constant patterns under "
            "metric='pearson'); drop those samples from both RDMs before comparing them."
        )
    return R


def _rdm_vectors(Rs: Sequence[torch.Tensor], center: bool) -> torch.Tensor:
    """Stack the entries compared by ``compare_rdms``: ``[k, n(n-1)/2]`` or ``[k, n*n]``, float64."""
    if center:
        return torch.stack([_double_center(R).reshape(-1) for R in Rs])
    return torch.stack([_upper(R) for R in Rs])


def _ranks(V: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based; ties share their mean rank) of each row of ``V`` ``[k, m]``, float64.

    A row holding NaN gets NaN ranks (its correlations are then NaN).
    """
    k, m = V.shape
    out = torch.empty((k, m), dtype=torch.float64, device=V.device)
    for r in range(k):
        v = V[r]
        if bool(torch.isnan(v).any()):
            out[r] = float("nan")
            continue
        sv, order = torch.sort(v)
        new = torch.ones(m, dtype=torch.bool, device=V.device)
        new[1:] = sv[1:] != sv[:-1]
        starts = torch.nonzero(new).flatten()
        counts = torch.diff(starts, append=torch.tensor([m], device=V.device))
        mean_rank = starts.to(torch.float64) + (counts.to(torch.float64) + 1.0) / 2.0
        out[r, order] = mean_rank[torch.cumsum(new, 0) - 1]
    return out


def _unit_rows(V: torch.Tensor, center: bool) -> torch.Tensor:
    if center:
        V = V - V.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(V, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        warnings.warn(
            "compare_rdms: an RDM has no variation in the compared entries (e.g. all "
            "distances equal); its similarity is undefined and returned as NaN.",
            RuntimeWarning,
            stacklevel=3,
        )
    return V / norms


def _vector_similarities(V1: torch.Tensor, V2: torch.Tensor, method: str, progress: bool = False) -> np.ndarray:
    """``[k1, k2]`` similarities between the rows of ``V1`` and ``V2`` (float64 NumPy)."""
    if method == "cosine":
        S = _unit_rows(V1, False) @ _unit_rows(V2, False).T
    elif method == "pearson":
        S = _unit_rows(V1, True) @ _unit_rows(V2, True).T
    elif method == "spearman":
        S = _unit_rows(_ranks(V1), True) @ _unit_rows(_ranks(V2), True).T
    else:  # kendall: no product form; one O(m log m) tau-b per pair
        from scipy.stats import kendalltau
        from tqdm.auto import tqdm

        A = V1.cpu().numpy()
        B = V2.cpu().numpy()
        out = np.empty((A.shape[0], B.shape[0]))
        pairs = [(i, j) for i in range(A.shape[0]) for j in range(B.shape[0])]
        for i, j in tqdm(pairs, desc="kendall tau", disable=not progress or len(pairs) < 2):
            out[i, j] = kendalltau(A[i], B[j]).statistic
        return out
    return S.clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)


def compare_rdms(A, B, method: str = "pearson", center: bool = False) -> float:
    """Similarity of two RDMs ``[n, n]`` over the same ``n`` samples.

    Args:
        A, B: RDMs ``[n, n]`` (torch or NumPy), e.g. from :func:`rdm`; n >= 3, no NaN.
        method: ``"pearson"`` (default, as everywhere in the package), ``"cosine"``,
            ``"spearman"`` (Pearson of average ranks) or ``"kendall"`` (tau-b,
            ``scipy.stats.kendalltau``).
        center: ``False`` compares the upper triangles ``A[i, j], i < j`` (classic RSA).
            ``True`` double-centres both full matrices (``H A H``, ``H B H``) and compares all
            ``n*n`` entries, diagonal included; with ``method="cosine"`` and squared Euclidean
            RDMs this is exactly linear CKA (see the module docstring).

    Returns:
        float in ``[-1, 1]`` (NaN, with a warning, when an RDM has no variation).
    """
    method = _canonical(method, COMPARE_METHODS, "method", "compare_rdms")
    A = _as_rdm(A, "A")
    B = _as_rdm(B, "B")
    if A.shape != B.shape:
        raise ValueError(
            f"A and B must be RDMs of the same n samples, got shapes {tuple(A.shape)} and "
            f"{tuple(B.shape)}; compute both from activations of the same samples."
        )
    B = B.to(A.device)
    V = _rdm_vectors([A, B], bool(center))
    return float(_vector_similarities(V[:1], V[1:], method)[0, 0])


def compare_rdms_all_pairs(
    As: Sequence, Bs: Sequence, method: str = "pearson", center: bool = False, progress: bool = False
) -> np.ndarray:
    """``[a, b]`` matrix of :func:`compare_rdms` between every RDM in ``As`` and every RDM in ``Bs``.

    ``As`` is a sequence of ``a`` RDMs ``[n, n]`` (or a tensor ``[a, n, n]``), ``Bs`` likewise.
    The entries of each RDM are extracted once; cosine, Pearson and Spearman are one matrix
    product for all pairs (Spearman ranks each RDM once). Kendall's tau runs per pair.
    """
    method = _canonical(method, COMPARE_METHODS, "method", "compare_rdms_all_pairs")
    As = [_as_rdm(R, f"As[{i}]") for i, R in enumerate(As)]
    Bs = [_as_rdm(R, f"Bs[{i}]") for i, R in enumerate(Bs)]
    if not As or not Bs:
        raise ValueError("compare_rdms_all_pairs: As and Bs must each hold at least one RDM.")
    shapes = {tuple(R.shape) for R in As + Bs}
    if len(shapes) != 1:
        raise ValueError(
            f"compare_rdms_all_pairs: all RDMs must have the same shape [n, n], got {sorted(shapes)}."
        )
    dev = As[0].device
    V1 = _rdm_vectors([R.to(dev) for R in As], bool(center))
    V2 = _rdm_vectors([R.to(dev) for R in Bs], bool(center))
    return _vector_similarities(V1, V2, method, progress=progress)


# --------------------------------------------------------------------------- prepare / score
def rdm_vectors(Rs: Sequence, center: bool = False) -> torch.Tensor:
    """The entries :func:`compare_rdms` compares, one row per RDM: ``[k, n(n-1)/2]`` (upper
    triangles, row-major) or, with ``center``, ``[k, n*n]`` (double-centred full matrices); float64.

    ``Rs``: a sequence of square ``[n, n]`` matrices (NaN entries are kept).
    """
    Rs = [R if isinstance(R, torch.Tensor) else torch.as_tensor(np.asarray(R)) for R in Rs]
    return _rdm_vectors([R.to(torch.float64) for R in Rs], bool(center))


def rdm_similarities(V1: torch.Tensor, V2: torch.Tensor, method: str = "pearson",
                     progress: bool = False) -> np.ndarray:
    """``[k1, k2]`` similarities between rows of RDM vectors ``V1 [k1, m]`` and ``V2 [k2, m]``
    (from :func:`rdm_vectors`) with ``method`` (cosine, pearson, spearman: one matrix product;
    kendall: one tau-b per pair). float64 NumPy; NaN rows give NaN."""
    method = check_choice(method, COMPARE_METHODS, "method", "rdm_similarities")
    return _vector_similarities(V1, V2, method, progress=progress)


@dataclass
class PreparedRDM:
    """One representation prepared for RSA: ``vector [m]`` float64 is the compared RDM entries
    already transformed for ``method`` (unit norm for cosine; centred and unit norm for pearson;
    ranks, centred and unit norm for spearman; raw for kendall), so a pair is one dot product.
    ``defined`` is False when the RDM has NaN entries or no variation (every score is NaN)."""

    vector: torch.Tensor
    method: str
    defined: bool


def _method_vector(v: torch.Tensor, method: str) -> torch.Tensor:
    if method == "kendall":
        return v
    if method == "spearman":
        v = _ranks(v[None])[0]
    if method in ("pearson", "spearman"):
        v = v - v.mean()
    norm = torch.linalg.vector_norm(v)
    return v / norm if bool(norm > 0) else torch.full_like(v, math.nan)


def rsa_prepare(X, metric: str = "pearson", method: str = "pearson", center: bool = False,
                dtype: torch.dtype = torch.float64, chunk_size: int | None = None,
                device=None, name: str = "X") -> PreparedRDM:
    """Prepare one representation ``X [n, ...]`` (n >= 3) for RSA, once.

    Builds ``rdm(X, metric)``, keeps the entries :func:`compare_rdms` compares (upper triangle,
    or the double-centred full matrix with ``center``) and transforms them for ``method`` (see
    :class:`PreparedRDM`). An RDM without variation (e.g. all samples identical) gets one
    ``RuntimeWarning`` and NaN scores; NaN RDM rows (constant patterns under ``"pearson"``)
    are warned about by :func:`rdm` and give NaN scores as well.
    """
    metric = check_choice(metric, RDM_METRICS, "metric", "rsa_prepare")
    method = check_choice(method, COMPARE_METHODS, "method", "rsa_prepare")
    if not isinstance(center, (bool, np.bool_)):
        raise ValueError(f"rsa_prepare: center must be True or False, got {center!r}.")
    R = rdm(X, metric, dtype=dtype, chunk_size=chunk_size, device=device)
    v = _rdm_vectors([R.to(torch.float64)], bool(center))[0]
    del R
    finite = bool(torch.isfinite(v).all())
    spread = v.amax() - v.amin() if finite else None
    defined = finite and bool(spread > 0)
    if finite and not defined:
        warnings.warn(
            f"rsa: the RDM of {name} has all compared entries equal (e.g. every sample "
            f"identical); its RSA similarity is undefined and returned as NaN.",
            RuntimeWarning, stacklevel=2)
    if not defined:
        v = torch.full_like(v, math.nan)
    return PreparedRDM(_method_vector(v, method) if defined else v, method, defined)


def rsa_score_all_pairs(pxs: Sequence[PreparedRDM], pys: Sequence[PreparedRDM],
                        progress: bool = False) -> np.ndarray:
    """``[a, b]`` RSA similarities of every prepared representation in ``pxs`` with every one in
    ``pys`` (same ``n``, metric, method, center): one ``[a, m] @ [m, b]`` product (kendall: one
    tau-b per pair, with a progress bar). float64 NumPy, NaN for undefined RDMs."""
    pxs, pys = list(pxs), list(pys)
    if not pxs or not pys or not all(isinstance(p, PreparedRDM) for p in pxs + pys):
        raise TypeError("pxs and pys must be non-empty sequences of PreparedRDM (from rsa_prepare).")
    methods = {p.method for p in pxs + pys}
    sizes = {p.vector.numel() for p in pxs + pys}
    if len(methods) != 1 or len(sizes) != 1:
        raise ValueError(
            "rsa_score_all_pairs: every prepared RDM must come from the same number of samples and "
            f"the same method/center; got methods {sorted(methods)}, vector sizes {sorted(sizes)}.")
    method = methods.pop()
    dev = pxs[0].vector.device
    V1 = torch.stack([p.vector.to(dev) for p in pxs])
    V2 = torch.stack([p.vector.to(dev) for p in pys])
    if method == "kendall":
        return _vector_similarities(V1, V2, method, progress=progress)
    return (V1 @ V2.T).clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)


def rsa_score(px: PreparedRDM, py: PreparedRDM) -> float:
    """RSA similarity of two prepared representations (:func:`rsa_prepare`)."""
    return float(rsa_score_all_pairs([px], [py])[0, 0])


def rsa(X, Y, metric: str = "pearson", method: str = "pearson", center: bool = False) -> float:
    """RSA of ``X [n, ...]`` and ``Y [n, ...]``: ``compare_rdms(rdm(X, metric), rdm(Y, metric),
    method, center)`` in [-1, 1], higher is more similar (Kriegeskorte et al. 2008).

    Unlike :func:`compare_rdms`, undefined RDMs (NaN rows, no variation) give NaN with a
    ``RuntimeWarning`` instead of an error.
    """
    X = data_matrix(X, "X")
    Y = data_matrix(Y, "Y", device=X.device)
    check_same_n(X, Y)
    px = rsa_prepare(X, metric, method, center, name="X")
    py = rsa_prepare(Y, metric, method, center, name="Y")
    return rsa_score(px, py)

r"""Permutation-invariant ("semantic") similarity of samples, and semantic / baseline RSMs.

Wald et al., "Decoupling Semantic Similarity from Spatial Alignment for Neural Networks"
(NeurIPS 2024). One sample's representation at one layer is a set of ``S`` concept vectors
(``S = H*W`` positions, or ``T`` tokens) of ``C`` channels, ``V in R^{S x C}``. Two samples are
compared after the permutation of positions that maximises their inner product

.. math::  \pi^* = \arg\max_\pi \sum_{s=1}^S \langle v_s, w_{\pi(s)} \rangle,
           \qquad ip(V, W) = \sum_s \langle v_s, w_{\pi^*(s)} \rangle,

which is a linear assignment problem on the affinity ``A = V W^T`` (``S x S``), solved by
:func:`simtorch_semantic.functional.matching.solve_assignment`. From the aligned pair:

``"linear"``   ``ip(V, W)`` (inner product of the aligned, flattened representations; ``"ip"``, its
               old name, is accepted with a ``DeprecationWarning``);
``"cosine"``   ``ip(V, W) / (||V||_F ||W||_F)`` (the Frobenius norms do not depend on the
               permutation; ``0`` when either norm is ``0``);
``"rbf"``      ``exp(-d^2 / (2 sigma^2))`` with ``d^2 = ||V||_F^2 + ||W||_F^2 - 2 ip(V, W)``, the
               squared distance of the aligned pair (clipped at 0).

RBF bandwidth (``semantic_sim_parallel`` and ``similarity_calculation``, unless ``sigma`` is
given): ``sigma = median`` of the **non-zero** distances ``d`` over the whole RSM (the package's
one bandwidth rule, ``kernels.median_distance``) —
over all pairs ``i < j`` when ``y`` is None (the N x N case; the diagonal and its mirror add
nothing), over all ``N x M`` pairs otherwise — computed once after every pair is done, never per
chunk of pairs. With an even count the two middle distances are averaged; a
``d^2 <= 1e-12 * (||V||^2 + ||W||^2)`` counts as zero (rounding of identical samples). With no
non-zero distance at all every entry is ``1`` and ``sigma = 1`` is used. The original code used
``sqrt(lower median) + 1e-3``; we drop the scale-dependent offset.

The N x N semantic RSM computes only the upper triangle: on the diagonal the optimal permutation
of a sample with itself is the identity (``sum_s <v_s, v_pi(s)> <= sum_s |v_s||v_pi(s)| <=
sum_s |v_s|^2``), so ``ip(V, V) = ||V||_F^2`` is filled in without solving; the lower triangle
mirrors the upper one (``A_ji = A_ij^T``, whose optimum is the inverse permutation).

Numerics: the affinities that the solver sees are computed on the input's device in its
precision promoted to at least float32 (one ``torch.bmm`` per chunk of pairs); every similarity
is then recomputed in float64 from the permutation, so the values are exact float64 inner
products of the aligned samples. Pass float64 features for float64 affinities. (The exact
solver double-centres each affinity before solving, which leaves the optimal permutation
unchanged and makes scipy's solver 2-3x faster on ReLU features; see ``matching``.)

The spatio-semantic baseline (:func:`similarity_calculation`) uses the same kernels with the
identity permutation (``ip = <vec(V), vec(W)>``); for ``ip`` and ``cosine`` the semantic value is
never below the baseline one (the identity is one of the permutations).
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from simtorch_semantic.functional._validation import promote, to_tensor
from simtorch_semantic.distributed import fill_pairs, share
from simtorch_semantic.functional.matching import (
    MATCHINGS,
    resolve_n_workers,
    solve_auction,
    batched_auction,
    check_exact_feasible,
    check_options,
    choose_solver,
    dual_bound,
    solve_assignment,
)

__all__ = [
    "KERNELS",
    "LAYOUTS",
    "perm_inv_semantic_sim",
    "semantic_sim_parallel",
    "similarity_calculation",
    "rbf_from_sq_dists",
    "median_sigma",
    "pool_positions",
    "pooled_grid",
    "positive_multiple",
    "pairs_per_block",
    "available_bytes",
]

KERNELS = ("linear", "cosine", "rbf")  # "ip": the old name of "linear", accepted with a warning
# "auto": 4-D (n, c, h, w), 3-D (n, t, d) tokens -- the default of SemanticCKA, rsm.py and the
# registry; the seed functions here keep their default "ncs" (3-D read as (n, c, s))
LAYOUTS = ("auto", "ncs", "nsc")

# pairs per torch.bmm chunk is bounded by this many bytes of affinity matrices
_CHUNK_BYTES = 32 * 2**20
# solvers of matching.py that take an n_workers option
_THREADED_SOLVERS = ("exact", "batch_optimal", "auction", "batched")
# solvers with a duality certificate: every pair is checked, the uncertified ones re-solved exactly
_CERTIFIED = ("batched", "auction")
# pairs handed to one worker-thread task
_TASK_PAIRS = 8


# ---------------------------------------------------------------------------------------------
# validation


def _check_kernels(kernel):
    """Return (list of kernel names, was_list)."""
    if isinstance(kernel, (list, tuple)):
        kernels, was_list = list(kernel), True
        if not kernels:
            raise ValueError(f"kernel list is empty; choose among {list(KERNELS)}")
    else:
        kernels, was_list = [kernel], False
    for k in kernels:
        if k == "ip":
            import warnings

            warnings.warn("kernel 'ip' is the old name of kernel 'linear' (the inner product); use "
                          "'linear'.", DeprecationWarning, stacklevel=3)
            continue
        if k not in KERNELS:
            raise ValueError(
                f"unknown kernel {k!r}; valid kernels are {list(KERNELS)} (or a list of them)"
            )
    if len(set(kernels)) != len(kernels):
        raise ValueError(f"kernel list {kernels} names a kernel twice")
    return kernels, was_list


def _check_matching(matching):
    if not isinstance(matching, str) or matching not in MATCHINGS:
        raise ValueError(
            f"unknown matching (solver) {matching!r}; valid choices are {list(MATCHINGS)}"
        )


def _check_sigma(sigma):
    if sigma is None:
        return None
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a positive number, got {sigma!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    return s


def _as_tensor(x, name):
    """``x`` as a detached tensor in float32 or float64 (ints, bool, half promoted to float32)."""
    return promote(to_tensor(x, name), torch.float32)


def _check_finite(t, name):
    """Raise naming the first sample (index along dim 0) that holds NaN or Inf."""
    ok = torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)
    if not bool(ok.all()):
        first = int(torch.nonzero(~ok)[0, 0])
        raise ValueError(
            f"{name} contains NaN or Inf (first in sample {first}); remove or repair those "
            "samples before computing similarities"
        )


def _as_nsc(x, name, layout):
    """Validate a set of representations and return it as a tensor ``[N, S, C]``.

    layout "ncs": ``[N, C, S]`` or ``[N, C, H, W]``; layout "nsc": ``[N, S, C]`` (tokens) or
    ``[N, H, W, C]`` (channels-last images); layout "auto" (the default of SemanticCKA, rsm.py
    and the registry): 4-D is "ncs", 3-D is "nsc" (tokens ``[N, T, D]``).
    """
    if layout not in LAYOUTS:
        raise ValueError(
            f"unknown layout {layout!r}; valid layouts are 'auto' (4-D [N, C, H, W], 3-D [N, T, D]), "
            "'ncs' ([N, C, S] or [N, C, H, W]) and 'nsc' ([N, S, C] tokens or [N, H, W, C])"
        )
    t = _as_tensor(x, name)
    if layout == "auto":
        layout = "nsc" if t.ndim == 3 else "ncs"
    if t.ndim == 2:
        raise ValueError(
            f"{name} is 2-D with shape {tuple(t.shape)}: a semantic similarity needs a spatial or "
            "token axis ([N, C, S], [N, C, H, W] or, with layout='nsc', [N, T, D]); for flat "
            "features (e.g. fc outputs) there is nothing to permute: use similarity_calculation "
            "or a CKA on the flat features"
        )
    if t.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be 3-D [N, C, S] or 4-D [N, C, H, W] (layout='nsc': [N, T, D] or "
            f"[N, H, W, C]); got {t.ndim}-D shape {tuple(t.shape)}"
        )
    if t.shape[0] < 1:
        raise ValueError(f"{name} has no samples (shape {tuple(t.shape)})")
    if layout == "ncs":
        t = t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)
    else:
        t = t.reshape(t.shape[0], -1, t.shape[-1])
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise ValueError(f"{name} has an empty position or channel axis: {tuple(x.shape)}")
    _check_finite(t, name)
    return t.contiguous()


def _check_pair(xs, ys, names=("x", "y")):
    if ys.shape[1] != xs.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different numbers of positions S: "
            f"{xs.shape[1]} vs {ys.shape[1]}; a permutation needs equal S (pool or crop to a "
            "common spatial size)"
        )
    if ys.shape[2] != xs.shape[2]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different numbers of channels C: "
            f"{xs.shape[2]} vs {ys.shape[2]}; both must come from the same layer (or a layer with "
            "the same width)"
        )


def _check_max_positions(max_positions):
    if max_positions is None:
        return None
    if isinstance(max_positions, bool) or not isinstance(max_positions, (int, np.integer)) \
            or max_positions < 1:
        raise ValueError(f"max_positions must be None (full resolution) or a positive integer, "
                         f"got {max_positions!r}")
    return int(max_positions)


def pooled_grid(H, W, max_positions):
    """Output grid ``(h, w)`` of :func:`pool_positions` for an ``H x W`` map: ``h * w <=
    max_positions``, ``h <= H``, ``w <= W``, aspect ratio kept (both sides scaled by
    ``sqrt(max_positions / (H W))``, rounded down, then the side with room grown while the
    product fits)."""
    if H * W <= max_positions:
        return H, W
    f = math.sqrt(max_positions / (H * W))
    h, w = max(1, min(H, int(H * f))), max(1, min(W, int(W * f)))
    while True:  # use the budget left by rounding down
        if w < W and h * (w + 1) <= max_positions and (w + 1) * H <= (h + 1) * W:
            w += 1
        elif h < H and (h + 1) * w <= max_positions:
            h += 1
        elif w < W and h * (w + 1) <= max_positions:
            w += 1
        else:
            return h, w


def pool_positions(x, max_positions, layout="ncs"):
    """Average-pool the positions of feature maps to at most ``max_positions`` (an approximation).

    ReSi (Klabunde et al. 2024) pools conv maps the same way before comparing them. This changes
    what is compared: the semantic similarity of the pooled maps matches coarser regions (each
    pooled position averages a block of the original ones), so it is an approximation of the
    full-resolution value whose error is measured in benchmarks/RESULTS.md. Never applied
    unless asked for.

    Args:
        x: ``[N, C, H, W]`` or ``[N, C, S]`` (layout "ncs"), ``[N, H, W, C]`` or ``[N, T, D]``
            (layout "nsc"); torch tensor or NumPy array.
        max_positions: positive int, the most positions kept (``H x W`` maps keep their aspect
            ratio, :func:`pooled_grid`; sequences are pooled to ``max_positions`` tokens with
            ``adaptive_avg_pool1d``).

    Returns:
        a tensor of the same layout with ``S' <= max_positions`` positions (``x`` itself, as a
        tensor, when it already has at most that many).
    """
    max_positions = _check_max_positions(max_positions)
    t = _as_tensor(x, "x")
    if t.ndim not in (3, 4):
        raise ValueError(f"pool_positions needs 3-D or 4-D feature maps, got {t.ndim}-D")
    if max_positions is None:
        return t
    F = torch.nn.functional
    if layout == "ncs":
        if t.ndim == 4:
            h, w = pooled_grid(t.shape[2], t.shape[3], max_positions)
            return t if (h, w) == tuple(t.shape[2:]) else F.adaptive_avg_pool2d(t, (h, w))
        return t if t.shape[2] <= max_positions else F.adaptive_avg_pool1d(t, max_positions)
    if layout != "nsc":
        raise ValueError(f"unknown layout {layout!r}; valid layouts are 'ncs' and 'nsc'")
    if t.ndim == 4:
        h, w = pooled_grid(t.shape[1], t.shape[2], max_positions)
        if (h, w) == tuple(t.shape[1:3]):
            return t
        return F.adaptive_avg_pool2d(t.permute(0, 3, 1, 2), (h, w)).permute(0, 2, 3, 1)
    if t.shape[1] <= max_positions:
        return t
    return F.adaptive_avg_pool1d(t.transpose(1, 2), max_positions).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# kernels from inner products


def positive_multiple(x, y, rtol: float = 1e-6):
    """The factor ``c > 0`` with ``x = c * y``, or None.

    ``x``, ``y``: tensors of one shape (e.g. two layers' activations ``[n, C, H, W]`` of the
    same samples). ``c = <x, y> / <y, y>`` (least squares over all entries, in float64) is
    returned when it is positive and ``||x - c y||_F <= rtol ||x||_F``; identical tensors give
    ``1.0``. None when the shapes or dtypes differ, ``y`` is all zero, ``c <= 0``, or the
    residual is larger.

    Why: a positive multiple has the same optimal alignments, so its semantic RSM is the other's
    times ``c^2`` (linear kernel) or the same (cosine; RBF with the median bandwidth, which
    scales with ``c``). Eval-mode batch norm whose statistics are still the initial ones (mean
    0, variance 1: ``bn(x) = x / sqrt(1 + eps)``), identities and eval-mode dropout give such
    layers.

    Raises:
        TypeError: ``x`` or ``y`` is not a torch tensor.
        ValueError: ``rtol`` is not a number in ``(0, 1)``.
    """
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError(f"positive_multiple compares two torch tensors, got "
                        f"{type(x).__name__} and {type(y).__name__}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if x.shape != y.shape or x.dtype != y.dtype:
        return None
    if torch.equal(x, y):
        return 1.0
    a = x.reshape(-1).double()
    o = y.reshape(-1).to(a.device).double()
    oo = float(o @ o)
    if oo == 0.0:
        return None
    c = float(a @ o) / oo
    if not c > 0.0:
        return None
    if float(torch.linalg.vector_norm(a - c * o)) > rtol * float(torch.linalg.vector_norm(a)):
        return None
    return c


def median_sigma(sq_dists):
    """Median bandwidth ``sigma`` = the median of the non-zero distances ``d`` (the package's one
    rule, :func:`simtorch_semantic.functional.kernels.median_distance`) of squared distances.

    Args:
        sq_dists: float array of any shape, the squared distances of the pairs that count (the
            caller passes each pair once). Entries ``<= 0`` are ignored.

    Returns:
        float ``sigma`` (1.0 when no distance is positive).
    """
    from .kernels import median_distance  # the package's one bandwidth rule

    sigma = float(median_distance(np.asarray(sq_dists, dtype=np.float64)))
    return sigma if sigma > 0 else 1.0


def rbf_from_sq_dists(sq_dists, sigma):
    """RBF kernel ``exp(-d^2 / (2 sigma^2))`` of squared distances, float64."""
    return np.exp(-np.asarray(sq_dists, dtype=np.float64) / (2.0 * float(sigma) ** 2))


def _sq_dists(ip, nx2, ny2):
    """``d^2 = |x|^2 + |y|^2 - 2 ip`` (float64), clipped at 0, rounding-level values set to 0."""
    s = nx2[:, None] + ny2[None, :]
    d2 = s - 2.0 * ip
    d2[d2 <= 1e-12 * s] = 0.0
    return d2


def _kernels_from_ip(ip, nx2, ny2, kernels, symmetric, sigma=None):
    """Kernel matrices from inner products ``ip`` [N, M] and squared norms ``nx2`` [N], ``ny2`` [M].

    Returns (dict kernel -> float64 [N, M], sigma used or None).
    """
    out, used_sigma = {}, None
    for k in kernels:
        if k in ("linear", "ip"):
            out[k] = ip.copy()
        elif k == "cosine":
            den = np.sqrt(nx2)[:, None] * np.sqrt(ny2)[None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[k] = np.where(den > 0, ip / np.where(den > 0, den, 1.0), 0.0)
        else:
            d2 = _sq_dists(ip, nx2, ny2)
            if symmetric:
                np.fill_diagonal(d2, 0.0)
            if sigma is None:
                pairs = d2[np.triu_indices(d2.shape[0], 1)] if symmetric else d2
                used_sigma = median_sigma(pairs)
            else:
                used_sigma = float(sigma)
            out[k] = rbf_from_sq_dists(d2, used_sigma)
    if symmetric:
        for k in out:  # exact symmetry (the values are computed once per pair already)
            m = out[k]
            out[k] = np.triu(m) + np.triu(m, 1).T
    return out, used_sigma


def _aligned_ip64(x64, y64, perm):
    """float64 ``sum_s <x[b, s], y[b, perm[b, s]]>`` for x64, y64 ``[B, S, C]``, perm ``[B, S]``."""
    yp = y64[np.arange(perm.shape[0])[:, None], perm]  # [B, S, C], index arrays of size B*S
    return np.einsum("bsc,bsc->b", x64, yp)


# ---------------------------------------------------------------------------------------------
# pairs


def _solver_options(matching, options, rn=None, cn=None):
    opts = dict(options)
    if matching in _THREADED_SOLVERS:  # our own threads parallelise; one per solver call
        opts.setdefault("n_workers", 1)
    if matching == "batch_optimal" and rn is not None:
        opts.setdefault("row_norms", rn)
        opts.setdefault("col_norms", cn)
    return opts


def perm_inv_semantic_sim(v_i, v_j, kernel="linear", matching="auto", return_permutation=False,
                          sigma=None, **matching_options):
    """Permutation-invariant similarity of two samples ``v_i``, ``v_j`` ``[S, C]``.

    Solves ``perm = argmax_pi sum_s <v_i[s], v_j[pi(s)]>`` with ``matching`` (one of
    ``matching.SOLVERS``, or "auto": ``matching.choose_solver(S)``) and applies ``kernel`` ("linear", "cosine", "rbf" or a list of them) to
    the aligned pair (formulas in the module docstring).

    Args:
        v_i, v_j: ``[S, C]`` torch tensors or NumPy arrays (``S`` positions/tokens, ``C``
            channels), same shape.
        kernel: a kernel name, or a list of names (then a dict kernel -> value is returned).
        matching: solver name; ``**matching_options`` go to ``solve_assignment``.
        return_permutation: also return ``perm`` (int64 ``[S]``): ``perm[s]`` is the position of
            ``v_j`` matched to position ``s`` of ``v_i``.
        sigma: RBF bandwidth, required for ``"rbf"``: the median-heuristic bandwidth is a property
            of a whole set of samples, not of one pair; use :func:`semantic_sim_parallel` for RSMs.

    Returns:
        float (or dict kernel -> float), and ``perm`` when ``return_permutation``.
    """
    kernels, was_list = _check_kernels(kernel)
    _check_matching(matching)
    sigma = _check_sigma(sigma)
    if "rbf" in kernels and sigma is None:
        raise ValueError(
            "kernel 'rbf' needs sigma= for a single pair: the bandwidth (median of the pairwise "
            "distances) is a property of the whole set of samples, not of one pair; pass sigma "
            "explicitly, or build the RSM with semantic_sim_parallel(..., kernel='rbf'), which "
            "sets it from all pairs"
        )
    a = _as_tensor(v_i, "v_i")
    b = _as_tensor(v_j, "v_j")
    for t, name in ((a, "v_i"), (b, "v_j")):
        if t.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D [S, C] (positions x channels), got {t.ndim}-D shape "
                f"{tuple(t.shape)}; for sets of samples use semantic_sim_parallel"
            )
    _check_pair(a[None], b[None], ("v_i", "v_j"))
    _check_finite(a.reshape(1, -1), "v_i")
    _check_finite(b.reshape(1, -1), "v_j")
    S = a.shape[0]
    if matching == "exact":
        check_exact_feasible(S, 1)
    dt = torch.promote_types(a.dtype, b.dtype)
    aff = a.to(dt) @ b.to(device=a.device, dtype=dt).T
    a64 = a.cpu().double().numpy()
    b64 = b.cpu().double().numpy()
    opts = _solver_options(matching, matching_options,
                           np.linalg.norm(a64, axis=1)[None], np.linalg.norm(b64, axis=1)[None])
    perm = np.asarray(solve_assignment(aff.cpu()[None], matching, **opts)[0], dtype=np.int64)
    ip = float(_aligned_ip64(a64[None], b64[None], perm[None])[0])
    nx2 = np.array([np.sum(a64 * a64)])
    ny2 = np.array([np.sum(b64 * b64)])
    vals, _ = _kernels_from_ip(np.array([[ip]]), nx2, ny2, kernels, False, sigma)
    res = {k: float(v[0, 0]) for k, v in vals.items()}
    out = res if was_list else res[kernels[0]]
    return (out, perm) if return_permutation else out


def _pairs(N, M, symmetric):
    if symmetric:
        I, J = np.triu_indices(N, 1)
    else:
        I, J = np.divmod(np.arange(N * M), M)
    return I.astype(np.int64), J.astype(np.int64)


def available_bytes(device):
    """Free memory on ``device`` in bytes (CUDA: ``mem_get_info``; CPU: psutil's available
    memory, else /proc/meminfo's MemAvailable), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# bytes of affinities one block of the batched solver may hold: CPU (per worker thread), other
# devices; both further limited to a quarter of the free memory
_BLOCK_BYTES_CPU = 256 * 2**20
_BLOCK_BYTES_DEVICE = 8 * 2**30


def pairs_per_block(S, itemsize, device, workers=1, free=None):
    """Pairs whose ``S x S`` affinities form one block of the batched solver on ``device``.

    One block (``[B, S, S]`` affinities plus the solver's temporaries, about 1.5x) takes at most
    ``min(cap, free / 4 / workers)`` bytes, ``cap`` = 256 MiB per worker thread on the CPU (larger
    blocks only add rounds) and 8 GiB on other devices; ``free`` defaults to
    :func:`available_bytes`. At least one pair.
    """
    device = torch.device(device)
    cap = _BLOCK_BYTES_CPU if device.type == "cpu" else _BLOCK_BYTES_DEVICE
    if free is None:
        free = available_bytes(device)
    budget = cap if free is None else min(cap, free // 4 // max(1, workers))
    return int(max(1, budget // int(1.5 * S * S * itemsize)))


def _semantic_ip(xs, ys, matching, n_workers, progress, options, desc="semantic pairs",
                 bar=None, stats=None, block_pairs=None):
    """Optimal-alignment inner products of every pair.

    Args:
        xs: ``[N, S, C]`` tensor; ys: ``[M, S, C]`` tensor or None (the symmetric N x N case).
        matching: a solver name or "auto" (resolved with ``matching.choose_solver(S)``).
        bar: an open tqdm bar to advance by the pairs done (then none is opened here).
        stats: a dict that receives ``solver`` (the one used), ``pairs``, ``max_rel_gap`` (the
            largest certified relative gap, 0 for exact), ``exact_fallback`` (batched pairs
            that were not certified and were solved exactly) and ``seconds``.
        block_pairs: pairs per block of the batched solver (default: :func:`pairs_per_block`).

    Returns:
        (ip float64 [N, M], squared Frobenius norms nx2 [N], ny2 [M]).
    """
    t_start = time.perf_counter()
    symmetric = ys is None
    yt = xs if symmetric else ys
    N, S, C = xs.shape
    M = yt.shape[0]
    if matching == "auto":
        matching = choose_solver(S, xs.device)
    if yt.device != xs.device:
        yt = yt.to(xs.device)
    dt = torch.promote_types(xs.dtype, yt.dtype)
    xa, ya = xs.to(dt), yt.to(dt)
    x64 = xs.detach().cpu().double().numpy()
    y64 = x64 if symmetric else yt.detach().cpu().double().numpy()
    nx2 = np.einsum("nsc,nsc->n", x64, x64)
    ny2 = nx2 if symmetric else np.einsum("nsc,nsc->n", y64, y64)
    certified = matching in _CERTIFIED
    rn = cn = None
    if matching == "batch_optimal" or certified:
        rn = np.sqrt(np.einsum("nsc,nsc->ns", x64, x64))
        cn = rn if symmetric else np.sqrt(np.einsum("nsc,nsc->ns", y64, y64))

    I_all, J_all = _pairs(N, M, symmetric)
    mine = share(I_all.size)  # this rank's pairs inside distributed.pair_sharding(); else all
    I, J = I_all[mine], J_all[mine]
    P = I.size
    ip = np.zeros((N, M), dtype=np.float64)
    if symmetric:
        ip[np.diag_indices(N)] = nx2  # identity is optimal for a sample with itself
    info = {"solver": matching, "pairs": int(P), "max_rel_gap": 0.0, "exact_fallback": 0,
            "certified": matching in _CERTIFIED or matching == "exact"}
    if I_all.size == 0:
        if stats is not None:
            stats.update(info, seconds=time.perf_counter() - t_start)
        return ip, nx2, ny2
    if matching == "exact":
        check_exact_feasible(S, P, n_workers=n_workers)
    workers = resolve_n_workers(n_workers)
    itemsize = torch.empty((), dtype=dt).element_size()
    pair_bytes = S * S * itemsize
    on_cpu = xa.device.type == "cpu"
    if matching == "batched":
        # blocks of pairs: on the CPU one per worker thread (each forms its own affinities with
        # one single-threaded bmm); elsewhere one bmm and one batched solve per block on the
        # device, one block at a time
        bw = workers if on_cpu else 1
        task = int(block_pairs or pairs_per_block(S, itemsize, xa.device, bw))
        if on_cpu:  # spread the pairs over the threads even when few
            task = max(1, min(task, -(-P // workers)))
        chunk = task
        workers = bw
    elif matching == "auction":  # one problem per task and thread (the compiled auction)
        task = chunk = 1
    else:
        task = int(max(1, min(_TASK_PAIRS, _CHUNK_BYTES // (pair_bytes * workers))))
        chunk = task if on_cpu else int(max(task, min(P, _CHUNK_BYTES // pair_bytes)))
    if certified:
        rel_tol = options.get("rel_tol", 1e-3)
        # rounding of float32 (or lower) affinities: |A - A64|_ij <= gamma_C |x_i| |y_j|
        u = torch.finfo(dt).eps if dt.is_floating_point else 0.0
        gamma = C * u / max(1e-300, 1.0 - C * u)
        rsum = rn.sum(axis=1)
        cmax = cn.max(axis=1)
        gaps = np.zeros(P)
        fallback = np.zeros(P, dtype=bool)

    def affinity(lo, hi, as_numpy=True):
        ii = torch.from_numpy(I[lo:hi]).to(xa.device)
        jj = torch.from_numpy(J[lo:hi]).to(xa.device)
        a = torch.bmm(xa[ii], ya[jj].transpose(1, 2))
        return a.cpu().numpy() if as_numpy else a

    def solve(lo, hi, aff=None):
        ii, jj = I[lo:hi], J[lo:hi]
        if certified:
            opts = {k: v for k, v in options.items() if k != "n_workers"}
            # the solver aims a little tighter, so that the float64 check below (which adds the
            # rounding of the affinities) rarely sends a pair to the exact fallback
            opts["rel_tol"] = 0.8 * rel_tol
            if matching == "batched":
                if aff is None:
                    aff = affinity(lo, hi, as_numpy=False)
                res = batched_auction(aff, **opts)
                perm = res.perm.cpu().numpy().astype(np.int64, copy=True)
                bound = res.bound.cpu().numpy()
                cert = res.certified.cpu().numpy()
                prices = res.prices.cpu().double().numpy()
            else:
                if aff is None:
                    aff = affinity(lo, hi)
                perm, obj, bound, prices = solve_auction(
                    np.asarray(aff), return_bound=True, return_prices=True, **opts)
                cert = bound - obj <= rel_tol * np.abs(obj)
            vals = np.einsum("bsc,bsc->b", x64[ii], y64[jj[:, None], perm])
            # certificate of the float64 inner product: bound of the solver's affinity plus
            # a worst-case bound of its rounding
            err = gamma * rsum[ii] * cmax[jj]
            gap = bound + err - vals
            bad = ~cert | (gap > rel_tol * np.abs(vals))
            if bad.any():
                # the worst-case rounding bound is loose (and objectives near 0 leave little
                # room): the dual value of the solver's prices on the float64 affinity is an
                # exact bound; only the pairs that miss rel_tol with it are solved exactly
                a64 = np.matmul(x64[ii[bad]], y64[jj[bad]].transpose(0, 2, 1))  # BLAS
                gap[bad] = dual_bound(a64, prices[bad]) - vals[bad]
                still = gap[bad] > rel_tol * np.abs(vals[bad])
                idx = np.flatnonzero(bad)[still]
                if idx.size:
                    perm[idx] = solve_assignment(a64[still], "exact", n_workers=1)
                    vals[idx] = np.einsum("bsc,bsc->b", x64[ii[idx]], y64[jj[idx][:, None], perm[idx]])
                    gap[idx] = 0.0
                bad = np.zeros_like(bad)
                bad[idx] = True
            fallback[lo:hi] = bad
            gaps[lo:hi] = np.maximum(gap, 0.0) / np.maximum(np.abs(vals), 1e-300)
            return lo, hi, vals
        if aff is None:
            aff = affinity(lo, hi)
        opts = _solver_options(matching, options,
                               None if rn is None else rn[ii], None if cn is None else cn[jj])
        perm = np.asarray(solve_assignment(aff, matching, **opts), dtype=np.int64)
        vals = np.einsum("bsc,bsc->b", x64[ii], y64[jj[:, None], perm])  # float64, aligned
        return lo, hi, vals

    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=P, desc=desc, disable=not progress, leave=False)
    pending = deque()
    max_pending = 4 * workers + 2 * max(1, chunk // task)

    def drain(limit):
        while len(pending) > limit:
            lo, hi, vals = pending.popleft().result()
            ip[I[lo:hi], J[lo:hi]] = vals
            bar.update(hi - lo)

    torch_threads = torch.get_num_threads()
    try:
        if on_cpu:
            torch.set_num_threads(1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for c0 in range(0, P, chunk):
                c1 = min(P, c0 + chunk)
                aff = None if on_cpu else affinity(c0, c1, as_numpy=matching != "batched")
                for t0 in range(c0, c1, task):
                    t1 = min(c1, t0 + task)
                    sub = None if aff is None else aff[t0 - c0:t1 - c0]
                    pending.append(pool.submit(solve, t0, t1, sub))
                drain(max_pending)
            drain(0)
    finally:
        if on_cpu:
            torch.set_num_threads(torch_threads)
        if own_bar:
            bar.close()
    fill_pairs(ip, I_all, J_all, mine)  # the other ranks' pairs (no-op in one process)
    if symmetric:
        ip = np.triu(ip) + np.triu(ip, 1).T
    if certified and P:
        info["max_rel_gap"] = float(gaps.max())
        info["exact_fallback"] = int(fallback.sum())
    if stats is not None:
        stats.update(info, seconds=time.perf_counter() - t_start)
    return ip, nx2, ny2


def semantic_sim_parallel(x, y=None, kernel="linear", matching="auto", n_workers=None,
                          layout="ncs", progress=True, sigma=None, max_positions=None,
                          progress_bar=None, stats=None, **matching_options):
    """Semantic (permutation-invariant) RSM between two sets of samples.

    Every pair's affinity ``A = V_i W_j^T`` is computed with batched ``torch.bmm`` over chunks of
    pairs and the assignments are solved in a pool of ``n_workers`` threads (scipy's solver
    releases the GIL); similarities are recomputed in float64 from the permutations. On the CPU
    each thread forms the affinities of its own chunk (torch's intra-op threads are set to 1 for
    the duration of the call, then restored, so the threads do not oversubscribe the cores); on
    another device one ``bmm`` per chunk runs there and the threads solve.

    Args:
        x: ``[N, C, S]`` (default ``layout="ncs"``, the seed code's meaning; ``[N, C, H, W]``
            is flattened to ``S = H*W``) or, with ``layout="nsc"``, ``[N, T, D]`` tokens
            (``[N, H, W, C]`` channels-last); ``layout="auto"`` (the default of SemanticCKA,
            rsm.py and the registry) reads 4-D as "ncs" and 3-D as tokens. Torch tensor or NumPy array, finite.
        y: ``[M, ...]`` like ``x`` (same ``S`` and ``C``), or None for the symmetric ``N x N``
            RSM of ``x`` (upper triangle solved, diagonal by the identity, then mirrored).
        kernel: "linear" (old name "ip"), "cosine", "rbf" or a list of them.
        matching: "auto" (default: exact scipy for small S, the certified batched auction
            above, by the calibrated cost model ``matching.choose_solver``) or a solver name
            (``matching.SOLVERS``); ``**matching_options`` go to it (e.g. ``k=`` for
            "batch_optimal", ``rel_tol=`` for "batched").
        n_workers: solver threads (default: the CPUs available to this process).
        layout: "ncs" (default), "nsc" or "auto" (above).
        progress: tqdm bar over pairs.
        sigma: RBF bandwidth; default the median heuristic over the whole RSM (module docstring).
        max_positions: None (default, full resolution) or an int: average-pool each map to at
            most that many positions first (:func:`pool_positions`; an approximation).
        progress_bar: an open tqdm bar to advance by the pairs done instead of opening one (one
            bar for many calls).
        stats: a dict to receive how the matching went: ``solver``, ``pairs``, ``certified``
            (True for exact and the auctions), ``max_rel_gap`` (largest certified relative gap
            ``(bound - J) / |J|`` of any pair), ``exact_fallback`` (pairs re-solved exactly)
            and ``seconds``.

    Returns:
        float64 NumPy ``[N, M]`` (``[N, N]`` when y is None), or a dict kernel -> matrix when
        ``kernel`` is a list.
    """
    kernels, was_list = _check_kernels(kernel)
    _check_matching(matching)
    check_options(matching, matching_options, "semantic_sim_parallel: ")
    sigma = _check_sigma(sigma)
    workers = resolve_n_workers(n_workers)
    max_positions = _check_max_positions(max_positions)
    if max_positions is not None:
        if layout not in LAYOUTS:
            _as_nsc(x, "x", layout)  # raises the layout error
        x = pool_positions(x, max_positions, layout)
        y = None if y is None else pool_positions(y, max_positions, layout)
    xs = _as_nsc(x, "x", layout)
    ys = None if y is None else _as_nsc(y, "y", layout)
    if ys is not None:
        _check_pair(xs, ys)
    ip, nx2, ny2 = _semantic_ip(xs, ys, matching, workers, progress, matching_options,
                                bar=progress_bar, stats=stats)
    out, _ = _kernels_from_ip(ip, nx2, ny2, kernels, ys is None, sigma)
    return out if was_list else out[kernels[0]]


def similarity_calculation(x, y=None, kernel="linear", layout="ncs", sigma=None):
    """Spatio-semantic baseline RSM (no permutation): kernels of the flattened samples.

    ``ip[i, j] = <vec(x_i), vec(y_j)>`` in float64, then the kernels of the module docstring
    (RBF bandwidth: the same median heuristic over the whole RSM).

    Args:
        x: ``[N, C, S]`` / ``[N, C, H, W]`` (layout "ncs") or ``[N, T, D]`` / ``[N, H, W, C]``
            (layout "nsc"); y: the same for ``M`` samples, or None for the ``N x N`` RSM of x.
        kernel: "linear", "cosine", "rbf" or a list of them.
        sigma: RBF bandwidth (default: median heuristic).

    Returns:
        float64 ``[N, M]``, or a dict kernel -> matrix when ``kernel`` is a list.
    """
    kernels, was_list = _check_kernels(kernel)
    sigma = _check_sigma(sigma)
    xs = _as_nsc(x, "x", layout)
    ys = None if y is None else _as_nsc(y, "y", layout)
    if ys is not None:
        _check_pair(xs, ys)
    xf = xs.reshape(xs.shape[0], -1).double()
    yf = xf if ys is None else ys.reshape(ys.shape[0], -1).double().to(xf.device)
    ip = (xf @ yf.T).cpu().numpy()
    nx2 = (xf * xf).sum(1).cpu().numpy()
    ny2 = nx2 if ys is None else (yf * yf).sum(1).cpu().numpy()
    if ys is None:
        ip = np.triu(ip) + np.triu(ip, 1).T
        ip[np.diag_indices_from(ip)] = nx2
    out, _ = _kernels_from_ip(ip, nx2, ny2, kernels, ys is None, sigma)
    return out if was_list else out[kernels[0]]


#: the public name of the max_positions check (used by SemanticCKA)
check_max_positions = _check_max_positions

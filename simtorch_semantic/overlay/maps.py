"""Similarity maps between every spatial position of every image (pure math, no hooks, no I/O).

Interactive similarity overlays (Fong, Mordvintsev, Vedaldi and Olah, VISxAI 2021) show, for a
hovered position ``q`` of one image, the similarity of its activation vector to the activation
vector at every position ``p`` of every image. For a layer output ``A`` of shape ``[N, C, H, W]``
write ``z(n, i, j) = A[n, :, i, j]`` (a ``C``-vector) and ``P = H * W``. The maps are the tensor

    S[a, q, b, p] = s(z(a, q), z(b, p)),      S: [N, P, N, P]

with ``s`` the cosine ``<x, y> / (|x| |y|)`` by default. All ``(N P)^2`` values come from one
matrix product of the row-normalised ``[N P, C]`` matrix with its transpose, never from a loop
over queries. The result is symmetric: ``S[a, q, b, p] = S[b, p, a, q]``.

To send the maps to a browser once, :func:`quantize_maps` turns them into ``uint8`` bytes laid
out row by row: query ``(a, q)`` is row ``a * P + q`` and its ``N`` maps follow each other
(``N * P`` bytes). As the matrix is symmetric, :func:`pack_upper` keeps only its upper triangle
(half the bytes); that flat array is the "sprite" the front end slices on hover.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch

Similarity = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

#: Names accepted by ``similarity=`` besides a callable.
SIMILARITIES = ("cosine", "ip", "rbf")

#: Refuse to build more than this many map entries (float64) in one call (about 3.2 GB).
MAX_ENTRIES = 400_000_000


def _as_activation(acts, name: str = "acts") -> torch.Tensor:
    """Check and convert a layer output to a float64 tensor ``[N, C, H, W]``."""
    if isinstance(acts, np.ndarray):
        acts = torch.from_numpy(acts)
    if not isinstance(acts, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy array of shape [N, C, H, W], "
            f"got {type(acts).__name__}."
        )
    if acts.dim() != 4:
        raise ValueError(
            f"{name} must have shape [N, C, H, W] (a convolutional layer output), got shape "
            f"{tuple(acts.shape)}; pick a layer with a spatial output."
        )
    if min(acts.shape) < 1:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(acts.shape)}.")
    acts = acts.detach().to(torch.float64)
    if not torch.isfinite(acts).all():
        bad = (~torch.isfinite(acts)).flatten(1).any(1).nonzero()[0, 0].item()
        raise ValueError(f"{name} contains NaN or Inf (first in image {bad}); check the inputs.")
    return acts


def flatten_positions(acts) -> torch.Tensor:
    """Activation vectors of all positions of all images as rows.

    ``[N, C, H, W] -> [N * H * W, C]`` (float64); row ``n * H * W + i * W + j`` is position
    ``(i, j)`` of image ``n``.
    """
    acts = _as_activation(acts)
    n, c, h, w = acts.shape
    return acts.permute(0, 2, 3, 1).reshape(n * h * w, c)


def similarity_matrix(Z: torch.Tensor, similarity: Similarity = "cosine", *,
                      sigma: float | None = None, eps: float = 1e-12) -> torch.Tensor:
    """All-pairs similarity of the rows of ``Z`` ``[M, C] -> [M, M]`` (float64).

    - ``"cosine"``: ``<x, y> / (max(|x|, eps) max(|y|, eps))``; a zero vector has similarity 0
      to everything (itself included).
    - ``"ip"``: the inner product ``<x, y>``.
    - ``"rbf"``: ``exp(-|x - y|^2 / (2 sigma^2))``; ``sigma`` defaults to the square root of the
      median non-zero squared distance.
    - a callable ``f(X [M, C], Y [M, C]) -> [M, M]``: any other similarity.
    """
    Z = Z.to(torch.float64)
    if callable(similarity):
        out = similarity(Z, Z)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        if tuple(out.shape) != (Z.shape[0], Z.shape[0]):
            raise ValueError(
                f"similarity callable must return a [M, M] matrix for inputs [M, C] = "
                f"{tuple(Z.shape)}, got shape {tuple(out.shape)}."
            )
        return out.to(torch.float64)
    if similarity == "cosine":
        Zn = Z / Z.norm(dim=1, keepdim=True).clamp_min(eps)
        return (Zn @ Zn.T).clamp_(-1.0, 1.0)
    if similarity == "ip":
        return Z @ Z.T
    if similarity == "rbf":
        sq = (Z * Z).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T)).clamp_min_(0.0)
        if sigma is None:
            nz = d2[d2 > 0]
            sigma2 = float(np.median(nz.cpu().numpy())) if nz.numel() else 1.0
        else:
            if not sigma > 0:
                raise ValueError(f"sigma must be > 0, got {sigma}.")
            sigma2 = float(sigma) ** 2
        return torch.exp(-d2 / (2.0 * sigma2))
    raise ValueError(
        f"similarity must be one of {SIMILARITIES} or a callable f(X, Y) -> [M, M], "
        f"got {similarity!r}."
    )


def similarity_maps(acts, similarity: Similarity = "cosine", *, sigma: float | None = None,
                    eps: float = 1e-12) -> torch.Tensor:
    """Similarity of every position of every image to every position of every image.

    ``acts``: one layer's output ``[N, C, H, W]`` (tensor or array).
    Returns ``S`` ``[N, H*W, N, H*W]`` float64 with ``S[a, q, b, p] = s(z(a, q), z(b, p))``
    (cosine by default, see :func:`similarity_matrix`); position ``q = i * W + j``.
    One matrix product for all queries (Fong et al., VISxAI 2021).
    """
    acts = _as_activation(acts)
    n, _, h, w = acts.shape
    m = n * h * w
    if m * m > MAX_ENTRIES:
        raise ValueError(
            f"acts {tuple(acts.shape)} would need {m * m:,} map entries (more than "
            f"{MAX_ENTRIES:,}); use fewer images or pool the layer to a smaller grid "
            f"(pool_activations(acts, max_side=...))."
        )
    S = similarity_matrix(flatten_positions(acts), similarity, sigma=sigma, eps=eps)
    return S.reshape(n, h * w, n, h * w)


def pool_activations(acts: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Average-pool ``[N, C, H, W]`` so that ``max(H, W) <= max_side`` (aspect kept).

    Returns the input unchanged when it is already small enough or ``max_side`` is None.
    """
    if max_side is None:
        return acts
    if int(max_side) < 1:
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}.")
    h, w = acts.shape[-2:]
    if max(h, w) <= max_side:
        return acts
    f = max(h, w) / float(max_side)
    size = (max(1, int(math.ceil(h / f - 1e-9))), max(1, int(math.ceil(w / f - 1e-9))))
    size = (min(size[0], max_side), min(size[1], max_side))
    return torch.nn.functional.adaptive_avg_pool2d(acts, size)


def quantize_maps(maps, lo: float | None = None, hi: float | None = None):
    """Quantise maps to ``uint8`` for the front end.

    ``maps``: ``[N, P, N, P]`` (or any shape). Returns ``(q, lo, hi)`` with ``q`` a flat
    ``uint8`` array in C order and ``q = round(255 * (clip(S, lo, hi) - lo) / (hi - lo))``;
    ``lo``/``hi`` default to the minimum and maximum of ``maps``. Decode with
    ``S ~ lo + q * (hi - lo) / 255`` (error at most ``(hi - lo) / 510``). Works in the input's
    floating precision (float32 suffices for 8 bits).
    """
    t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    lo = float(t.min()) if lo is None else float(lo)
    hi = float(t.max()) if hi is None else float(hi)
    if not hi > lo:
        hi = lo + 1.0
    q = torch.sub(t, lo).mul_(255.0 / (hi - lo)).round_().clamp_(0.0, 255.0).to(torch.uint8)
    return q.reshape(-1).cpu().numpy(), lo, hi


def pack_upper(q: np.ndarray, m: int) -> np.ndarray:
    """Upper triangle (diagonal included) of a symmetric ``[m, m]`` array, row by row.

    The maps are symmetric (``S[r, c] = S[c, r]`` with ``r = a * P + q``), so the front end
    needs only ``m (m + 1) / 2`` values; entry ``(r, c)``, ``r <= c``, sits at
    ``r * m - r * (r - 1) / 2 + (c - r)``. Returns a flat array of that length.
    """
    q = np.asarray(q).reshape(m, m)
    return q[np.triu(np.ones((m, m), dtype=bool))]


def unpack_upper(packed: np.ndarray, m: int) -> np.ndarray:
    """Inverse of :func:`pack_upper`: the full symmetric ``[m, m]`` array."""
    packed = np.asarray(packed)
    if packed.size != m * (m + 1) // 2:
        raise ValueError(f"packed has {packed.size} values, expected m (m + 1) / 2 = "
                         f"{m * (m + 1) // 2} for m = {m}")
    out = np.empty((m, m), dtype=packed.dtype)
    mask = np.triu(np.ones((m, m), dtype=bool))
    out[mask] = packed
    out.T[mask] = packed
    return out


def map_index(i: int, j: int, src_hw: tuple, dst_hw: tuple) -> tuple:
    """Map grid cell ``(i, j)`` of an ``H x W`` grid to the cell of another grid holding its centre.

    ``i' = floor((i + 0.5) / H * H')``, same for ``j``; this is how the front end syncs a hovered
    position between layers of different resolution.
    """
    (h, w), (h2, w2) = src_hw, dst_hw
    if not (0 <= i < h and 0 <= j < w):
        raise ValueError(f"position ({i}, {j}) is outside the {h} x {w} grid.")
    return (min(h2 - 1, int(math.floor((i + 0.5) / h * h2))),
            min(w2 - 1, int(math.floor((j + 0.5) / w * w2))))

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
(half the bytes). That sprite grows as ``(N P)^2``; the front end uses it only for a custom
similarity callable.

For the built-in similarities the browser computes the maps itself, so the page grows linearly in
``N P``: :func:`encode_features` ships every position's unit-normalised activation vector once,
optionally projected onto the top ``d`` right singular vectors ``V`` ``[C, d]`` of the unit
vectors (so ``y = V^T x``), and quantised to ``int8`` with one scale per row
(``q = round(127 y / max|y|)``) or to ``float16``. The page renormalises each decoded row,
``y' = q / |q|``, and a hover needs one ``[M, d] x [d]`` product:

    cos'(a, b) = <y'_a, y'_b>,   ip' = cos' |z_a| |z_b|,
    rbf' = exp(-max(0, |z_a|^2 + |z_b|^2 - 2 |z_a| |z_b| cos') / (2 sigma^2)).

Error bound: let ``theta_a`` be the angle between the unit vector ``x_a`` and its decoded direction
``V y'_a`` (projection and rounding together). Angles obey the triangle inequality on the sphere
and the cosine is 1-Lipschitz in the angle, so ``|cos' - cos| <= theta_a + theta_b``:
:meth:`EncodedFeatures.error_bound` returns the sum of the two largest ``theta`` (and the scaled
bounds for ``ip`` and ``rbf``).

"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
        d2 = _sq_distances(Z)
        if sigma is None:
            sigma2 = _median_nonzero(d2)
        else:
            if not sigma > 0:
                raise ValueError(f"sigma must be > 0, got {sigma}.")
            sigma2 = float(sigma) ** 2
        return torch.exp(-d2 / (2.0 * sigma2))
    raise ValueError(
        f"similarity must be one of {SIMILARITIES} or a callable f(X, Y) -> [M, M], "
        f"got {similarity!r}."
    )


def _sq_distances(Z: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances of the rows of ``Z`` ``[M, C] -> [M, M]`` (clamped at 0).

    The diagonal is set to exactly 0 (the expanded form leaves rounding noise there, which
    would otherwise count as "non-zero" distances in the median bandwidth).
    """
    sq = (Z * Z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T)).clamp_min_(0.0)
    return d2.fill_diagonal_(0.0)


def _median_nonzero(d2: torch.Tensor) -> float:
    nz = d2[d2 > 0]
    return float(np.median(nz.cpu().numpy())) if nz.numel() else 1.0


def rbf_sigma2(Z) -> float:
    """Default RBF bandwidth: the median non-zero squared distance between rows of ``Z`` ``[M, C]``.

    The same ``sigma^2`` that :func:`similarity_matrix` uses for ``"rbf"`` with ``sigma=None``
    (quadratic in ``M``).
    """
    Z = torch.as_tensor(Z).to(torch.float64)
    return _median_nonzero(_sq_distances(Z))


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


#: Precisions accepted by :func:`encode_features`.
PRECISIONS = ("int8", "float16")


@dataclass
class EncodedFeatures:
    """Compact per-position features from which the front end computes similarity maps.

    ``values``: ``[M, d]`` ``int8`` (one scale per row, dropped: rows are renormalised) or
    ``float16``; ``norms``: ``[M]`` float64 ``|z|`` of the original activation vectors;
    ``angles``: ``[M]`` float64, the angle in radians between each unit vector and its decoded
    direction; ``basis``: ``[C, d]`` projection or ``None``; ``nonnegative``: every activation
    is ``>= 0`` (then every cosine is too).
    """

    values: np.ndarray
    norms: np.ndarray
    angles: np.ndarray
    basis: np.ndarray | None
    precision: str
    nonnegative: bool

    @property
    def dims(self) -> int:
        return int(self.values.shape[1])

    def decoded(self) -> np.ndarray:
        """The unit directions the front end uses, ``[M, d]`` float64 (zero rows stay zero)."""
        v = self.values.astype(np.float64)
        n = np.sqrt((v * v).sum(1, keepdims=True))
        return np.divide(v, n, out=np.zeros_like(v), where=n > 0)

    def error_bound(self, similarity: str = "cosine", sigma2: float | None = None) -> float:
        """Largest possible ``|s' - s|`` over all pairs, for the decoded maps ``s'``.

        ``cosine``: ``theta_(1) + theta_(2)`` (the two largest angles); ``ip``: ``2 max_a(theta_a
        |z_a|) max_b |z_b|``; ``rbf``: the ``ip`` bound over ``sigma^2`` (``|d^2' - d^2| = 2 |ip' -
        ip|`` and ``exp(-t)`` is 1-Lipschitz for ``t >= 0``). Ignores float32/float64 rounding in the browser (~1e-7).
        """
        th = self.angles
        top2 = np.partition(th, th.size - 2)[-2:] if th.size > 1 else np.repeat(th, 2)
        cos = float(top2.sum())
        if similarity == "cosine":
            return min(cos, 2.0)
        ip = 2.0 * float(np.max(self.angles * self.norms)) * float(np.max(self.norms))
        if similarity == "ip":
            return ip
        if similarity == "rbf":
            if sigma2 is None or not sigma2 > 0:
                raise ValueError("the rbf bound needs sigma2 > 0")
            return min(ip / sigma2, 1.0)
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def encode_features(acts, dims: int | None = None, precision: str = "int8",
                    eps: float = 1e-12) -> EncodedFeatures:
    """Unit-normalise, optionally project, and quantise the activation vectors of one layer.

    ``acts``: ``[N, C, H, W]`` (rows ``n * H * W + i * W + j``, see :func:`flatten_positions`).
    ``dims``: keep the top ``dims`` right singular vectors of the ``[M, C]`` unit-vector matrix
    (uncentred, so inner products are preserved best in least squares); ``None`` or
    ``dims >= C`` keeps all channels. ``precision``: ``"int8"`` (``q = round(127 y / max|y|)``
    per row) or ``"float16"``. Returns :class:`EncodedFeatures`; see the module docstring for
    the maps the front end computes from it and their error bound. Cost ``O(M C d)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, (int, np.integer))
                             or dims < 1):
        raise ValueError(f"dims must be a positive int or None (keep every channel), got {dims!r}")
    # float32 throughout: 8-bit (or 11-bit) codes need no more, and it halves the memory traffic
    t = acts if isinstance(acts, torch.Tensor) else torch.as_tensor(np.asarray(acts))
    if t.dim() != 4:
        _as_activation(t)                                          # raises the clear error
    n, c, h, w = t.shape
    Z = t.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).reshape(n * h * w, c).numpy()
    if not np.isfinite(Z).all():
        _as_activation(t)                                          # raises the clear error
    nonneg = bool((Z >= 0).all())
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z, dtype=np.float64))
    live = norms > eps
    U = Z * np.where(live, 1.0 / np.where(live, norms, 1.0), 0.0).astype(np.float32)[:, None]
    basis = None
    resid2 = 0.0
    if dims is not None and int(dims) < c:
        U64 = U.astype(np.float64)
        evals, evecs = np.linalg.eigh(U64.T @ U64)                 # ascending
        V = np.ascontiguousarray(evecs[:, np.argsort(evals)[::-1][: int(dims)]])
        Y = U64 @ V
        resid2 = ((U64 - Y @ V.T) ** 2).sum(1)                     # |x - V V^T x|^2
        basis = V
        Y = Y.astype(np.float32)
    else:
        Y = U
    if precision == "int8":
        scale = np.abs(Y).max(axis=1, keepdims=True) / np.float32(127.0)
        q = np.rint(np.divide(Y, scale, out=np.zeros_like(Y), where=scale > 0))
        values = np.clip(q, -127, 127).astype(np.int8)
    else:
        values = Y.astype(np.float16)
    enc = EncodedFeatures(values=values, norms=norms, angles=np.zeros(len(Y)), basis=basis,
                          precision=precision, nonnegative=nonneg)
    D = values.astype(np.float32)
    dn = np.sqrt(np.einsum("ij,ij->i", D, D, dtype=np.float64)).astype(np.float32)
    D *= np.where(dn > 0, 1.0 / np.where(dn > 0, dn, 1.0), 0.0).astype(np.float32)[:, None]
    diff = Y - D
    chord2 = resid2 + np.einsum("ij,ij->i", diff, diff, dtype=np.float64)  # |x - V y'|^2
    angles = 2.0 * np.arcsin(np.minimum(1.0, np.sqrt(chord2) / 2.0))
    angles[(dn == 0) & live] = np.pi / 2                          # direction lost entirely
    enc.angles = angles
    return enc


def value_range(enc: EncodedFeatures, similarity: str = "cosine") -> tuple:
    """The fixed colour range ``(lo, hi)`` of a layer's maps, known without all pairs.

    ``cosine``: ``hi = 1`` (self-similarity), ``lo = 0`` when every activation is ``>= 0`` else
    ``-1``; ``ip``: ``hi = max |z|^2`` (Cauchy-Schwarz, attained at the query itself),
    ``lo = 0`` or ``-max |z|^2``; ``rbf``: ``(0, 1)``.
    """
    if similarity == "cosine":
        return (0.0 if enc.nonnegative else -1.0), 1.0
    if similarity == "ip":
        top = float(np.max(enc.norms) ** 2) or 1.0
        return (0.0 if enc.nonnegative else -top), top
    if similarity == "rbf":
        return 0.0, 1.0
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")

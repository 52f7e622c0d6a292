"""Transformation sensitivity: how a patch's activation changes under rotation or scaling.

Following Fong et al. (VISxAI 2021), an image ``x`` is transformed by a sweep of values ``v_t``
(rotations in degrees, or zoom factors), every transformed image goes through the network, and
for a query position ``q`` of ``x`` the curve

    c_t(q) = s(z(x, q), z(T_t x, T_t(q)))

is the similarity of the query's activation vector to the one at the *corresponding* position of
the transformed image. ``T_t(q)`` maps the centre of grid cell ``q = (i, j)`` exactly:

- rotation by ``theta`` degrees about the image centre (counter-clockwise for ``theta > 0``, the
  convention of ``torchvision.transforms.functional.rotate``): with ``dx = j + 1/2 - W/2`` and
  ``dy = i + 1/2 - H/2`` (grid units, ``y`` pointing down),
  ``dx' = dx cos(theta) + dy sin(theta)``, ``dy' = -dx sin(theta) + dy cos(theta)``;
- scaling by a zoom factor ``s`` about the centre (``torchvision``'s ``affine(scale=s)``):
  ``dx' = s dx``, ``dy' = s dy``.

The mapped cell is ``(floor(dy' + H/2), floor(dx' + W/2))``. When it lies outside the grid the
position has left the frame and the curve is NaN there (a gap in the line chart, not a zero).
The layer grid is assumed to cover the image uniformly (stride-aligned), which holds for
convolutional networks up to their border effects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

KINDS = ("rotation", "scale")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'rotation' (degrees) or 'scale' (zoom factors), got {kind!r}")
    return kind


def _check_values(kind: str, values) -> np.ndarray:
    try:
        vals = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"values must be a sequence of numbers, got {values!r}") from None
    if vals.ndim != 1 or vals.size == 0:
        raise ValueError("values must be a non-empty 1-D sequence of numbers")
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"values must be finite, got {vals.tolist()}")
    if kind == "scale" and np.any(vals <= 0):
        raise ValueError(f"zoom factors must be > 0, got {vals.tolist()}")
    return vals


def _cos_sin(degrees: float):
    """cos and sin of an angle, exact for multiples of 90 degrees."""
    r = float(degrees) % 360.0
    exact = {0.0: (1.0, 0.0), 90.0: (0.0, 1.0), 180.0: (-1.0, 0.0), 270.0: (0.0, -1.0)}
    if r in exact:
        return exact[r]
    t = math.radians(float(degrees))
    return math.cos(t), math.sin(t)


def transform_points(y, x, hw, kind: str, value: float, inverse: bool = False):
    """Map continuous points ``(y, x)`` (grid units, origin top-left) through a transform.

    ``hw = (H, W)``; rotation by ``value`` degrees or zoom by ``value`` about the centre
    ``(H/2, W/2)``; ``inverse=True`` applies the inverse map. Arrays broadcast. Returns
    ``(y', x')`` as float64 arrays.
    """
    _check_kind(kind)
    h, w = hw
    dy = np.asarray(y, dtype=np.float64) - h / 2.0
    dx = np.asarray(x, dtype=np.float64) - w / 2.0
    if kind == "rotation":
        c, s = _cos_sin(-value if inverse else value)
        dx2, dy2 = dx * c + dy * s, -dx * s + dy * c
    else:
        if not value > 0:
            raise ValueError(f"zoom factor must be > 0, got {value}")
        f = 1.0 / value if inverse else float(value)
        dx2, dy2 = dx * f, dy * f
    return dy2 + h / 2.0, dx2 + w / 2.0


def transform_index(i, j, hw, kind: str, value: float, inverse: bool = False):
    """Grid cell that cell ``(i, j)``'s centre maps to; ``-1`` where it leaves the frame.

    ``i, j``: ints or integer arrays on an ``H x W`` grid (``hw``). Returns ``(i', j')`` integer
    arrays; both are ``-1`` where the mapped centre falls outside ``[0, H) x [0, W)``.
    Exact for rotations by multiples of 90 degrees (a square grid is permuted) and for zooms.
    """
    h, w = hw
    y, x = transform_points(np.asarray(i) + 0.5, np.asarray(j) + 0.5, hw, kind, value, inverse)
    # the centres of a grid are at k + 1/2; snap tiny float noise before flooring
    yi = np.floor(np.round(y, 9)).astype(np.int64)
    xi = np.floor(np.round(x, 9)).astype(np.int64)
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    return np.where(inside, yi, -1), np.where(inside, xi, -1)


def transform_images(x: torch.Tensor, kind: str, values) -> torch.Tensor:
    """Transform one image ``[3, H, W]`` (or ``[1, 3, H, W]``) by every value: ``[T, 3, H, W]``.

    Rotation: ``torchvision`` ``rotate(angle=v)`` about the centre; scale: ``affine(scale=v)``
    about the centre; bilinear interpolation, area outside the source filled with 0.
    """
    kind = _check_kind(kind)
    vals = _check_values(kind, values)
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"transform_images takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    out = []
    for v in vals.tolist():
        if kind == "rotation":
            out.append(TF.rotate(x, v, interpolation=InterpolationMode.BILINEAR, fill=0.0))
        else:
            out.append(TF.affine(x, angle=0.0, translate=[0, 0], scale=v, shear=[0.0, 0.0],
                                 interpolation=InterpolationMode.BILINEAR, fill=0.0))
    return torch.stack(out)


def _rowwise(a: torch.Tensor, b: torch.Tensor, similarity, sigma=None) -> torch.Tensor:
    """Similarity of matching rows ``a[k], b[k]`` (``[M, C]`` each) -> ``[M]`` float64."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    if callable(similarity):
        out = similarity(a, b)
        out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        return torch.diagonal(out.to(torch.float64))
    if similarity == "cosine":
        na = a.norm(dim=1).clamp_min(1e-12)
        nb = b.norm(dim=1).clamp_min(1e-12)
        return ((a * b).sum(1) / (na * nb)).clamp(-1.0, 1.0)
    if similarity == "ip":
        return (a * b).sum(1)
    if similarity == "rbf":
        d2 = ((a - b) ** 2).sum(1)
        if sigma is None:
            aa = (a * a).sum(1)
            ref = (aa[:, None] + aa[None, :] - 2 * a @ a.T).clamp_min(0)
            nz = ref[ref > 0]
            sigma2 = float(np.median(nz.cpu().numpy())) if nz.numel() else 1.0
        else:
            sigma2 = float(sigma) ** 2
        return torch.exp(-d2 / (2 * sigma2))
    raise ValueError(f"similarity must be 'cosine', 'ip', 'rbf' or a callable, got {similarity!r}")


@dataclass
class Sensitivity:
    """Similarity of every query position to its transformed counterpart, for one layer.

    ``curves[t, q]`` (float64 ``[T, H*W]``, NaN where ``q`` leaves the frame) is
    ``s(z(x, q), z(T_t x, T_t(q)))``; ``forward[t, q]`` the flat index ``T_t(q)`` (``-1``
    outside); ``inverse[t, p]`` the flat index of the original position whose centre maps into
    cell ``p`` of transformed image ``t`` (``-1`` when none).
    """

    layer: str
    kind: str
    values: np.ndarray
    hw: tuple
    curves: np.ndarray
    forward: np.ndarray
    inverse: np.ndarray
    similarity: str = "cosine"
    extra: dict = field(default_factory=dict)

    def curve(self, i: int, j: int) -> np.ndarray:
        """The curve ``[T]`` of grid cell ``(i, j)`` of the untransformed image."""
        h, w = self.hw
        if not (0 <= i < h and 0 <= j < w):
            raise ValueError(f"query ({i}, {j}) is outside the {h} x {w} grid of layer {self.layer!r}")
        return self.curves[:, i * w + j]


def index_maps(hw, kind: str, values):
    """Forward and inverse flat index maps ``[T, H*W]`` (``-1`` outside) for a sweep."""
    h, w = hw
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    fwd, inv = [], []
    for v in values:
        a, b = transform_index(ii.ravel(), jj.ravel(), hw, kind, float(v))
        fwd.append(np.where(a >= 0, a * w + b, -1))
        a, b = transform_index(ii.ravel(), jj.ravel(), hw, kind, float(v), inverse=True)
        inv.append(np.where(a >= 0, a * w + b, -1))
    return np.stack(fwd), np.stack(inv)


def sensitivity_from_activations(ref, transformed, kind: str, values, layer: str = "layer",
                                 similarity="cosine", sigma=None) -> Sensitivity:
    """Curves from activations: ``ref`` ``[C, H, W]`` and ``transformed`` ``[T, C, H, W]``.

    All query positions at once: the transformed activations are gathered at ``T_t(q)`` and
    compared row by row with the reference (see the module docstring).
    """
    kind = _check_kind(kind)
    vals = _check_values(kind, values)
    ref = torch.as_tensor(ref)
    transformed = torch.as_tensor(transformed)
    if ref.dim() == 4 and ref.shape[0] == 1:
        ref = ref[0]
    if ref.dim() != 3 or transformed.dim() != 4 or transformed.shape[1:] != ref.shape:
        raise ValueError(
            f"ref must be [C, H, W] and transformed [T, C, H, W] with the same C, H, W; got "
            f"{tuple(ref.shape)} and {tuple(transformed.shape)}")
    if transformed.shape[0] != len(vals):
        raise ValueError(f"transformed has {transformed.shape[0]} images but values has {len(vals)}")
    c, h, w = ref.shape
    fwd, inv = index_maps((h, w), kind, vals)
    zr = ref.reshape(c, h * w).T                                  # [P, C]
    zt = transformed.reshape(len(vals), c, h * w).transpose(1, 2)  # [T, P, C]
    idx = torch.from_numpy(np.where(fwd >= 0, fwd, 0)).to(zt.device)  # [T, P]
    gathered = torch.gather(zt, 1, idx[..., None].expand(-1, -1, c))  # [T, P, C]
    t = len(vals)
    sims = _rowwise(zr.repeat(t, 1), gathered.reshape(t * h * w, c), similarity, sigma)
    curves = sims.reshape(t, h * w).cpu().numpy().copy()
    curves[fwd < 0] = np.nan
    name = similarity if isinstance(similarity, str) else getattr(similarity, "__name__", "custom")
    return Sensitivity(layer=layer, kind=kind, values=vals, hw=(h, w), curves=curves,
                       forward=fwd, inverse=inv, similarity=name)


def transform_sensitivity(model, image, layers, kind: str = "rotation", values=None,
                          transform=None, device="cpu", similarity="cosine", size: int = 224):
    """Transformation sensitivity of every position of one image, for one or several layers.

    ``model``: an ``nn.Module`` or a ``SimilarityModel``; ``image``: a PIL image, path or tensor
    ``[3, H, W]``; ``layers``: layer names with spatial outputs ``[C, H_l, W_l]``; ``kind``:
    ``"rotation"`` (``values`` in degrees, default ``0, 15, ..., 180``) or ``"scale"`` (zoom
    factors, default ``0.5 ... 2``). Returns ``{layer: Sensitivity}`` (see
    :func:`sensitivity_from_activations`). Plot one query with :func:`plot_sensitivity`.
    """
    from ._capture import capture_spatial, as_similarity_model
    from ._images import prepare_images

    kind = _check_kind(kind)
    if values is None:
        values = np.arange(0, 181, 15) if kind == "rotation" else np.geomspace(0.5, 2.0, 9)
    vals = _check_values(kind, values)
    x, _, _ = prepare_images([image] if not isinstance(image, list) else image, transform, size)
    if x.shape[0] != 1:
        raise ValueError(f"image must be a single image, got {x.shape[0]}")
    sm = as_similarity_model(model, layers, device)
    batch = torch.cat([x, transform_images(x[0], kind, vals)])
    acts = capture_spatial(sm, batch, max_side=None)
    return {name: sensitivity_from_activations(a[0], a[1:], kind, vals, layer=name,
                                               similarity=similarity)
            for name, a in acts.items()}

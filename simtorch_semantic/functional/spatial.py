r"""How spatial maps and token sequences become the vectors a measure compares: one policy.

A layer's output for ``n`` samples is ``[n, ...]``. Measures of the registry compare matrices
``[m, d]`` (one row per sample, or per sample and position); how the trailing axes become ``d``
is chosen per call with ``spatial=`` in :func:`~simtorch_semantic.functional.similarity` and
:class:`~simtorch_semantic.LayerSimilarity`, never inside a measure:

``"flatten"`` (default)
    every sample is one vector of all its values: ``[n, C, H, W] -> [n, C*H*W]``. Keeps where
    each feature is; measures invariant to feature permutations ignore the order anyway.
``"mean"``
    the average over positions: ``[n, C, H, W] -> [n, C]`` (global average pooling),
    ``[n, T, D] -> [n, D]`` (mean over tokens). Small and position-free.
``"positions"``
    every position is a sample (as ReSi does for some measures): ``[n, C, H, W] -> [n*H*W, C]``,
    ``[n, T, D] -> [n*T, D]``; rows are sample-major (all positions of sample 0 first). Both
    representations then need the same number of positions.

Axis conventions (the same as :class:`~simtorch_semantic.SemanticCKA`'s ``layout="auto"``):
4-D and higher outputs are channels-first ``[n, C, *positions]`` (convolutional maps, every
trailing axis a position axis); 3-D outputs are token sequences ``[n, T, D]`` (channels last);
2-D outputs ``[n, d]`` have no positions and are left as they are by every policy.

Measures that need the spatial structure themselves (``MeasureSpec.spatial_input``, e.g.
``semantic_cka``, which matches positions between samples) receive the activation as stored.
"""
from __future__ import annotations

import torch

from ._validation import check_choice, to_tensor

__all__ = ["SPATIAL_POLICIES", "to_vectors", "apply_spatial"]

SPATIAL_POLICIES = ("flatten", "mean", "positions")


def _channels_last(T: torch.Tensor) -> torch.Tensor:
    """``[n, ...]`` -> ``[n, S, C]`` under the axis conventions of the module docstring."""
    if T.dim() == 3:
        return T
    return T.reshape(T.shape[0], T.shape[1], -1).transpose(1, 2)


def to_vectors(X, spatial: str = "flatten", name: str = "X") -> torch.Tensor:
    """Apply the spatial policy ``spatial`` to one representation ``X [n, ...]``.

    Returns ``[n, d]`` (``"flatten"``, ``"mean"``) or ``[n*S, C]`` (``"positions"``), a torch
    tensor on ``X``'s device (NumPy input is converted; no other validation). 0-/1-D input is
    returned unchanged for the measure's own validation to reject.
    """
    spatial = check_choice(spatial, SPATIAL_POLICIES, "spatial policy", "spatial")
    T = to_tensor(X, name)
    if T.dim() <= 2:
        return T
    if spatial == "flatten":
        return T.reshape(T.shape[0], -1)
    V = _channels_last(T)                       # [n, S, C]
    if spatial == "mean":
        if not T.is_floating_point():
            V = V.to(torch.float32)
        return V.mean(dim=1)
    return V.reshape(-1, V.shape[-1])


def positions(X) -> int:
    """Number of positions ``S`` of one representation under the module's conventions (1 for 2-D)."""
    shape = tuple(X.shape)
    if len(shape) <= 2:
        return 1
    if len(shape) == 3:
        return int(shape[1])
    S = 1
    for s in shape[2:]:
        S *= int(s)
    return S


def apply_spatial(X, Y, spatial: str = "flatten", names=("X", "Y")):
    """Apply the policy to a pair; ``"positions"`` checks that both have the same positions.

    Returns ``(X', Y')`` torch tensors (see :func:`to_vectors`).
    """
    spatial = check_choice(spatial, SPATIAL_POLICIES, "spatial policy", "spatial")
    if spatial == "positions":
        X, Y = to_tensor(X, names[0]), to_tensor(Y, names[1])
        sx, sy = positions(X), positions(Y)
        if sx != sy:
            raise ValueError(
                f"spatial='positions' treats every position as a sample, but {names[0]} has {sx} "
                f"positions per sample (shape {tuple(X.shape)}) and {names[1]} has {sy} (shape "
                f"{tuple(Y.shape)}); use spatial='mean' or 'flatten' for maps of different sizes.")
    return to_vectors(X, spatial, names[0]), to_vectors(Y, spatial, names[1])

"""Capture spatial layer outputs ``[N, C, H, W]`` through :class:`SimilarityModel` (private)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..model import SimilarityModel
from .maps import pool_activations


def as_similarity_model(model, layers, device="cpu") -> SimilarityModel:
    """Wrap ``model`` (an ``nn.Module`` or a ``SimilarityModel``) with the requested layers."""
    if isinstance(model, SimilarityModel):
        if layers is None:
            return model
        return SimilarityModel(model.model, model.model_name, layers_to_include=layers,
                               device=model.device if device is None else device,
                               output_selector=model.output_selector)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or a SimilarityModel, got {type(model).__name__}")
    if layers is None:
        raise ValueError(
            "layers is None; name the layers to show, e.g. layers=['layer2', 'layer3'] "
            "(see SimilarityModel(model).available_layers())")
    return SimilarityModel(model, layers_to_include=layers, device=device)


class _StopForward(Exception):
    """Raised from the last needed hook to skip the rest of the forward pass."""


def _capture_chunk(sm: SimilarityModel, chunk: torch.Tensor) -> dict:
    """One ``sm.capture`` that stops the forward pass once every selected layer has fired.

    The layers after the last selected one are never computed (a reduce callback keeps its own
    copy of each output and raises :class:`_StopForward` when none is left); the hooks and the
    train/eval flags are restored by ``capture``'s ``finally``.
    """
    store: dict = {}
    remaining = set(sm.layers)

    def keep(name, tensor):
        store[name] = tensor.clone()
        remaining.discard(name)
        if not remaining:
            raise _StopForward
        return None

    try:
        sm.capture(chunk, reduce=keep)
    except _StopForward:
        pass
    if remaining:           # a selected layer did not run: let capture raise its clear error
        return sm.capture(chunk)
    return {name: store[name] for name in sm.layers}


def capture_spatial(sm: SimilarityModel, x: torch.Tensor, max_side=None, batch_size: int = 32,
                    progress: bool = False) -> dict:
    """Outputs ``{layer: [N, C, H, W]}`` (float32 at least, on the model's device).

    Runs ``x`` in chunks of ``batch_size``; a layer whose output is not 4-D raises a clear error;
    layers larger than ``max_side`` are average-pooled (:func:`pool_activations`).
    """
    chunks = list(torch.split(x, batch_size))
    out: dict[str, list] = {}
    for chunk in tqdm(chunks, desc="capture", disable=not progress or len(chunks) < 2):
        feats = _capture_chunk(sm, chunk)
        for name, a in feats.items():
            if not isinstance(a, torch.Tensor) or a.dim() != 4:
                shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                raise ValueError(
                    f"layer {name!r} has output shape {shape}, but overlays need a spatial "
                    "output [N, C, H, W]; choose a convolutional layer (e.g. 'layer2' of a "
                    "ResNet), not a flattened or pooled one")
            if not a.is_floating_point() or a.dtype in (torch.float16, torch.bfloat16):
                a = a.float()
            out.setdefault(name, []).append(pool_activations(a, max_side))
    return {name: torch.cat(parts) for name, parts in out.items()}

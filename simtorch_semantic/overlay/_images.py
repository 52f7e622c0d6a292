"""Turn user images (PIL, file paths, arrays, tensors) into model inputs and display pictures.

Private helper of the overlay package. The default preparation resizes the shorter side to
``size`` (224), centre-crops a ``size x size`` square and normalises with the ImageNet mean and
standard deviation; the display picture is the same square before normalisation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from ..images import IMAGENET_MEAN, IMAGENET_STD


def _load_one(item, index: int):
    """One image as a PIL image or a float tensor [3, H, W] in [0, 1], plus a display name."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"images[{index}]: file '{path}' does not exist; pass an existing image file, "
                "a PIL image or a tensor [3, H, W]")
        try:
            with Image.open(path) as im:
                return im.convert("RGB"), path.stem
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"images[{index}]: cannot read '{path}' as an image ({err})") from err
    if isinstance(item, Image.Image):
        return item.convert("RGB"), f"image {index}"
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.stack([item] * 3, axis=-1)
        if item.ndim != 3 or item.shape[-1] not in (3, 4):
            raise ValueError(
                f"images[{index}]: a numpy image must have shape [H, W, 3] (or [H, W]), got "
                f"{item.shape}")
        item = item[..., :3]
        if item.dtype == np.uint8:
            return Image.fromarray(np.ascontiguousarray(item)), f"image {index}"
        item = torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1)
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu()
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(
                f"images[{index}]: a tensor image must have shape [3, H, W], got "
                f"{tuple(t.shape)}")
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        t = t.float()
        return t, f"image {index}"
    raise TypeError(
        f"images[{index}] has type {type(item).__name__}; pass PIL images, file paths, numpy "
        "arrays [H, W, 3] or tensors [3, H, W] / [N, 3, H, W]")


def _split(images) -> list:
    """A flat list of single images from one image, a list, or a batch tensor [N, 3, H, W]."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            return list(images)
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    try:
        items = list(images)
    except TypeError:
        raise TypeError(
            f"images must be a list of PIL images, file paths or tensors, got "
            f"{type(images).__name__}") from None
    out = []
    for it in items:
        if isinstance(it, torch.Tensor) and it.dim() == 4:
            out.extend(list(it))
        else:
            out.append(it)
    if not out:
        raise ValueError("images is empty; pass at least one image")
    return out


def prepare_images(images, transform=None, size: int = 224):
    """Model inputs and display pictures for a set of images.

    Returns ``(x, display, names)``: ``x`` the model input ``[N, 3, S, S]`` (float32),
    ``display`` ``[N, 3, S, S]`` in ``[0, 1]`` (float32), and a name per image.

    With ``transform=None`` each image is resized (shorter side ``size``), centre-cropped to
    ``size x size`` and ImageNet-normalised; a tensor image must then be in ``[0, 1]``. A given
    ``transform`` maps each loaded image (a PIL image, or a float tensor ``[3, H, W]`` for tensor
    inputs) to a tensor ``[3, H, W]``; all outputs must share one shape. Its display picture is the
    output rescaled per image to ``[0, 1]``.
    """
    loaded = [_load_one(it, k) for k, it in enumerate(_split(images))]
    xs, disps, names = [], [], []
    for k, (img, name) in enumerate(loaded):
        names.append(name)
        if transform is None:
            if isinstance(img, torch.Tensor):
                if float(img.min()) < -1e-6 or float(img.max()) > 1 + 1e-6:
                    raise ValueError(
                        f"images[{k}]: tensor values lie in [{float(img.min()):.3g}, "
                        f"{float(img.max()):.3g}], but the default transform expects RGB in "
                        "[0, 1]; pass transform= for tensors that are already normalised "
                        "(e.g. transform=lambda t: t)")
                t = TF.resize(img, [int(size)], antialias=True)
                t = TF.center_crop(t, [int(size), int(size)]).clamp(0.0, 1.0)
            else:   # resize the PIL image first (cheaper than resizing a float tensor)
                t = TF.center_crop(TF.resize(img, [int(size)], antialias=True),
                                   [int(size), int(size)])
                t = TF.to_dtype(TF.pil_to_tensor(t), torch.float32, scale=True)
            disps.append(t)
            xs.append(TF.normalize(t, list(IMAGENET_MEAN), list(IMAGENET_STD)))
        else:
            if not callable(transform):
                raise TypeError(
                    f"transform must be a callable image -> tensor [3, H, W] or None, got "
                    f"{type(transform).__name__}")
            t = transform(img)
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(
                    f"transform must return a tensor [3, H, W]; for images[{k}] it returned "
                    f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
            t = t.detach().float().cpu()
            xs.append(t)
            lo = t.amin(dim=(1, 2), keepdim=True)
            hi = t.amax(dim=(1, 2), keepdim=True)
            disps.append(((t - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
                         if t.shape[0] == 3 else t)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(
            f"all prepared images must have the same shape to form one batch, got {sorted(shapes)}"
            "; make the transform resize and crop to a fixed size")
    return torch.stack(xs), torch.stack(disps), names


def to_uint8_hwc(display: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in ``[0, 1]`` -> ``uint8`` ``[H, W, 3]``."""
    d = display.detach().cpu().numpy() if isinstance(display, torch.Tensor) else np.asarray(display)
    if d.shape[0] == 1:
        d = np.repeat(d, 3, axis=0)
    # NumPy (one thread): for a few small pictures torch's thread pool only adds overhead
    return np.ascontiguousarray(
        (np.clip(d[:3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))

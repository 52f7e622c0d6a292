"""Real photographs as a default, offline input set for comparing image models.

The package ships a handful of small public-domain / CC0 photographs (``simtorch_semantic/photos``,
sources and licences in ``photos/LICENSE.md``). :func:`default_dataset` turns them, or any images the
user supplies, into ``n`` ImageNet-normalised samples of shape ``[3, size, size]``.

Views and order: view ``j`` (``0 <= j < n``) shows photograph ``j mod k`` (``k`` photographs);
views ``0 .. k-1`` are the plain photographs (resize + centre crop), later views random resized
crops, horizontal flips and a small colour jitter drawn from a generator seeded by
``(seed, j)``. Sample ``i`` is view ``order[i]``, where ``order`` is a permutation of
``range(n)`` seeded by ``seed`` (``shuffle=False``: the identity). The shuffle matters: in view
order a batch of ``b`` consecutive samples holds each photograph about ``b / k`` times *by
construction*, so fewer same-photograph pairs than a random batch; minibatch estimators (CKA
averaged over batches) then estimate something else than the full-data value and drift with the
batch size. In shuffled order every batch is a uniformly random subset of the ``n`` samples.

Everything is deterministic: a sample depends only on ``(images, n, size, seed, shuffle, i)``,
in any access order, in any process, with any number of DataLoader workers.
``dataset.n_distinct_images`` says how many distinct photographs the ``n`` samples come from
(``min(n, k)``): the samples are augmented views, not ``n`` independent images.
"""
from __future__ import annotations

import math
import operator
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

__all__ = ["DATA_DIR", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "load_images",
           "default_dataset", "AugmentedImageDataset"]

DATA_DIR = Path(__file__).resolve().parent / "photos"
"""Folder of the shipped photographs."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
"""File name endings (case-insensitive) that :func:`load_images` reads."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Augmentation ranges for the passes after the first one.
_CROP_SCALE = (0.35, 1.0)          # fraction of the image area kept by a random resized crop
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratio range of the crop (width / height)
_JITTER = 0.2                      # brightness, contrast, saturation factors in [1-j, 1+j]


def _image_files(directory: Path) -> list[Path]:
    """All image files under ``directory`` (recursively), sorted by their relative path."""
    files = [p for p in directory.rglob("*")
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(directory).parts)]
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def load_images(directory: str | os.PathLike | None = None) -> list[Image.Image]:
    """Load every image in a folder as an RGB PIL image, in sorted file-name order.

    Parameters
    ----------
    directory:
        A folder; its image files (``IMAGE_EXTENSIONS``, searched recursively, hidden files
        skipped) are read. ``None`` loads the photographs shipped with the package
        (``DATA_DIR``).

    Returns
    -------
    list of ``PIL.Image.Image`` in mode ``"RGB"`` (grey-scale, palette and RGBA images are
    converted), fully loaded so that no file stays open.

    Raises
    ------
    FileNotFoundError
        when the folder does not exist or holds no image file.
    NotADirectoryError
        when ``directory`` is a file.
    ValueError
        when a file with an image ending cannot be read as an image (the error names it).
    """
    folder = DATA_DIR if directory is None else Path(directory).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"images directory '{folder}' does not exist; pass an existing folder of images "
            "(or None for the photographs shipped with simtorch_semantic)")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"images directory '{folder}' is a file, not a folder; pass the folder that "
            "holds the images")
    files = _image_files(folder)
    if not files:
        raise FileNotFoundError(
            f"no image files found in '{folder}' (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}, recursively); put some images there or use the "
            "shipped photographs (directory=None)")
    images = []
    for path in files:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(
                f"cannot read '{path}' as an image ({err}); remove or fix that file") from err
    return images


def _check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools and floats rejected) or a clear error."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)        # ints and NumPy integers; floats are refused
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class AugmentedImageDataset(Dataset):
    """``n`` deterministic views ``[3, size, size]`` (float32, ImageNet-normalised) of photographs.

    View ``j`` comes from photograph ``j % k``. For ``j < k`` it is the photograph resized so its
    shorter side is ``size`` and centre-cropped; for ``j >= k`` it is a random resized crop (area
    fraction in ``[0.35, 1]``, aspect ratio in ``[3/4, 4/3]``), a horizontal flip with probability
    1/2 and brightness, contrast and saturation factors in ``[0.8, 1.2]``, all drawn from a
    ``torch.Generator`` seeded with a function of ``(seed, j)``. Finally
    ``x = (x - mean) / std`` with the ImageNet mean and std. Sample ``i`` is view ``order[i]``
    (a seeded permutation of ``range(n)``, or the identity with ``shuffle=False``).
    ``__getitem__`` returns the tensor alone (no label), so a DataLoader yields
    ``[batch, 3, size, size]`` tensors.

    Attributes
    ----------
    n, size, seed, shuffle :
        The construction arguments.
    order : tuple of int
        ``order[i]`` is the view shown by sample ``i``.
    n_distinct_images : int
        How many distinct photographs the samples come from: ``min(n, k)``.
    """

    def __init__(self, images: Sequence[Image.Image], n: int, size: int, seed: int = 0,
                 shuffle: bool = True):
        # float32 [3, H, W] in [0, 1]: colour operations on floats avoid uint8 rounding steps
        self._images = [TF.to_dtype(TF.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)
                        for im in images]
        self.n = n
        self.size = size
        self.seed = seed
        self.shuffle = bool(shuffle)
        if self.shuffle:
            # its own stream (index -1 is never a view's): the order does not touch the views
            self.order = tuple(torch.randperm(n, generator=self._generator(-1)).tolist())
        else:
            self.order = tuple(range(n))
        self.n_distinct_images = min(n, len(self._images))

    def image_index(self, index: int) -> int:
        """Which photograph (position in the image list) sample ``index`` shows."""
        return self.order[index] % len(self._images)

    def __len__(self) -> int:
        return self.n

    def _generator(self, index: int) -> torch.Generator:
        # Mix seed and index into one 63-bit seed (splitmix-style constants keep nearby
        # (seed, index) pairs far apart).
        mixed = (self.seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) % (2 ** 63)
        return torch.Generator().manual_seed(mixed)

    @staticmethod
    def _uniform(g: torch.Generator, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()

    def _crop_box(self, g: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random crop with area and aspect ratio in the set ranges."""
        area = height * width
        log_lo, log_hi = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
        for _ in range(10):
            target = area * self._uniform(g, *_CROP_SCALE)
            ratio = math.exp(self._uniform(g, log_lo, log_hi))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        side = min(height, width)                 # fall back to the largest centred square
        return (height - side) // 2, (width - side) // 2, side, side

    def __getitem__(self, index: int) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} samples")
        index = self.order[index % self.n]          # the view this sample shows
        k = len(self._images)
        img = self._images[index % k]
        if index < k:
            x = TF.resize(img, [self.size], antialias=True)
            x = TF.center_crop(x, [self.size, self.size])
        else:
            g = self._generator(index)
            top, left, h, w = self._crop_box(g, img.shape[-2], img.shape[-1])
            x = TF.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
            if torch.rand((), generator=g).item() < 0.5:
                x = TF.horizontal_flip(x)
            x = TF.adjust_brightness(x, self._uniform(g, 1 - _JITTER, 1 + _JITTER))
            x = TF.adjust_contrast(x, self._uniform(g, 1 - _JITTER, 1 + _JITTER))
            x = TF.adjust_saturation(x, self._uniform(g, 1 - _JITTER, 1 + _JITTER))
        x = x.clamp(0.0, 1.0)                     # antialiased resizing can overshoot slightly
        return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, size={self.size}, seed={self.seed}, "
                f"shuffle={self.shuffle}, distinct images={self.n_distinct_images})")


def default_dataset(n: int = 64, size: int = 96, images=None, seed: int = 0,
                    shuffle: bool = True) -> AugmentedImageDataset:
    """A deterministic, offline dataset of ``n`` augmented photographs ``[3, size, size]``.

    Parameters
    ----------
    n:
        number of samples (>= 1). With ``k`` photographs, ``k`` of the samples are the plain
        photographs and the rest deterministic augmentations of them (see
        :class:`AugmentedImageDataset`); ``dataset.n_distinct_images`` is ``min(n, k)``.
    size:
        side of the square samples in pixels (>= 8).
    images:
        ``None`` (the shipped photographs), a folder path (read with :func:`load_images`), or a
        non-empty sequence of ``PIL.Image.Image``.
    seed:
        seed of the augmentations and of the order (an int); the same arguments always give the
        same tensors.
    shuffle:
        ``True`` (default): the samples come in a seeded random order, so every batch of a
        DataLoader (``shuffle=False``) is a random subset, as minibatch estimators assume.
        ``False``: view order (the ``k`` plain photographs first, then cycles of augmented
        views), whose consecutive batches are stratified by photograph.

    Returns
    -------
    ``torch.utils.data.Dataset`` of float32 tensors ``[3, size, size]``, normalised with the
    ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
    """
    n = _check_int(n, "n", 1)
    size = _check_int(size, "size", 8)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {type(shuffle).__name__} "
                        f"({shuffle!r})")
    if images is None or isinstance(images, (str, os.PathLike)):
        images = load_images(images)
    elif isinstance(images, Image.Image):
        images = [images]
    else:
        try:
            images = list(images)
        except TypeError:
            raise TypeError("images must be None, a folder path or a sequence of PIL images, "
                            f"got {type(images).__name__}") from None
        if not images:
            raise ValueError("images is an empty sequence; pass at least one PIL image, a "
                             "folder path, or None for the shipped photographs")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise TypeError(f"images[{i}] must be a PIL.Image.Image, got "
                                f"{type(im).__name__}; load files with load_images(folder)")
    return AugmentedImageDataset(images, n=n, size=size, seed=seed, shuffle=shuffle)

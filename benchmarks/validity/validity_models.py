"""Data and models of the validity benchmark: scikit-learn's digits, tiny MLPs and CNNs.

Data: ``sklearn.datasets.load_digits`` (1797 images of 8 x 8 pixels, values 0..16, 10 classes),
scaled to [0, 1] and split once with a fixed permutation into a training part and a held-out
part. Every measure sees held-out digits only, always the clean images.

Models (trained here, seconds each on a CPU):

* ``MLP``: ``64 -> h1 -> 32 -> ... -> 32 -> 10`` with ReLUs; the hidden outputs ``r1 .. rD`` are
  the layers the tests compare (``rD``, the last hidden layer, is "the representation"; every
  ``r2 .. rD`` has width 32 so measures that need equal widths apply to every pair; with
  ``h1 = 32`` all ``D`` hidden layers have the same width).
* ``CNN``: four 3 x 3 convolutions with 8 channels and zero padding at 8 x 8 resolution
  (``r1 .. r4`` are ``[n, 8, 8, 8]`` maps), global average pooling, a linear classifier.

Training conditions (:class:`TrainSpec`): a fraction of random training labels (label
randomisation), a class-coded pixel patch present in every training image that codes the true
label with probability ``shortcut`` and a random class otherwise (shortcut affinity), Gaussian
input noise of a given standard deviation drawn afresh per batch (augmentation). All randomness
comes from generators seeded by the spec, so a spec always gives the same weights on the same
machine and thread count.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Digits", "load_data", "TrainSpec", "MLP", "CNN", "build", "train", "add_patch",
           "shift_images", "random_shifts", "capture"]


@dataclass(frozen=True)
class Digits:
    """The split digits: ``x_*`` float32 ``[m, 1, 8, 8]`` in [0, 1], ``y_*`` int64 ``[m]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(n_test: int = 540, seed: int = 0) -> Digits:
    """Load the digits and split them with a permutation seeded by ``seed`` (held-out part: the
    first ``n_test`` of the permutation)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)     # [1797, 1, 8, 8]
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.tensor(np.random.default_rng(seed).permutation(len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


@dataclass(frozen=True)
class TrainSpec:
    """How one model is built and trained.

    ``arch``: "mlp" or "cnn"; ``h1``: the MLP's first hidden width; ``depth``: the MLP's number of
    hidden layers; ``epochs``; ``seed`` (weights, batch order, label noise, patch, input noise);
    ``random_labels``: fraction of training labels replaced by uniform random classes;
    ``shortcut``: ``None`` (no patch) or the probability that the patch codes the true class;
    ``noise``: standard deviation of Gaussian noise added to training inputs.
    """

    arch: str = "mlp"
    h1: int = 32
    depth: int = 6
    epochs: int = 15
    seed: int = 0
    random_labels: float = 0.0
    shortcut: float | None = None
    noise: float = 0.0

    @property
    def name(self) -> str:
        parts = [self.arch, f"s{self.seed}", f"e{self.epochs}"]
        if self.arch == "mlp":
            parts.insert(1, f"h{self.h1}d{self.depth}")
        if self.random_labels:
            parts.append(f"rand{int(round(100 * self.random_labels))}")
        if self.shortcut is not None:
            parts.append(f"short{int(round(100 * self.shortcut))}")
        if self.noise:
            parts.append(f"noise{self.noise:g}")
        return "-".join(parts)


class MLP(nn.Sequential):
    """``[n, 1, 8, 8] -> [n, 10]``; hidden outputs named ``r1 .. r{depth}``, logits ``out``."""

    def __init__(self, h1: int = 32, depth: int = 6, width: int = 32):
        layers: list[tuple[str, nn.Module]] = [("flat", nn.Flatten())]
        d_in = 64
        for i in range(1, depth + 1):
            d_out = h1 if i == 1 else width
            layers += [(f"fc{i}", nn.Linear(d_in, d_out)), (f"r{i}", nn.ReLU())]
            d_in = d_out
        layers.append(("out", nn.Linear(d_in, 10)))
        super().__init__(OrderedDict(layers))
        self.hidden = [f"r{i}" for i in range(1, depth + 1)]


class CNN(nn.Sequential):
    """``[n, 1, 8, 8] -> [n, 10]``; conv maps ``r1 .. r4`` are ``[n, 8, 8, 8]``, logits ``out``."""

    def __init__(self, channels: int = 8, depth: int = 4):
        layers: list[tuple[str, nn.Module]] = []
        c_in = 1
        for i in range(1, depth + 1):
            layers += [(f"conv{i}", nn.Conv2d(c_in, channels, 3, padding=1)), (f"r{i}", nn.ReLU())]
            c_in = channels
        layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()),
                   ("out", nn.Linear(channels, 10))]
        super().__init__(OrderedDict(layers))
        self.hidden = [f"r{i}" for i in range(1, depth + 1)]


def build(spec: TrainSpec) -> nn.Module:
    """A freshly initialised model for ``spec`` (weights seeded by ``spec.seed``)."""
    torch.manual_seed(spec.seed)
    if spec.arch == "mlp":
        return MLP(spec.h1, spec.depth)
    if spec.arch == "cnn":
        return CNN()
    raise ValueError(f"TrainSpec.arch must be 'mlp' or 'cnn', got {spec.arch!r}")


def add_patch(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Copy of images ``x [m, 1, 8, 8]`` with a class-coded patch: a 1 x 2 block of full intensity
    in the top row (classes 0-3: columns 2c, 2c+1) or the bottom row (classes 4-7) or the left
    and right columns (classes 8, 9: rows 3-4); ``codes [m]`` are the classes coded."""
    x = x.clone()
    for c in range(10):
        rows = codes == c
        if not bool(rows.any()):
            continue
        if c < 4:
            x[rows, 0, 0, 2 * c:2 * c + 2] = 1.0
        elif c < 8:
            x[rows, 0, 7, 2 * (c - 4):2 * (c - 4) + 2] = 1.0
        else:
            x[rows, 0, 3:5, 0 if c == 8 else 7] = 1.0
    return x


def shift_images(x: torch.Tensor, dx, dy=0) -> torch.Tensor:
    """Images ``x [m, 1, H, W]`` moved by ``dx`` columns (right if positive) and ``dy`` rows
    (down if positive); uncovered pixels are 0 and pixels moved out fall off, as when an 8 x 8
    crop is taken at another offset of a zero-padded image. ``dx``/``dy``: ints (every image) or
    int tensors ``[m]`` (one offset per image)."""
    m = x.shape[0]
    dx = torch.as_tensor(dx, dtype=torch.int64).expand(m)
    dy = torch.as_tensor(dy, dtype=torch.int64).expand(m)
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    for ox, oy in sorted(set(zip(dx.tolist(), dy.tolist()))):
        rows = (dx == ox) & (dy == oy)
        src = x[rows][..., max(0, -oy):H - max(0, oy), max(0, -ox):W - max(0, ox)]
        out[rows, ..., max(0, oy):H - max(0, -oy), max(0, ox):W - max(0, -ox)] = src
    return out


def random_shifts(m: int, max_shift: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image offsets ``(dx [m], dy [m])``, uniform in ``-max_shift .. max_shift`` (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(-max_shift, max_shift + 1, (m,), generator=gen),
            torch.randint(-max_shift, max_shift + 1, (m,), generator=gen))


def train(spec: TrainSpec, data: Digits, batch: int = 64, lr: float | None = None) -> nn.Module:
    """Train a model for ``spec`` on ``data``'s training part (Adam with ``lr`` (default 3e-3
    for MLPs, 1e-2 for CNNs), cross-entropy, minibatches in a seeded order); returns it in eval
    mode."""
    model = build(spec)
    if lr is None:
        lr = 1e-2 if spec.arch == "cnn" else 3e-3
    gen = torch.Generator().manual_seed(10_000 + spec.seed)
    x, y = data.x_train, data.y_train.clone()
    m = len(y)
    if spec.random_labels > 0:
        flip = torch.rand(m, generator=gen) < spec.random_labels
        y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    if spec.shortcut is not None:
        true = torch.rand(m, generator=gen) < spec.shortcut
        codes = torch.where(true, y, torch.randint(0, 10, (m,), generator=gen))
        x = add_patch(x, codes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(m, generator=gen)
        for start in range(0, m, batch):
            idx = order[start:start + batch]
            xb = x[idx]
            if spec.noise > 0:
                xb = xb + spec.noise * torch.randn(xb.shape, generator=gen)
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
    return model.eval()


def capture(model: nn.Module, x: torch.Tensor, layers: list[str], name: str = "model") -> dict:
    """Outputs of ``layers`` (module names) of ``model`` on ``x``, as float64 tensors
    ``{layer: [n, ...]}``, captured through the package's :class:`SimilarityModel`."""
    from simtorch_semantic import SimilarityModel

    sm = SimilarityModel(model, name, layers_to_include=list(layers))
    acts = sm.capture(x)
    return {k: v.to(torch.float64) for k, v in acts.items()}

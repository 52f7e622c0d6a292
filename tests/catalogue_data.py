"""Small activation pairs shared by the catalogue-measure tests (``test_catalogue_*.py``).

Four kinds, each ``(X [n, p], Y [n, q])`` float64 NumPy arrays with continuous values (no exact
ties in distances, so neighbour sets are well defined):

* ``random``: independent Gaussian inputs of different widths;
* ``low_rank``: both of rank 3 (``p, q > 3``), sharing part of their column space;
* ``near_duplicate``: ``Y = X + 1e-4 * noise`` (same width);
* ``real``: scikit-learn digits through two layers of a small random-init conv net (ReLU), with
  constant (dead) units dropped.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

KINDS = ("random", "low_rank", "near_duplicate", "real")


def _digits_features(n: int, seed: int):
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:n].astype(np.float64) / 16.0  # [n, 8, 8]
    torch.manual_seed(seed)
    conv1 = torch.nn.Conv2d(1, 3, 3).double()
    conv2 = torch.nn.Conv2d(3, 4, 3).double()
    with torch.no_grad():
        h1 = torch.relu(conv1(torch.as_tensor(imgs)[:, None]))  # [n, 3, 6, 6]
        h2 = torch.relu(conv2(h1))  # [n, 4, 4, 4]
    X = h1.reshape(n, -1).numpy()
    Y = h2.reshape(n, -1).numpy()
    keep = lambda A: A[:, A.std(axis=0) > 1e-9]  # noqa: E731
    return keep(X), keep(Y)


def make_pair(kind: str, n: int = 40, p: int = 12, q: int = 9, seed: int = 0):
    """One ``(X, Y)`` pair of the given kind (see the module docstring); fresh copies each call."""
    X, Y = _cached_pair(kind, n, p, q, seed)
    return X.copy(), Y.copy()


@functools.lru_cache(maxsize=64)
def _cached_pair(kind, n, p, q, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.normal(size=(n, p)), rng.normal(size=(n, q)) + 0.5
    if kind == "low_rank":
        Z = rng.normal(size=(n, 3))
        X = Z @ rng.normal(size=(3, p))
        W = np.column_stack([Z[:, :2], rng.normal(size=n)])
        return X, W @ rng.normal(size=(3, q))
    if kind == "near_duplicate":
        X = rng.normal(size=(n, p))
        return X, X + 1e-4 * rng.normal(size=(n, p))
    if kind == "real":
        return _digits_features(n, seed)
    raise ValueError(kind)

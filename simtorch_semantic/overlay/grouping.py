"""Grouping activation vectors with non-negative matrix factorisation (NMF).

As in Fong et al. (VISxAI 2021), the activation vectors of every position of every image of one
layer are stacked into ``X`` ``[N * H * W, C]`` and factorised as ``X ~ W H`` with ``W >= 0``
``[N * H * W, k]`` and ``H >= 0`` ``[k, C]`` (scikit-learn's ``NMF``). Column ``W[:, f]``, put
back on the grid, says how strongly factor ``f`` is present at each position; colouring each
factor differently gives "factor maps" where positions that the network groups together share a
colour across images. NMF needs ``X >= 0``: negative activations (a layer before its ReLU) are
clipped to 0 with a warning.
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass

import numpy as np

_SKLEARN_HINT = ('NMF grouping needs scikit-learn, which is not installed: pip install '
                 '"simtorch-semantic[overlay]" (or pip install scikit-learn), or pass nmf_k=0 '
                 'to turn the grouping off')


def require_sklearn(available_only: bool = False):
    """``sklearn.decomposition.NMF``, or an ImportError that names the extra to install.

    ``available_only=True`` only checks that scikit-learn can be found (no import: cheap).
    """
    try:
        if available_only:
            if importlib.util.find_spec("sklearn") is None:
                raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
            return None
        return importlib.import_module("sklearn.decomposition").NMF
    except (ImportError, ValueError) as err:      # ValueError: sys.modules["sklearn"] is None
        raise ImportError(_SKLEARN_HINT) from err


@dataclass
class NMFResult:
    """Factor weights ``[N, k, H, W]``, components ``[k, C]`` and one RGB colour per factor."""

    weights: np.ndarray
    components: np.ndarray
    colors: np.ndarray
    layer: str = "layer"

    def rgb(self) -> np.ndarray:
        """Colour-coded factor maps ``[N, H, W, 3]`` in ``[0, 1]`` (see :func:`factor_rgb`)."""
        return factor_rgb(self.weights, self.colors)


def factor_colors(k: int) -> np.ndarray:
    """``k`` distinct RGB colours ``[k, 3]`` in ``[0, 1]`` (tab10, then evenly spaced hues)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    if k <= 10:
        return np.asarray(colormaps["tab10"].colors[:k], dtype=np.float64)
    hues = np.linspace(0, 1, k, endpoint=False)
    return hsv_to_rgb(np.stack([hues, np.full(k, 0.75), np.full(k, 0.95)], 1))


def factor_rgb(weights: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Blend factor maps into colours: ``[N, k, H, W]`` -> ``[N, H, W, 3]`` in ``[0, 1]``.

    Each factor is divided by its maximum over all images and positions (``w_f in [0, 1]``); a
    position's colour is ``sum_f w_f c_f / max(1, sum_f w_f)``: the colour of the dominant factor,
    dark where no factor is strong.
    """
    w = np.asarray(weights, dtype=np.float64)
    mx = w.max(axis=(0, 2, 3), keepdims=True)
    w = w / np.where(mx > 0, mx, 1.0)
    rgb = np.einsum("nkhw,kc->nhwc", w, np.asarray(colors, dtype=np.float64))
    total = np.maximum(1.0, w.sum(axis=1))[..., None]
    return np.clip(rgb / total, 0.0, 1.0)


def nmf_factors(acts, k: int = 4, seed: int = 0, max_iter: int = 200, tol: float = 1e-2,
                layer: str = "layer") -> NMFResult:
    """NMF of the activation vectors of all positions of all images of one layer.

    ``acts``: ``[N, C, H, W]`` (tensor or array). Returns :class:`NMFResult` with
    ``weights`` ``[N, k, H, W]`` (float64), ``components`` ``[k, C]`` and ``colors`` ``[k, 3]``.
    ``X = A`` permuted to ``[N H W, C]``; ``X ~ W H`` by scikit-learn's ``NMF(n_components=k,
    init="nndsvda", random_state=seed, tol=tol)``. The loose default ``tol`` stops after a few
    dozen iterations with a relative reconstruction error within about 1 % of a tight fit,
    which is plenty for colouring factor maps. Needs scikit-learn (the ``overlay`` extra).
    """
    from .maps import _as_activation

    NMF = require_sklearn()
    from threadpoolctl import threadpool_limits        # a dependency of scikit-learn

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (number of NMF components) must be a positive int, got {k!r}")
    a = _as_activation(acts)
    n, c, h, w = a.shape
    X = a.permute(0, 2, 3, 1).reshape(n * h * w, c).cpu().numpy()
    if k > min(X.shape):
        raise ValueError(
            f"k={k} NMF components is more than min(positions, channels) = {min(X.shape)} for "
            f"layer {layer!r}; use k <= {min(X.shape)}")
    if X.min() < -1e-6 * max(1.0, float(np.abs(X).max())):
        warnings.warn(
            f"layer {layer!r} has negative activations (min {X.min():.3g}); NMF needs "
            "non-negative data, so they are clipped to 0 (choose a layer after a ReLU to avoid "
            "this)", stacklevel=2)
    X = np.maximum(X, 0.0)
    if not X.any():
        raise ValueError(f"layer {layer!r} has no positive activation; NMF is undefined")
    model = NMF(n_components=int(k), init="nndsvda", random_state=seed, max_iter=max_iter,
                tol=tol)
    # one BLAS thread: these products are small ([N H W, C] x [C, k]) and several threads only
    # fight each other (4-8x slower on a busy 2-core machine; benchmarks/RESULTS.md)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.filterwarnings("ignore", message=".*Maximum number of iterations.*")
        W = model.fit_transform(X)
    weights = W.reshape(n, h, w, k).transpose(0, 3, 1, 2).astype(np.float64)
    return NMFResult(weights=weights, components=model.components_.astype(np.float64),
                     colors=factor_colors(int(k)), layer=layer)

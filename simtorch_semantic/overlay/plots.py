"""Static matplotlib figures of similarity overlays, NMF factor maps and sensitivity curves.

Every function draws on a new ``matplotlib.figure.Figure`` (no pyplot state, Agg-compatible) or a
given ``ax``, inside ``plt.rc_context`` so no global style changes.
"""
from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .maps import map_index


def _imshow_display(ax, img):
    arr = img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() if hasattr(img, "permute") else img
    ax.imshow(arr, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlay_query(overlay, query, layers=None, cmap: str = "viridis", alpha: float = 0.7):
    """Figure of one query: rows = layers, columns = images, map over each image.

    ``query = (image, i, j)`` on the first plotted layer's grid; each layer shows the cell holding
    that cell's centre, marked with a yellow box on the queried image. Maps are drawn with nearest
    upsampling over the picture (opacity ``alpha``) in the layer's colour range
    (``overlay.value_range``, the same as the widget's colour bar). Returns the ``Figure``.
    """
    chosen = overlay.layers if layers is None else [overlay._check_layer(l) for l in layers]
    if not chosen:
        raise ValueError("layers is empty; pass at least one layer name of the overlay")
    n, i, j = overlay._check_query(query, chosen[0])
    N = len(overlay.names)
    S = overlay.images.shape[-1]
    Hs = overlay.images.shape[-2]
    with plt.rc_context({"font.size": 9}):
        fig = Figure(figsize=(2.1 * N + 0.8, 2.1 * len(chosen) + 0.3), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(chosen), N, squeeze=False))
        for r, layer in enumerate(chosen):
            h, w = overlay._grid(layer)
            i2, j2 = map_index(i, j, overlay._grid(chosen[0]), (h, w))
            maps = overlay.query_maps((n, i, j), layer=layer, ref_layer=chosen[0]).numpy()
            vmin, vmax = overlay.value_range(layer, query=(n, i, j) if overlay.vrange == "query"
                                             else None)
            im = None
            for b in range(N):
                ax = axes[r, b]
                _imshow_display(ax, overlay.images[b])
                im = ax.imshow(maps[b], cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                               interpolation="nearest", extent=(0, S, Hs, 0))
                ax.set_xlim(0, S)
                ax.set_ylim(Hs, 0)
                if b == n:
                    ax.add_patch(Rectangle((j2 * S / w, i2 * Hs / h), S / w, Hs / h, fill=False,
                                           edgecolor="#ffd400", linewidth=2))
                if r == 0:
                    ax.set_title(overlay.names[b])
                if b == 0:
                    ax.set_ylabel(f"{layer}\n{h}x{w}")
            fig.colorbar(im, ax=list(axes[r]), shrink=0.8, label=str(overlay._similarity_name()))
        fig.suptitle(f"query: image {n}, cell ({i}, {j}) of {chosen[0]}")
    return fig


def plot_nmf(nmf, images, names=None):
    """Colour-coded NMF factor maps over the images: rows = layers, columns = images.

    ``nmf``: ``{layer: NMFResult}`` (or one ``NMFResult``); ``images``: ``[N, 3, H, W]`` in
    ``[0, 1]``. Returns the ``Figure``.
    """
    from .grouping import NMFResult

    if isinstance(nmf, NMFResult):
        nmf = {nmf.layer: nmf}
    N = images.shape[0]
    S, Hs = images.shape[-1], images.shape[-2]
    with plt.rc_context({"font.size": 9}):
        fig = Figure(figsize=(2.1 * N + 0.5, 2.1 * len(nmf) + 0.6), layout="constrained")
        axes = fig.subplots(len(nmf), N, squeeze=False)
        for r, (layer, res) in enumerate(nmf.items()):
            if res.weights.shape[0] != N:
                raise ValueError(f"NMF of {layer!r} has {res.weights.shape[0]} images, not {N}")
            rgb = res.rgb()
            for b in range(N):
                ax = axes[r, b]
                _imshow_display(ax, images[b])
                ax.imshow(rgb[b], alpha=0.75, interpolation="nearest", extent=(0, S, Hs, 0))
                if r == 0 and names is not None:
                    ax.set_title(names[b])
                if b == 0:
                    ax.set_ylabel(f"{layer}\nNMF k={res.weights.shape[1]}")
        first = next(iter(nmf.values()))
        fig.legend(handles=[Patch(color=c, label=f"factor {k + 1}")
                            for k, c in enumerate(first.colors)],
                   loc="outside lower center", ncol=min(len(first.colors), 8))
    return fig


def plot_sensitivity(sens, query, ax=None):
    """Line chart of transformation sensitivity for one query cell.

    ``sens``: one :class:`~simtorch_semantic.overlay.transforms.Sensitivity` or
    ``{layer: Sensitivity}``; ``query = (i, j)`` on the first layer's grid (mapped to the others by
    its centre). Positions that leave the frame are NaN and appear as gaps. Returns the ``Axes``.
    """
    from .transforms import Sensitivity

    if isinstance(sens, Sensitivity):
        sens = {sens.layer: sens}
    if not sens:
        raise ValueError("sens is empty")
    try:
        i, j = (int(v) for v in query)
    except (TypeError, ValueError):
        raise ValueError(f"query must be (i, j) integers, got {query!r}") from None
    first = next(iter(sens.values()))
    with plt.rc_context({"font.size": 9}):
        if ax is None:
            fig = Figure(figsize=(5, 3.2), layout="constrained")
            ax = fig.add_subplot()
        for layer, s in sens.items():
            i2, j2 = (i, j) if s is first else map_index(i, j, first.hw, s.hw)
            y = s.curve(i2, j2)
            ax.plot(s.values, y, marker="o", markersize=3, label=f"{layer} ({i2}, {j2})")
        # the whole sweep, also when the curve has gaps at its end (a corner patch leaves the
        # frame for zooms above 1: autoscaling would stop the axis at the last finite point)
        xs = np.concatenate([np.asarray(s.values, dtype=np.float64) for s in sens.values()])
        lo, hi = float(xs.min()), float(xs.max())
        pad = 0.04 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xticks(np.unique(xs))
        ax.set_xticklabels([f"{v:.3g}" for v in np.unique(xs)])
        ax.set_xlabel("rotation (degrees)" if first.kind == "rotation" else "zoom factor")
        ax.set_ylabel(f"{first.similarity} to the original patch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return ax

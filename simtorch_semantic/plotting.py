"""Plots: layer x layer heatmaps and RDMs.

Every function draws on the Axes it is given (or a new figure), inside ``plt.rc_context`` so
matplotlib's global style is never changed, and returns the Axes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_similarity_matrix", "DEFAULT_CMAP"]


def _new_axes(ax, n_rows: int, n_cols: int):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    width = min(4.0 + 0.35 * n_cols, 18.0)
    height = min(3.0 + 0.3 * n_rows, 16.0)
    _, ax = plt.subplots(figsize=(width, height))
    return ax


#: the colour map of similarity heatmaps; distances get it reversed, so bright is similar in both
DEFAULT_CMAP = "magma"

_NAN_HATCH = "////"
_OUTSIDE_EDGE = "#00b7ff"  # outline of cells outside the nominal range (visible on magma)
_CLIPPED_EDGE = "#00e05a"  # dashed outline of cells outside limits the caller gave


def _finite_or_none(value):
    return float(value) if value is not None and np.isfinite(value) else None


def _colour_limits(matrix, vmin, vmax, value_range, higher_is_similar):
    """``(vmin, vmax, nominal_lo, nominal_hi)`` of a heatmap.

    Limits the caller gave are kept. Otherwise they start from the measure's nominal range
    (finite ends of ``value_range``; for a similarity of unknown range, 0 below) and are
    *extended* to cover every finite value, so nothing is clipped.
    """
    finite = matrix[np.isfinite(matrix)]
    lo_data = float(finite.min()) if finite.size else 0.0
    hi_data = float(finite.max()) if finite.size else 1.0
    nom_lo = nom_hi = None
    if value_range is not None:
        nom_lo, nom_hi = (_finite_or_none(v) for v in value_range)
    if vmin is None:
        start = nom_lo if nom_lo is not None else (0.0 if higher_is_similar or lo_data >= 0 else lo_data)
        vmin = min(start, lo_data)
    if vmax is None:
        vmax = max(nom_hi if nom_hi is not None else hi_data, hi_data)
    if vmax <= vmin:  # a constant matrix
        vmax = vmin + 1.0
    return float(vmin), float(vmax), nom_lo, nom_hi


def _fmt(v):
    return f"{v:.3g}"


def plot_similarity_matrix(matrix, row_labels, col_labels, title=None, xlabel=None, ylabel=None,
                           cmap=None, ax=None, vmin=None, vmax=None, cbar_label=None,
                           annot=None, higher_is_similar=True, value_range=None):
    """Seaborn heatmap of a ``[len(row_labels), len(col_labels)]`` matrix.

    Row 0 is drawn at the bottom, so a comparison of a network with itself shows its diagonal
    from bottom left to top right, as in the CKA literature. ``annot`` writes the values in the
    cells (default: only for matrices of at most 12 x 12).

    Nothing is hidden:

    * colour range: ``vmin``/``vmax`` when given; otherwise the nominal ``value_range`` of the
      measure (e.g. ``(0, 1)`` for CKA; unknown: 0 to the largest value for similarities, the
      data's range for distances) *extended* to every finite value. Values outside the nominal
      range (a negative unbiased or minibatch CKA) get an outlined cell, a legend line and a mark
      at the nominal bound on the colour bar; values outside limits the caller gave are outlined
      too and the colour bar shows an arrow (they are drawn in the end colour);
    * NaN cells (undefined, e.g. a constant layer) are hatched grey, with a legend line;
    * direction: ``higher_is_similar=False`` (distances) reverses the default colour map, so
      bright means similar in both cases, and the colour bar says "lower = more similar"
      (similarities: "higher = more similar").

    Returns the Axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Patch, Rectangle

    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix shape {matrix.shape} does not match {len(row_labels)} row labels x "
            f"{len(col_labels)} column labels"
        )
    if value_range is not None and (len(value_range) != 2 or not value_range[0] < value_range[1]):
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    if annot is None:
        annot = max(matrix.shape) <= 12
    if cmap is None:
        cmap = DEFAULT_CMAP if higher_is_similar else DEFAULT_CMAP + "_r"
    given_lo, given_hi = vmin is not None, vmax is not None
    vmin, vmax, nom_lo, nom_hi = _colour_limits(matrix, vmin, vmax, value_range, higher_is_similar)
    with np.errstate(invalid="ignore"):
        below_colours = given_lo & (matrix < vmin)
        above_colours = given_hi & (matrix > vmax)
        outside_nominal = np.zeros(matrix.shape, dtype=bool)
        if nom_lo is not None:
            outside_nominal |= matrix < nom_lo
        if nom_hi is not None:
            outside_nominal |= matrix > nom_hi
    clipped = below_colours | above_colours
    nan = np.isnan(matrix)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
              (True, True): "both"}[(bool(below_colours.any()), bool(above_colours.any()))]
    direction = "higher = more similar" if higher_is_similar else "lower = more similar"
    label = f"{cbar_label} ({direction})" if cbar_label else direction

    with plt.rc_context({"axes.titlesize": 11, "axes.labelsize": 10}):
        ax = _new_axes(ax, *matrix.shape)
        sns.heatmap(
            matrix[::-1], ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, square=False,
            xticklabels=list(col_labels), yticklabels=list(row_labels)[::-1],
            cbar_kws={"label": label, "extend": extend},
            annot=annot, fmt=".2f", annot_kws={"fontsize": 7},
        )
        n_rows = matrix.shape[0]

        def cell(i, j, **style):  # row i of the matrix is drawn (n_rows - 1 - i) from the top
            ax.add_patch(Rectangle((j, n_rows - 1 - i), 1, 1, **style))

        legend = []
        for i, j in zip(*np.nonzero(nan)):
            cell(i, j, facecolor="#d9d9d9", edgecolor="#6e6e6e", hatch=_NAN_HATCH, linewidth=0)
        if nan.any():
            legend.append(Patch(facecolor="#d9d9d9", edgecolor="#6e6e6e", hatch=_NAN_HATCH,
                                label=f"NaN: undefined ({int(nan.sum())} cells, e.g. a "
                                      "constant layer)"))
        for i, j in zip(*np.nonzero(outside_nominal)):
            cell(i, j, fill=False, edgecolor=_OUTSIDE_EDGE, linewidth=1.6)
        for i, j in zip(*np.nonzero(clipped)):
            cell(i, j, fill=False, edgecolor=_CLIPPED_EDGE, linewidth=1.6, linestyle="--")
        if outside_nominal.any():
            lo = _fmt(nom_lo) if nom_lo is not None else "-inf"
            hi = _fmt(nom_hi) if nom_hi is not None else "inf"
            extremes = []
            if nom_lo is not None and (matrix < nom_lo).any():
                extremes.append(f"min {_fmt(np.nanmin(matrix))}")
            if nom_hi is not None and (matrix > nom_hi).any():
                extremes.append(f"max {_fmt(np.nanmax(matrix))}")
            legend.append(Patch(fill=False, edgecolor=_OUTSIDE_EDGE, linewidth=1.6,
                                label=f"outside the nominal range [{lo}, {hi}] "
                                      f"({int(outside_nominal.sum())} cells, "
                                      f"{', '.join(extremes)})"
                                      + ("" if clipped.any() else "; colour range extended")))
        if clipped.any():
            legend.append(Patch(fill=False, edgecolor=_CLIPPED_EDGE, linewidth=1.6, linestyle="--",
                                label=f"outside the colour range [{_fmt(vmin)}, {_fmt(vmax)}] "
                                      f"({int(clipped.sum())} cells, drawn in the end colour)"))
        cbar = ax.collections[0].colorbar
        if cbar is not None:
            for bound in (nom_lo, nom_hi):   # where the nominal range ends inside an extended bar
                if bound is not None and vmin < bound < vmax and outside_nominal.any():
                    cbar.ax.axhline(bound, color=_OUTSIDE_EDGE, linewidth=2.0)
        if legend:
            ax.legend(handles=legend, loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7,
                      frameon=False, borderaxespad=0.2)
        ax.tick_params(axis="x", labelrotation=90, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
        if title:
            ax.set_title(title, pad=6 + 11 * len(legend))
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.figure.tight_layout()
    return ax


# --------------------------------------------------------------------------- RDM plots (H5)
__all__ += ["plot_rdm", "plot_rdm_comparison"]

#: above this many samples an RDM is drawn with imshow (one image) instead of seaborn's mesh
_RDM_MESH_LIMIT = 400


def _rdm_array(R, name):
    """``R`` (torch or NumPy ``[n, n]``) as a float64 NumPy array, or a clear error."""
    try:
        import torch

        if isinstance(R, torch.Tensor):
            R = R.detach().cpu().to(torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(
            f"{name} must be a square RDM of shape [n, n], got shape {R.shape}; build one with "
            "simtorch_semantic.functional.rsa.rdm(X, metric)."
        )
    return R


def plot_rdm(R, labels=None, ax=None, cmap="viridis", order_by_label=True, title=None,
             vmin=None, vmax=None, cbar_label="dissimilarity"):
    """Heatmap of an RDM ``R [n, n]``, optionally grouped by the samples' labels.

    ``labels`` (length ``n``, e.g. class names) are used for the ticks: with
    ``order_by_label=True`` the samples are stably sorted by label, thin lines separate the
    groups and each group is labelled once at its centre. NaN entries (undefined, e.g. constant
    patterns under ``metric="pearson"``) are left blank. Up to 400 samples are drawn with
    ``seaborn.heatmap``, larger RDMs as one image. Global matplotlib style is untouched; returns
    the Axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    R = _rdm_array(R, "R")
    n = R.shape[0]
    if labels is not None:
        labels = [str(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but the RDM has n={n} samples; "
                             "pass one label per sample (row).")
        if order_by_label:
            order = sorted(range(n), key=lambda i: labels[i])
            R = R[np.ix_(order, order)]
            labels = [labels[i] for i in order]
    with plt.rc_context({"axes.titlesize": 11, "axes.labelsize": 10}):
        if ax is None:
            _, ax = plt.subplots(figsize=(6.0, 5.0))
        if n <= _RDM_MESH_LIMIT:
            sns.heatmap(R, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, square=True,
                        xticklabels=False, yticklabels=False,
                        cbar_kws={"label": cbar_label} if cbar_label else None)
            offset = 0.0
        else:
            image = ax.imshow(R, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            cbar = ax.figure.colorbar(image, ax=ax)
            if cbar_label:
                cbar.set_label(cbar_label)
            ax.set_xticks([])
            ax.set_yticks([])
            offset = -0.5
        if labels is not None:
            if order_by_label:
                starts = [0] + [i for i in range(1, n) if labels[i] != labels[i - 1]]
                ends = starts[1:] + [n]
                centres = [(s + e) / 2 + offset for s, e in zip(starts, ends)]
                names = [labels[s] for s in starts]
                for s in starts[1:]:
                    ax.axhline(s + offset, color="white", linewidth=0.8)
                    ax.axvline(s + offset, color="white", linewidth=0.8)
            else:
                centres = [i + 0.5 + offset for i in range(n)]
                names = labels
            if len(names) <= 60:
                ax.set_xticks(centres)
                ax.set_xticklabels(names, rotation=90, fontsize=8)
                ax.set_yticks(centres)
                ax.set_yticklabels(names, rotation=0, fontsize=8)
        ax.set_xlabel("sample")
        ax.set_ylabel("sample")
        if title:
            ax.set_title(title)
    return ax


def plot_rdm_comparison(A, B, ax=None, method="pearson", center=False, names=("RDM A", "RDM B"),
                        max_points=20000, title=None, s=4.0, alpha=0.4, color="C0"):
    """Scatter of the entries of two RDMs ``A``, ``B [n, n]``, with their similarity in the title.

    The points are the upper-triangle entries (``i < j``), or with ``center=True`` all entries of
    the double-centred matrices; the title gives ``compare_rdms(A, B, method, center)``. At most
    ``max_points`` randomly chosen points (fixed seed) are drawn. Global matplotlib style is
    untouched; returns the Axes.
    """
    import matplotlib.pyplot as plt

    from .functional.rsa import compare_rdms, double_center

    A = _rdm_array(A, "A")
    B = _rdm_array(B, "B")
    if A.shape != B.shape:
        raise ValueError(f"A and B must be RDMs of the same n samples, got shapes {A.shape} and {B.shape}.")
    if not (isinstance(max_points, (int, np.integer)) and max_points > 0):
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}.")
    value = compare_rdms(A, B, method=method, center=center)
    if center:
        a = double_center(A).numpy().ravel()
        b = double_center(B).numpy().ravel()
    else:
        iu = np.triu_indices(A.shape[0], k=1)
        a, b = A[iu], B[iu]
    if a.size > max_points:
        keep = np.random.default_rng(0).choice(a.size, size=max_points, replace=False)
        a, b = a[keep], b[keep]
    with plt.rc_context({"axes.titlesize": 11, "axes.labelsize": 10}):
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(a, b, s=s, alpha=alpha, color=color, edgecolors="none", rasterized=a.size > 5000)
        which = "double-centred entries" if center else "upper-triangle entries"
        ax.set_xlabel(f"{names[0]} ({which})")
        ax.set_ylabel(f"{names[1]} ({which})")
        ax.set_title(f"{title + ': ' if title else ''}{method} = {value:.3f}")
    return ax


# --------------------------------------------------------------------------- inference (issue 11)
__all__ += ["hatch_cells", "plot_corresponding_layers"]


def hatch_cells(ax, mask, hatch="///", color="0.6", label=None):
    """Hatch the cells of a heatmap drawn by :func:`plot_similarity_matrix` where ``mask`` is True.

    ``mask [L1, L2]`` bool in the matrix's orientation (row 0 = model 1's first layer, drawn at
    the bottom). Used for cells whose permutation p-value is not significant. ``label`` goes in
    a small legend entry. Returns the Axes.
    """
    from matplotlib.patches import Patch, Rectangle

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D boolean array shaped like the matrix, got shape {mask.shape}")
    rows = mask.shape[0]
    for i, j in zip(*np.nonzero(mask)):
        ax.add_patch(Rectangle((j, rows - 1 - i), 1, 1, fill=False, hatch=hatch, edgecolor=color,
                               linewidth=0.0))
    if label and mask.any():
        entry = Patch(facecolor="none", edgecolor=color, hatch=hatch, label=label)
        old = ax.get_legend()
        if old is not None:  # plot_similarity_matrix's legend (NaN, out of range): one legend
            handles = [*old.legend_handles, entry]
            labels = [t.get_text() for t in old.get_texts()] + [label]
            ax.legend(handles=handles, labels=labels, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                      fontsize=7, frameon=False, borderaxespad=0.2)
            ax.set_title(ax.get_title(), pad=6 + 11 * len(handles))
        else:
            ax.legend(handles=[entry], loc="upper left", bbox_to_anchor=(0.0, -0.02), fontsize=7,
                      frameon=False, handlelength=1.5, borderaxespad=2.5)
    return ax


def _corresponding_pairs(n_rows: int, n_cols: int, matrix: np.ndarray, pairs: str, higher: bool):
    if pairs == "depth":  # the column at the same relative depth (the diagonal when square)
        cols = np.rint(np.arange(n_rows) * (n_cols - 1) / max(n_rows - 1, 1)).astype(int)
        return cols if n_rows > 1 else np.zeros(1, dtype=int)
    if pairs == "best":
        filled = np.where(np.isnan(matrix), -np.inf if higher else np.inf, matrix)
        return filled.argmax(axis=1) if higher else filled.argmin(axis=1)
    raise ValueError(f"pairs must be 'depth' or 'best', got {pairs!r}")


def plot_corresponding_layers(result, pairs="depth", values="value", ax=None, alpha=0.05,
                              title=None, color="C0"):
    """Line plot of the score of corresponding layers along model 1's depth, with CI bands.

    For every layer ``i`` of model 1 the corresponding layer of model 2 is the one at the same
    relative depth (``pairs="depth"``: the diagonal when both models have as many layers) or the
    best-matching one (``pairs="best"``, argmax of the row; argmin for distances). ``values``
    picks what is drawn: ``"value"`` (the matrix) or ``"calibrated"``. A shaded band shows the
    bootstrap interval when the result has one (for ``"value"``); points whose (adjusted)
    p-value is >= ``alpha`` are drawn hollow. Global matplotlib style is untouched; returns the
    Axes.
    """
    import matplotlib.pyplot as plt

    if values not in ("value", "calibrated"):
        raise ValueError(f"values must be 'value' or 'calibrated', got {values!r}")
    matrix = np.asarray(result.matrix, dtype=np.float64)
    shown = matrix if values == "value" else result.calibrated
    if shown is None:
        raise ValueError("values='calibrated' needs a result computed with n_permutations > 0")
    n_rows, n_cols = matrix.shape
    cols = _corresponding_pairs(n_rows, n_cols, matrix, pairs, result.higher_is_similar)
    rows = np.arange(n_rows)
    y = shown[rows, cols]
    with plt.rc_context({"axes.titlesize": 11, "axes.labelsize": 10}):
        if ax is None:
            _, ax = plt.subplots(figsize=(min(4.0 + 0.3 * n_rows, 14.0), 3.5))
        if values == "value" and result.ci_low is not None and result.ci_high is not None:
            ax.fill_between(rows, result.ci_low[rows, cols], result.ci_high[rows, cols], color=color,
                            alpha=0.25, linewidth=0, label="bootstrap interval")
        ax.plot(rows, y, color=color, linewidth=1.2, label=values)
        p = result.p_value_adjusted if result.p_value_adjusted is not None else result.p_value
        if p is not None:
            with np.errstate(invalid="ignore"):
                sig = p[rows, cols] < alpha
            ax.scatter(rows[sig], y[sig], color=color, s=18, zorder=3, label=f"p < {alpha:g}")
            ax.scatter(rows[~sig], y[~sig], facecolors="white", edgecolors=color, s=18, zorder=3,
                       label=f"p >= {alpha:g}")
        else:
            ax.scatter(rows, y, color=color, s=12, zorder=3)
        labels = [f"{result.row_layers[i]} / {result.col_layers[j]}" for i, j in zip(rows, cols)]
        ax.set_xticks(rows)
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_xlabel(f"{result.model1_name} layer / corresponding {result.model2_name} layer")
        ax.set_ylabel(result.measure if values == "value" else f"calibrated {result.measure}")
        if values == "calibrated":
            ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle="--")
        ax.legend(fontsize=7, frameon=False)
        ax.set_title(title or f"{result.measure}: corresponding layers "
                              f"({'same relative depth' if pairs == 'depth' else 'best match'})")
        ax.figure.tight_layout()
    return ax

"""Plots: layer x layer heatmaps and RDMs.

Every function draws on the Axes it is given (or a new figure), inside ``plt.rc_context`` so
matplotlib's global style is never changed, and returns the Axes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_similarity_matrix"]


def _new_axes(ax, n_rows: int, n_cols: int):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    width = min(4.0 + 0.35 * n_cols, 18.0)
    height = min(3.0 + 0.3 * n_rows, 16.0)
    _, ax = plt.subplots(figsize=(width, height))
    return ax


def plot_similarity_matrix(matrix, row_labels, col_labels, title=None, xlabel=None, ylabel=None,
                           cmap="magma", ax=None, vmin=None, vmax=None, cbar_label=None,
                           annot=None):
    """Seaborn heatmap of a ``[len(row_labels), len(col_labels)]`` matrix.

    Row 0 is drawn at the bottom, so a comparison of a network with itself shows its diagonal
    from bottom left to top right, as in the CKA literature. NaN entries (undefined similarity,
    e.g. a constant layer) are left blank. ``annot`` writes the values in the cells (default: only
    for matrices of at most 12 x 12).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix shape {matrix.shape} does not match {len(row_labels)} row labels x "
            f"{len(col_labels)} column labels"
        )
    if annot is None:
        annot = max(matrix.shape) <= 12
    with plt.rc_context({"axes.titlesize": 11, "axes.labelsize": 10}):
        ax = _new_axes(ax, *matrix.shape)
        sns.heatmap(
            matrix[::-1], ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, square=False,
            xticklabels=list(col_labels), yticklabels=list(row_labels)[::-1],
            cbar_kws={"label": cbar_label} if cbar_label else None,
            annot=annot, fmt=".2f", annot_kws={"fontsize": 7},
        )
        ax.tick_params(axis="x", labelrotation=90, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
        if title:
            ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.figure.tight_layout()
    return ax

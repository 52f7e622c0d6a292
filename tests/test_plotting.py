"""Heatmaps that hide nothing (issue 8): extended and marked colour ranges, hatched NaN cells,
and the direction of distances, driven by the result's own ``higher_is_similar``."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from simtorch_semantic.plotting import plot_similarity_matrix  # noqa: E402
from simtorch_semantic.results import SimilarityResult  # noqa: E402

NAMES = [f"layer{i}" for i in range(4)]


def matrix():
    M = np.linspace(0.1, 0.9, 16).reshape(4, 4)
    M[0, 2] = -0.12                      # a negative unbiased CKA
    M[3, 1] = -0.05
    M[:, 3] = np.nan                     # a constant layer
    return M


def cell_patches(ax, **match):
    """Rectangles drawn over cells, as (matrix row, column) pairs, filtered by style."""
    n_rows = len(ax.get_yticklabels())
    out = []
    for p in ax.patches:
        if not isinstance(p, Rectangle):
            continue
        if "hatch" in match and p.get_hatch() != match["hatch"]:
            continue
        if "filled" in match and p.get_fill() != match["filled"]:
            continue
        x, y = p.get_xy()
        out.append((n_rows - 1 - int(round(y)), int(round(x))))
    return sorted(out)


def legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def colorbar(ax):
    return ax.collections[0].colorbar


def test_negative_values_extend_the_range_and_are_marked():
    before = {k: repr(v) for k, v in matplotlib.rcParams.items()}
    result = SimilarityResult(matrix(), NAMES, NAMES, "a", "b", "cka")
    assert result.value_range() == (0.0, 1.0)          # from the measure registry
    ax = result.plot()
    mesh = ax.collections[0]
    assert mesh.norm.vmin == pytest.approx(-0.12) and mesh.norm.vmax == 1.0   # nothing clipped
    assert cell_patches(ax, filled=False) == [(0, 2), (3, 1)]
    texts = legend_texts(ax)
    assert any("outside the nominal range [0, 1] (2 cells, min -0.12); colour range extended" in t
               for t in texts)
    # the colour bar marks where the nominal range starts
    marks = [line.get_ydata()[0] for line in colorbar(ax).ax.lines]
    assert 0.0 in marks
    assert "higher = more similar" in colorbar(ax).ax.get_ylabel()
    assert {k: repr(v) for k, v in matplotlib.rcParams.items()} == before
    plt.close("all")


def test_nan_cells_are_hatched_with_a_legend_line():
    ax = plot_similarity_matrix(matrix(), NAMES, NAMES)
    assert cell_patches(ax, hatch="////") == [(i, 3) for i in range(4)]
    assert any(t.startswith("NaN: undefined (4 cells") for t in legend_texts(ax))
    plt.close("all")


def test_values_in_range_draw_no_marks_or_legend():
    M = np.linspace(0.1, 0.9, 16).reshape(4, 4)
    ax = plot_similarity_matrix(M, NAMES, NAMES, value_range=(0, 1))
    assert ax.get_legend() is None and not ax.patches
    assert (ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) == (0.0, 1.0)
    assert colorbar(ax).extend == "neither"
    plt.close("all")


def test_given_limits_are_kept_and_values_beyond_them_flagged():
    M = np.linspace(0.1, 0.9, 16).reshape(4, 4)
    ax = plot_similarity_matrix(M, NAMES, NAMES, vmin=0.2, vmax=0.8)
    assert (ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) == (0.2, 0.8)
    assert colorbar(ax).extend == "both"
    beyond = sorted(zip(*np.nonzero((M < 0.2) | (M > 0.8))))
    assert cell_patches(ax, filled=False) == [(int(i), int(j)) for i, j in beyond]
    assert any(f"outside the colour range [0.2, 0.8] ({len(beyond)} cells" in t
               for t in legend_texts(ax))
    plt.close("all")


def test_distances_reverse_the_map_by_the_results_own_direction():
    D = np.abs(np.linspace(0.0, 0.7, 12).reshape(3, 4))
    # a measure name the package has never heard of: the direction comes from the attribute
    dist = SimilarityResult(D, NAMES[:3], NAMES, "a", "b", "my_distance", higher_is_similar=False)
    sim = SimilarityResult(D, NAMES[:3], NAMES, "a", "b", "my_distance", higher_is_similar=True)
    assert dist.value_range() is None
    ax = dist.plot()
    assert ax.collections[0].cmap.name == "magma_r"
    assert "lower = more similar" in colorbar(ax).ax.get_ylabel()
    ax2 = sim.plot()
    assert ax2.collections[0].cmap.name == "magma"
    assert "higher = more similar" in colorbar(ax2).ax.get_ylabel()
    # a colour map the caller chose is kept; the label still gives the direction
    ax3 = dist.plot(cmap="viridis")
    assert ax3.collections[0].cmap.name == "viridis"
    assert "lower = more similar" in colorbar(ax3).ax.get_ylabel()
    plt.close("all")


def test_results_module_has_no_list_of_measure_names():
    import inspect

    import simtorch_semantic.results as results

    source = inspect.getsource(results.SimilarityResult.plot)
    for name in ("cka", "rbf_cka", "cca", "procrustes"):
        assert f'"{name}"' not in source


def test_bad_value_range():
    with pytest.raises(ValueError, match="value_range must be"):
        plot_similarity_matrix(np.eye(2), ["a", "b"], ["a", "b"], value_range=(1, 0))

"""Tests for plot_rdm and plot_rdm_comparison (appended to plotting.py by the RSA issue)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from simtorch_semantic.functional.rsa import compare_rdms, rdm  # noqa: E402
from simtorch_semantic.plotting import plot_rdm, plot_rdm_comparison  # noqa: E402


def rc_snapshot():
    return {k: repr(v) for k, v in matplotlib.rcParams.items()}


@pytest.fixture
def rdms():
    g = np.random.default_rng(0)
    X = g.standard_normal((30, 8))
    Y = X @ g.standard_normal((8, 5)) + 0.5 * g.standard_normal((30, 5))
    return rdm(X, "pearson"), rdm(Y, "pearson")


def test_plot_rdm_draws_orders_by_label_and_keeps_rcparams(rdms):
    A, _ = rdms
    labels = ["dog", "cat", "bird"] * 10
    before = rc_snapshot()
    ax = plot_rdm(A, labels=labels, title="layer4")
    assert rc_snapshot() == before
    assert isinstance(ax, plt.Axes) and ax.get_title() == "layer4"
    order = sorted(range(30), key=lambda i: labels[i])
    drawn = np.asarray(ax.collections[0].get_array()).reshape(30, 30)
    np.testing.assert_allclose(drawn, A.numpy()[np.ix_(order, order)])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bird", "cat", "dog"]
    plt.close(ax.figure)


def test_plot_rdm_on_given_axes_without_ordering_and_large_n():
    fig, (ax1, ax2) = plt.subplots(1, 2)
    R = rdm(np.random.default_rng(1).standard_normal((8, 3)), "L2")
    assert plot_rdm(R, labels=list("abcdefgh"), ax=ax1, order_by_label=False) is ax1
    assert [t.get_text() for t in ax1.get_yticklabels()] == list("abcdefgh")
    big = rdm(np.random.default_rng(2).standard_normal((450, 4)), "L2squared")
    before = rc_snapshot()
    assert plot_rdm(big, ax=ax2) is ax2
    assert rc_snapshot() == before
    assert len(ax2.images) == 1
    plt.close(fig)


def test_plot_rdm_comparison_title_has_the_correlation(rdms):
    A, B = rdms
    before = rc_snapshot()
    ax = plot_rdm_comparison(A, B, method="spearman", title="conv1 vs fc")
    assert rc_snapshot() == before
    value = compare_rdms(A, B, "spearman")
    assert ax.get_title() == f"conv1 vs fc: spearman = {value:.3f}"
    assert len(ax.collections[0].get_offsets()) == 30 * 29 // 2
    ax2 = plot_rdm_comparison(A.numpy(), B, center=True, max_points=100)
    assert len(ax2.collections[0].get_offsets()) == 100
    assert f"{compare_rdms(A, B, 'pearson', center=True):.3f}" in ax2.get_title()
    plt.close("all")


def test_plot_bad_inputs(rdms):
    A, B = rdms
    with pytest.raises(ValueError, match="labels has 3 entries but the RDM has n=30"):
        plot_rdm(A, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="R must be a square RDM"):
        plot_rdm(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same n samples"):
        plot_rdm_comparison(A, B[:10, :10])
    with pytest.raises(ValueError, match="max_points must be a positive integer"):
        plot_rdm_comparison(A, B, max_points=0)
    with pytest.raises(ValueError, match="unknown method"):
        plot_rdm_comparison(A, B, method="r")
    plt.close("all")

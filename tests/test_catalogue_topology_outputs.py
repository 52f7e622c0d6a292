"""Topology measures (functional/topology.py: IMD, RTD) and output measures (functional/outputs.py)
against plain references (SciPy eigensolver, gudhi's Rips persistence, scipy's Jensen-Shannon)."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance as ssd
import torch

from simtorch_semantic.functional import outputs as out
from simtorch_semantic.functional import topology as tp

from catalogue_data import KINDS, make_pair  # noqa: E402


# --------------------------------------------------------------------------- IMD
def ref_heat_trace(X, k=5):
    n = len(X)
    D = ssd.squareform(ssd.pdist(X))
    A = np.zeros((n, n))
    for i in range(n):
        order = [j for j in np.argsort(D[i], kind="stable") if j != i][:k]
        A[i, order] = 1
    A = np.maximum(A, A.T)
    d = A.sum(1)
    L = np.eye(n) - A / np.sqrt(np.outer(d, d))
    lam = scipy.linalg.eigvalsh(L)
    ts = np.logspace(-1, 1, 256)
    return np.exp(-np.outer(ts, lam)).sum(1) / n * 1e6


def ref_imd(X, Y, k=5):
    ts = np.logspace(-1, 1, 256)
    return float(np.max(np.exp(-2 * (ts + 1 / ts)) * np.abs(ref_heat_trace(X, k) - ref_heat_trace(Y, k))))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_imd_matches_reference(kind, dtype):
    X, Y = make_pair(kind, n=40)
    X, Y = X.astype(dtype), Y.astype(dtype)
    ref = ref_imd(X.astype(np.float64), Y.astype(np.float64))
    assert tp.imd(X, Y) == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert tp.imd(X, Y, k=3) == pytest.approx(ref_imd(X.astype(np.float64), Y.astype(np.float64), 3),
                                              rel=1e-8, abs=1e-8)


def test_imd_samples_need_not_correspond_and_slq_is_close():
    X, _ = make_pair("random", n=60)
    Y = np.random.default_rng(5).normal(size=(45, 7))
    assert tp.imd(X, Y) == pytest.approx(ref_imd(X, Y), rel=1e-8)
    exact = tp.heat_trace(X).numpy()
    slq = tp.heat_trace(X, method="slq", steps=20, probes=400, seed=1).numpy()
    # the trace estimate is unbiased with ~1/sqrt(probes) relative noise at large t
    assert np.allclose(slq, exact, rtol=0.1)
    a = tp.imd(X, Y, method="slq", seed=3)
    assert a == tp.imd(X, Y, method="slq", seed=3)  # seeded: reproducible


def test_imd_errors():
    X, Y = make_pair("random", n=20)
    with pytest.raises(ValueError, match=r"k=25 neighbours need at least k \+ 1 = 26 samples"):
        tp.imd(X, Y, k=25)
    with pytest.raises(ValueError, match="all 20 samples identical"):
        tp.imd(np.ones_like(X), Y)
    with pytest.raises(ValueError, match="unknown method 'lanczos'"):
        tp.imd(X, Y, method="lanczos")
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        tp.imd(X, Y, method="slq", probes=0)


# --------------------------------------------------------------------------- RTD
def ref_cross_h1_total(RX, RY):
    """Total H1 bar length of [[0, RX^T], [RX, min(RX, RY)]] by gudhi (independent of ripser)."""
    import gudhi

    b = len(RX)
    M = np.zeros((2 * b, 2 * b))
    M[b:, :b] = RX
    M[:b, b:] = RX.T
    M[b:, b:] = np.minimum(RX, RY)
    M[M < RX.mean() * 1e-6] = 0.0
    rips = gudhi.RipsComplex(distance_matrix=M)
    tree = rips.create_simplex_tree(max_dimension=2)
    tree.compute_persistence()
    bars = tree.persistence_intervals_in_dimension(1)
    bars = bars[np.isfinite(bars[:, 1])] if len(bars) else np.zeros((0, 2))
    return float((bars[:, 1] - bars[:, 0]).sum())


def ref_rtd(X, Y):
    def dist(Z):
        D = ssd.squareform(ssd.pdist(Z))
        return D / np.quantile(D, 0.9)

    RX, RY = dist(X), dist(Y)
    return (ref_cross_h1_total(RX, RY) + ref_cross_h1_total(RY, RX)) / 2


@pytest.mark.parametrize("kind", KINDS)
def test_rtd_matches_gudhi_reference(kind):
    X, Y = make_pair(kind, n=24)
    if kind == "near_duplicate":
        Y = X + 0.05 * np.random.default_rng(2).normal(size=X.shape)  # visible, still small
    assert tp.rtd(X, Y) == pytest.approx(ref_rtd(X, Y), rel=1e-6, abs=1e-9)
    assert tp.rtd(X.astype(np.float32), Y.astype(np.float32)) == pytest.approx(
        ref_rtd(X.astype(np.float32).astype(np.float64), Y.astype(np.float32).astype(np.float64)),
        rel=1e-5, abs=1e-7)


def test_rtd_subsets_and_identity():
    X, Y = make_pair("random", n=30)
    assert tp.rtd(X, X.copy()) == 0.0
    a = tp.rtd(X, Y, trials=3, batch=15, seed=4)
    assert a == tp.rtd(X, Y, trials=3, batch=15, seed=4)
    rng = np.random.default_rng(4)
    expect = np.mean([ref_rtd(X[idx], Y[idx]) for idx in
                      (rng.choice(30, size=15, replace=False) for _ in range(3))])
    assert a == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError, match="batch must be an integer >= 3"):
        tp.rtd(X, Y, batch=2)
    with pytest.raises(ValueError, match="all 30 samples identical"):
        tp.rtd(X, np.zeros_like(Y))
    with pytest.raises(ValueError, match="same samples"):
        tp.rtd(X, Y[:10])


# --------------------------------------------------------------------------- outputs
def softmax(Z):
    E = np.exp(Z - Z.max(1, keepdims=True))
    return E / E.sum(1, keepdims=True)


def _logits(n=50, c=6, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, c)) * 2
    return A, A + rng.normal(size=(n, c))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jensen_shannon_matches_scipy(dtype):
    A, B = (M.astype(dtype) for M in _logits())
    P, Q = softmax(A.astype(np.float64)), softmax(B.astype(np.float64))
    ref = np.mean([ssd.jensenshannon(p, q, base=2) ** 2 for p, q in zip(P, Q)])
    assert out.jensen_shannon(A, B) == pytest.approx(ref, abs=1e-9)
    assert out.jensen_shannon(P, Q, outputs="probabilities") == pytest.approx(ref, abs=1e-9)
    assert out.jensen_shannon_score(out.jensen_shannon_prepare(A), out.jensen_shannon_prepare(B)) == \
        out.jensen_shannon(A, B)


def test_jensen_shannon_extremes_and_zero_probabilities():
    P = np.array([[1.0, 0.0], [0.5, 0.5]])
    Q = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert out.jensen_shannon(P, Q, outputs="probabilities") == pytest.approx(0.5)  # (1 + 0) / 2
    assert out.jensen_shannon(P * 3, P, outputs="probabilities") == 0.0  # rows are normalised
    with pytest.raises(ValueError, match="negative entries"):
        out.jensen_shannon(-P, Q, outputs="probabilities")
    with pytest.raises(ValueError, match="row 0 sums to 0"):
        out.jensen_shannon(np.zeros((2, 2)), Q, outputs="probabilities")
    with pytest.raises(ValueError, match="unknown outputs"):
        out.jensen_shannon(P, Q, outputs="log_probs")


def test_disagreement_and_accuracy():
    A, B = _logits()
    labels = np.random.default_rng(1).integers(0, 6, size=50)
    pa, pb = A.argmax(1), B.argmax(1)
    assert out.disagreement(A, B) == pytest.approx(np.mean(pa != pb))
    assert out.disagreement(torch.as_tensor(A), torch.as_tensor(A)) == 0.0
    acc = abs(np.mean(pa == labels) - np.mean(pb == labels))
    assert out.accuracy_difference(A, B, labels=labels) == pytest.approx(acc)
    assert out.accuracy_difference(A, B, labels=torch.as_tensor(labels)) == pytest.approx(acc)
    assert out.accuracy_score(out.accuracy(A, labels=labels), out.accuracy(B, labels=labels)) == pytest.approx(acc)
    with pytest.raises(ValueError, match="needs the true labels: pass labels="):
        out.accuracy_difference(A, B)
    with pytest.raises(ValueError, match="labels has 3 entries but the outputs have 50 samples"):
        out.accuracy_difference(A, B, labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        out.accuracy_difference(A, B, labels=labels + 6)
    with pytest.raises(ValueError, match="integer class indices"):
        out.accuracy_difference(A, B, labels=labels + 0.5)
    with pytest.raises(ValueError, match=r"shape \[n, classes\]"):
        out.disagreement(A.reshape(50, 2, 3), B.reshape(50, 2, 3))
    with pytest.raises(ValueError, match="same samples and classes"):
        out.disagreement(A, B[:, :4])

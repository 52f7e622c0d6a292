"""RSM measures (functional/rsm_measures.py) and statistics differences (functional/statistics.py)
against plain NumPy/SciPy references."""
import math
import warnings

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import torch

from simtorch_semantic.functional import rsm_measures as rm
from simtorch_semantic.functional import statistics as st

from catalogue_data import KINDS, make_pair  # noqa: E402

KIND_DTYPES = [(k, d) for k in KINDS for d in ("float64", "float32")]


def _inputs(kind, dtype, n=40):
    X, Y = make_pair(kind, n=n)
    if dtype == "float32":
        X, Y = X.astype(np.float32), Y.astype(np.float32)
    return X, Y, X.astype(np.float64), Y.astype(np.float64)


# --------------------------------------------------------------------------- references
def ref_rsm_norm(X, Y):
    return float(np.linalg.norm(ssd.pdist(X) - ssd.pdist(Y)))


def ref_dcor(X, Y):
    def centred(Z):
        D = ssd.squareform(ssd.pdist(Z))
        return D - D.mean(0, keepdims=True) - D.mean(1, keepdims=True) + D.mean()

    A, B = centred(X), centred(Y)
    return math.sqrt((A * B).mean() / math.sqrt((A * A).mean() * (B * B).mean()))


def rank_tol(A, eps):
    """Relative singular-value cut-off: numpy's ``max(shape) * eps`` at the input precision."""
    return max(A.shape) * eps


def ref_eos(X, Y, by_width=False, eps=np.finfo(np.float64).eps):
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    V, t, _ = np.linalg.svd(Y, full_matrices=False)
    rx = int((s > s[0] * rank_tol(X, eps)).sum())
    ry = int((t > t[0] * rank_tol(Y, eps)).sum())
    U, V = U[:, :rx], V[:, :ry]
    den = max(X.shape[1], Y.shape[1]) if by_width else max(rx, ry)
    return float(np.linalg.norm(U.T @ V) ** 2 / den)


def ref_gulp(X, Y, lmbda, eps=np.finfo(np.float64).eps):
    """||H_X - H_Y||_F with H = A (A^T A / n + lambda I)^+ A^T / n, A centred, ||A||_F^2 = n.

    Directions of A below the rank cut-off (``s < s_max * max(shape) * eps``, and at least
    ``sqrt(max(shape) * eps64)``, what a float64 Gram resolves) are dropped first."""
    def predictor(Z):
        n = Z.shape[0]
        A = Z - Z.mean(0)
        A = A * math.sqrt(n) / np.linalg.norm(A)
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        cut = s[0] * max(rank_tol(A, eps), math.sqrt(rank_tol(A, np.finfo(np.float64).eps)))
        A = (U[:, s > cut] * s[s > cut]) @ Vt[s > cut]
        S = A.T @ A / n + lmbda * np.eye(A.shape[1])
        return A @ np.linalg.pinv(S, hermitian=True) @ A.T / n

    return float(np.linalg.norm(predictor(X) - predictor(Y)))


# --------------------------------------------------------------------------- RSM measures
@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_rsm_norm_and_dcor_match_references(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert rm.rsm_norm_difference(X, Y) == pytest.approx(ref_rsm_norm(X64, Y64), rel=1e-8, abs=1e-10)
    assert rm.distance_correlation(X, Y) == pytest.approx(ref_dcor(X64, Y64), abs=1e-9)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_eigenspace_overlap_matches_reference(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype, n=60)
    # float32 input: singular values at float32 rounding level are not rank
    eps = np.finfo(np.float32 if dtype == "float32" else np.float64).eps
    assert rm.eigenspace_overlap(X, Y) == pytest.approx(ref_eos(X64, Y64, eps=eps), abs=1e-7)


def test_eigenspace_overlap_equals_resi_with_full_column_rank():
    X, Y = make_pair("random", n=50)
    assert rm.eigenspace_overlap(X, Y) == pytest.approx(ref_eos(X, Y, by_width=True), abs=1e-10)


@pytest.mark.parametrize("lmbda", [0.0, 1e-2, 1.0])
@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_gulp_matches_reference(kind, dtype, lmbda):
    X, Y, X64, Y64 = _inputs(kind, dtype, n=150)
    eps = np.finfo(np.float32 if dtype == "float32" else np.float64).eps
    assert rm.gulp(X, Y, lmbda=lmbda) == pytest.approx(ref_gulp(X64, Y64, lmbda, eps), rel=1e-6, abs=1e-7)


def test_gulp_lambda0_is_projection_distance_and_resi_squared():
    X, Y = make_pair("random", n=80)
    Qx = np.linalg.qr(X - X.mean(0))[0]
    Qy = np.linalg.qr(Y - Y.mean(0))[0]
    proj = np.linalg.norm(Qx @ Qx.T - Qy @ Qy.T)
    assert rm.gulp(X, Y) == pytest.approx(proj, rel=1e-9)
    # ReSi's value is the square: rank_x + rank_y - 2 sum(rho^2)
    rho = np.linalg.svd(Qx.T @ Qy, compute_uv=False)
    assert rm.gulp(X, Y) ** 2 == pytest.approx(X.shape[1] + Y.shape[1] - 2 * (rho ** 2).sum(), rel=1e-9)


def test_gulp_near_identical_keeps_precision():
    X, _ = make_pair("random", n=60)
    Y = X + 1e-9 * np.random.default_rng(1).normal(size=X.shape)
    for lmbda in (0.0, 0.1):
        ref = ref_gulp(X, Y, lmbda)
        got = rm.gulp(X, Y, lmbda=lmbda)
        assert got == pytest.approx(ref, rel=1e-2, abs=1e-12)
        assert got < 1e-6


def test_all_pairs_equal_pairwise():
    pairs = [make_pair(k, n=30) for k in ("random", "low_rank", "near_duplicate")]
    xs = [p[0] for p in pairs] + [pairs[0][0].copy()]
    ys = [p[1] for p in pairs]
    for prep, score, allp in ((rm.rsm_norm_prepare, rm.rsm_norm_score, rm.rsm_norm_score_all_pairs),
                              (rm.distance_correlation_prepare, rm.distance_correlation_score,
                               rm.distance_correlation_score_all_pairs)):
        px, py = [prep(x) for x in xs], [prep(y) for y in ys + xs[:1]]
        M = allp(px, py)
        assert M.shape == (4, 4) and M.dtype == np.float64
        for a in range(4):
            for b in range(4):
                assert M[a, b] == pytest.approx(score(px[a], py[b]), rel=1e-9, abs=1e-12)
    # identical layers give exactly 0 in the all-pairs RSM norm difference
    p0 = rm.rsm_norm_prepare(xs[0])
    assert rm.rsm_norm_score_all_pairs([p0], [rm.rsm_norm_prepare(xs[3])])[0, 0] == 0.0


def test_rsm_prepare_score_equal_plain_functions():
    X, Y = make_pair("real")
    for fn, prep, score, opts in (
            (rm.rsm_norm_difference, rm.rsm_norm_prepare, rm.rsm_norm_score, {}),
            (rm.distance_correlation, rm.distance_correlation_prepare, rm.distance_correlation_score, {}),
            (rm.eigenspace_overlap, rm.eigenspace_overlap_prepare, rm.eigenspace_overlap_score, {}),
            (rm.gulp, rm.gulp_prepare, rm.gulp_score, {"lmbda": 0.1})):
        assert score(prep(X, **opts), prep(Y, **opts), **opts) == pytest.approx(fn(X, Y, **opts), abs=1e-12)


def test_rsm_degenerate_inputs():
    X, Y = make_pair("random", n=20)
    const = np.full_like(X, 3.0)
    with pytest.warns(RuntimeWarning, match="returned as NaN") as rec:
        assert math.isnan(rm.distance_correlation(const, Y))
    assert len(rec) == 1
    with pytest.warns(RuntimeWarning, match="constant"):
        M = rm.distance_correlation_score_all_pairs([rm.distance_correlation_prepare(const)],
                                                    [rm.distance_correlation_prepare(Y)])
    assert math.isnan(M[0, 0])
    with pytest.raises(ValueError, match="all samples identical"):
        rm.gulp(const, Y)
    with pytest.raises(ValueError, match="all zeros"):
        rm.eigenspace_overlap(np.zeros_like(X), Y)
    # the RSM norm difference is defined for a constant input: the norm of Y's distances
    assert rm.rsm_norm_difference(const, Y) == pytest.approx(np.linalg.norm(ssd.pdist(Y)), rel=1e-9)
    wide = np.random.default_rng(0).normal(size=(20, 30))
    with pytest.warns(RuntimeWarning, match="rank n - 1"):
        assert rm.gulp(wide, wide[:, ::-1] * 2 + 1) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="lmbda must be a finite number >= 0.0"):
        rm.gulp(X, Y, lmbda=-1.0)
    with pytest.raises(ValueError, match="same samples"):
        rm.distance_correlation(X, Y[:10])
    with pytest.raises(ValueError, match="at least 3"):
        rm.rsm_norm_difference(X[:2], Y[:2])


# --------------------------------------------------------------------------- statistics
def ref_magnitude(X):
    return np.linalg.norm(X.mean(0))


def ref_concentricity(X):
    mu = X.mean(0)
    return np.mean([1 - ssd.cosine(x, mu) for x in X])


def ref_uniformity(X, t=2.0):
    D = ssd.squareform(ssd.pdist(X, "sqeuclidean"))
    return np.log(np.exp(-t * D).sum() / X.shape[0] ** 2)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_statistics_match_references(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert st.magnitude_difference(X, Y) == pytest.approx(
        abs(ref_magnitude(X64) - ref_magnitude(Y64)), abs=1e-10)
    assert st.concentricity_difference(X, Y) == pytest.approx(
        abs(ref_concentricity(X64) - ref_concentricity(Y64)), abs=1e-10)
    # scale so that exp(-2 d^2) does not underflow in the plain reference
    s = 0.2 / np.sqrt(X64.shape[1])
    assert st.uniformity_difference(X * s, Y * s) == pytest.approx(
        abs(ref_uniformity(X64 * s) - ref_uniformity(Y64 * s)), abs=1e-8)
    assert st.uniformity_difference(X, Y, t=0.5) == pytest.approx(
        abs(ref_uniformity(X64, 0.5) - ref_uniformity(Y64, 0.5)), abs=1e-8)


def test_uniformity_survives_underflow():
    X = np.random.default_rng(0).normal(size=(30, 10)) * 100  # exp(-2 d^2) underflows to 0
    u = float(st.uniformity(X))
    assert np.isfinite(u)
    # only the i = j terms survive: log(n / n^2)
    assert u == pytest.approx(-math.log(30), rel=1e-12)


def test_statistics_all_pairs_and_degenerate():
    xs = [make_pair(k)[0] for k in ("random", "low_rank", "real")]
    stats = [st.concentricity(x) for x in xs]
    M = st.statistic_score_all_pairs(stats, stats)
    assert M.shape == (3, 3) and np.allclose(np.diag(M), 0)
    assert M[0, 2] == pytest.approx(st.concentricity_difference(xs[0], xs[2]), abs=1e-12)
    zero_mean = np.vstack([np.eye(3), -np.eye(3)])
    with pytest.warns(RuntimeWarning, match="mean sample of X is zero") as rec:
        assert math.isnan(st.concentricity_difference(zero_mean, zero_mean + 1))
    assert len(rec) == 1
    Z = np.random.default_rng(0).normal(size=(10, 3)) + 2
    Z[0] = 0
    with pytest.warns(RuntimeWarning, match="count as cosine 0"):
        st.concentricity(Z)
    with pytest.raises(ValueError, match="t must be a finite number > 0.0"):
        st.uniformity_difference(Z, Z, t=0)
    with pytest.raises(ValueError, match="same samples"):
        st.magnitude_difference(Z, Z[:5])
    assert st.magnitude_difference(torch.ones(4, 2), torch.zeros(4, 2)) == pytest.approx(math.sqrt(2))

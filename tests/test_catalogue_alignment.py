"""Alignment measures (functional/alignment.py) against plain NumPy/SciPy references."""
import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from simtorch_semantic.functional import alignment as al
from simtorch_semantic.functional.cca import cca
from simtorch_semantic.functional.procrustes import procrustes_angular

from catalogue_data import KINDS, make_pair  # noqa: E402


# --------------------------------------------------------------------------- references
def pad(X, Y):
    w = max(X.shape[1], Y.shape[1])
    padw = lambda A: np.hstack([A, np.zeros((A.shape[0], w - A.shape[1]))])  # noqa: E731
    return padw(X), padw(Y)


def ref_aligned_cosine(X, Y):
    Xp, Yp = pad(X, Y)
    Q, _ = scipy.linalg.orthogonal_procrustes(Xp, Yp)
    XQ = Xp @ Q
    cos = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(XQ, Yp)
           if np.any(a) and np.any(b)]
    return float(np.mean(cos))


def ref_corr(X, Y):
    p = X.shape[1]
    return np.corrcoef(X.T, Y.T)[:p, p:]


def ref_hard_corr(X, Y):
    C = ref_corr(X, Y)
    r, c = scipy.optimize.linear_sum_assignment(-C)
    return float(C[r, c].mean())


def ref_soft_corr(X, Y):
    C = ref_corr(X, Y)
    return float((C.max(axis=1).mean() + C.max(axis=0).mean()) / 2)


def ref_r2(T, S, rcond=None):
    """R^2 of the least-squares fit of T from S (with intercept)."""
    Tc, Sc = T - T.mean(0), S - S.mean(0)
    B, *_ = np.linalg.lstsq(Sc, Tc, rcond=rcond)
    return 1 - np.sum((Tc - Sc @ B) ** 2) / np.sum(Tc ** 2)


def ref_perm_procrustes_bruteforce(X, Y):
    Xp, Yp = pad(X, Y)
    return min(np.linalg.norm(Xp[:, list(perm)] - Yp) for perm in itertools.permutations(range(Xp.shape[1])))


def ref_perm_procrustes(X, Y):
    Xp, Yp = pad(X, Y)
    r, c = scipy.optimize.linear_sum_assignment(-(Xp.T @ Yp))
    return float(np.linalg.norm(Xp[:, r] - Yp[:, c]))


def ref_size_shape(X, Y):
    Xp, Yp = pad(X - X.mean(0), Y - Y.mean(0))
    Q, _ = scipy.linalg.orthogonal_procrustes(Xp, Yp)
    return float(np.linalg.norm(Xp @ Q - Yp))


def ref_whiten(X, alpha):
    Xc = X - X.mean(0)
    C = Xc.T @ Xc / X.shape[0]
    lam, V = np.linalg.eigh(alpha * np.eye(C.shape[0]) + (1 - alpha) * C)
    inv_sqrt = np.where(lam > 1e-10 * lam.max(), 1 / np.sqrt(np.clip(lam, 1e-300, None)), 0.0)
    return Xc @ (V * inv_sqrt) @ V.T


def ref_shape_metric(X, Y, alpha):
    A, B = pad(ref_whiten(X, alpha), ref_whiten(Y, alpha))
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    nuc = np.linalg.svd(A.T @ B, compute_uv=False).sum()
    return float(np.arccos(np.clip(nuc, -1, 1)))


def ref_soft_matching(X, Y, center=True):
    """Transport LP solved by scipy's linprog (independent of POT)."""
    if center:
        X, Y = X - X.mean(0), Y - Y.mean(0)
    p1, p2 = X.shape[1], Y.shape[1]
    cost = ((X[:, :, None] - Y[:, None, :]) ** 2).sum(axis=0)  # [p1, p2]
    A_eq = np.zeros((p1 + p2, p1 * p2))
    for i in range(p1):
        A_eq[i, i * p2:(i + 1) * p2] = 1
    for j in range(p2):
        A_eq[p1 + j, j::p2] = 1
    b_eq = np.concatenate([np.full(p1, 1 / p1), np.full(p2, 1 / p2)])
    res = scipy.optimize.linprog(cost.ravel(), A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    return float(np.sqrt(max(res.fun, 0.0)))


# --------------------------------------------------------------------------- the comparisons
def _inputs(kind, dtype, n=40):
    X, Y = make_pair(kind, n=n)
    if dtype == "float32":
        X, Y = X.astype(np.float32), Y.astype(np.float32)
    # the reference sees exactly the values the measure sees
    return X, Y, X.astype(np.float64), Y.astype(np.float64)


KIND_DTYPES = [(k, d) for k in KINDS for d in ("float64", "float32")]


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_aligned_cosine_matches_reference(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert al.aligned_cosine(X, Y) == pytest.approx(ref_aligned_cosine(X64, Y64), abs=1e-7)
    assert al.aligned_cosine(torch.as_tensor(X), torch.as_tensor(Y)) == pytest.approx(
        ref_aligned_cosine(X64, Y64), abs=1e-7)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_correlation_match_matches_reference(kind, dtype):
    if kind == "low_rank":  # exact low rank: fine, but no constant neurons
        pass
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert al.hard_correlation_match(X, Y) == pytest.approx(ref_hard_corr(X64, Y64), abs=1e-6)
    assert al.soft_correlation_match(X, Y) == pytest.approx(ref_soft_corr(X64, Y64), abs=1e-6)
    assert al.correlation_match(X, Y, mode="SOFT") == pytest.approx(ref_soft_corr(X64, Y64), abs=1e-6)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_linear_regression_matches_least_squares(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype, n=150)
    # float32 input: singular values at rounding level are not rank (lstsq's rcond at float32 eps)
    rcond = 150 * np.finfo(np.float32).eps if dtype == "float32" else None
    xy, yx = ref_r2(X64, Y64, rcond), ref_r2(Y64, X64, rcond)
    assert al.linear_regression(X, Y, direction="x_from_y") == pytest.approx(xy, abs=1e-7)
    assert al.linear_regression(X, Y, direction="y_from_x") == pytest.approx(yx, abs=1e-7)
    assert al.linear_regression(X, Y) == pytest.approx((xy + yx) / 2, abs=1e-7)


def test_linear_regression_x_from_y_is_resi_formula():
    """ReSi: ||Q_Y^T Xc||^2 / ||Xc||^2 with Q_Y = Yc (Yc^T Yc)^(-1/2) (full column rank Y)."""
    X, Y = make_pair("random", n=60)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Q = Yc @ np.linalg.inv(scipy.linalg.sqrtm(Yc.T @ Yc)).real
    resi = np.linalg.norm(Q.T @ Xc) ** 2 / np.linalg.norm(Xc) ** 2
    assert al.linear_regression(X, Y, direction="x_from_y") == pytest.approx(resi, abs=1e-9)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_permutation_procrustes_matches_reference(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert al.permutation_procrustes(X, Y) == pytest.approx(ref_perm_procrustes(X64, Y64), rel=1e-9)


def test_permutation_procrustes_is_the_best_permutation():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 5))
    Y = X[:, [3, 0, 4, 1, 2]] + 0.8 * rng.normal(size=(20, 5))
    assert al.permutation_procrustes(X, Y) == pytest.approx(ref_perm_procrustes_bruteforce(X, Y), rel=1e-9)
    Y4 = Y[:, :4]  # unequal widths: zero padding
    assert al.permutation_procrustes(X, Y4) == pytest.approx(ref_perm_procrustes_bruteforce(X, Y4), rel=1e-9)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_size_shape_matches_reference(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert al.procrustes_size_shape(X, Y) == pytest.approx(ref_size_shape(X64, Y64), rel=1e-7, abs=1e-9)


def test_size_shape_near_zero_keeps_precision():
    X, _ = make_pair("random")
    Q = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))[0]
    Y = X @ Q + 5.0 + 1e-9 * np.random.default_rng(2).normal(size=X.shape)
    ref = ref_size_shape(X, Y)
    assert ref < 1e-7
    assert al.procrustes_size_shape(X, Y) == pytest.approx(ref, rel=1e-3)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind,dtype", [(k, d) for k in ("random", "near_duplicate") for d in ("float64", "float32")])
def test_shape_metric_matches_reference(alpha, kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype, n=60)
    assert al.shape_metric(X, Y, alpha=alpha) == pytest.approx(ref_shape_metric(X64, Y64, alpha), abs=1e-6)


def test_shape_metric_real_and_low_rank():
    for kind in ("real", "low_rank"):
        X, Y = make_pair(kind, n=200)
        for alpha in (0.0, 0.5, 1.0):
            assert al.shape_metric(X, Y, alpha=alpha) == pytest.approx(
                ref_shape_metric(X, Y, alpha), abs=1e-6), (kind, alpha)


def test_shape_metric_endpoints_are_procrustes_and_cca():
    X, Y = make_pair("random", n=80)
    assert al.shape_metric(X, Y, alpha=1.0) == pytest.approx(procrustes_angular(X, Y), abs=1e-9)
    rho = cca(X, Y).numpy()
    expect = np.arccos(rho.sum() / math.sqrt(X.shape[1] * Y.shape[1]))
    assert al.shape_metric(X, Y, alpha=0.0) == pytest.approx(expect, abs=1e-9)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_soft_matching_matches_linear_program(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype, n=30)
    X, Y, X64, Y64 = X[:, :8], Y[:, :6], X64[:, :8], Y64[:, :6]
    assert al.soft_matching_distance(X, Y) == pytest.approx(ref_soft_matching(X64, Y64), rel=1e-6, abs=1e-9)
    assert al.soft_matching_distance(X, Y, center=False) == pytest.approx(
        ref_soft_matching(X64, Y64, center=False), rel=1e-6, abs=1e-9)


def test_soft_matching_equal_widths_is_scaled_permutation_distance():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(25, 6))
    Y = X[:, [2, 5, 0, 1, 4, 3]] + 0.5 * rng.normal(size=(25, 6))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    expect = ref_perm_procrustes_bruteforce(Xc, Yc) / math.sqrt(6)
    assert al.soft_matching_distance(X, Y) == pytest.approx(expect, rel=1e-9)


# --------------------------------------------------------------------------- prepare/score split
def test_prepare_score_equal_plain_functions():
    X, Y = make_pair("random", n=50)
    cases = [
        (al.aligned_cosine, al.aligned_cosine_prepare, al.aligned_cosine_score, {}),
        (al.hard_correlation_match, al.correlation_match_prepare, al.hard_correlation_match_score, {}),
        (al.soft_correlation_match, al.correlation_match_prepare, al.soft_correlation_match_score, {}),
        (al.linear_regression, al.linear_regression_prepare, al.linear_regression_score, {}),
        (al.permutation_procrustes, al.permutation_procrustes_prepare, al.permutation_procrustes_score, {}),
        (al.procrustes_size_shape, al.procrustes_size_shape_prepare, al.procrustes_size_shape_score, {}),
        (al.shape_metric, al.shape_metric_prepare, al.shape_metric_score, {"alpha": 0.2}),
        (al.soft_matching_distance, al.soft_matching_prepare, al.soft_matching_score, {"center": False}),
    ]
    for fn, prep, score, opts in cases:
        assert score(prep(X, **opts), prep(Y, **opts), **opts) == pytest.approx(fn(X, Y, **opts), abs=1e-12)


# --------------------------------------------------------------------------- degenerate input
def test_zero_rows_left_out_of_aligned_cosine_with_one_warning():
    X, Y = make_pair("random", n=30)
    X[3] = 0
    with pytest.warns(RuntimeWarning, match="all zeros") as rec:
        v = al.aligned_cosine(X, Y)
    assert len(rec) == 1
    assert v == pytest.approx(ref_aligned_cosine(X, Y), abs=1e-9)
    with pytest.raises(ValueError, match="all zeros"):
        al.aligned_cosine(np.zeros((10, 3)), Y[:10])


def test_constant_neurons_count_as_zero_correlation():
    X, Y = make_pair("random", n=30)
    X[:, 0] = 2.5
    with pytest.warns(RuntimeWarning, match="constant") as rec:
        v = al.soft_correlation_match(X, Y)
    assert len(rec) == 1
    C = ref_corr(X[:, 1:], Y)
    expect = (np.concatenate([[max(0.0, 0.0)], C.max(axis=1)]).mean()
              + np.maximum(C.max(axis=0), 0.0).mean()) / 2
    assert v == pytest.approx(expect, abs=1e-9)
    with pytest.warns(RuntimeWarning, match="every neuron"):
        assert math.isnan(al.hard_correlation_match(np.ones((30, 4)), Y))


def test_constant_input_errors_name_the_problem():
    X, Y = make_pair("random", n=30)
    const = np.ones_like(X)
    for fn in (al.linear_regression, al.shape_metric):
        with pytest.raises(ValueError, match="all samples identical"):
            fn(const, Y)
    # these are defined for constant inputs: the distance to a constant is the other's spread
    assert al.procrustes_size_shape(const, Y) == pytest.approx(np.linalg.norm(Y - Y.mean(0)), rel=1e-9)


def test_rank_n_minus_1_warns_once():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(10, 12)), rng.normal(size=(10, 3))
    with pytest.warns(RuntimeWarning, match="R\\^2 is 1 by construction") as rec:
        al.linear_regression(Y, X, direction="x_from_y")
    assert len(rec) == 1
    with pytest.warns(RuntimeWarning, match="full\\s+whitening"):
        assert al.shape_metric(X, X[:, ::-1] * 3 + rng.normal(size=(10, 12)), alpha=0.0) == pytest.approx(0.0, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        al.linear_regression(X, Y, direction="x_from_y")  # predictor Y has rank 3: no warning


def test_bad_inputs_raise_clear_errors():
    X, Y = make_pair("random", n=30)
    with pytest.raises(ValueError, match="same samples"):
        al.aligned_cosine(X, Y[:20])
    with pytest.raises(ValueError, match="unknown mode"):
        al.correlation_match(X, Y, mode="medium")
    with pytest.raises(ValueError, match="unknown direction"):
        al.linear_regression(X, Y, direction="both")
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0.0 and <= 1.0"):
        al.shape_metric(X, Y, alpha=1.5)
    with pytest.raises(ValueError, match="center must be True or False"):
        al.soft_matching_distance(X, Y, center="yes")
    with pytest.raises(ValueError, match="NaN"):
        al.procrustes_size_shape(np.full((5, 2), np.nan), Y[:5])
    with pytest.raises(ValueError, match="at least 3"):
        al.linear_regression(X[:2], Y[:2])

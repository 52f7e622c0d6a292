"""Tests for functional/rsa.py: RDMs, RDM comparison and the RSA <-> CKA identities."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simtorch_semantic.functional.cka import linear_cka
from simtorch_semantic.functional.rsa import (
    COMPARE_METHODS,
    RDM_METRICS,
    compare_rdms,
    compare_rdms_all_pairs,
    double_center,
    rdm,
    upper_triangle,
)


# ----------------------------------------------------------------- plain float64 references
def ref_rdm(X, metric):
    """Double loop over pairs, straight from the definitions."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    n = len(X)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a, b = X[i], X[j]
            if metric == "L2squared":
                D[i, j] = np.sum((a - b) ** 2)
            elif metric == "L2":
                D[i, j] = np.sqrt(np.sum((a - b) ** 2))
            elif metric == "L2squared_normalize":
                D[i, j] = np.sum((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2)
            elif metric == "L2_normalize":
                D[i, j] = np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b))
            elif metric == "cosine":
                D[i, j] = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            elif metric == "pearson":
                D[i, j] = 1 - np.corrcoef(a, b)[0, 1]
    np.fill_diagonal(D, 0.0)
    return D


def ref_linear_cka(X, Y):
    """Biased linear CKA from centred Gram matrices (Kornblith et al. 2019)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K = H @ X @ X.T @ H
    L = H @ Y @ Y.T @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def ref_upper(R):
    n = len(R)
    return np.array([R[i, j] for i in range(n) for j in range(i + 1, n)])


def ref_tau_b(a, b):
    """Kendall's tau-b by counting all pairs."""
    conc = disc = tie_a = tie_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                tie_a += 1
            elif db == 0:
                tie_b += 1
            elif da == db:
                conc += 1
            else:
                disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tie_a) * (conc + disc + tie_b))


def data(n=30, d=12, seed=0):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, d))
    Y = np.tanh(X @ g.standard_normal((d, d + 5))) + 0.3 * g.standard_normal((n, d + 5))
    return X, Y


# ----------------------------------------------------------------- RDM
@pytest.mark.parametrize("metric", RDM_METRICS)
def test_rdm_matches_plain_reference(metric):
    X, _ = data(n=25, d=9)
    R = rdm(X, metric)
    assert isinstance(R, torch.Tensor) and R.dtype == torch.float64 and R.shape == (25, 25)
    np.testing.assert_allclose(R.numpy(), ref_rdm(X, metric), atol=1e-10, rtol=0)


@pytest.mark.parametrize("metric", RDM_METRICS)
def test_rdm_structure_and_chunking(metric):
    X, _ = data(n=41, d=7, seed=3)
    R = rdm(torch.from_numpy(X), metric)
    assert torch.equal(R, R.T)  # exactly symmetric
    assert torch.all(R.diagonal() == 0)
    assert torch.all(R >= 0)
    for chunk in (1, 5, 16, 40, 41, 1000):
        np.testing.assert_allclose(rdm(X, metric, chunk_size=chunk).numpy(), R.numpy(), atol=1e-12)


def test_rdm_float32_and_nd_input():
    X, _ = data(n=20, d=24)
    R32 = rdm(X.astype(np.float32), "pearson", dtype=torch.float32)
    assert R32.dtype == torch.float32
    np.testing.assert_allclose(R32.numpy(), ref_rdm(X, "pearson"), atol=1e-5)
    # [n, c, h, w] is flattened per sample
    R4 = rdm(torch.from_numpy(X).reshape(20, 2, 3, 4), "L2")
    np.testing.assert_allclose(R4.numpy(), ref_rdm(X, "L2"), atol=1e-10)


def test_rdm_metric_names_case_insensitive():
    X, _ = data()
    assert torch.equal(rdm(X, "l2SQUARED"), rdm(X, "L2squared"))


def test_rdm_invariances():
    g = np.random.default_rng(5)
    X, _ = data(n=20, d=10)
    Q, _ = np.linalg.qr(g.standard_normal((10, 10)))
    # Euclidean distances: rotations/reflections of the features and translations
    np.testing.assert_allclose(rdm(X @ Q + 3.0, "L2").numpy(), rdm(X, "L2").numpy(), atol=1e-10)
    # pearson: positive affine change of each pattern
    a = g.uniform(0.5, 3.0, size=(20, 1))
    b = g.standard_normal((20, 1))
    np.testing.assert_allclose(rdm(a * X + b, "pearson").numpy(), rdm(X, "pearson").numpy(), atol=1e-10)
    # cosine / normalised: positive scaling of each pattern
    for m in ("cosine", "L2_normalize", "L2squared_normalize"):
        np.testing.assert_allclose(rdm(a * X, m).numpy(), rdm(X, m).numpy(), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.integers(1, 6), st.integers(0, 10_000))
def test_rdm_l2squared_property(n, d, seed):
    X = np.random.default_rng(seed).standard_normal((n, d)) * 10.0
    np.testing.assert_allclose(rdm(X, "L2squared").numpy(), ref_rdm(X, "L2squared"), atol=1e-9)


# ----------------------------------------------------------------- the RSA <-> CKA identities
def test_centered_cosine_of_l2squared_rdms_is_linear_cka():
    X, Y = data(n=40, d=15)
    value = compare_rdms(rdm(X, "L2squared"), rdm(Y, "L2squared"), "cosine", center=True)
    assert abs(value - linear_cka(X, Y)) < 1e-10
    assert abs(value - ref_linear_cka(X, Y)) < 1e-10
    # the sign: H D H = -2 H X X^T H
    n = len(X)
    H = np.eye(n) - 1.0 / n
    np.testing.assert_allclose(double_center(rdm(X, "L2squared")).numpy(), -2 * H @ X @ X.T @ H, atol=1e-10)


@pytest.mark.parametrize("metric", ["L2squared_normalize", "cosine"])
def test_normalised_rdms_give_cka_of_row_normalised_data(metric):
    X, Y = data(n=35, d=11, seed=2)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    value = compare_rdms(rdm(X, metric), rdm(Y, metric), "cosine", center=True)
    assert abs(value - linear_cka(Xn, Yn)) < 1e-10
    assert abs(value - ref_linear_cka(Xn, Yn)) < 1e-10


def test_pearson_rdms_give_cka_of_row_zscored_data():
    X, Y = data(n=35, d=11, seed=4)

    def zscore_rows(A):
        return (A - A.mean(1, keepdims=True)) / A.std(1, keepdims=True)

    value = compare_rdms(rdm(X, "pearson"), rdm(Y, "pearson"), "cosine", center=True)
    assert abs(value - linear_cka(zscore_rows(X), zscore_rows(Y))) < 1e-10
    assert abs(value - ref_linear_cka(zscore_rows(X), zscore_rows(Y))) < 1e-10


def test_upper_triangle_comparison_is_not_cka():
    X, Y = data(n=40, d=15, seed=6)
    cka = ref_linear_cka(X, Y)
    A, B = rdm(X, "L2squared"), rdm(Y, "L2squared")
    for method in ("cosine", "pearson"):
        value = compare_rdms(A, B, method)
        assert abs(value - cka) > 1e-4  # related, but not the same number


# ----------------------------------------------------------------- comparison methods
def test_compare_methods_match_references():
    X, Y = data(n=14, d=6, seed=7)
    A, B = rdm(X, "L2"), rdm(Y, "pearson")
    a, b = ref_upper(A.numpy()), ref_upper(B.numpy())
    assert abs(compare_rdms(A, B, "cosine") - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 1e-12
    assert abs(compare_rdms(A, B, "pearson") - np.corrcoef(a, b)[0, 1]) < 1e-12
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties in random data
    assert abs(compare_rdms(A, B, "spearman") - np.corrcoef(ra, rb)[0, 1]) < 1e-12
    assert abs(compare_rdms(A, B, "kendall") - ref_tau_b(a, b)) < 1e-12
    # centred: all n*n entries of H A H
    n = len(X)
    H = np.eye(n) - 1.0 / n
    ca, cb = (H @ A.numpy() @ H).ravel(), (H @ B.numpy() @ H).ravel()
    cos = ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb)
    assert abs(compare_rdms(A, B, "cosine", center=True) - cos) < 1e-12
    assert abs(compare_rdms(A, B, "pearson", center=True) - cos) < 1e-12  # mean of HAH is 0


def test_compare_with_ties_spearman_kendall():
    g = np.random.default_rng(8)
    X = g.integers(0, 3, size=(12, 2)).astype(float) + np.arange(12)[:, None] * 0.0
    Y = g.integers(0, 3, size=(12, 2)).astype(float)
    A, B = rdm(X, "L2squared"), rdm(Y, "L2squared")
    a, b = ref_upper(A.numpy()), ref_upper(B.numpy())
    from scipy.stats import rankdata

    assert abs(compare_rdms(A, B, "spearman") - np.corrcoef(rankdata(a), rankdata(b))[0, 1]) < 1e-12
    assert abs(compare_rdms(A, B, "kendall") - ref_tau_b(a, b)) < 1e-12


def test_compare_identical_and_symmetric():
    X, Y = data(seed=9)
    A, B = rdm(X, "pearson"), rdm(Y, "pearson")
    for method, center in itertools.product(COMPARE_METHODS, (False, True)):
        assert abs(compare_rdms(A, A, method, center) - 1) < 1e-12
        assert abs(compare_rdms(A, B, method, center) - compare_rdms(B, A, method, center)) < 1e-12


@pytest.mark.parametrize("method", COMPARE_METHODS)
@pytest.mark.parametrize("center", [False, True])
def test_all_pairs_equals_single_comparisons(method, center):
    Xs = [data(n=12, d=5, seed=s)[0] for s in range(3)]
    Ys = [data(n=12, d=5, seed=s)[1] for s in range(10, 12)]
    As = [rdm(X, "L2") for X in Xs]
    Bs = torch.stack([rdm(Y, "cosine") for Y in Ys])
    M = compare_rdms_all_pairs(As, Bs, method, center)
    assert M.shape == (3, 2) and M.dtype == np.float64
    for i, j in itertools.product(range(3), range(2)):
        assert abs(M[i, j] - compare_rdms(As[i], Bs[j], method, center)) < 1e-12


def test_upper_triangle_helper():
    R = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(upper_triangle(R).numpy(), ref_upper(R))


def test_ranks_match_scipy_with_ties():
    from scipy.stats import rankdata

    from simtorch_semantic.functional.rsa import _ranks

    V = np.random.default_rng(0).integers(0, 6, size=(3, 200)).astype(float)
    np.testing.assert_array_equal(_ranks(torch.from_numpy(V)).numpy(), rankdata(V, axis=1))


# ----------------------------------------------------------------- bad input
def test_constant_patterns_under_pearson_give_nan_and_warning():
    X, _ = data(n=10, d=6)
    X[3] = 2.5
    X[7] = 0.0
    with pytest.warns(RuntimeWarning, match=r"rows \[3, 7\] of X are constant"):
        R = rdm(X, "pearson")
    R = R.numpy()
    assert np.isnan(R[3]).all() and np.isnan(R[:, 7]).all()
    ok = [i for i in range(10) if i not in (3, 7)]
    np.testing.assert_allclose(R[np.ix_(ok, ok)], ref_rdm(X[ok], "pearson"), atol=1e-10)
    # the NaN RDM cannot be compared silently
    with pytest.raises(ValueError, match=r"A contains NaN/Inf in rows \[3, 7"):
        compare_rdms(R, R)


@pytest.mark.parametrize("metric", ["cosine", "L2_normalize", "L2squared_normalize"])
def test_zero_patterns_under_normalising_metrics_give_nan_and_warning(metric):
    X, _ = data(n=8, d=4)
    X[2] = 0.0
    with pytest.warns(RuntimeWarning, match=r"rows \[2\] of X are all-zero"):
        R = rdm(X, metric)
    assert np.isnan(R[2].numpy()).all()


def test_no_warning_for_regular_data():
    X, _ = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for m in RDM_METRICS:
            rdm(X, m)


def test_bad_inputs_raise_clear_errors():
    X, Y = data(n=10)
    with pytest.raises(ValueError, match="unknown metric 'euclid'.*'pearson'.*'L2squared_normalize'"):
        rdm(X, "euclid")
    with pytest.raises(ValueError, match="unknown method 'tau'.*'cosine', 'pearson', 'spearman', 'kendall'"):
        compare_rdms(rdm(X), rdm(Y), "tau")
    with pytest.raises(ValueError, match="unknown method"):
        compare_rdms_all_pairs([rdm(X)], [rdm(Y)], "tau")
    with pytest.raises(ValueError, match=r"at least 2-D"):
        rdm(np.arange(5.0))
    with pytest.raises(ValueError, match=r"n=2 samples; at least 3"):
        rdm(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"X contains NaN.*row 4"):
        Xn = X.copy()
        Xn[4, 1] = np.nan
        rdm(Xn)
    with pytest.raises(ValueError, match=r"same n samples.*\(10, 10\) and \(9, 9\)"):
        compare_rdms(rdm(X), rdm(Y[:9]))
    with pytest.raises(ValueError, match=r"B must be a square RDM"):
        compare_rdms(rdm(X), Y)
    with pytest.raises(ValueError, match=r"n >= 3"):
        compare_rdms(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        rdm(X, chunk_size=0)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        rdm(X, dtype=torch.int64)
    with pytest.raises(TypeError, match="A must be a torch.Tensor or numpy.ndarray"):
        compare_rdms([[0, 1], [1, 0]], rdm(X))
    with pytest.raises(ValueError, match="same shape"):
        compare_rdms_all_pairs([rdm(X)], [rdm(Y[:9])])


def test_rdm_without_variation_gives_nan_with_warning():
    A = np.ones((5, 5)) - np.eye(5)  # every distance equal: upper triangle is constant
    with pytest.warns(RuntimeWarning, match="no variation"):
        assert math.isnan(compare_rdms(A, A, "pearson"))


# ----------------------------------------------------------------- duplicates (issue 8)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("metric", RDM_METRICS)
def test_identical_samples_are_exactly_zero_apart(metric, dtype):
    g = np.random.default_rng(8)
    X = 5.0 + 3.0 * g.standard_normal((40, 64))
    X[7] = X[3]
    X[20] = X[3]
    X[11] = X[39]
    D = rdm(torch.from_numpy(X).to(dtype), metric, dtype=dtype, chunk_size=16)  # pairs across blocks
    for i, j in ((3, 7), (3, 20), (7, 20), (11, 39)):
        assert D[i, j].item() == 0.0 and D[j, i].item() == 0.0
    assert torch.equal(D, D.T)
    # the other entries still follow the definition
    ref = ref_rdm(X, metric)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    np.testing.assert_allclose(D.double().numpy(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("metric", ["L2", "L2squared", "L2_normalize"])
def test_near_duplicates_keep_their_digits(metric):
    # a distance of 1e-6 between vectors of norm ~100: the Gram trick alone loses every digit
    g = np.random.default_rng(9)
    X = 10.0 + g.standard_normal((12, 100))
    X[5] = X[2] + 1e-7 * g.standard_normal(100)
    D = rdm(X, metric)
    ref = ref_rdm(X, metric)
    assert D[2, 5].item() > 0
    np.testing.assert_allclose(D[2, 5].item(), ref[2, 5], rtol=1e-6)
    np.testing.assert_allclose(D.numpy(), ref, rtol=1e-9, atol=1e-12)

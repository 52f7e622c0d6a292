"""Tests for functional/ kernels, HSIC and CKA against plain float64 NumPy references."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simtorch_semantic.functional._validation import as_matrix, check_same_n
from simtorch_semantic.functional.cka import cka_from_grams, cka_from_hsic, linear_cka, rbf_cka
from simtorch_semantic.functional.hsic import hsic_all_pairs, hsic_biased, hsic_unbiased
from simtorch_semantic.functional.kernels import (center_gram, linear_gram, median_bandwidth,
                                                  rbf_gram, sq_distances)


from reference import ref_H, ref_hsic_b, ref_hsic_u, ref_cka_grams, ref_linear_gram, ref_sq_dists, ref_rbf_gram, ref_linear_cka, ref_rbf_cka  # noqa: E402


def data(seed=0, n=40, d1=30, d2=20, noise=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d1))
    Y = X @ rng.normal(size=(d1, d2)) / math.sqrt(d1) + noise * rng.normal(size=(n, d2))
    return X, Y


def random_orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# ---------------------------------------------------------------- kernels
def test_linear_gram_is_gram_of_centred_features():
    X, _ = data(n=12, d1=7)
    Xc = X - X.mean(0)
    np.testing.assert_allclose(linear_gram(torch.tensor(X)).numpy(), Xc @ Xc.T, atol=1e-12)
    np.testing.assert_allclose(linear_gram(X, center=False).numpy(), X @ X.T, atol=1e-12)
    H = ref_H(12)
    np.testing.assert_allclose(center_gram(torch.tensor(X @ X.T)).numpy(), H @ X @ X.T @ H,
                               atol=1e-10)


def test_center_gram_batched():
    rng = np.random.default_rng(1)
    Ks = rng.normal(size=(3, 6, 6))
    out = center_gram(torch.tensor(Ks)).numpy()
    H = ref_H(6)
    for i in range(3):
        np.testing.assert_allclose(out[i], H @ Ks[i] @ H, atol=1e-12)


def test_linear_gram_dtypes_and_shapes():
    Xi = torch.arange(24).reshape(4, 2, 3)
    assert linear_gram(Xi).dtype == torch.float32
    assert linear_gram(Xi.half()).dtype == torch.float32
    assert linear_gram(Xi.double()).dtype == torch.float64
    assert linear_gram(Xi.float()).shape == (4, 4)
    nc = torch.randn(6, 5, dtype=torch.float64).T          # non-contiguous [5, 6]
    np.testing.assert_allclose(linear_gram(nc).numpy(),
                               linear_gram(nc.contiguous()).numpy(), atol=1e-12)


def test_sq_distances_and_median_bandwidth():
    X, _ = data(n=15, d1=4)
    X[3] = X[7]  # a duplicated sample: a zero distance that the median must skip
    D = sq_distances(torch.tensor(X))
    np.testing.assert_allclose(D.numpy(), ref_sq_dists(X), atol=1e-10)
    assert torch.all(D.diagonal() == 0)
    iu = np.triu_indices(15, 1)
    d = np.sqrt(ref_sq_dists(X)[iu])
    assert float(median_bandwidth(D)) == pytest.approx(np.median(d[d > 0]), rel=1e-10)
    # odd number of non-zero distances
    X4 = X[:4].copy()
    D4 = ref_sq_dists(X4)
    d4 = np.sqrt(D4[np.triu_indices(4, 1)])
    assert float(median_bandwidth(torch.tensor(D4))) == pytest.approx(np.median(d4), rel=1e-12)
    assert float(median_bandwidth(torch.zeros(5, 5))) == 0.0


@pytest.mark.parametrize("sigma", [None, 2.5])
def test_rbf_gram_matches_reference(sigma):
    X, _ = data(n=20, d1=6)
    np.testing.assert_allclose(rbf_gram(torch.tensor(X), sigma=sigma, sigma_frac=0.6).numpy(),
                               ref_rbf_gram(X, 0.6, sigma), atol=1e-12)


def test_rbf_gram_constant_input_is_all_ones():
    K = rbf_gram(torch.ones(5, 3))
    assert torch.all(K == 1)


# ---------------------------------------------------------------- HSIC
def test_hsic_biased_and_unbiased_match_reference():
    X, Y = data(n=25)
    K, L = ref_linear_gram(X), ref_rbf_gram(Y)
    assert float(hsic_biased(K, L)) == pytest.approx(ref_hsic_b(K, L), rel=1e-12)
    assert float(hsic_unbiased(K, L)) == pytest.approx(ref_hsic_u(K, L), rel=1e-12)
    assert hsic_biased(torch.tensor(K), torch.tensor(L)).dtype == torch.float64


def test_unbiased_hsic_is_the_u_statistic():
    """Song et al.'s closed form equals the U-statistic averaged over distinct index 4-tuples."""
    rng = np.random.default_rng(3)
    n = 6
    K, L = ref_linear_gram(rng.normal(size=(n, 3))), ref_linear_gram(rng.normal(size=(n, 2)))
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    assert float(hsic_unbiased(K, L)) == pytest.approx(total / count, rel=1e-10)


def test_unbiased_hsic_invariant_to_feature_shift():
    X, Y = data(n=10)
    shift = 50.0 * np.ones(X.shape[1])
    a = float(hsic_unbiased(ref_linear_gram(X), ref_linear_gram(Y)))
    b = float(hsic_unbiased(ref_linear_gram(X + shift), ref_linear_gram(Y)))
    assert a == pytest.approx(b, rel=1e-9)


@pytest.mark.parametrize("unbiased", [True, False])
def test_hsic_all_pairs_equals_per_pair(unbiased):
    rng = np.random.default_rng(4)
    n = 9
    Ks = [ref_linear_gram(rng.normal(size=(n, k))) for k in (2, 5, 8)]
    Ls = [ref_rbf_gram(rng.normal(size=(n, k))) for k in (3, 4)]
    h = ref_hsic_u if unbiased else ref_hsic_b
    Kt = torch.tensor(np.stack(Ks), dtype=torch.float32)   # float32 input, float64 output
    xy, xx, yy = hsic_all_pairs(Kt, [torch.tensor(L) for L in Ls], unbiased=unbiased)
    assert xy.shape == (3, 2) and xx.shape == (3,) and yy.shape == (2,)
    assert xy.dtype == xx.dtype == yy.dtype == torch.float64
    K32 = [k.astype(np.float64) for k in Kt.numpy()]
    for i, j in itertools.product(range(3), range(2)):
        assert float(xy[i, j]) == pytest.approx(h(K32[i], Ls[j]), rel=1e-9)
    for i in range(3):
        assert float(xx[i]) == pytest.approx(h(K32[i], K32[i]), rel=1e-9)
    for j in range(2):
        assert float(yy[j]) == pytest.approx(h(Ls[j], Ls[j]), rel=1e-9)


# ---------------------------------------------------------------- CKA vs. references
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n,d1,d2", [(30, 50, 40), (80, 10, 7)])  # Gram path and feature path
def test_linear_cka_matches_reference(unbiased, n, d1, d2):
    X, Y = data(n=n, d1=d1, d2=d2)
    assert linear_cka(X, Y, unbiased=unbiased) == pytest.approx(
        ref_linear_cka(X, Y, unbiased), abs=1e-6)
    assert linear_cka(torch.tensor(X), torch.tensor(Y), unbiased=unbiased) == pytest.approx(
        ref_linear_cka(X, Y, unbiased), abs=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("sigma_frac,sigma", [(0.8, None), (0.4, None), (1.0, 3.0)])
def test_rbf_cka_matches_reference(unbiased, sigma_frac, sigma):
    X, Y = data(n=30, d1=8, d2=5)
    got = rbf_cka(X, Y, sigma_frac=sigma_frac, sigma=sigma, unbiased=unbiased)
    assert got == pytest.approx(ref_rbf_cka(X, Y, sigma_frac, sigma, unbiased), abs=1e-6)
    assert isinstance(got, float)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_from_grams_matches_reference(unbiased):
    X, Y = data(n=20)
    K, L = ref_linear_gram(X), ref_rbf_gram(Y)
    assert cka_from_grams(K, L, unbiased) == pytest.approx(ref_cka_grams(K, L, unbiased),
                                                           abs=1e-10)


def test_cka_from_hsic_broadcasts_and_nan_for_zero():
    xy = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    xx = torch.tensor([4.0, 0.0])
    yy = torch.tensor([1.0, 16.0])
    out = cka_from_hsic(xy, xx, yy)
    assert out.dtype == torch.float64 and out.shape == (2, 2)
    np.testing.assert_allclose(out[0].numpy(), [0.5, 0.25])
    assert torch.isnan(out[1]).all()
    assert float(cka_from_hsic(2.0, 4.0, 1.0)) == 1.0
    # Python floats are taken in float64 (1 + 1e-12 would round to 1 in float32)
    assert float(cka_from_hsic(1.0, 1.0 + 1e-12, 1.0)) < 1.0
    assert math.isnan(float(cka_from_hsic(1.0, -1.0, 1.0)))


# ---------------------------------------------------------------- properties
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 30), d1=st.integers(1, 40),
       d2=st.integers(1, 40), unbiased=st.booleans())
def test_linear_cka_properties(seed, n, d1, d2, unbiased):
    X, Y = data(seed, n, d1, d2)
    assert linear_cka(X, X, unbiased) == pytest.approx(1.0, abs=1e-9)
    c = linear_cka(X, Y, unbiased)
    assert c == pytest.approx(linear_cka(Y, X, unbiased), abs=1e-12)
    if not unbiased:
        assert -1e-12 <= c <= 1 + 1e-12
    Q = random_orthogonal(d1, seed + 1)
    assert linear_cka(3.7 * X @ Q + 5.0, Y, unbiased) == pytest.approx(c, abs=1e-8)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 25), unbiased=st.booleans())
def test_rbf_cka_properties(seed, n, unbiased):
    X, Y = data(seed, n, 5, 4)
    assert rbf_cka(X, X, unbiased=unbiased) == pytest.approx(1.0, abs=1e-9)
    c = rbf_cka(X, Y, unbiased=unbiased)
    assert c == pytest.approx(rbf_cka(Y, X, unbiased=unbiased), abs=1e-12)
    # median-bandwidth RBF CKA is invariant to orthogonal maps and isotropic scaling too
    Q = random_orthogonal(5, seed)
    assert rbf_cka(2.0 * X @ Q, Y, unbiased=unbiased) == pytest.approx(c, abs=1e-8)


def test_inputs_torch_numpy_int_half_noncontiguous_nd():
    X, Y = data(n=16, d1=12, d2=6)
    ref = ref_linear_cka(X, Y)
    assert linear_cka(torch.tensor(X).reshape(16, 3, 2, 2), Y) == pytest.approx(ref, abs=1e-10)
    Xt = torch.tensor(X.T.copy()).T                       # non-contiguous view
    assert not Xt.is_contiguous()
    assert linear_cka(Xt, Y) == pytest.approx(ref, abs=1e-10)
    Xi = np.round(X * 10).astype(np.int32)
    assert linear_cka(Xi, Y) == pytest.approx(ref_linear_cka(Xi.astype(float), Y), abs=1e-10)
    Xh = torch.tensor(X).half()
    assert linear_cka(Xh, Y) == pytest.approx(
        ref_linear_cka(Xh.double().numpy(), Y), abs=1e-10)
    assert rbf_cka(Xh, torch.tensor(Y, dtype=torch.float32)) == pytest.approx(
        ref_rbf_cka(Xh.double().numpy(), np.float32(Y).astype(float)), abs=1e-6)
    Xb = X > 0
    assert linear_cka(Xb, Y) == pytest.approx(ref_linear_cka(Xb.astype(float), Y), abs=1e-10)
    # as_matrix promotes to at least min_dtype and keeps float64
    assert as_matrix(Xi).dtype == torch.float32
    assert as_matrix(X).dtype == torch.float64


def test_float32_large_mean_precision():
    """float32 features with mean 1000x their spread: centred Grams stay within 1e-4."""
    rng = np.random.default_rng(7)
    n = 64
    X = (rng.normal(size=(n, 500)) + 1000.0).astype(np.float32)
    Y = (X[:, :200] - 1000.0) * 0.5 + rng.normal(size=(n, 200)) + 1000.0
    Y = Y.astype(np.float32)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    for unbiased in (False, True):
        ref = ref_linear_cka(X64 - X64.mean(0), Y64 - Y64.mean(0), unbiased)
        K, L = linear_gram(torch.tensor(X)), linear_gram(torch.tensor(Y))
        assert K.dtype == torch.float32
        got = float(cka_from_hsic(*hsic_all_pairs(K[None], L[None], unbiased)))
        assert abs(got - ref) < 1e-4
        # the naive uncentred float32 Gram is far off on the same data
        K0 = torch.tensor(X) @ torch.tensor(X).T
        L0 = torch.tensor(Y) @ torch.tensor(Y).T
        naive = float(cka_from_hsic(*hsic_all_pairs(K0[None], L0[None], unbiased)))
        assert not abs(naive - ref) < 1e-2
        # float32 RBF Gram built from the centred Gram is accurate as well
        Kr, Lr = rbf_gram(torch.tensor(X)), rbf_gram(torch.tensor(Y))
        gotr = float(cka_from_hsic(*hsic_all_pairs(Kr[None], Lr[None], unbiased)))
        refr = ref_cka_grams(ref_rbf_gram(X64), ref_rbf_gram(Y64), unbiased)
        assert abs(gotr - refr) < 1e-4


def test_minibatch_unbiased_hsic_sum_estimates_full_cka():
    """Summed unbiased HSIC over batches (Nguyen et al. 2021) does not depend on the batch size,
    unlike an average of per-batch biased CKA values."""
    rng = np.random.default_rng(0)
    N = 1024
    Zl = rng.normal(size=(N, 4))
    X = Zl @ rng.normal(size=(4, 100)) + 2 * rng.normal(size=(N, 100))
    Y = Zl @ rng.normal(size=(4, 80)) + 2 * rng.normal(size=(N, 80))
    full = ref_linear_cka(X, Y, unbiased=True)
    Xt, Yt = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    streamed, averaged = {}, {}
    for bs in (32, 128):
        acc = [0.0, 0.0, 0.0]
        per_batch = []
        for s in range(0, N, bs):
            K, L = linear_gram(Xt[s:s + bs]), linear_gram(Yt[s:s + bs])
            acc = [a + h for a, h in zip(acc, hsic_all_pairs(K[None], L[None], unbiased=True))]
            per_batch.append(ref_linear_cka(X[s:s + bs], Y[s:s + bs]))
        streamed[bs] = float(cka_from_hsic(*acc))
        averaged[bs] = float(np.mean(per_batch))
    assert abs(streamed[32] - streamed[128]) < 0.02
    assert abs(streamed[32] - full) < 0.02 and abs(streamed[128] - full) < 0.02
    assert abs(averaged[32] - full) > 0.03          # biased per-batch average drifts
    assert abs(averaged[32] - averaged[128]) > 0.02  # ... and depends on the batch size


# ---------------------------------------------------------------- bad input
def test_bad_shapes_and_counts():
    X, Y = data(n=10)
    with pytest.raises(ValueError, match=r"X must have shape \[n, \.\.\.\]"):
        linear_cka(np.arange(10.0), Y)
    with pytest.raises(ValueError, match="Y must have shape"):
        rbf_cka(X, np.float64(3.0))
    with pytest.raises(ValueError, match="X has 10 samples .* but Y has 9"):
        linear_cka(X, Y[:9])
    with pytest.raises(ValueError, match="at least 2 samples"):
        linear_cka(X[:1], Y[:1])
    with pytest.raises(ValueError, match="zero features"):
        linear_cka(np.zeros((5, 0)), Y[:5])
    with pytest.raises(ValueError, match="X has 3 samples"):
        check_same_n(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(TypeError, match="X must hold numbers"):
        linear_cka(np.array([["a", "b"], ["c", "d"]]), Y[:2])
    with pytest.raises(TypeError, match="complex"):
        linear_cka(X.astype(complex), Y)


@pytest.mark.parametrize("fn", [linear_cka, rbf_cka])
def test_unbiased_needs_four_samples(fn):
    X, Y = data(n=3)
    with pytest.raises(ValueError, match="needs at least 4 samples per batch"):
        fn(X, Y, unbiased=True)
    assert np.isfinite(fn(X, Y))  # the biased estimator works on 3 samples


def test_hsic_functions_need_four_samples_and_matching_shapes():
    K = torch.eye(3)
    with pytest.raises(ValueError, match="needs at least 4 samples per batch"):
        hsic_unbiased(K, K)
    with pytest.raises(ValueError, match="needs at least 4 samples per batch"):
        hsic_all_pairs(K[None], K[None], unbiased=True)
    with pytest.raises(ValueError, match="same samples"):
        hsic_biased(torch.eye(3), torch.eye(4))
    with pytest.raises(ValueError, match="same batch of samples"):
        hsic_all_pairs(torch.eye(5)[None], torch.eye(6)[None])
    with pytest.raises(ValueError, match=r"Ks must be a stack of square Gram matrices"):
        hsic_all_pairs(torch.eye(5), torch.eye(5)[None])
    with pytest.raises(ValueError, match="needs at least 4 samples per batch"):
        cka_from_grams(K, K, unbiased=True)
    with pytest.raises(ValueError, match=r"K must be a square Gram matrix"):
        cka_from_grams(torch.ones(4, 3), torch.eye(4))
    with pytest.raises(ValueError, match="K has 4 samples .* but L has 5"):
        cka_from_grams(torch.eye(4), torch.eye(5))


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_inf_names_argument_and_row(bad, kind):
    X, Y = data(n=10)
    Xb = X.copy()
    Xb[4, 2] = bad
    with pytest.raises(ValueError, match=f"X contains {kind} values \\(first in row 4\\)"):
        linear_cka(Xb, Y)
    with pytest.raises(ValueError, match=f"Y contains {kind} values \\(first in row 4\\)"):
        rbf_cka(torch.tensor(Y), torch.tensor(Xb))
    K = ref_linear_gram(X)
    K[2, 3] = bad
    with pytest.raises(ValueError, match=f"L contains {kind}"):
        cka_from_grams(ref_linear_gram(Y), K)


def test_bad_bandwidth():
    X, Y = data(n=10)
    with pytest.raises(ValueError, match="sigma_frac must be a finite number > 0"):
        rbf_cka(X, Y, sigma_frac=0)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        rbf_cka(X, Y, sigma=-1.0)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        rbf_cka(X, Y, sigma=float("nan"))


@pytest.mark.parametrize("fn", [linear_cka, rbf_cka])
@pytest.mark.parametrize("unbiased", [False, True])
def test_constant_input_gives_nan_and_warning(fn, unbiased):
    X, Y = data(n=10)
    C = np.full((10, 4), 0.1)
    with pytest.warns(RuntimeWarning, match="X is constant"):
        assert math.isnan(fn(C, Y, unbiased=unbiased))
    with pytest.warns(RuntimeWarning, match="Y is constant"):
        assert math.isnan(fn(X, C.astype(np.float32), unbiased=unbiased))


def test_constant_gram_gives_nan_and_warning():
    X, _ = data(n=10)
    with pytest.warns(RuntimeWarning, match="L is constant"):
        assert math.isnan(cka_from_grams(ref_linear_gram(X), np.full((10, 10), 3.0)))


def test_constant_activation_gram_is_exactly_zero_in_float32():
    """A constant float32 activation gives an exactly zero centred Gram, hence NaN (not noise)."""
    C = torch.full((10, 7), 1234.567, dtype=torch.float32)
    K = linear_gram(C)
    assert torch.all(K == 0)
    L = linear_gram(torch.randn(10, 3))
    xy, xx, yy = hsic_all_pairs(K[None], L[None], unbiased=True)
    assert float(xx[0]) == 0.0 and torch.isnan(cka_from_hsic(xy, xx, yy)).all()


def test_no_warning_for_regular_input():
    X, Y = data(n=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear_cka(X, Y, unbiased=True)
        rbf_cka(X, Y)

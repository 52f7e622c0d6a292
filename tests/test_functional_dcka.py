"""Tests for functional/dcka.py (deconfounded CKA, Cui et al. 2022) against NumPy references."""
import math

import numpy as np
import pytest
import torch

from simtorch_semantic.functional.cka import linear_cka
from simtorch_semantic.functional.dcka import (DeconfoundedHSIC, dcka, dcka_from_hsic,
                                               dcka_hsic_terms, deconfound_gram)
from simtorch_semantic.functional.kernels import linear_gram, rbf_gram


from reference import ref_H, ref_hsic_b, ref_hsic_u  # noqa: E402


def ref_gram(X, kernel, sigma_frac=0.8):
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    if kernel == "linear":
        return X @ X.T
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    d = np.sqrt(D[np.triu_indices(len(X), 1)])
    sigma = sigma_frac * np.median(d[d > 0])
    return np.exp(-D / (2 * sigma ** 2))


def ref_residual(K, KZ, unbiased, remove_negative_eig):
    """Least-squares regression of the centred Gram on the centred confounder Gram."""
    H = ref_H(len(K))
    Kc, Zc = H @ K @ H, H @ KZ @ H
    if unbiased:
        alpha = ref_hsic_u(K, KZ) / ref_hsic_u(KZ, KZ)
    else:
        alpha = np.sum(Kc * Zc) / np.sum(Zc * Zc)   # Frobenius inner product of centred Grams
    R = Kc - alpha * Zc
    if remove_negative_eig:
        w, V = np.linalg.eigh(R)
        R = V @ np.diag(np.maximum(w, 0)) @ V.T
    return R


def ref_dcka(X, Y, Z, kernel="linear", unbiased=False, remove_negative_eig=False):
    KZ = ref_gram(Z, kernel)
    Rx = ref_residual(ref_gram(X, kernel), KZ, unbiased, remove_negative_eig)
    Ry = ref_residual(ref_gram(Y, kernel), KZ, unbiased, remove_negative_eig)
    h = ref_hsic_u if unbiased else ref_hsic_b
    return h(Rx, Ry) / math.sqrt(h(Rx, Rx) * h(Ry, Ry))


def confounded(seed=0, n=40, dz=6, d1=12, d2=9, noise=1.0):
    """X and Y both read the input Z, plus a shared latent S that Z does not explain."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, dz))
    S = rng.normal(size=(n, 3))
    X = Z @ rng.normal(size=(dz, d1)) + S @ rng.normal(size=(3, d1)) + noise * rng.normal(
        size=(n, d1))
    Y = Z @ rng.normal(size=(dz, d2)) + S @ rng.normal(size=(3, d2)) + noise * rng.normal(
        size=(n, d2))
    return X, Y, Z


# ---------------------------------------------------------------- agreement with the reference
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("remove_negative_eig", [False, True])
def test_dcka_matches_reference(kernel, unbiased, remove_negative_eig):
    X, Y, Z = confounded(n=30)
    got = dcka(X, Y, Z, kernel=kernel, unbiased=unbiased,
               remove_negative_eig=remove_negative_eig)
    assert isinstance(got, float)
    assert got == pytest.approx(ref_dcka(X, Y, Z, kernel, unbiased, remove_negative_eig),
                                abs=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("remove_negative_eig", [False, True])
def test_deconfound_gram_matches_reference(unbiased, remove_negative_eig):
    X, _, Z = confounded(n=20)
    K, KZ = ref_gram(X, "linear"), ref_gram(Z, "linear")
    R = deconfound_gram(torch.tensor(K), KZ, remove_negative_eig, unbiased)
    assert R.dtype == torch.float64 and R.shape == (20, 20)
    np.testing.assert_allclose(R.numpy(), ref_residual(K, KZ, unbiased, remove_negative_eig),
                               atol=1e-8 * np.abs(K).max())
    if remove_negative_eig:
        assert np.linalg.eigvalsh(R.numpy()).min() > -1e-8 * np.abs(K).max()


# ---------------------------------------------------------------- streaming closed form
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_dcka_from_hsic_on_full_data_equals_dcka(kernel, unbiased):
    X, Y, Z = confounded(n=36)
    gram = linear_gram if kernel == "linear" else rbf_gram
    Kx, Ky, Kz = (gram(torch.tensor(T)) for T in (X, Y, Z))
    h = dcka_hsic_terms(Kx[None], Ky[None], Kz, unbiased=unbiased)
    assert h.xy.shape == (1, 1) and h.xz.shape == (1,) and h.zz.shape == ()
    got = dcka_from_hsic(h)
    assert got.dtype == torch.float64
    assert float(got[0, 0]) == pytest.approx(dcka(X, Y, Z, kernel=kernel, unbiased=unbiased),
                                             abs=1e-12)
    # the mapping form gives the same value
    as_dict = {k: getattr(h, k) for k in ("xy", "xx", "yy", "xz", "yz", "zz")}
    assert float(dcka_from_hsic(as_dict)[0, 0]) == float(got[0, 0])


def test_dcka_all_pairs_grid_equals_per_pair():
    rng = np.random.default_rng(5)
    n = 24
    Z = rng.normal(size=(n, 4))
    As = [Z @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)) for d in (3, 7, 5)]
    Bs = [Z @ rng.normal(size=(4, d)) + 2 * rng.normal(size=(n, d)) for d in (6, 2)]
    Ks = torch.stack([linear_gram(torch.tensor(A, dtype=torch.float32)) for A in As])
    Ls = torch.stack([linear_gram(torch.tensor(B, dtype=torch.float32)) for B in Bs])
    Kz = linear_gram(torch.tensor(Z, dtype=torch.float32))
    grid = dcka_from_hsic(dcka_hsic_terms(Ks, Ls, Kz, unbiased=True))
    assert grid.shape == (3, 2)
    for i, A in enumerate(As):
        for j, B in enumerate(Bs):
            ref = ref_dcka(np.float32(A), np.float32(B), np.float32(Z), unbiased=True)
            assert float(grid[i, j]) == pytest.approx(ref, abs=1e-5)


def test_streamed_dcka_close_to_full_and_batch_size_independent():
    X, Y, Z = confounded(seed=2, n=768, dz=5, d1=40, d2=30, noise=2.0)
    full = dcka(X, Y, Z, unbiased=True)
    streamed = {}
    for bs in (32, 128):
        acc = None
        for s in range(0, len(X), bs):
            Kx, Ky, Kz = (linear_gram(torch.tensor(T[s:s + bs], dtype=torch.float32))
                          for T in (X, Y, Z))
            h = dcka_hsic_terms(Kx[None], Ky[None], Kz, unbiased=True)
            acc = h if acc is None else acc + h
        assert isinstance(acc, DeconfoundedHSIC)
        streamed[bs] = float(dcka_from_hsic(acc)[0, 0])
    assert abs(streamed[32] - streamed[128]) < 0.03
    assert abs(streamed[32] - full) < 0.03 and abs(streamed[128] - full) < 0.03


# ---------------------------------------------------------------- behaviour
def test_independent_confounder_leaves_cka_nearly_unchanged():
    rng = np.random.default_rng(1)
    n = 400
    S = rng.normal(size=(n, 3))
    X = S @ rng.normal(size=(3, 10)) + rng.normal(size=(n, 10))
    Y = S @ rng.normal(size=(3, 8)) + rng.normal(size=(n, 8))
    noise = rng.normal(size=(n, 5))
    plain = linear_cka(X, Y, unbiased=True)
    assert dcka(X, Y, noise, unbiased=True) == pytest.approx(plain, abs=0.02)


def test_shared_confounder_lowers_similarity():
    rng = np.random.default_rng(3)
    n = 200
    Z = rng.normal(size=(n, 5))
    X = Z @ rng.normal(size=(5, 20)) + 0.5 * rng.normal(size=(n, 20))
    Y = Z @ rng.normal(size=(5, 15)) + 0.5 * rng.normal(size=(n, 15))
    assert linear_cka(X, Y) > 0.8
    assert dcka(X, Y, Z) < 0.3


def test_dcka_self_and_symmetry():
    X, Y, Z = confounded(n=30)
    assert dcka(X, X, Z) == pytest.approx(1.0, abs=1e-10)
    assert dcka(X, Y, Z) == pytest.approx(dcka(Y, X, Z), abs=1e-12)
    assert dcka(X, Y, Z, kernel="rbf", unbiased=True) == pytest.approx(
        dcka(Y, X, Z, kernel="rbf", unbiased=True), abs=1e-12)


def test_dcka_accepts_torch_int_half_nd_inputs():
    X, Y, Z = confounded(n=16, d1=12)
    ref = ref_dcka(X, Y, Z)
    assert dcka(torch.tensor(X).reshape(16, 3, 4), torch.tensor(Y).T.contiguous().T,
                Z) == pytest.approx(ref, abs=1e-10)
    Zi = np.round(Z * 4).astype(np.int64)
    assert dcka(X, Y, Zi) == pytest.approx(ref_dcka(X, Y, Zi.astype(float)), abs=1e-8)
    Xh = torch.tensor(X).half()
    assert dcka(Xh, Y, Z) == pytest.approx(ref_dcka(Xh.double().numpy(), Y, Z), abs=1e-8)


# ---------------------------------------------------------------- bad input
def test_bad_inputs():
    X, Y, Z = confounded(n=12)
    with pytest.raises(ValueError, match="kernel must be 'linear' or 'rbf'"):
        dcka(X, Y, Z, kernel="poly")
    with pytest.raises(ValueError, match="X has 12 samples .* but Z has 11"):
        dcka(X, Y, Z[:11])
    with pytest.raises(ValueError, match="X has 12 samples .* but Y has 10"):
        dcka(X, Y[:10], Z)
    with pytest.raises(ValueError, match=r"Z must have shape \[n, \.\.\.\]"):
        dcka(X, Y, Z[:, 0])
    with pytest.raises(ValueError, match="needs at least 4 samples per batch"):
        dcka(X[:3], Y[:3], Z[:3], unbiased=True)
    Zb = Z.copy()
    Zb[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"Z contains NaN values \(first in row 5\)"):
        dcka(X, Y, Zb)
    with pytest.raises(ValueError, match="sigma_frac must be a finite number > 0"):
        dcka(X, Y, Z, kernel="rbf", sigma_frac=-0.5)
    with pytest.raises(ValueError, match="Z .*is constant"):
        dcka(X, Y, np.ones((12, 3)))
    with pytest.raises(TypeError, match="mapping with keys"):
        dcka_from_hsic({"xy": 1.0})
    with pytest.raises(ValueError, match="needs at least 4 samples per batch"):
        dcka_hsic_terms(torch.eye(3)[None], torch.eye(3)[None], torch.eye(3))


def test_constant_or_fully_explained_representation_gives_nan_and_warning():
    X, Y, Z = confounded(n=12)
    with pytest.warns(RuntimeWarning, match="Y is constant"):
        assert math.isnan(dcka(X, np.zeros((12, 4)), Z))
    with pytest.warns(RuntimeWarning, match="residual of X after regressing on Z"):
        assert math.isnan(dcka(2.0 * Z, Y, Z))


def test_dcka_from_hsic_nan_cases():
    h = DeconfoundedHSIC(xy=torch.tensor(1.0), xx=torch.tensor(2.0), yy=torch.tensor(2.0),
                         xz=torch.tensor(0.5), yz=torch.tensor(0.5), zz=torch.tensor(0.0))
    assert math.isnan(float(dcka_from_hsic(h)))          # constant confounder
    h = DeconfoundedHSIC(xy=torch.tensor(1.0), xx=torch.tensor(1.0), yy=torch.tensor(2.0),
                         xz=torch.tensor(1.0), yz=torch.tensor(0.5), zz=torch.tensor(1.0))
    assert math.isnan(float(dcka_from_hsic(h)))          # X fully explained by Z
    h = DeconfoundedHSIC(xy=torch.tensor(1.0), xx=torch.tensor(2.0), yy=torch.tensor(2.0),
                         xz=torch.tensor(1.0), yz=torch.tensor(1.0), zz=torch.tensor(1.0))
    assert float(dcka_from_hsic(h)) == pytest.approx(0.0)  # (1 - 1)/sqrt(1*1)

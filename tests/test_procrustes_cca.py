"""Tests for functional/procrustes.py and functional/cca.py against scipy and plain references."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial import procrustes as scipy_procrustes

from simtorch_semantic.functional.cca import CCA_VARIANTS, cca, cca_similarity, pwcca, svcca
from simtorch_semantic.functional.procrustes import (
    procrustes_angular,
    procrustes_disparity,
    procrustes_nuclear_norm,
)


def rng(seed):
    return np.random.default_rng(seed)


def pair(n=60, p=8, q=10, seed=0, noise=0.5):
    g = rng(seed)
    X = g.standard_normal((n, p))
    Y = X @ g.standard_normal((p, q)) + noise * g.standard_normal((n, q))
    return X, Y


def random_orthogonal(d, seed):
    Q, _ = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return Q


# ----------------------------------------------------------------- plain references
def ref_normalise(X):
    Xc = X - X.mean(0)
    return Xc / np.linalg.norm(Xc)


def ref_nuclear(X, Y):
    return np.linalg.svd(ref_normalise(X).T @ ref_normalise(Y), compute_uv=False).sum()


def ref_inv_sqrt(S):
    w, V = np.linalg.eigh(S)
    return V @ np.diag(w ** -0.5) @ V.T


def ref_cca(X, Y, eps=0.0):
    """Canonical correlations: sqrt of the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx (ridge: S + eps I)."""
    n = len(X)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Sxx = Xc.T @ Xc / (n - 1) + eps * np.eye(X.shape[1])
    Syy = Yc.T @ Yc / (n - 1) + eps * np.eye(Y.shape[1])
    Sxy = Xc.T @ Yc / (n - 1)
    M = np.linalg.solve(Sxx, Sxy) @ np.linalg.solve(Syy, Sxy.T)
    ev = np.sort(np.clip(np.linalg.eigvals(M).real, 0, None))[::-1]
    return np.sqrt(ev[: min(X.shape[1], Y.shape[1])])


def ref_pca(X, k):
    Xc = X - X.mean(0)
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    return U[:, :k] * s[:k]


def ref_keep_dims(X, keep):
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    return int(np.searchsorted(frac, keep - 1e-12) + 1)


def ref_pwcca(X, Y):
    """Morcos et al. 2018 from the eigenvector definition; weights from the narrower input."""
    if Y.shape[1] < X.shape[1]:
        X, Y = Y, X
    n = len(X)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Sxx, Syy, Sxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    M = np.linalg.solve(Sxx, Sxy) @ np.linalg.solve(Syy, Sxy.T)
    ev, A = np.linalg.eig(M)
    ev, A = ev.real, A.real
    rho = np.sqrt(np.clip(ev, 0, 1))
    H = Xc @ A  # canonical variates
    H = H / np.linalg.norm(H, axis=0)
    alpha = np.abs(H.T @ Xc).sum(1)
    return float(np.sum(alpha * rho) / np.sum(alpha))


# ----------------------------------------------------------------- Procrustes
@pytest.mark.parametrize("seed", range(4))
def test_disparity_matches_scipy_equal_widths(seed):
    X, Y = pair(n=30, p=6, q=6, seed=seed, noise=1.0)
    assert abs(procrustes_disparity(X, Y) - scipy_procrustes(X, Y)[2]) < 1e-10
    assert abs(procrustes_disparity(torch.from_numpy(X), torch.from_numpy(Y)) - scipy_procrustes(X, Y)[2]) < 1e-10


def test_disparity_different_widths_equals_scipy_on_zero_padded():
    X, Y = pair(n=25, p=4, q=9, seed=1)
    Xpad = np.hstack([X, np.zeros((25, 5))])
    expected = scipy_procrustes(Xpad, Y)[2]
    assert abs(procrustes_disparity(X, Y) - expected) < 1e-10
    assert abs(procrustes_disparity(Y, X) - expected) < 1e-10


def test_wide_data_reduction_matches_direct_formula():
    X, Y = pair(n=12, p=40, q=30, seed=2)  # p > n uses the QR width reduction
    assert abs(procrustes_nuclear_norm(X, Y) - ref_nuclear(X, Y)) < 1e-10
    assert abs(procrustes_disparity(X, Y) - (1 - ref_nuclear(X, Y) ** 2)) < 1e-10
    assert abs(procrustes_angular(X, Y) - math.acos(ref_nuclear(X, Y))) < 1e-9


def test_angular_matches_reference_and_disparity():
    X, Y = pair(n=30, p=5, q=7, seed=3)
    theta = procrustes_angular(X, Y)
    assert abs(theta - math.acos(ref_nuclear(X, Y))) < 1e-10
    assert abs(math.sin(theta) ** 2 - procrustes_disparity(X, Y)) < 1e-10
    assert 0 <= theta <= math.pi / 2


def test_procrustes_invariances_and_zero():
    X, _ = pair(n=20, p=6, seed=4)
    Q = random_orthogonal(6, 5)
    Z = 3.7 * X @ Q - 2.0  # scale, rotation/reflection, translation
    assert procrustes_disparity(X, Z) < 1e-12
    assert procrustes_angular(X, Z) < 1e-7
    X2, Y2 = pair(n=20, p=6, q=6, seed=6)
    base = procrustes_angular(X2, Y2)
    assert abs(procrustes_angular(2.0 * X2 @ Q + 1.0, Y2 @ random_orthogonal(6, 7)) - base) < 1e-10


def test_angular_is_a_metric():
    g = rng(8)
    mats = [g.standard_normal((15, 4)) for _ in range(6)]
    mats.append(mats[0] + 0.01 * g.standard_normal((15, 4)))  # a near neighbour
    mats.append(g.standard_normal((15, 7)))  # a different width
    d = {}
    for i, j in itertools.product(range(len(mats)), repeat=2):
        d[i, j] = procrustes_angular(mats[i], mats[j])
    for i in range(len(mats)):
        assert d[i, i] < 1e-7
    for i, j in itertools.product(range(len(mats)), repeat=2):
        assert abs(d[i, j] - d[j, i]) < 1e-12
    for i, j, k in itertools.product(range(len(mats)), repeat=3):
        assert d[i, k] <= d[i, j] + d[j, k] + 1e-9


def test_procrustes_bad_inputs():
    X, Y = pair(n=10)
    with pytest.raises(ValueError, match=r"X has 10 samples \(rows\) but Y has 9"):
        procrustes_disparity(X, Y[:9])
    with pytest.raises(ValueError, match="all samples identical"):
        procrustes_angular(np.ones((10, 3)), Y)
    with pytest.raises(ValueError, match="at least 2-D"):
        procrustes_disparity(np.arange(10.0), Y)
    with pytest.raises(ValueError, match=r"n=2 samples; at least 3"):
        procrustes_disparity(X[:2], Y[:2])
    Xn = X.copy()
    Xn[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN.*row 3"):
        procrustes_angular(Xn, Y)


# ----------------------------------------------------------------- CCA
@pytest.mark.parametrize("seed", range(3))
def test_cca_matches_eigenvalue_reference(seed):
    X, Y = pair(n=80, p=5, q=8, seed=seed, noise=1.0)
    rho = cca(X, Y)
    assert rho.dtype == torch.float64 and rho.shape == (5,)
    np.testing.assert_allclose(rho.numpy(), ref_cca(X, Y), atol=1e-10)
    assert abs(cca_similarity(X, Y, "mean_rho") - ref_cca(X, Y).mean()) < 1e-10
    assert abs(cca_similarity(X, Y, "r2") - (ref_cca(X, Y) ** 2).mean()) < 1e-10


def test_cca_invariant_to_invertible_linear_maps():
    X, Y = pair(n=70, p=6, q=6, seed=4, noise=1.0)
    g = rng(9)
    A = g.standard_normal((6, 6)) + 3 * np.eye(6)
    B = g.standard_normal((6, 6)) + 3 * np.eye(6)
    np.testing.assert_allclose(cca(X @ A + 5.0, Y @ B - 1.0).numpy(), cca(X, Y).numpy(), atol=1e-10)
    # symmetric in its arguments
    np.testing.assert_allclose(cca(Y, X).numpy(), cca(X, Y).numpy(), atol=1e-12)


def test_cca_identical_and_in_range():
    X, Y = pair(n=50, p=4, q=6, seed=5)
    np.testing.assert_allclose(cca(X, X).numpy(), np.ones(4), atol=1e-10)
    for v in CCA_VARIANTS:
        s = cca_similarity(X, Y, v)
        assert 0.0 <= s <= 1.0
        assert abs(cca_similarity(X, X @ rng(1).standard_normal((4, 4)), v) - 1) < 1e-9


def test_rank_deficient_input_uses_svd_basis():
    X, Y = pair(n=60, p=4, q=5, seed=6)
    Xdup = np.hstack([X, X[:, :2] * 2.0])  # two redundant columns
    np.testing.assert_allclose(cca(Xdup, Y).numpy(), ref_cca(X, Y), atol=1e-10)


def test_ridge_cca_matches_reference_and_tends_to_plain():
    X, Y = pair(n=50, p=5, q=7, seed=7, noise=1.0)
    for eps in (0.01, 0.5, 3.0):
        np.testing.assert_allclose(cca(X, Y, epsilon=eps).numpy(), ref_cca(X, Y, eps), atol=1e-10)
    np.testing.assert_allclose(cca(X, Y, epsilon=1e-12).numpy(), cca(X, Y).numpy(), atol=1e-8)


def test_small_n_raises_with_advice_and_reduction_paths_work():
    X, Y = pair(n=20, p=30, q=25, seed=8)  # n <= p
    with pytest.raises(ValueError, match=r"X has rank 19 = n - 1.*dims=k.*svcca.*epsilon > 0"):
        cca(X, Y)
    with pytest.raises(ValueError, match=r"rank 19 = n - 1"):
        pwcca(X, Y)
    # path 1: keep the top-k principal components
    rho = cca(X, Y, dims=6)
    np.testing.assert_allclose(rho.numpy(), ref_cca(ref_pca(X, 6), ref_pca(Y, 6)), atol=1e-10)
    # path 2: ridge CCA is defined for any width
    rho = cca(X, Y, epsilon=0.5)
    assert rho.shape == (19,) and bool((rho >= 0).all() and (rho <= 1).all())
    Xr, Yr = ref_pca(X, 19), ref_pca(Y, 19)  # same whitening in the non-null space
    np.testing.assert_allclose(rho.numpy(), ref_cca(Xr, Yr, 0.5)[:19], atol=1e-10)
    # path 3: svcca reduces itself
    g = rng(10)
    Xlow = g.standard_normal((20, 3)) @ g.standard_normal((3, 30)) + 1e-3 * g.standard_normal((20, 30))
    s = svcca(Xlow, Y[:, :3], keep=0.99)
    assert 0 <= s <= 1


def test_forced_correlations_warn():
    X, Y = pair(n=20, p=10, q=12, seed=11)
    with pytest.warns(RuntimeWarning, match=r"at least 3 canonical correlations are 1 by construction"):
        cca(X, Y)


def test_no_warning_when_well_posed():
    X, Y = pair(n=60, p=5, q=6, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v in CCA_VARIANTS:
            cca_similarity(X, Y, v)


def test_svcca_matches_reference():
    g = rng(13)
    Z = g.standard_normal((200, 4))
    X = Z @ g.standard_normal((4, 12)) + 0.05 * g.standard_normal((200, 12))
    Y = Z[:, :3] @ g.standard_normal((3, 9)) + 0.05 * g.standard_normal((200, 9))
    for keep in (0.9, 0.99):
        kx, ky = ref_keep_dims(X, keep), ref_keep_dims(Y, keep)
        expected = ref_cca(ref_pca(X, kx), ref_pca(Y, ky)).mean()
        assert abs(svcca(X, Y, keep=keep) - expected) < 1e-10
    assert abs(svcca(X, Y, keep=1.0) - ref_cca(X, Y).mean()) < 1e-10


@pytest.mark.parametrize("seed", range(3))
def test_pwcca_matches_reference(seed):
    X, Y = pair(n=90, p=4, q=7, seed=seed, noise=1.5)
    expected = ref_pwcca(X, Y)
    assert abs(pwcca(X, Y) - expected) < 1e-10
    assert abs(pwcca(Y, X) - expected) < 1e-10  # weights come from the narrower input either way
    assert 0 <= expected <= 1


def test_pwcca_weights_favour_high_variance_directions():
    g = rng(14)
    n = 400
    strong = g.standard_normal((n, 1)) * 10
    weak = g.standard_normal((n, 1)) * 0.1
    X = np.hstack([strong, weak])
    # Y shares the strong direction exactly and the weak one not at all
    Y = np.hstack([strong + 0.01 * g.standard_normal((n, 1)), g.standard_normal((n, 1))])
    assert pwcca(X, Y) > cca_similarity(X, Y, "mean_rho") + 0.3


def test_cca_bad_inputs():
    X, Y = pair(n=30)
    with pytest.raises(ValueError, match=r"unknown variant 'cka'.*'mean_rho', 'r2', 'svcca', 'pwcca'"):
        cca_similarity(X, Y, "cka")
    with pytest.raises(ValueError, match=r"X has 30 samples \(rows\) but Y has 29"):
        cca(X, Y[:29])
    with pytest.raises(ValueError, match="at least 2-D"):
        cca(np.arange(30.0), Y)
    with pytest.raises(ValueError, match=r"n=2 samples; at least 3"):
        cca(X[:2], Y[:2])
    Yn = Y.copy()
    Yn[5, 2] = np.inf
    with pytest.raises(ValueError, match=r"Y contains Inf.*row 5"):
        svcca(X, Yn)
    with pytest.raises(ValueError, match="all samples identical"):
        cca(np.ones((30, 3)), Y)
    with pytest.raises(ValueError, match="epsilon must be a number >= 0"):
        cca(X, Y, epsilon=-1)
    with pytest.raises(ValueError, match="dims must be a positive integer"):
        cca(X, Y, dims=0)
    with pytest.raises(ValueError, match=r"keep must be a fraction of variance in \(0, 1\]"):
        svcca(X, Y, keep=1.5)


# ----------------------------------------------------------------- precision of the rank cut-off (issue 8)
def _linear_16_to_64():
    """One rank-16 layer evaluated in float64 and in float32 on the same inputs: [200, 64] each."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 16, generator=g, dtype=torch.float64)
    layer = torch.nn.Linear(16, 64).double()
    with torch.no_grad():
        Y64 = layer(X)
        Y32 = layer.float()(X.float())
    return Y64, Y32, torch.randn(200, 50, generator=g, dtype=torch.float64)


def test_float32_rank_deficient_layer_keeps_its_rank():
    Y64, Y32, Z = _linear_16_to_64()
    # float32 round-off gives the float32 layer 64 non-zero singular values (~1e-7 relative)
    s = np.linalg.svd(Y32.double().numpy() - Y32.double().numpy().mean(0), compute_uv=False)
    assert np.sum(s > s[0] * 200 * np.finfo(np.float64).eps) > 16
    r64, r32 = cca(Z, Y64), cca(Z, Y32)
    assert r64.shape == r32.shape == (16,)
    np.testing.assert_allclose(r32.numpy(), r64.numpy(), atol=1e-4)
    # against the eigenvalue reference on the rank-16 parameterisation Y = X W^T + b
    np.testing.assert_allclose(r64.numpy(), ref_cca(Z.numpy(), Y64.numpy()[:, :16]), atol=1e-8)
    for variant in CCA_VARIANTS:
        v64, v32 = cca_similarity(Z, Y64, variant), cca_similarity(Z, Y32, variant)
        assert abs(v64 - v32) < 1e-4, variant
    assert abs(cca_similarity(Z.float(), Y32) - cca_similarity(Z, Y64)) < 1e-4
    # NumPy float32 arrays follow the same rule
    assert cca(Z.numpy(), Y32.numpy()).shape == (16,)


def test_cca_measure_rank_follows_the_layer_precision():
    from torch.utils.data import DataLoader

    from simtorch_semantic import CCA, SimilarityModel

    torch.manual_seed(0)
    narrow = torch.nn.Sequential(torch.nn.Linear(16, 64))                    # rank 16
    wide = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh())    # rank 64
    data = torch.randn(200, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for dtype in (torch.float32, torch.float64):
        a = SimilarityModel(narrow.to(dtype), layers_to_include=["0"])
        b = SimilarityModel(wide.to(dtype), layers_to_include=["0", "1"])
        loader = DataLoader(data.to(dtype), batch_size=50)
        results.append(CCA(a, b).compute(loader, progress=False).matrix)
    np.testing.assert_allclose(results[0], results[1], atol=1e-4)
    # plain reference: 16 canonical correlations of the rank-16 layer (its first 16 columns span it)
    with torch.no_grad():
        A = narrow(data).numpy()[:, :16]
        B = wide(data).numpy()
    assert results[1][0, 1] == pytest.approx(ref_cca(A, B).mean(), abs=1e-8)

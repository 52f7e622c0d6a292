"""Tests of functional/semantic.py against plain NumPy / scipy / brute-force references."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from simtorch_semantic.functional.semantic import (
    KERNELS,
    perm_inv_semantic_sim,
    semantic_sim_parallel,
    similarity_calculation,
)

ALL = ["ip", "cosine", "rbf"]


def relu_feats(n, c, s, seed=0, dtype=np.float64):
    """ReLU features [n, c, s] with some all-zero positions (as in real ReLU maps)."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((n, c, s)) + 0.3 * rng.standard_normal((n, 1, s)), 0)
    return x.astype(dtype)


# ----------------------------------------------------------------------------- plain references


def ref_pair_ip(vi, vj):
    """Plain per-pair reference: NumPy cost, scipy exact assignment, float64 aligned ip."""
    cost = vi @ vj.T
    r, c = linear_sum_assignment(cost, maximize=True)
    return float(sum(np.dot(vi[a], vj[b]) for a, b in zip(r, c)))


def ref_kernels(ip, nx2, ny2, symmetric):
    """Plain kernels from an ip matrix (loops; median over distinct pairs for the RBF)."""
    n, m = ip.shape
    cos = np.zeros((n, m))
    d2 = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            den = np.sqrt(nx2[i] * ny2[j])
            cos[i, j] = ip[i, j] / den if den > 0 else 0.0
            d2[i, j] = max(nx2[i] + ny2[j] - 2 * ip[i, j], 0.0)
            if symmetric and i == j:
                d2[i, j] = 0.0
    vals = [d2[i, j] for i in range(n) for j in range(m) if (not symmetric or i < j)]
    vals = [v for v in vals if v > 1e-12 * 1e3]
    # the package's one bandwidth rule: sigma = median of the non-zero distances
    sigma2 = np.median(np.sqrt(vals)) ** 2 if vals else 1.0
    return {"ip": ip, "cosine": cos, "rbf": np.exp(-d2 / (2 * sigma2))}


def ref_semantic_rsm(x, y=None):
    """x, y [N, C, S] -> dict of reference kernels."""
    xs = np.transpose(x, (0, 2, 1)).astype(np.float64)
    ys = xs if y is None else np.transpose(y, (0, 2, 1)).astype(np.float64)
    ip = np.array([[ref_pair_ip(a, b) for b in ys] for a in xs])
    nx2 = np.array([np.sum(a * a) for a in xs])
    ny2 = np.array([np.sum(b * b) for b in ys])
    return ref_kernels(ip, nx2, ny2, y is None)


def brute_force_ip(vi, vj):
    S = vi.shape[0]
    best, arg = -np.inf, None
    for p in itertools.permutations(range(S)):
        v = sum(float(np.dot(vi[s], vj[p[s]])) for s in range(S))
        if v > best:
            best, arg = v, p
    return best, np.array(arg)


# ----------------------------------------------------------------------------- guarantees


@pytest.mark.parametrize("S", [1, 2, 3, 5, 6])
def test_exact_equals_brute_force(S):
    rng = np.random.default_rng(S)
    for trial in range(3):
        vi = rng.standard_normal((S, 4))
        vj = rng.standard_normal((S, 4))
        best, _ = brute_force_ip(vi, vj)
        val, perm = perm_inv_semantic_sim(vi, vj, "ip", return_permutation=True)
        assert val == pytest.approx(best, rel=1e-12, abs=1e-12)
        assert sorted(perm.tolist()) == list(range(S))


def test_rsm_equals_brute_force_small_S():
    x = relu_feats(5, 3, 5, seed=3)
    rsm = semantic_sim_parallel(x, kernel="ip", progress=False)
    xs = np.transpose(x, (0, 2, 1))
    for i in range(5):
        for j in range(5):
            assert rsm[i, j] == pytest.approx(brute_force_ip(xs[i], xs[j])[0], rel=1e-12)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_rsm_matches_plain_reference_all_kernels(n_workers):
    x = relu_feats(9, 6, 12, seed=1)
    got = semantic_sim_parallel(x, kernel=ALL, n_workers=n_workers, progress=False)
    ref = ref_semantic_rsm(x)
    assert set(got) == set(ALL)
    for k in ALL:
        assert got[k].dtype == np.float64 and got[k].shape == (9, 9)
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-12)


def test_rsm_n_by_m_matches_reference():
    x = relu_feats(5, 6, 10, seed=2)
    y = relu_feats(7, 6, 10, seed=3)
    got = semantic_sim_parallel(x, y, kernel=ALL, progress=False)
    ref = ref_semantic_rsm(x, y)
    for k in ALL:
        assert got[k].shape == (5, 7)
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-12)


def test_spatially_permuted_copy_gets_self_similarity():
    rng = np.random.default_rng(4)
    x = relu_feats(4, 8, 16, seed=4)
    shuffled = x[0][:, rng.permutation(16)]
    xx = np.concatenate([x, shuffled[None]])
    rsm = semantic_sim_parallel(xx, kernel=["ip", "cosine"], progress=False)
    self_ip = np.sum(x[0] ** 2)
    assert rsm["ip"][0, 4] == pytest.approx(self_ip, rel=1e-13)
    assert rsm["ip"][0, 0] == pytest.approx(self_ip, rel=1e-13)
    assert rsm["cosine"][0, 4] == pytest.approx(1.0, rel=1e-13)
    # the pair function too, and its permutation undoes the shuffle
    perm_src = rng.permutation(16)
    vi = x[1].T
    vj = vi[perm_src]
    val, perm = perm_inv_semantic_sim(vi, vj, "ip", return_permutation=True)
    assert val == pytest.approx(np.sum(vi ** 2), rel=1e-13)
    np.testing.assert_array_equal(vj[perm], vi)


def test_semantic_at_least_baseline_for_ip_and_cosine():
    x = relu_feats(10, 5, 9, seed=5)
    sem = semantic_sim_parallel(x, kernel=["ip", "cosine"], progress=False)
    base = similarity_calculation(x, kernel=["ip", "cosine"])
    for k in ("ip", "cosine"):
        assert np.all(sem[k] >= base[k] - 1e-12 * np.abs(base[k]).max())
    assert np.any(sem["ip"] > base["ip"] + 1e-6)


def test_rsms_are_symmetric_with_exact_self_diagonal():
    x = relu_feats(8, 4, 10, seed=6)
    for mat in (semantic_sim_parallel(x, kernel=ALL, progress=False),
                similarity_calculation(x, kernel=ALL)):
        for k in ALL:
            np.testing.assert_array_equal(mat[k], mat[k].T)
        np.testing.assert_allclose(np.diag(mat["cosine"]), 1.0, rtol=1e-14)
        np.testing.assert_array_equal(np.diag(mat["rbf"]), 1.0)


def test_permutation_realises_returned_similarity():
    rng = np.random.default_rng(7)
    vi = np.maximum(rng.standard_normal((20, 6)), 0)
    vj = np.maximum(rng.standard_normal((20, 6)), 0)
    for matching in ("exact", "greedy", "batch_optimal"):
        opts = {"k": 8} if matching == "batch_optimal" else {}
        vals, perm = perm_inv_semantic_sim(vi, vj, ["ip", "cosine", "rbf"], matching=matching,
                                           return_permutation=True, sigma=2.5, **opts)
        assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(20))
        aligned = vj[perm]
        ip = float(np.sum(vi * aligned))
        assert vals["ip"] == pytest.approx(ip, rel=1e-12)
        assert vals["cosine"] == pytest.approx(
            ip / np.sqrt(np.sum(vi ** 2) * np.sum(vj ** 2)), rel=1e-12)
        assert vals["rbf"] == pytest.approx(
            np.exp(-np.sum((vi - aligned) ** 2) / (2 * 2.5 ** 2)), rel=1e-10)


def test_approximate_solvers_not_above_exact():
    x = relu_feats(6, 5, 20, seed=8)
    exact = semantic_sim_parallel(x, progress=False)
    base = similarity_calculation(x)
    for matching, opts in (("greedy", {}), ("batch_optimal", {"k": 5})):
        approx = semantic_sim_parallel(x, matching=matching, progress=False, **opts)
        assert np.all(approx <= exact + 1e-9)
        np.testing.assert_allclose(np.diag(approx), np.diag(exact))
    auc = semantic_sim_parallel(x, matching="auction", rel_tol=1e-4, progress=False)
    assert np.all(auc <= exact + 1e-9) and np.all(auc >= exact * (1 - 1e-4) - 1e-9)
    bo_full = semantic_sim_parallel(x, matching="batch_optimal", k=20, progress=False)
    np.testing.assert_allclose(bo_full, exact, rtol=1e-12)  # one block = exact
    assert np.all(exact >= base - 1e-9)


def test_pair_function_agrees_with_rsm_entry():
    x = relu_feats(4, 7, 11, seed=9)
    rsm = semantic_sim_parallel(x, kernel=["ip", "cosine"], progress=False)
    v = np.transpose(x, (0, 2, 1))
    got = perm_inv_semantic_sim(v[1], v[3], ["ip", "cosine"])
    assert got["ip"] == pytest.approx(rsm["ip"][1, 3], rel=1e-12)
    assert got["cosine"] == pytest.approx(rsm["cosine"][1, 3], rel=1e-12)


def test_layouts_and_input_types_agree():
    x = relu_feats(5, 4, 12, seed=10)  # [N, C, S]
    ref = semantic_sim_parallel(x, progress=False)
    x4 = x.reshape(5, 4, 3, 4)
    np.testing.assert_allclose(semantic_sim_parallel(x4, progress=False), ref, rtol=1e-12)
    tokens = np.ascontiguousarray(np.transpose(x, (0, 2, 1)))  # [N, T, D]
    np.testing.assert_allclose(semantic_sim_parallel(tokens, layout="nsc", progress=False), ref,
                               rtol=1e-12)
    chlast = np.ascontiguousarray(np.transpose(x4, (0, 2, 3, 1)))  # [N, H, W, C]
    np.testing.assert_allclose(semantic_sim_parallel(chlast, layout="nsc", progress=False), ref,
                               rtol=1e-12)
    np.testing.assert_allclose(semantic_sim_parallel(torch.from_numpy(x), progress=False), ref,
                               rtol=1e-12)
    np.testing.assert_allclose(semantic_sim_parallel(x, x, progress=False), ref, rtol=1e-12)
    # float32 input: float32 affinities, float64 values of the aligned float32 numbers
    got32 = semantic_sim_parallel(x.astype(np.float32), progress=False)
    ref32 = ref_semantic_rsm(x.astype(np.float32).astype(np.float64))["ip"]
    np.testing.assert_allclose(got32, ref32, rtol=1e-6)


def test_baseline_matches_plain_reference():
    x = relu_feats(6, 3, 8, seed=11)
    y = relu_feats(4, 3, 8, seed=12)
    got = similarity_calculation(x, y, kernel=ALL)
    xf = x.reshape(6, -1)
    yf = y.reshape(4, -1)
    ip = np.array([[float(np.dot(a, b)) for b in yf] for a in xf])
    ref = ref_kernels(ip, (xf ** 2).sum(1), (yf ** 2).sum(1), False)
    for k in ALL:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-14)
    sym = similarity_calculation(x, kernel="rbf")
    xf64 = xf.astype(np.float64)
    ipx = xf64 @ xf64.T
    refs = ref_kernels(ipx, np.diag(ipx), np.diag(ipx), True)["rbf"]
    np.testing.assert_allclose(sym, refs, rtol=1e-10, atol=1e-14)


def test_rbf_sigma_is_whole_set_median_and_explicit_sigma():
    x = relu_feats(7, 4, 6, seed=13)
    ip = semantic_sim_parallel(x, progress=False)
    d2 = np.diag(ip)[:, None] + np.diag(ip)[None, :] - 2 * ip
    sigma2 = np.median(np.sqrt(d2[np.triu_indices(7, 1)])) ** 2
    got = semantic_sim_parallel(x, kernel="rbf", progress=False)
    np.testing.assert_allclose(got, np.exp(-np.maximum(d2, 0) / (2 * sigma2)), rtol=1e-10,
                               atol=1e-14)
    got2 = semantic_sim_parallel(x, kernel="rbf", sigma=3.0, progress=False)
    np.testing.assert_allclose(got2, np.exp(-np.maximum(d2, 0) / 18.0), rtol=1e-10, atol=1e-14)


def test_zero_sample_cosine_is_zero():
    x = relu_feats(3, 4, 5, seed=14)
    x[1] = 0
    got = semantic_sim_parallel(x, kernel="cosine", progress=False)
    assert np.all(got[1] == 0) and np.all(got[:, 1] == 0)


def test_single_sample_and_progress_bar():
    x = relu_feats(1, 4, 5, seed=15)
    assert semantic_sim_parallel(x, progress=True).shape == (1, 1)
    x = relu_feats(4, 4, 5, seed=15)
    np.testing.assert_allclose(semantic_sim_parallel(x, progress=True),
                               semantic_sim_parallel(x, progress=False))


# ----------------------------------------------------------------------------- bad input


def test_rejects_different_S_or_C():
    x = relu_feats(3, 4, 5)
    with pytest.raises(ValueError, match="different numbers of positions S"):
        semantic_sim_parallel(x, relu_feats(3, 4, 6), progress=False)
    with pytest.raises(ValueError, match="different numbers of channels C"):
        semantic_sim_parallel(x, relu_feats(3, 5, 5), progress=False)
    with pytest.raises(ValueError, match="different numbers of channels C"):
        similarity_calculation(x, relu_feats(3, 5, 5))
    with pytest.raises(ValueError, match="different numbers of positions S"):
        perm_inv_semantic_sim(np.ones((4, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="different numbers of channels C"):
        perm_inv_semantic_sim(np.ones((4, 3)), np.ones((4, 2)))


def test_rejects_wrong_dimensionality():
    with pytest.raises(ValueError, match="2-D.*nothing to permute"):
        semantic_sim_parallel(np.ones((4, 10)), progress=False)
    with pytest.raises(ValueError, match="3-D"):
        semantic_sim_parallel(np.ones((2, 2, 2, 2, 2)), progress=False)
    with pytest.raises(ValueError, match=r"v_i must be 2-D \[S, C\]"):
        perm_inv_semantic_sim(np.ones((2, 4, 3)), np.ones((2, 4, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_nan_inf(bad):
    x = relu_feats(4, 3, 5)
    x[2, 1, 3] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf.*sample 2"):
        semantic_sim_parallel(x, progress=False)
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        semantic_sim_parallel(relu_feats(4, 3, 5), x, progress=False)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        similarity_calculation(x)
    with pytest.raises(ValueError, match="v_j contains NaN or Inf"):
        perm_inv_semantic_sim(np.ones((5, 3)), x[2].T)


def test_rejects_infeasible_exact_before_computing():
    # 64 samples of 56 x 56 positions: hours of exact matching; refused with an estimate
    x = torch.zeros(64, 1, 3136)
    with pytest.raises(ValueError, match="would take about.*approximate"):
        semantic_sim_parallel(x, matching="exact", progress=False)


def test_rejects_unknown_names():
    x = relu_feats(3, 2, 4)
    with pytest.raises(ValueError, match=r"unknown kernel 'poly'.*\['linear', 'cosine', 'rbf'\]"):
        semantic_sim_parallel(x, kernel="poly", progress=False)
    with pytest.warns(DeprecationWarning, match="old name of kernel 'linear'"):
        old = semantic_sim_parallel(x, kernel="ip", progress=False)
    np.testing.assert_array_equal(old, semantic_sim_parallel(x, kernel="linear", progress=False))
    with pytest.raises(ValueError, match="unknown kernel"):
        similarity_calculation(x, kernel=["ip", "gauss"])
    with pytest.raises(ValueError, match=r"unknown matching.*'hungarian'.*'exact'"):
        semantic_sim_parallel(x, matching="hungarian", progress=False)
    with pytest.raises(ValueError, match="unknown matching"):
        perm_inv_semantic_sim(np.ones((3, 2)), np.ones((3, 2)), matching="lapjv")
    with pytest.raises(ValueError, match="unknown layout"):
        semantic_sim_parallel(x, layout="nhwc", progress=False)
    with pytest.raises(ValueError, match="n_workers"):
        semantic_sim_parallel(x, n_workers=0, progress=False)
    assert list(KERNELS) == ["linear", "cosine", "rbf"]  # "ip" is the deprecated name of "linear"


def test_rbf_pair_needs_sigma():
    v = np.ones((3, 2))
    with pytest.raises(ValueError, match="needs sigma=.*whole set.*semantic_sim_parallel"):
        perm_inv_semantic_sim(v, v, "rbf")
    with pytest.raises(ValueError, match="sigma must be a positive"):
        perm_inv_semantic_sim(v, v, "rbf", sigma=-1.0)
    assert perm_inv_semantic_sim(v, v, "rbf", sigma=1.0) == 1.0


def test_torch_thread_setting_restored():
    before = torch.get_num_threads()
    semantic_sim_parallel(relu_feats(4, 3, 5), n_workers=2, progress=False)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        semantic_sim_parallel(relu_feats(4, 3, 5), matching="batch_optimal", k=0, progress=False)
    assert torch.get_num_threads() == before


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 4), c=st.integers(1, 4), s=st.integers(1, 6), seed=st.integers(0, 10**6),
       relu=st.booleans())
def test_property_invariance_and_bounds(n, c, s, seed, relu):
    """Any spatial shuffle of any sample leaves the semantic RSM unchanged; semantic >= baseline
    (ip, cosine); |cosine| <= 1; rbf in (0, 1]; symmetric; equals brute force."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, s))
    if relu:
        x = np.maximum(x, 0)
    shuffled = np.stack([xi[:, rng.permutation(s)] for xi in x])
    a = semantic_sim_parallel(x, kernel=ALL, n_workers=1, progress=False)
    b = semantic_sim_parallel(shuffled, kernel=ALL, n_workers=1, progress=False)
    base = similarity_calculation(x, kernel=["ip", "cosine"])
    scale = max(1.0, np.abs(a["ip"]).max())
    for k in ALL:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_array_equal(a[k], a[k].T)
    for k in ("ip", "cosine"):
        assert np.all(a[k] >= base[k] - 1e-12 * scale)
    assert np.all(np.abs(a["cosine"]) <= 1 + 1e-12)
    assert np.all((a["rbf"] > 0) & (a["rbf"] <= 1))
    xs = np.transpose(x, (0, 2, 1))
    for i in range(n):
        for j in range(i + 1, n):
            assert a["ip"][i, j] == pytest.approx(brute_force_ip(xs[i], xs[j])[0], rel=1e-12,
                                                  abs=1e-12 * scale)

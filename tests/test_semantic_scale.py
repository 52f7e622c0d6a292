"""Tests of issue 9: the batched certified auction, matching="auto", max_positions pooling, the
plan before work (SemanticCKA and the CLI), one progress bar and RSM reuse.

References are written here in plain NumPy/SciPy: scipy's linear_sum_assignment on the float64
matrix (the optimum), brute force over all permutations for tiny S, and block means for pooling.
"""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch_semantic.functional.matching import (
    MATCHINGS,
    SOLVERS,
    _solve_auction,
    assignment_objective,
    batched_auction,
    check_options,
    choose_solver,
    dual_bound,
    estimate_seconds,
    solve_assignment,
)
from simtorch_semantic.functional.semantic import (
    _as_nsc,
    _semantic_ip,
    pool_positions,
    pooled_grid,
    positive_multiple,
    semantic_sim_parallel,
)
from simtorch_semantic.measures.semantic import PlanTooLarge, SemanticCKA
from simtorch_semantic.model import SimilarityModel


def optimum(a):
    """Plain reference: the maximal assignment value of one float64 matrix (scipy)."""
    r, c = linear_sum_assignment(np.asarray(a, dtype=np.float64), maximize=True)
    return float(np.asarray(a, dtype=np.float64)[r, c].sum())


def brute(a):
    S = len(a)
    return max(sum(a[i][p[i]] for i in range(S)) for p in itertools.permutations(range(S)))


def relu_aff(rng, B, S, C=8):
    v = np.maximum(rng.normal(size=(2 * B, S, C)), 0) * rng.gamma(2.0, 1.0, size=(2 * B, S, 1))
    return np.einsum("bsc,btc->bst", v[:B], v[B:])


def check_certified(a, res, rel_tol=1e-3):
    """The result is a permutation, certified, objective/bound consistent with the optimum."""
    a = np.asarray(a, dtype=np.float64)
    perm = res.perm.numpy()
    B, S, _ = a.shape
    assert np.array_equal(np.sort(perm, axis=1), np.broadcast_to(np.arange(S), (B, S)))
    assert bool(res.certified.all())
    obj = np.take_along_axis(a, perm[:, :, None], 2)[:, :, 0].sum(1)
    np.testing.assert_allclose(res.objective.numpy(), obj, rtol=1e-6, atol=1e-9)
    for b in range(B):
        opt = optimum(a[b])
        tol = 1e-6 * max(1.0, abs(opt))
        assert res.bound[b].item() >= opt - tol            # a real upper bound
        assert obj[b] >= opt - rel_tol * abs(obj[b]) - tol  # certified quality, checked
        assert res.bound[b].item() - res.objective[b].item() <= rel_tol * abs(obj[b]) + tol
    # the bound is checkable: the dual value of the returned prices, plus the rounding slack
    d = dual_bound(a, res.prices.double().numpy())
    assert np.all(d <= res.bound.numpy() + 1e-6 * np.abs(d) + 1e-9)


# ----------------------------------------------------------------------------- the solver
@pytest.mark.parametrize("S", [1, 2, 3, 4, 5, 6])
def test_batched_auction_tiny_S_against_brute_force(S):
    rng = np.random.default_rng(S)
    a = rng.normal(size=(3, S, S))
    res = batched_auction(torch.from_numpy(a))
    check_certified(a, res)
    for b in range(3):
        assert res.objective[b].item() >= brute(a[b]) - 1e-3 * abs(brute(a[b])) - 1e-12


@pytest.mark.parametrize("S,B", [(17, 1), (17, 5), (64, 1), (64, 4), (200, 2)])
def test_batched_auction_certified_on_relu_affinities(S, B):
    a = relu_aff(np.random.default_rng(S + B), B, S)
    check_certified(a, batched_auction(torch.from_numpy(a).float()))


def test_batched_auction_large_S_one_problem():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 1024, 1024))
    check_certified(a, batched_auction(torch.from_numpy(a), bidders=64))


def test_batched_auction_general_signs_and_tighter_tolerance():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 40, 40)) - 0.5
    check_certified(a, batched_auction(torch.from_numpy(a), rel_tol=1e-5), rel_tol=1e-5)


def test_batched_auction_on_real_conv_features():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU())
    x = torch.rand(4, 3, 22, 22)
    with torch.no_grad():
        v = conv(x).flatten(2).transpose(1, 2)  # [4, 100, 16]
    a = torch.stack([v[0] @ v[1].T, v[2] @ v[3].T, v[1] @ v[2].T])
    check_certified(a.double().numpy(), batched_auction(a))
    check_auction(a.numpy())  # the compiled auction on the same float32 affinities


def test_batched_auction_ties_constant_and_rank_one():
    ones = np.full((2, 7, 7), 3.0)
    res = batched_auction(torch.from_numpy(ones))
    assert np.array_equal(res.perm.numpy(), np.tile(np.arange(7), (2, 1)))
    check_certified(ones, res)
    rng = np.random.default_rng(1)
    u, w = rng.random((2, 30)), rng.random((2, 30))
    rank_one = np.einsum("bi,bj->bij", u, w)
    check_certified(rank_one, batched_auction(torch.from_numpy(rank_one)))
    ties = rng.integers(0, 3, size=(3, 25, 25)).astype(np.float64)  # many equal entries
    check_certified(ties, batched_auction(torch.from_numpy(ties)))
    same_rows = np.tile(rng.random((1, 1, 12)), (2, 12, 1))  # every row identical
    check_certified(same_rows, batched_auction(torch.from_numpy(same_rows)))


def test_batched_auction_batch_equals_one_by_one_and_2d():
    a = relu_aff(np.random.default_rng(5), 4, 30)
    t = torch.from_numpy(a)
    res = batched_auction(t)
    for b in range(4):
        one = batched_auction(t[b])
        assert one.perm.shape == (30,)
        assert torch.equal(one.perm, res.perm[b])
        assert one.bound.item() == res.bound[b].item()


def test_batched_auction_limits_give_uncertified_valid_permutations():
    a = relu_aff(np.random.default_rng(6), 2, 50)
    res = batched_auction(torch.from_numpy(a), rel_tol=1e-12, max_phases=1)
    assert not bool(res.certified.any())
    perm = res.perm.numpy()
    assert np.array_equal(np.sort(perm, axis=1), np.tile(np.arange(50), (2, 1)))
    res = batched_auction(torch.from_numpy(a), max_rounds=1)
    assert not bool(res.certified.any())
    assert np.array_equal(np.sort(res.perm.numpy(), axis=1), np.tile(np.arange(50), (2, 1)))


# ----------------------------------------------------------------------------- the compiled auction
def check_auction(a, rel_tol=1e-3, **options):
    """The compiled auction's result is a permutation whose objective and bound bracket the
    optimum within rel_tol (the bound checked against scipy's optimum of the same matrix)."""
    perm, obj, bound = _solve_auction(a, rel_tol=rel_tol, return_bound=True, **options)
    a64 = np.asarray(a, dtype=np.float64)
    B, S, _ = a64.shape
    assert np.array_equal(np.sort(perm, axis=1), np.broadcast_to(np.arange(S), (B, S)))
    np.testing.assert_allclose(obj, assignment_objective(a64, perm), rtol=1e-9, atol=1e-9)
    for b in range(B):
        opt = optimum(a64[b])
        tol = 1e-9 * max(1.0, abs(opt))
        assert bound[b] >= opt - tol                          # a real upper bound
        assert bound[b] - obj[b] <= rel_tol * abs(obj[b]) + tol  # certified
        assert obj[b] >= opt - rel_tol * abs(obj[b]) - tol       # and true
    return perm, obj, bound


@pytest.mark.parametrize("S", [1, 2, 3, 4, 5, 6])
def test_auction_tiny_S_against_brute_force(S):
    a = np.random.default_rng(S).normal(size=(3, S, S))
    _, obj, _ = check_auction(a)
    for b in range(3):
        assert obj[b] >= brute(a[b]) - 1e-3 * abs(brute(a[b])) - 1e-12


@pytest.mark.parametrize("S,B,dtype", [(17, 5, np.float64), (64, 4, np.float32),
                                       (200, 2, np.float64), (1024, 1, np.float32)])
def test_auction_certified_on_relu_affinities_any_precision(S, B, dtype):
    check_auction(relu_aff(np.random.default_rng(S + B), B, S).astype(dtype))


def test_auction_ties_constant_rank_one_and_general_signs():
    ones = np.full((2, 7, 7), 3.0)
    perm, _, _ = check_auction(ones)
    assert np.array_equal(perm, np.tile(np.arange(7), (2, 1)))
    rng = np.random.default_rng(1)
    u, w = rng.random((2, 30)), rng.random((2, 30))
    check_auction(np.einsum("bi,bj->bij", u, w))
    check_auction(rng.integers(0, 3, size=(3, 25, 25)).astype(np.float64))
    check_auction(np.tile(rng.random((1, 1, 12)), (2, 12, 1)))  # every row identical
    check_auction(rng.normal(size=(4, 40, 40)) - 0.5, rel_tol=1e-5)


def test_auction_threads_give_the_same_result_as_one():
    a = relu_aff(np.random.default_rng(5), 6, 60)
    one = _solve_auction(a, return_bound=True, n_workers=1)
    two = _solve_auction(a, return_bound=True, n_workers=2)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)


def test_auction_limits_give_uncertified_permutations_and_exact_fallback():
    a = relu_aff(np.random.default_rng(6), 2, 50)
    for opts in ({"rel_tol": 1e-12, "max_phases": 1}, {"max_bids": 10}):
        perm, obj, bound = _solve_auction(a, return_bound=True, **opts)
        assert np.array_equal(np.sort(perm, axis=1), np.tile(np.arange(50), (2, 1)))
        assert not np.any(bound - obj <= 1e-12 * np.abs(obj))
        p = solve_assignment(a, "auction", **opts)  # the uncertified are re-solved exactly
        for b in range(2):
            assert assignment_objective(a[b], p[b]) == pytest.approx(optimum(a[b]), rel=1e-12)
    with pytest.raises(ValueError, match=r"max_bids \(auction option\) must be a positive"):
        solve_assignment(a, "auction", max_bids=0)


@pytest.mark.parametrize("method", ["batched", "auto"])
def test_solve_assignment_batched_and_auto_certified(method):
    a = relu_aff(np.random.default_rng(7), 3, 40)
    p = solve_assignment(a, method, rel_tol=1e-3)
    obj = assignment_objective(a, p)
    for b in range(3):
        assert obj[b] >= optimum(a[b]) * (1 - 1e-3) - 1e-9


def test_solve_assignment_batched_falls_back_to_exact_when_uncertified():
    a = relu_aff(np.random.default_rng(8), 2, 30)
    p = solve_assignment(a, "batched", rel_tol=1e-12, max_phases=1)
    for b in range(2):
        assert assignment_objective(a[b], p[b]) == pytest.approx(optimum(a[b]), rel=1e-12)


def test_batched_auction_bad_inputs():
    a = torch.rand(2, 5, 5)
    for kw, name in (({"rel_tol": 0}, "rel_tol"), ({"theta": 1.0}, "theta"),
                     ({"eps0": -1}, "eps0"), ({"max_phases": 0}, "max_phases"),
                     ({"bidders": 0}, "bidders"), ({"max_rounds": 1.5}, "max_rounds")):
        with pytest.raises(ValueError, match=name):
            batched_auction(a, **kw)
    with pytest.raises(ValueError, match="prices"):
        batched_auction(a, prices=torch.zeros(3))
    bad = a.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at \[1, 2, 3\]"):
        batched_auction(bad)
    with pytest.raises(ValueError, match="square"):
        batched_auction(torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match="prices must have shape"):
        dual_bound(np.eye(3), np.zeros(4))
    with pytest.raises(ValueError, match="unknown matching method 'fast'.*auto"):
        solve_assignment(np.eye(3), "fast")


def test_dual_bound_is_an_upper_bound_for_any_prices():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(5, 6, 6))
    for _ in range(5):
        p = rng.normal(size=(5, 6)) * 3
        d = dual_bound(a, p)
        for b in range(5):
            assert d[b] >= brute(a[b]) - 1e-12


# ------------------------------------------------------------------------- auto, cost model
def test_auto_choice_and_estimates():
    assert "auto" in MATCHINGS and "batched" in SOLVERS
    for S in (1, 2, 9, 36, 64):
        assert choose_solver(S) == "exact"  # small maps: scipy (auto never slower there)
    for S in (144, 196, 576):  # the compiled auction: 3x, 3.5x, 8x exact (benchmarks/RESULTS.md)
        assert choose_solver(S) == "auction"
    assert choose_solver(3136) in ("auction", "batched")
    assert choose_solver(3136, "cuda") == "batched"
    assert choose_solver(3136, torch.device("cpu")) == choose_solver(3136)
    t = [estimate_seconds("auto", S, 100) for S in (36, 144, 576, 2304)]
    assert all(x < y for x, y in zip(t, t[1:]))
    assert estimate_seconds("batched", 100, 10, n_workers=2) == pytest.approx(
        estimate_seconds("batched", 100, 10, n_workers=1) / 2)
    with pytest.raises(ValueError, match="greedy"):
        estimate_seconds("greedy", 10)
    with pytest.raises(ValueError, match="S \\(positions"):
        choose_solver(0)


# ------------------------------------------------------------------------------- pooling
def test_pool_positions_block_means_and_layouts():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 3, 4, 6))
    got = pool_positions(x, 6).numpy()  # 4 x 6 -> 2 x 3 keeps the aspect ratio
    want = x.reshape(2, 3, 2, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    nhwc = pool_positions(np.moveaxis(x, 1, -1), 6, layout="nsc").numpy()
    np.testing.assert_allclose(nhwc, np.moveaxis(want, 1, -1), rtol=1e-12)
    tok = rng.normal(size=(2, 8, 5))  # [N, T, D] tokens -> 4 tokens, means of pairs
    np.testing.assert_allclose(pool_positions(tok, 4, layout="nsc").numpy(),
                               tok.reshape(2, 4, 2, 5).mean(axis=2), rtol=1e-12)
    same = pool_positions(x, 24)
    np.testing.assert_array_equal(same.numpy(), x)
    for H, W, m in ((48, 48, 576), (48, 48, 100), (7, 3, 5), (56, 56, 1), (5, 9, 44)):
        h, w = pooled_grid(H, W, m)
        assert 1 <= h <= H and 1 <= w <= W and h * w <= m
    assert pooled_grid(48, 48, 576) == (24, 24)
    with pytest.raises(ValueError, match="max_positions must be None"):
        pool_positions(x, 0)
    with pytest.raises(ValueError, match="max_positions must be None"):
        semantic_sim_parallel(x, max_positions=2.5, progress=False)


def test_max_positions_equals_semantic_of_pooled_maps():
    torch.manual_seed(1)
    x = torch.relu(torch.randn(5, 4, 6, 6, dtype=torch.float64))
    got = semantic_sim_parallel(x, max_positions=9, matching="exact", progress=False)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (3, 3))
    np.testing.assert_allclose(got, semantic_sim_parallel(pooled, matching="exact",
                                                          progress=False), rtol=1e-12)


# ------------------------------------------------------------------ semantic pipeline
def test_semantic_batched_certified_stats_and_same_result_any_block_size():
    torch.manual_seed(2)
    x = torch.relu(torch.randn(7, 8, 5, 5))
    xs = _as_nsc(x, "x", "ncs")
    runs = []
    for block in (1, 3, 100):
        st = {}
        ip, _, _ = _semantic_ip(xs, None, "batched", 1, False, {}, stats=st, block_pairs=block)
        runs.append(ip)
        assert st["solver"] == "batched" and st["pairs"] == 21 and st["certified"]
        assert 0 <= st["max_rel_gap"] <= 1e-3
    for ip in runs[1:]:
        np.testing.assert_array_equal(ip, runs[0])
    exact = semantic_sim_parallel(x, matching="exact", progress=False)
    assert np.all(runs[0] >= exact * (1 - 1e-3) - 1e-9) and np.all(runs[0] <= exact + 1e-6)


@pytest.mark.parametrize("matching", ["auto", "auction", "batched"])
def test_semantic_rsm_certified_against_exact(matching):
    torch.manual_seed(3)
    x = torch.relu(torch.randn(6, 4, 6, 6, dtype=torch.float64))
    st = {}
    got = semantic_sim_parallel(x, matching=matching, progress=False, stats=st)
    ref = semantic_sim_parallel(x, matching="exact", progress=False)
    assert np.all(got <= ref + 1e-9 * np.abs(ref).max())
    assert np.all(got >= ref - 1e-3 * np.abs(ref) - 1e-12)
    assert st["certified"] and st["max_rel_gap"] <= 1e-3


# ------------------------------------------------------------------------ plan before work
class Two(nn.Module):
    """Two identical position maps (the second an exact copy) and a third, different one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Identity()
        self.b = nn.Identity()
        self.c = nn.ReLU()

    def forward(self, x):
        return self.c(self.b(self.a(x)) - 0.1)


def loader(n=8, hw=6, batch=4):
    torch.manual_seed(4)
    X = torch.relu(torch.randn(n, 3, hw, hw, dtype=torch.float64))
    return DataLoader(TensorDataset(X), batch_size=batch)


def test_plan_rows_and_printed_before_matching(capsys):
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a", "b", "c"])
    meas = SemanticCKA(m, m, kernel="ip", print_plan=True)
    res = meas.compute(loader(), progress=False)
    err = capsys.readouterr().err
    assert "semantic CKA plan: 8 samples" in err and "total:" in err
    rows = meas.plan.rows
    assert [r["layer"] for r in rows] == ["a", "b", "c"] * 2
    assert rows[0]["S"] == 36 and rows[0]["C"] == 3 and rows[0]["pairs"] == 28
    assert rows[0]["solver"] == "exact"
    assert [r["solver"] for r in rows[1:]] == ["reused", "exact", "reused", "reused", "reused"]
    assert meas.plan.total_pairs == 56
    assert res.matrix[0, 0] == pytest.approx(1.0)
    assert any(n.startswith("matching: 56 pair problems") and "certified" in n for n in res.notes)


def test_identical_activations_build_one_rsm(rsm_calls):
    calls = rsm_calls
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a", "b", "c"])
    res = SemanticCKA(m, m, kernel="ip").compute(loader(), progress=False)
    assert len(calls) == 2  # "a" once ("b" and model 2 reuse it), "c" once
    np.testing.assert_allclose(res.matrix[0, :2], 1.0)


class Scaled(nn.Module):
    """A map, then 2.5 x that map (as eval-mode batch norm at its initial statistics), then a
    different one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Identity()
        self.b = nn.Identity()
        self.c = nn.ReLU()

    def forward(self, x):
        return self.c(self.b(2.5 * self.a(x)) - 0.1)


def test_positive_multiple_against_plain_least_squares():
    rng = np.random.default_rng(12)
    y = rng.normal(size=(4, 3, 5, 5))

    def plain(x, y, rtol=1e-6):  # reference: least-squares factor and its residual, NumPy
        c = float((x * y).sum() / (y * y).sum())
        ok = c > 0 and np.linalg.norm(x - c * y) <= rtol * np.linalg.norm(x)
        return c if ok else None

    t = torch.from_numpy
    for x in (2.5 * y, 1e-3 * y, y / np.sqrt(1 + 1e-5)):
        assert positive_multiple(t(x), t(y)) == pytest.approx(plain(x, y), rel=1e-12)
    assert positive_multiple(t(y), t(y)) == 1.0
    noisy = 2.0 * y + 1e-3 * rng.normal(size=y.shape)
    assert plain(noisy, y) is None and positive_multiple(t(noisy), t(y)) is None
    assert positive_multiple(t(noisy), t(y), rtol=0.01) == pytest.approx(plain(noisy, y, 0.01))
    assert positive_multiple(t(-2.0 * y), t(y)) is None                 # negative factor
    assert positive_multiple(t(y), t(np.zeros_like(y))) is None          # zero reference
    assert positive_multiple(t(y), t(y[:2])) is None                     # other shape
    assert positive_multiple(t(y).float(), t(y)) is None                 # other dtype
    with pytest.raises(TypeError, match="two torch tensors"):
        positive_multiple(y, t(y))
    for bad in (0, 1, -1e-3, "1e-6", True):
        with pytest.raises(ValueError, match=r"rtol must be a number in \(0, 1\)"):
            positive_multiple(t(y), t(y), rtol=bad)


@pytest.mark.parametrize("kernel", ["linear", "cosine", "rbf"])
def test_proportional_activations_reuse_the_rsm_exactly(rsm_calls, kernel):
    calls = rsm_calls
    m = SimilarityModel(Scaled(), model_name="s", layers_to_include=["a", "b", "c"])
    measure = SemanticCKA(m, m, kernel=kernel, matching="exact")
    res = measure.compute(loader(), progress=False)
    assert len(calls) == 2  # "a" and "c"; "b" = 2.5 a is derived from "a"
    assert [r["solver"] for r in measure.plan.rows].count("reused") == 4
    assert any("2.5 x those of s.a" in note for note in res.notes)
    # the derived RSM equals the one computed from the scaled activations themselves
    x = torch.cat([b[0] for b in loader()])
    direct = semantic_sim_parallel(2.5 * x, kernel=kernel, matching="exact", progress=False)
    K = measure._rsms({"a": x, "b": 2.5 * x}, m, [])[1]
    np.testing.assert_allclose(K, direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.matrix[0, :2], 1.0)


def test_plan_refused_above_budget_with_ways_to_shrink():
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a", "c"])
    meas = SemanticCKA(m, m, kernel="ip", max_minutes=1e-3, matching="exact")
    with pytest.raises(PlanTooLarge, match=r"above max_minutes=0.001; shrink it with fewer "
                       r"samples \(n <= \d+.*max_positions=\d+.*fewer or coarser layers") as info:
        meas.compute(loader(n=64, hw=12, batch=8), progress=False)
    assert meas._n_batches == 0  # nothing collected, nothing matched
    assert "semantic CKA plan: 64 samples" in str(info.value)
    assert info.value.plan.total_pairs == 2 * 2016


def test_plan_suggestions_fit_the_budget():
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a"])
    meas = SemanticCKA(m, m, kernel="ip", max_minutes=0.5, matching="exact")
    with pytest.raises(PlanTooLarge) as info:
        meas.compute(loader(n=256, hw=40, batch=64), progress=False)
    sug = info.value.suggestions
    assert sug["max_positions"] is not None and sug["max_positions"] < 1600
    assert sug["n"] is not None and sug["n"] < 256


def test_semantic_cka_bad_budget_and_positions():
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a"])
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        SemanticCKA(m, m, max_minutes=0)
    with pytest.raises(ValueError, match="max_positions must be None"):
        SemanticCKA(m, m, max_positions=-3)
    with pytest.raises(ValueError, match="print_plan"):
        SemanticCKA(m, m, print_plan="yes")


def test_semantic_cka_max_positions_is_recorded_and_applied():
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a"])
    meas = SemanticCKA(m, m, kernel="ip", max_positions=9, print_plan=False)
    res = meas.compute(loader(n=6, hw=6, batch=6), progress=False)
    assert res.params["max_positions"] == 9 and meas.plan.rows[0]["S"] == 9
    assert meas.matching_stats[0]["pairs"] == 15


# ----------------------------------------------------------------------------------- CLI
def test_cli_prints_plan_and_refuses_above_budget(tmp_path, capsys):
    from simtorch_semantic.cli import main
    torch.set_num_threads(1)
    args = ["compare", "resnet18", "resnet18", "--measure", "semantic_cka", "--n", "16",
            "--image-size", "64", "--batch-size", "16", "--layers-a", "layer3.1",
            "--layers-b", "layer3.1", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "semantic CKA plan: 16 samples" in cap.err
    assert "resnet18.layer3.1" in cap.err and "total: 240 pair problems" in cap.err
    code = main(args + ["--max-minutes", "1e-5"])
    err = capsys.readouterr().err
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.startswith("simtorch-semantic: error:")][0]
    for needle in ("above --max-minutes 1e-05", "--n ", "--option max_positions=",
                   "--image-size", "--layers-a/--layers-b"):
        assert needle in line
    assert "semantic CKA plan" in err  # the plan came first
    assert main(args + ["--max-minutes", "0"]) == 2
    assert "--max-minutes must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("matching", ["auction", "batched"])
def test_float64_dual_certifies_where_the_rounding_bound_is_loose(matching):
    """Large orthogonal offsets make the worst-case float32 rounding bound (gamma_C |x| |y|)
    ~8x rel_tol, while the actual rounding is tiny: the float64 dual value of the solver's
    prices certifies every pair, so none goes to the exact fallback, and the values agree with
    the exact RSM within the certificate."""
    rng = np.random.default_rng(11)
    N, S = 5, 30
    x = np.zeros((N, S, 64), dtype=np.float32)
    x[:, :, 2:] = rng.normal(size=(N, S, 62))
    x[:, :, 0] = 100.0 * (np.arange(N) % 2 == 0)[:, None]
    x[:, :, 1] = 100.0 * (np.arange(N) % 2 == 1)[:, None]
    t = torch.from_numpy(x)
    stats = {}
    K = semantic_sim_parallel(t, kernel="linear", matching=matching, layout="nsc",
                              progress=False, stats=stats)
    assert stats["exact_fallback"] == 0 and stats["max_rel_gap"] <= 1e-3
    ref = semantic_sim_parallel(t.double(), kernel="linear", matching="exact", layout="nsc",
                                progress=False)
    np.testing.assert_array_less(K, ref + 1e-9 * np.abs(ref))
    np.testing.assert_array_less(ref * (1 - 1e-3) - 1e-9 * np.abs(ref), K)


def test_unknown_solver_options_are_refused_up_front(capsys):
    m = SimilarityModel(Two(), model_name="t", layers_to_include=["a"])
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_positon'\].*did you mean "
                                        r"max_positions\?"):
        SemanticCKA(m, m, max_positon=4)  # before any data is seen
    with pytest.raises(TypeError, match=r"semantic_sim_parallel: unknown option\(s\) \['kk'\]"):
        semantic_sim_parallel(torch.rand(3, 4, 2), layout="nsc", kk=1, progress=False)
    # every solver option of "auto" reaches the solver it picks (here the auction's max_bids)
    x = torch.rand(4, 150, 3)
    K = semantic_sim_parallel(x, layout="nsc", matching="auto", max_bids=10**6, progress=False)
    ref = semantic_sim_parallel(x, layout="nsc", matching="exact", progress=False)
    np.testing.assert_allclose(K, ref, rtol=1e-3)
    from simtorch_semantic.cli import main
    assert main(["compare", "resnet18", "resnet18", "--measure", "semantic_cka", "--n", "8",
                 "--image-size", "32", "--option", "max_positon=4", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "--option: SemanticCKA: unknown option(s) ['max_positon']" in err
    assert "SemanticCKA: SemanticCKA" not in err and "did you mean max_positions?" in err


def test_check_options_names_the_valid_keys():
    check_options("auction", {"rel_tol": 1e-3, "max_bids": 10})  # valid: no error
    check_options("auto", {"max_bids": 10, "bidders": 2, "n_workers": 1})
    with pytest.raises(TypeError, match=r"here: unknown option\(s\) \['k'\] for matching method "
                                        r"'auction'; valid options: \['eps0', 'max_bids'"):
        check_options("auction", {"k": 4}, "here: ")
    with pytest.raises(TypeError, match=r"\['rel_tol'\] for matching method 'greedy'; valid "
                                        r"options: \['n_workers'\]"):
        check_options("greedy", {"rel_tol": 1e-3})
    with pytest.raises(ValueError, match="unknown matching method 'fast'"):
        check_options("fast", {})

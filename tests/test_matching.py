"""Tests for simtorch_semantic.functional.matching (assignment solvers)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from simtorch_semantic.functional.matching import (
    SOLVERS,
    assignment_objective,
    check_exact_feasible,
    estimate_exact_seconds,
    solve_assignment,
)

APPROX = [m for m in SOLVERS if m != "exact"]


def brute_force_best(a):
    """Plain reference: the best objective over all S! permutations of one [S, S] matrix."""
    n = len(a)
    best = -float("inf")
    for p in itertools.permutations(range(n)):
        total = 0.0
        for i in range(n):
            total += float(a[i][p[i]])
        best = max(best, total)
    return best


def plain_objective(a, p):
    """Plain reference for sum_i a[i, p[i]] of one matrix."""
    return sum(float(a[i][int(p[i])]) for i in range(len(a)))


def relu_affinity(rng, B, S, C):
    """Affinities V_i V_j^T between ReLU features of two 'samples' with varying norms."""
    scale = rng.gamma(2.0, 1.0, size=(2 * B, S, 1))
    v = np.maximum(rng.normal(size=(2 * B, S, C)), 0.0) * scale
    return np.einsum("bsc,btc->bst", v[:B], v[B:]), v[:B], v[B:]


def is_perm(p, S):
    ref = np.broadcast_to(np.arange(S), p.shape)
    return p.dtype == np.int64 and np.array_equal(np.sort(p, axis=-1), ref)


@pytest.mark.parametrize("S", [1, 2, 3, 4, 5, 6])
def test_exact_equals_brute_force(S):
    rng = np.random.default_rng(S)
    for _ in range(4):
        a = rng.normal(size=(S, S))
        p = solve_assignment(a, "exact")
        assert p.shape == (S,)
        assert is_perm(p, S)
        assert plain_objective(a, p) == pytest.approx(brute_force_best(a), abs=1e-12)


def test_exact_batch_matches_per_matrix_and_threads():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 6, 6))
    p1 = solve_assignment(a, "exact", n_workers=1)
    p2 = solve_assignment(a, "exact", n_workers=3)
    assert p1.shape == (7, 6)
    np.testing.assert_array_equal(p1, p2)
    for b in range(7):
        assert plain_objective(a[b], p1[b]) == pytest.approx(brute_force_best(a[b]), abs=1e-12)


@pytest.mark.parametrize("method", SOLVERS)
def test_every_solver_valid_permutation_and_below_optimum(method):
    rng = np.random.default_rng(1)
    a, _, _ = relu_affinity(rng, 3, 40, 8)
    p = solve_assignment(a, method)
    assert p.shape == (3, 40)
    assert is_perm(p, 40)
    opt = assignment_objective(a, solve_assignment(a, "exact"))
    obj = assignment_objective(a, p)
    assert np.all(obj <= opt + 1e-9 * np.abs(opt))
    # random permutations as a sanity floor for every solver
    rnd = assignment_objective(a, np.stack([rng.permutation(40) for _ in range(3)]))
    assert np.all(obj >= rnd)


@pytest.mark.parametrize("method", SOLVERS)
def test_torch_and_float32_input(method):
    rng = np.random.default_rng(2)
    a, _, _ = relu_affinity(rng, 2, 12, 4)
    p_np = solve_assignment(a, method)
    p_t = solve_assignment(torch.tensor(a, dtype=torch.float64), method)
    np.testing.assert_array_equal(p_np, p_t)
    p32 = solve_assignment(torch.tensor(a, dtype=torch.float32), method)
    assert is_perm(p32, 12)


@pytest.mark.parametrize("method", SOLVERS)
def test_2d_input_returns_1d(method):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 5))
    p = solve_assignment(a, method)
    assert p.shape == (5,)
    assert is_perm(p, 5)


@pytest.mark.parametrize("method", SOLVERS)
def test_identity_is_found_on_dominant_diagonal(method):
    # a strongly dominant diagonal: every reasonable solver must return the identity
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 1, size=(2, 30, 30)) + 100.0 * np.eye(30)
    p = solve_assignment(a, method)
    np.testing.assert_array_equal(p, np.tile(np.arange(30), (2, 1)))


def test_greedy_optimal_when_row_maxima_are_distinct_columns():
    # each row's best column is distinct: greedy takes every row's favourite, which is optimal
    rng = np.random.default_rng(5)
    S = 8
    target = rng.permutation(S)
    a = rng.uniform(0, 1, size=(S, S))
    a[np.arange(S), target] += 2.0
    p = solve_assignment(a, "greedy")
    np.testing.assert_array_equal(p, target)
    assert plain_objective(a, p) == pytest.approx(brute_force_best(a), abs=1e-12)


def test_greedy_follows_row_order_by_best_affinity():
    # plain reference of the greedy rule on a small matrix with distinct entries
    rng = np.random.default_rng(6)
    for _ in range(10):
        a = rng.normal(size=(6, 6))
        order = sorted(range(6), key=lambda i: -max(a[i]))
        free = set(range(6))
        ref = [None] * 6
        for i in order:
            j = max(free, key=lambda c: a[i][c])
            ref[i] = j
            free.remove(j)
        np.testing.assert_array_equal(solve_assignment(a, "greedy"), ref)


def test_greedy_not_worse_than_no_matching_on_relu():
    rng = np.random.default_rng(7)
    a, _, _ = relu_affinity(rng, 2, 60, 16)
    # identity ("no matching") vs greedy on a spatially permuted copy of the same sample
    perm = rng.permutation(60)
    aa = a[:, :, perm]
    g = assignment_objective(aa, solve_assignment(aa, "greedy"))
    ident = np.trace(aa, axis1=1, axis2=2)
    assert np.all(g >= ident)


def test_batch_optimal_with_k_at_least_S_equals_exact():
    rng = np.random.default_rng(8)
    a, _, _ = relu_affinity(rng, 3, 25, 6)
    e = assignment_objective(a, solve_assignment(a, "exact"))
    for k in (25, 64):
        bo = assignment_objective(a, solve_assignment(a, "batch_optimal", k=k))
        np.testing.assert_allclose(bo, e, rtol=1e-12)


def test_batch_optimal_blocks_follow_given_norms():
    # plain reference: sort rows/cols by the given norms, solve each aligned block by brute force
    rng = np.random.default_rng(9)
    S, k = 6, 3
    a, vi, vj = relu_affinity(rng, 1, S, 4)
    rn = np.linalg.norm(vi, axis=2)
    cn = np.linalg.norm(vj, axis=2)
    p = solve_assignment(a, "batch_optimal", k=k, row_norms=rn, col_norms=cn)[0]
    ro = np.argsort(-rn[0], kind="stable")
    co = np.argsort(-cn[0], kind="stable")
    total = 0.0
    for s in range(0, S, k):
        sub = a[0][np.ix_(ro[s:s + k], co[s:s + k])]
        total += brute_force_best(sub)
        # every row of the block got a column of the same block
        assert set(p[ro[s:s + k]]) == set(co[s:s + k])
    assert plain_objective(a[0], p) == pytest.approx(total, abs=1e-9)


@pytest.mark.parametrize("rel_tol", [1e-2, 1e-3, 1e-5])
def test_auction_certified_within_rel_tol_on_relu(rel_tol):
    rng = np.random.default_rng(11)
    a, _, _ = relu_affinity(rng, 4, 100, 16)
    opt = assignment_objective(a, solve_assignment(a, "exact"))
    p = solve_assignment(a, "auction", rel_tol=rel_tol)
    assert is_perm(p, 100)
    obj = assignment_objective(a, p)
    assert np.all(obj <= opt + 1e-9 * np.abs(opt))
    assert np.all(obj >= opt - rel_tol * np.abs(obj) - 1e-9)
    assert np.all(obj >= 0.99 * opt)


def test_auction_reaches_optimum_on_small_problems_and_general_signs():
    rng = np.random.default_rng(12)
    for S in (2, 3, 5, 6):
        a = rng.normal(size=(5, S, S)) * 10 - 3
        p = solve_assignment(a, "auction", rel_tol=1e-9)
        for b in range(5):
            assert plain_objective(a[b], p[b]) == pytest.approx(brute_force_best(a[b]), abs=1e-6)


def test_auction_degenerate_inputs():
    # constant matrix (every permutation optimal), S = 1, integer ties
    one_hot = np.zeros((1, 60, 60))
    one_hot[0, 3, 5] = 1.0
    for a in (np.full((2, 7, 7), 3.0), np.zeros((1, 300, 300)), one_hot, np.ones((3, 1, 1)),
              np.tile(np.arange(5.0), (5, 1))):
        p = solve_assignment(a, "auction")
        assert is_perm(p, a.shape[-1])
        opt = assignment_objective(a, solve_assignment(a, "exact"))
        np.testing.assert_allclose(assignment_objective(a, p), opt, rtol=1e-3)


def test_auction_batch_equals_one_by_one():
    rng = np.random.default_rng(13)
    a, _, _ = relu_affinity(rng, 3, 30, 8)
    batch = assignment_objective(a, solve_assignment(a, "auction", rel_tol=1e-6))
    single = np.array([
        float(assignment_objective(a[b], solve_assignment(a[b], "auction", rel_tol=1e-6)))
        for b in range(3)
    ])
    opt = assignment_objective(a, solve_assignment(a, "exact"))
    np.testing.assert_allclose(batch, opt, rtol=1e-6)
    np.testing.assert_allclose(single, opt, rtol=1e-6)


def test_auction_per_problem_scales_in_one_batch():
    # problems of very different magnitude in one batch each get their own eps and certificate
    rng = np.random.default_rng(14)
    a, _, _ = relu_affinity(rng, 3, 40, 8)
    a = a * np.array([1e-3, 1.0, 1e4])[:, None, None]
    opt = assignment_objective(a, solve_assignment(a, "exact"))
    obj = assignment_objective(a, solve_assignment(a, "auction", rel_tol=1e-4))
    assert np.all(obj >= opt - 1e-4 * np.abs(obj) - 1e-12)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 6), st.just(0)).map(
    lambda t: (t[0], t[1], t[1])), elements=st.floats(-1e3, 1e3, allow_nan=False, width=32)))
def test_property_solvers_valid_and_bounded(a):
    B, S, _ = a.shape
    best = np.array([brute_force_best(a[b]) for b in range(B)])
    for method in SOLVERS:
        p = solve_assignment(a, method)
        assert is_perm(p, S)
        obj = assignment_objective(a, p)
        assert np.all(obj <= best + 1e-9 * (1 + np.abs(best)))
        if method == "exact":
            np.testing.assert_allclose(obj, best, rtol=1e-12, atol=1e-9)
        if method == "auction":
            assert np.all(obj >= best - 1e-3 * np.abs(obj) - 1e-9 * (1 + np.abs(best)))


@pytest.mark.parametrize("method", APPROX)
def test_every_method_accepts_n_workers(method):
    # callers pass n_workers uniformly; vectorised solvers ignore it, results do not change
    rng = np.random.default_rng(15)
    a, _, _ = relu_affinity(rng, 3, 20, 4)
    np.testing.assert_array_equal(solve_assignment(a, method, n_workers=2),
                                  solve_assignment(a, method, n_workers=1))


def test_assignment_objective_plain_reference():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(3, 7, 7))
    p = np.stack([rng.permutation(7) for _ in range(3)])
    obj = assignment_objective(a, p)
    assert obj.dtype == np.float64 and obj.shape == (3,)
    for b in range(3):
        assert obj[b] == pytest.approx(plain_objective(a[b], p[b]), abs=1e-12)
    assert float(assignment_objective(a[0], p[0])) == pytest.approx(plain_objective(a[0], p[0]))


# ------------------------------------------------------------------------------ bad input


def test_unknown_method_lists_valid_names():
    valid = "valid methods are: auto, exact, batched, auction, batch_optimal, greedy"
    with pytest.raises(ValueError, match=valid):
        solve_assignment(np.eye(3), "hungarian")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(bad):
    a = np.eye(4)
    a[2, 1] = bad
    with pytest.raises(ValueError, match=r"affinity contains NaN or Inf \(first at \[2, 1\]"):
        solve_assignment(a)
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve_assignment(torch.tensor(a)[None], "greedy")


def test_half_precision_tensors_accepted_complex_rejected():
    a = torch.eye(5, dtype=torch.bfloat16) * 3
    np.testing.assert_array_equal(solve_assignment(a, "auction"), np.arange(5))
    np.testing.assert_array_equal(solve_assignment(a.half(), "exact"), np.arange(5))
    with pytest.raises(TypeError, match="real-valued"):
        solve_assignment(torch.eye(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="real-valued"):
        solve_assignment(np.eye(3) * 1j)


def test_non_square_and_bad_ndim_rejected():
    with pytest.raises(ValueError, match="must be square"):
        solve_assignment(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"shape \[S, S\] or \[B, S, S\]"):
        solve_assignment(np.zeros(5))
    with pytest.raises(ValueError, match=r"shape \[S, S\] or \[B, S, S\]"):
        solve_assignment(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="S >= 1"):
        solve_assignment(np.zeros((2, 0, 0)))


def test_bad_options_rejected():
    with pytest.raises(TypeError, match="unknown option"):
        solve_assignment(np.eye(3), "greedy", k=3)
    with pytest.raises(ValueError, match="k .*positive integer"):
        solve_assignment(np.eye(3), "batch_optimal", k=0)
    with pytest.raises(ValueError, match="row_norms must have shape"):
        solve_assignment(np.eye(3), "batch_optimal", row_norms=np.ones(4))
    with pytest.raises(ValueError, match=r"rel_tol \(auction option\) must be a number > 0"):
        solve_assignment(np.eye(3), "auction", rel_tol=0)
    with pytest.raises(ValueError, match=r"theta \(auction option\) must be a number in \(0, 1"):
        solve_assignment(np.eye(3), "auction", theta=1.5)
    with pytest.raises(ValueError, match="max_phases"):
        solve_assignment(np.eye(3), "auction", max_phases=0)
    with pytest.raises(ValueError, match="n_workers"):
        solve_assignment(np.eye(3)[None].repeat(2, 0), "exact", n_workers=0)


def test_assignment_objective_bad_perm():
    with pytest.raises(ValueError, match="perm must have shape"):
        assignment_objective(np.eye(3), np.arange(4))
    with pytest.raises(ValueError, match="perm entries"):
        assignment_objective(np.eye(3), np.array([0, 1, 3]))


def test_exact_time_estimate_and_feasibility_check():
    t_small = estimate_exact_seconds(196)
    t_big = estimate_exact_seconds(3136)
    assert 0 < t_small < t_big
    # cubic growth: 16x the positions costs between 16^2 and 16^3 times more
    assert 16**2 < t_big / t_small <= 16**3
    assert estimate_exact_seconds(196, B=100, n_workers=2) == pytest.approx(50 * t_small)
    assert check_exact_feasible(196, 10) == pytest.approx(estimate_exact_seconds(196, 10))
    with pytest.raises(ValueError, match="S .*positive integer"):
        estimate_exact_seconds(0)
    with pytest.raises(ValueError, match="B .*non-negative integer"):
        check_exact_feasible(196, -1)
    msg = r"would take about [0-9.]+ (h|days).*approximate matching.*auction.*greedy"
    with pytest.raises(ValueError, match=msg):
        check_exact_feasible(3136, 100_000, max_seconds=3600)

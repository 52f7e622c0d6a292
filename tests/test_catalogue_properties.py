"""Registry properties of the ReSi-catalogue measures, checked directly on each entry.

For every registered measure of the catalogue families: the identity value, symmetry, every
declared invariance (and that every *undeclared* one really changes the value, so the
declarations are neither too weak nor too strong), the value range, and that the prepare/score
split and the all-pairs form give the plain function's value.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simtorch_semantic.functional.registry import INVARIANCES, describe_measure, get_measure, list_measures

FAMILIES = {"alignment", "neighbors", "rsm_measures", "statistics", "topology"}
NAMES = [m for m in list_measures() if get_measure(m).family in FAMILIES]
OUTPUT_NAMES = [m for m in list_measures() if get_measure(m).family == "outputs"]


def test_catalogue_is_complete():
    expected = {
        "aligned_cosine", "hard_correlation_match", "soft_correlation_match", "linear_regression",
        "permutation_procrustes", "procrustes_size_shape", "shape_metric", "soft_matching",
        "jaccard_knn", "mutual_knn", "cknna", "rank_similarity", "second_order_cosine",
        "rsm_norm_difference", "distance_correlation", "eigenspace_overlap", "gulp",
        "magnitude_difference", "concentricity_difference", "uniformity_difference", "imd", "rtd",
    }
    assert expected == set(NAMES)
    assert set(OUTPUT_NAMES) == {"jensen_shannon", "disagreement", "accuracy_difference"}
    for name in NAMES + OUTPUT_NAMES:
        d = describe_measure(name)
        assert d["paper"] and d["description"]
        assert d["value_range"][0] <= d["identical_value"] <= d["value_range"][1]


def _pair(seed=0, n=40, p=6, q=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + rng.normal(size=p)
    Y = np.tanh(X @ rng.normal(size=(p, q))) + 0.3 * rng.normal(size=(n, q))
    return X, Y


def _transforms(p, seed=1):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(p, p)))[0]
    A = rng.normal(size=(p, p)) + 2 * np.eye(p)
    b = 5 * rng.normal(size=p)
    perm = rng.permutation(p)
    return {
        "permutation": lambda X: X[:, perm],
        "orthogonal": lambda X: X @ Q,
        "isotropic_scaling": lambda X: 3.7 * X,
        "translation": lambda X: X + b,
        "invertible_linear": lambda X: X @ A,
    }


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_identity_symmetry_range(name):
    spec = get_measure(name)
    X, Y = _pair()
    same = spec.fn(X, X.copy())
    assert same == pytest.approx(spec.identical_value, abs=1e-6)
    v = spec.fn(X, Y)
    lo, hi = spec.value_range
    assert lo - 1e-12 <= v <= hi + 1e-12
    if spec.symmetric:
        assert spec.fn(Y, X) == pytest.approx(v, rel=1e-8, abs=1e-10)
    else:
        assert not _close(spec.fn(Y, X), v), f"{name} is declared asymmetric but is symmetric here"


@pytest.mark.parametrize("name", NAMES)
def test_declared_invariances_hold_and_others_do_not(name):
    spec = get_measure(name)
    X, Y = _pair()
    base = spec.fn(X, Y)
    for inv, T in _transforms(X.shape[1]).items():
        got = spec.fn(T(X), Y)
        if inv in spec.invariances:
            assert _close(got, base), f"{name} declares {inv} invariance: {got} != {base}"
        else:
            assert not _close(got, base), f"{name} does not declare {inv} but is invariant to it"


@pytest.mark.parametrize("name", NAMES)
def test_prepare_score_and_all_pairs_agree_with_fn(name):
    spec = get_measure(name)
    if spec.prepare is None:
        pytest.skip(f"{name} is scored pair by pair with fn")
    xs = [_pair(s)[0] for s in range(2)]
    ys = [_pair(s)[1] for s in range(3)]
    opts = dict(spec.options)
    pxs = [spec.prepare(x, **opts) for x in xs]
    pys = [spec.prepare(y, **opts) for y in ys]
    for a, x in enumerate(xs):
        for b, y in enumerate(ys):
            assert spec.score(pxs[a], pys[b], **opts) == pytest.approx(spec.fn(x, y, **opts), rel=1e-9, abs=1e-12)
    if spec.score_all_pairs is not None:
        M = spec.score_all_pairs(pxs, pys, **opts)
        assert M.shape == (2, 3)
        for a, x in enumerate(xs):
            for b, y in enumerate(ys):
                assert M[a, b] == pytest.approx(spec.fn(x, y, **opts), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_torch_and_numpy_inputs_agree(name):
    spec = get_measure(name)
    X, Y = _pair(3, n=30)
    want = spec.fn(X, Y)
    got = spec.fn(torch.as_tensor(X).reshape(30, 2, 3), torch.as_tensor(Y))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert isinstance(got, float)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0), name=st.sampled_from(
    [m for m in NAMES if m not in ("rtd", "imd", "soft_matching")]))
def test_invariances_hypothesis(seed, scale, name):
    """Declared invariances on random data of random scale (the slower measures are covered above)."""
    spec = get_measure(name)
    X, Y = _pair(seed, n=25)
    X, Y = X * scale, Y * scale
    base = spec.fn(X, Y)
    for inv, T in _transforms(X.shape[1], seed + 1).items():
        if inv in spec.invariances:
            assert math.isclose(spec.fn(T(X), Y), base, rel_tol=1e-6, abs_tol=1e-8)


@pytest.mark.parametrize("name", OUTPUT_NAMES)
def test_output_measures_identity_and_symmetry(name):
    spec = get_measure(name)
    assert spec.inputs == "outputs" and spec.invariances == frozenset()
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    opts = {"labels": rng.integers(0, 4, 30)} if "labels" in spec.options else {}
    assert spec.fn(A, A.copy(), **opts) == pytest.approx(spec.identical_value, abs=1e-15)
    assert spec.fn(A, B, **opts) == pytest.approx(spec.fn(B, A, **opts))
    pa, pb = spec.prepare(A, **opts), spec.prepare(B, **opts)
    assert spec.score(pa, pb, **opts) == pytest.approx(spec.fn(A, B, **opts))


def test_invariance_vocabulary():
    for name in NAMES:
        assert set(get_measure(name).invariances) <= set(INVARIANCES)

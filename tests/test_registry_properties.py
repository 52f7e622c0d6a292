"""Properties generated from the measure registry: every registered representation measure.

For each measure of ``list_measures()`` (including measures registered later) with
``inputs == "representations"``:

- every declared invariance (permutation, orthogonal, isotropic scaling, translation, invertible
  linear map of X's features) leaves the value unchanged (hypothesis draws the data and the
  transformation; few examples, small data);
- ``fn(X, X)`` is the declared ``identical_value``; symmetric measures are symmetric; values lie in
  the declared ``value_range``;
- the split protocol agrees with ``fn``: ``score(prepare(X), prepare(Y))`` and ``score_all_pairs``;
- degenerate input (constant X, rank-1 X) gives a clear ``ValueError`` or NaN with exactly ONE
  ``RuntimeWarning``; one sample gives a ``ValueError``, and so do mismatched sample counts for
  ``paired`` measures.

Measures that take spatial input (``spatial_input``) get ``[n, C, H, W]`` data, transformed along
the channel axis. Measures on model outputs are skipped here (their own tests cover them).
"""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simtorch_semantic import describe_measure, list_measures
from simtorch_semantic.functional.registry import call_with_options, get_measure

MEASURES = [m for m in list_measures() if describe_measure(m)["inputs"] == "representations"]
INVARIANCE_CASES = [(m, inv) for m in MEASURES for inv in describe_measure(m)["invariances"]]
FEW = settings(max_examples=3, deadline=None, derandomize=True)
ATOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread for these tiny inputs (two threads on a busy 2-core machine make each
    small product ~100x slower); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(spec, seed, n=None):
    """A related pair (X, Y): ``[n, d]`` (or ``[n, C, H, W]`` for spatial-input measures)."""
    rng = np.random.default_rng(seed)
    if spec.spatial_input:
        n = n or 8
        X = rng.standard_normal((n, 3, 2, 2))
        Y = np.concatenate([X, rng.standard_normal((n, 1, 2, 2))], axis=1) * 1.5
        Y = Y + 0.7 * rng.standard_normal(Y.shape)
        return X, Y
    n = n or 40
    X = rng.standard_normal((n, 5)) @ (np.eye(5) + 0.3 * rng.standard_normal((5, 5)))
    width = 5 if spec.equal_widths else 6
    Y = X @ rng.standard_normal((5, width)) + 0.8 * rng.standard_normal((n, width))
    return X, Y


def _features_last(spec, X):
    return np.moveaxis(X, 1, -1) if spec.spatial_input else X


def _features_back(spec, X):
    return np.moveaxis(X, -1, 1) if spec.spatial_input else X


def _transform(spec, X, kind, seed, scale):
    rng = np.random.default_rng(seed + 1)
    F = _features_last(spec, X)
    d = F.shape[-1]
    if kind == "permutation":
        F = F[..., rng.permutation(d)]
    elif kind == "orthogonal":
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        F = F @ Q
    elif kind == "isotropic_scaling":
        F = F * scale
    elif kind == "translation":
        F = F + 3.0 * rng.standard_normal(d)
    elif kind == "invertible_linear":
        Q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
        Q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
        F = F @ (Q1 * rng.uniform(0.5, 2.0, d)) @ Q2
    else:  # pragma: no cover - the registry validates the names
        raise AssertionError(kind)
    return np.ascontiguousarray(_features_back(spec, F))


def _value(spec, X, Y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(call_with_options(spec.fn, X, Y, options=dict(spec.options)))


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= ATOL * max(1.0, abs(b))


@pytest.mark.parametrize("name,invariance", INVARIANCE_CASES)
@FEW
@given(seed=st.integers(0, 2**16), scale=st.floats(0.2, 5.0))
def test_declared_invariances_hold(name, invariance, seed, scale):
    spec = get_measure(name)
    X, Y = _data(spec, seed)
    base = _value(spec, X, Y)
    if not _close(_value(spec, X, Y), base):
        pytest.skip(f"{name} is not deterministic on the same input; invariances cannot be checked")
    moved = _value(spec, _transform(spec, X, invariance, seed, scale), Y)
    assert _close(moved, base), f"{name}: {invariance} of X changed {base} to {moved}"


@pytest.mark.parametrize("name", MEASURES)
@FEW
@given(seed=st.integers(0, 2**16))
def test_identity_symmetry_and_range(name, seed):
    spec = get_measure(name)
    X, Y = _data(spec, seed)
    same = _value(spec, X, X.copy())
    assert abs(same - spec.identical_value) <= 1e-6 * max(1.0, abs(spec.identical_value)), \
        f"{name}(X, X) = {same}, declared identical value {spec.identical_value}"
    xy = _value(spec, X, Y)
    lo, hi = spec.value_range
    assert lo - 1e-9 <= xy <= hi + 1e-9, f"{name} = {xy} outside {spec.value_range}"
    if spec.symmetric:
        assert _close(_value(spec, Y, X), xy), f"{name} is declared symmetric"


@pytest.mark.parametrize("name", MEASURES)
def test_prepare_score_and_all_pairs_agree_with_fn(name):
    spec = get_measure(name)
    if spec.prepare is None:
        pytest.skip(f"{name} has no prepare/score split")
    X, Y = _data(spec, 7)
    _, Z = _data(spec, 8)
    opts = dict(spec.options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        px, py, pz = (call_with_options(spec.prepare, A, options=opts) for A in (X, Y, Z))
        pair = float(call_with_options(spec.score, px, py, options=opts))
        assert _close(pair, _value(spec, X, Y))
        if spec.score_all_pairs is not None:
            M = np.asarray(call_with_options(spec.score_all_pairs, [px, pz], [py, pz, px],
                                             options=opts))
            assert M.shape == (2, 3)
            for i, a in enumerate((px, pz)):
                for j, b in enumerate((py, pz, px)):
                    one = float(call_with_options(spec.score, a, b, options=opts))
                    assert _close(float(M[i, j]), one), f"{name}: all-pairs [{i}, {j}]"


def _nan_or_error(spec, X, Y):
    """A degenerate input must raise ValueError or give NaN with exactly one RuntimeWarning
    (or, for a value that is still defined, a value in range without any warning storm)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(call_with_options(spec.fn, X, Y, options=dict(spec.options)))
        except ValueError as exc:
            assert str(exc), f"{spec.name}: empty error message"
            return "error"
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    if math.isnan(value):
        assert len(runtime) == 1, (f"{spec.name}: NaN needs exactly one RuntimeWarning, got "
                                   f"{[str(w.message) for w in runtime]}")
        return "nan"
    lo, hi = spec.value_range
    assert lo - 1e-9 <= value <= hi + 1e-9
    assert len(runtime) <= 1, f"{spec.name}: {[str(w.message) for w in runtime]}"
    return "value"


@pytest.mark.parametrize("name", MEASURES)
def test_constant_representation_is_an_error_or_one_warning_nan(name):
    spec = get_measure(name)
    X, Y = _data(spec, 3)
    const = np.broadcast_to(X[:1], X.shape).copy()
    assert _nan_or_error(spec, const, Y) in ("error", "nan", "value")


@pytest.mark.parametrize("name", MEASURES)
def test_rank_one_representation_is_handled(name):
    spec = get_measure(name)
    X, Y = _data(spec, 4)
    F = _features_last(spec, X)
    rng = np.random.default_rng(0)
    u = rng.standard_normal(F.shape[:-1] + (1,))
    low = _features_back(spec, u * rng.standard_normal(F.shape[-1]))
    _nan_or_error(spec, np.ascontiguousarray(low), Y)


@pytest.mark.parametrize("name", MEASURES)
def test_too_few_or_mismatched_samples_raise(name):
    spec = get_measure(name)
    X, Y = _data(spec, 5)
    with pytest.raises(ValueError):
        call_with_options(spec.fn, X[:1], Y[:1], options=dict(spec.options))
    if spec.paired:
        with pytest.raises(ValueError):
            call_with_options(spec.fn, X, Y[:-3], options=dict(spec.options))
    else:  # a measure of two distributions: different sample counts are fine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert np.isfinite(float(call_with_options(spec.fn, X, Y[:-3], options=dict(spec.options))))

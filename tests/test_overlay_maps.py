"""Similarity maps (overlay/maps.py) against plain float64 loops, and their properties."""
import math

import numpy as np
import pytest
import torch

from simtorch_semantic.overlay.maps import (flatten_positions, map_index, pack_upper,
                                            pool_activations, quantize_maps, similarity_maps,
                                            similarity_matrix, unpack_upper)


def _acts(n=3, c=5, h=4, w=3, seed=0, relu=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    return a.clamp_min(0) + 0.01 if relu else a


def _loop_maps(acts, sim):
    """Reference: S[a, q, b, p] by four nested Python loops in float64."""
    a = acts.numpy().astype(np.float64)
    n, c, h, w = a.shape
    out = np.zeros((n, h * w, n, h * w))
    for x in range(n):
        for q in range(h * w):
            u = a[x, :, q // w, q % w]
            for y in range(n):
                for p in range(h * w):
                    v = a[y, :, p // w, p % w]
                    out[x, q, y, p] = sim(u, v)
    return out


def _cos(u, v):
    return float(np.dot(u, v) / (math.sqrt(np.dot(u, u)) * math.sqrt(np.dot(v, v))))


def test_cosine_maps_match_loop():
    acts = _acts()
    S = similarity_maps(acts)
    assert S.shape == (3, 12, 3, 12) and S.dtype == torch.float64
    np.testing.assert_allclose(S.numpy(), _loop_maps(acts, _cos), atol=1e-12)


def test_cosine_maps_float32_input_and_numpy():
    acts = _acts()
    S32 = similarity_maps(acts.float())
    Snp = similarity_maps(acts.numpy())
    np.testing.assert_allclose(S32.numpy(), _loop_maps(acts, _cos), atol=1e-6)
    np.testing.assert_allclose(Snp.numpy(), _loop_maps(acts, _cos), atol=1e-12)


def test_inner_product_and_rbf_match_loop():
    acts = _acts(n=2, c=4, h=3, w=3, seed=1)
    np.testing.assert_allclose(similarity_maps(acts, "ip").numpy(),
                               _loop_maps(acts, lambda u, v: float(np.dot(u, v))), atol=1e-10)
    sigma = 1.7
    ref = _loop_maps(acts, lambda u, v: math.exp(-float(np.sum((u - v) ** 2)) / (2 * sigma ** 2)))
    np.testing.assert_allclose(similarity_maps(acts, "rbf", sigma=sigma).numpy(), ref, atol=1e-10)


def test_rbf_default_bandwidth_is_median_distance():
    acts = _acts(n=2, c=4, h=2, w=2, seed=2)
    Z = flatten_positions(acts).numpy()
    d2 = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    sigma2 = np.median(d2[d2 > 0])
    ref = np.exp(-d2 / (2 * sigma2))
    np.testing.assert_allclose(similarity_maps(acts, "rbf").reshape(8, 8).numpy(), ref, atol=1e-10)


def test_callable_similarity():
    acts = _acts(n=2, c=3, h=2, w=2)
    S = similarity_maps(acts, lambda X, Y: -torch.cdist(X, Y))
    ref = _loop_maps(acts, lambda u, v: -float(np.linalg.norm(u - v)))
    np.testing.assert_allclose(S.numpy(), ref, atol=1e-10)


def test_self_similarity_is_one_at_query():
    acts = _acts(n=4, c=6, h=5, w=5, seed=3)
    S = similarity_maps(acts)
    for a in range(4):
        diag = torch.diagonal(S[a, :, a, :])
        torch.testing.assert_close(diag, torch.ones_like(diag), atol=1e-12, rtol=0)
    assert float(S.max()) <= 1.0 and float(S.min()) >= -1.0


def test_symmetry_a_to_b_equals_b_to_a():
    acts = _acts(n=3, c=6, h=4, w=4, seed=4)
    S = similarity_maps(acts)
    torch.testing.assert_close(S, S.permute(2, 3, 0, 1), atol=1e-14, rtol=0)
    # a(q -> p) = b(p -> q) for one explicit pair
    assert S[0, 5, 2, 7] == pytest.approx(float(S[2, 7, 0, 5]), abs=1e-14)


def test_flatten_positions_order():
    acts = _acts(n=2, c=3, h=2, w=3)
    Z = flatten_positions(acts)
    assert Z.shape == (12, 3)
    torch.testing.assert_close(Z[1 * 6 + 1 * 3 + 2], acts[1, :, 1, 2])


def test_zero_vector_has_zero_cosine():
    acts = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    acts[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    S = similarity_maps(acts)
    assert float(S[0, 0, 0, 0]) == pytest.approx(1.0)
    assert float(S[0, 1, 0, 1]) == 0.0


def test_quantize_roundtrip_error_bound():
    S = similarity_maps(_acts(seed=5))
    q, lo, hi = quantize_maps(S)
    assert q.dtype == np.uint8 and q.size == S.numel()
    assert lo == pytest.approx(float(S.min())) and hi == pytest.approx(float(S.max()))
    dec = lo + q.astype(np.float64) * (hi - lo) / 255.0
    assert np.max(np.abs(dec - S.numpy().ravel())) <= (hi - lo) / 510 + 1e-12
    assert q.min() == 0 and q.max() == 255


def test_quantize_constant_maps():
    q, lo, hi = quantize_maps(torch.full((2, 2), 0.5))
    assert hi > lo and np.all(q == 0)


def test_map_index_between_resolutions():
    assert map_index(0, 0, (28, 28), (7, 7)) == (0, 0)
    assert map_index(27, 27, (28, 28), (7, 7)) == (6, 6)
    assert map_index(13, 14, (28, 28), (14, 14)) == (6, 7)
    assert map_index(3, 1, (7, 7), (28, 28)) == (14, 6)  # centre 3.5/7 -> 14
    with pytest.raises(ValueError, match="outside the 7 x 7 grid"):
        map_index(7, 0, (7, 7), (14, 14))


def test_pool_activations():
    a = torch.arange(2 * 1 * 8 * 4, dtype=torch.float64).reshape(2, 1, 8, 4)
    p = pool_activations(a, 4)
    assert p.shape == (2, 1, 4, 2)
    torch.testing.assert_close(p[0, 0, 0, 0], a[0, 0, :2, :2].mean())
    assert pool_activations(a, None) is a
    assert pool_activations(a, 8) is a
    with pytest.raises(ValueError, match="max_side must be a positive integer"):
        pool_activations(a, 0)


@pytest.mark.parametrize("bad, err, match", [
    (torch.zeros(3, 4), ValueError, r"shape \[N, C, H, W\]"),
    ([1, 2, 3], TypeError, "torch.Tensor or numpy array"),
    (torch.full((1, 2, 2, 2), float("nan")), ValueError, "NaN or Inf"),
])
def test_bad_activations(bad, err, match):
    with pytest.raises(err, match=match):
        similarity_maps(bad)


def test_bad_similarity_name_and_callable_shape():
    acts = _acts(n=1, c=2, h=2, w=2)
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity_maps(acts, "euclid")
    with pytest.raises(ValueError, match=r"must return a \[M, M\] matrix"):
        similarity_maps(acts, lambda X, Y: X)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        similarity_matrix(torch.ones(3, 2), "rbf", sigma=0.0)


def test_too_many_entries_is_a_clear_error(monkeypatch):
    import simtorch_semantic.overlay.maps as maps

    monkeypatch.setattr(maps, "MAX_ENTRIES", 100)
    with pytest.raises(ValueError, match="pool the layer to a smaller grid"):
        maps.similarity_maps(_acts(n=2, c=2, h=4, w=4))


def test_pack_upper_layout_and_roundtrip():
    m = 7
    a = np.arange(m * m).reshape(m, m)
    a = a + a.T
    packed = pack_upper(a, m)
    assert packed.size == m * (m + 1) // 2
    for r in range(m):
        for c in range(r, m):
            assert packed[r * m - r * (r - 1) // 2 + (c - r)] == a[r, c]
    np.testing.assert_array_equal(unpack_upper(packed, m), a)
    with pytest.raises(ValueError, match="expected m"):
        unpack_upper(packed[:-1], m)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_cosine_map_properties(n, c, h, w, seed, scale):
    """Symmetric, 1 on the diagonal, within [-1, 1], invariant to a positive scale of the
    activations and to a permutation of the channels."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) + 0.05
    S = similarity_maps(acts)
    M = S.reshape(n * h * w, n * h * w)
    torch.testing.assert_close(M, M.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.diagonal(M), torch.ones(n * h * w, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert float(M.abs().max()) <= 1.0
    torch.testing.assert_close(similarity_maps(acts * scale), S, atol=1e-12, rtol=0)
    perm = torch.randperm(c, generator=g)
    torch.testing.assert_close(similarity_maps(acts[:, perm]), S, atol=1e-12, rtol=0)

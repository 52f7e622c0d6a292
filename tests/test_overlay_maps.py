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


# ---------------------------------------------------------------- features for the browser
from simtorch_semantic.overlay.maps import encode_features, rbf_sigma2, value_range  # noqa: E402


def _np_unit(Z):
    n = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(n > 0, n, 1.0)


def _np_positions(acts):
    a = np.asarray(acts, dtype=np.float64)
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def test_encode_int8_codes_norms_and_bound_against_numpy():
    acts = _acts(n=2, c=6, h=3, w=4, seed=3)
    enc = encode_features(acts)
    Z = _np_positions(acts.numpy())
    U = _np_unit(Z)
    ref_codes = np.rint(127 * U / np.abs(U).max(axis=1, keepdims=True))
    assert enc.values.dtype == np.int8 and enc.values.shape == (24, 6)
    assert np.abs(enc.values - ref_codes).max() <= 1
    np.testing.assert_allclose(enc.norms, np.linalg.norm(Z, axis=1), rtol=1e-6)
    D = _np_unit(enc.values.astype(np.float64))
    np.testing.assert_allclose(enc.decoded(), D, atol=1e-12)
    # each row's angle is the angle between the exact and the decoded direction
    ang = np.arccos(np.clip((U * D).sum(1), -1, 1))
    np.testing.assert_allclose(enc.angles, ang, atol=2e-4)
    th = np.sort(ang)
    err = np.abs(D @ D.T - U @ U.T).max()
    assert err <= enc.error_bound() <= th[-1] + th[-2] + 1e-3
    assert not enc.nonnegative and value_range(enc) == (-1.0, 1.0)


def test_encode_float16_and_projection():
    acts = _acts(n=2, c=8, h=3, w=3, seed=4, relu=True)
    f16 = encode_features(acts, precision="float16")
    assert f16.values.dtype == np.float16 and f16.error_bound() < 2e-3
    assert f16.nonnegative and value_range(f16) == (0.0, 1.0)
    # rank-3 data: projecting on 3 directions loses nothing but rounding
    g = torch.Generator().manual_seed(1)
    low = torch.einsum("nkhw,kc->nchw", torch.rand(2, 3, 3, 3, generator=g, dtype=torch.float64),
                       torch.rand(3, 8, generator=g, dtype=torch.float64))
    enc = encode_features(low, dims=3)
    assert enc.values.shape == (18, 3) and enc.basis.shape == (8, 3)
    U = _np_unit(_np_positions(low.numpy()))
    np.testing.assert_allclose(enc.basis.T @ enc.basis, np.eye(3), atol=1e-10)
    D = enc.decoded()
    assert np.abs(D @ D.T - U @ U.T).max() <= enc.error_bound() < 0.05
    # projecting full-rank data on 2 of 8 directions: the bound still holds (and is large)
    enc2 = encode_features(acts, dims=2)
    U2 = _np_unit(_np_positions(acts.numpy()))
    assert np.abs(enc2.decoded() @ enc2.decoded().T - U2 @ U2.T).max() <= enc2.error_bound()


def test_encode_zero_vectors_and_ranges():
    acts = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    acts[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    acts[0, :, 1, 1] = torch.tensor([3.0, 0.0, 1.0])
    enc = encode_features(acts)
    assert (enc.values[1] == 0).all() and enc.angles[1] == 0.0
    D = enc.decoded()
    assert (D @ D.T)[1, 0] == 0.0                     # zero vector: cosine 0, as similarity_maps
    assert value_range(enc, "ip") == (0.0, pytest.approx(14.0))
    assert value_range(enc, "rbf") == (0.0, 1.0)
    from scipy.spatial.distance import pdist

    d2 = pdist(_np_positions(acts.numpy()), "sqeuclidean")
    assert rbf_sigma2(_np_positions(acts.numpy())) == pytest.approx(np.median(d2[d2 > 0]))
    assert np.median(d2[d2 > 0]) == 12.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(precision="int4"), "precision must be one of"),
    (dict(dims=0), "dims must be a positive int"),
    (dict(dims=2.5), "dims must be a positive int"),
])
def test_encode_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        encode_features(_acts(), **kwargs)


def test_encode_bad_activations():
    with pytest.raises(ValueError, match=r"shape \[N, C, H, W\]"):
        encode_features(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode_features(torch.full((1, 2, 2, 2), float("inf")))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 40), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 10_000), precision=st.sampled_from(["int8", "float16"]),
       relu=st.booleans())
def test_encoded_cosines_stay_within_the_stated_bound(n, c, h, w, seed, precision, relu):
    acts = _acts(n=n, c=c, h=h, w=w, seed=seed, relu=relu)
    enc = encode_features(acts, precision=precision)
    U = _np_unit(_np_positions(acts.numpy()))
    D = enc.decoded()
    assert np.abs(D @ D.T - U @ U.T).max() <= enc.error_bound() + 1e-12
    for sim in ("ip", "rbf"):
        Z = _np_positions(acts.numpy())
        nz = np.linalg.norm(Z, axis=1)
        ip = (D @ D.T) * np.outer(nz, nz)
        if sim == "ip":
            assert np.abs(ip - Z @ Z.T).max() <= enc.error_bound("ip") + 1e-9
        else:
            sq = nz ** 2
            s2 = 1.3
            got = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * ip, 0) / (2 * s2))
            ref = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0) / (2 * s2))
            assert np.abs(got - ref).max() <= enc.error_bound("rbf", s2) + 1e-9

"""Tests of measures/semantic.py (SemanticCKA) and its RSM -> CKA core."""
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch_semantic.functional.cka import linear_cka
from simtorch_semantic.functional.semantic import semantic_sim_parallel, similarity_calculation
from simtorch_semantic.measures.semantic import SemanticCKA, psd_clip, rsm_cka_matrix
from simtorch_semantic.model import SimilarityModel

N = 10


# ----------------------------------------------------------------------------- plain references


def ref_cka_biased(K, L):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda A, B: np.trace(A @ H @ B @ H) / (n - 1) ** 2  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def ref_cka_unbiased(K, L):
    """Song et al. (2012) unbiased HSIC, written out term by term."""
    n = K.shape[0]

    def hsic(A, B):
        A = A.copy()
        B = B.copy()
        np.fill_diagonal(A, 0)
        np.fill_diagonal(B, 0)
        one = np.ones(n)
        t1 = np.trace(A @ B)
        t2 = (one @ A @ one) * (one @ B @ one) / ((n - 1) * (n - 2))
        t3 = 2.0 / (n - 2) * (one @ A @ B @ one)
        return (t1 + t2 - t3) / (n * (n - 3))

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def ref_semantic_ip_rsm(act):
    """act [N, C, H, W] -> plain per-pair semantic ip RSM (scipy, float64)."""
    v = act.reshape(act.shape[0], act.shape[1], -1).transpose(0, 2, 1).astype(np.float64)
    n = v.shape[0]
    K = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            r, c = linear_sum_assignment(v[i] @ v[j].T, maximize=True)
            K[i, j] = np.sum(v[i][r] * v[j][c])
    return K


class Roll(nn.Module):
    """Circularly shifts each sample's map by its own offset: same content, other positions."""

    def forward(self, x):
        g = torch.Generator().manual_seed(int(x.shape[0]))
        return torch.stack([torch.roll(s, shifts=tuple(torch.randint(0, 6, (2,), generator=g).tolist()),
                                       dims=(1, 2)) for s in x])


def convnet(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).double()


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    X = torch.randn(N, 3, 6, 6, dtype=torch.float64)
    return X, DataLoader(TensorDataset(X), batch_size=4)


def relu_layers(model):
    return [k for k, m in model.named_modules() if isinstance(m, nn.ReLU)]


# ----------------------------------------------------------------------------- core


def test_rsm_cka_matrix_matches_plain_cka():
    rng = np.random.default_rng(0)
    Ks = [semantic_sim_parallel(rng.standard_normal((9, 3, 4)), kernel=k, progress=False)
          for k in ("ip", "cosine")]
    Ls = [semantic_sim_parallel(np.maximum(rng.standard_normal((9, 2, 5)), 0), kernel=k,
                                progress=False) for k in ("ip", "rbf", "cosine")]
    got = rsm_cka_matrix(Ks, Ls)
    want = np.array([[ref_cka_biased(K, L) for L in Ls] for K in Ks])
    np.testing.assert_allclose(got, want, rtol=1e-10)
    got_u = rsm_cka_matrix(Ks, Ls, unbiased=True)
    want_u = np.array([[ref_cka_unbiased(K, L) for L in Ls] for K in Ks])
    np.testing.assert_allclose(got_u, want_u, rtol=1e-9)
    got_c = rsm_cka_matrix(Ks, Ls, psd="clip")
    want_c = np.array([[ref_cka_biased(psd_clip(K), psd_clip(L)) for L in Ls] for K in Ks])
    np.testing.assert_allclose(got_c, want_c, rtol=1e-10)
    assert np.all(got_c >= -1e-12) and np.all(got_c <= 1 + 1e-12)


def test_psd_clip_is_nearest_psd():
    rng = np.random.default_rng(1)
    K = semantic_sim_parallel(rng.standard_normal((8, 2, 3)), progress=False)
    w = np.linalg.eigvalsh(K)
    assert w[0] < -1e-6 * np.abs(w).max()  # the semantic ip RSM of this set is indefinite
    P = psd_clip(K)
    wp, V = np.linalg.eigh(K)
    np.testing.assert_allclose(P, V @ np.diag(np.maximum(wp, 0)) @ V.T, atol=1e-12)
    assert np.linalg.eigvalsh(P)[0] >= -1e-10
    A = rng.standard_normal((6, 3))
    np.testing.assert_allclose(psd_clip(A @ A.T), A @ A.T, atol=1e-12)  # PSD unchanged


# ----------------------------------------------------------------------------- the measure


def test_measure_matches_plain_reference(data):
    X, loader = data
    m1 = SimilarityModel(convnet(1), model_name="A", layers_to_include=relu_layers(convnet(1)))
    m2 = SimilarityModel(convnet(2), model_name="B", layers_to_include=relu_layers(convnet(2)))
    res = SemanticCKA(m1, m2, kernel="ip").compute(loader, progress=False)
    acts1 = {k: v.numpy() for k, v in m1.capture(X).items()}
    acts2 = {k: v.numpy() for k, v in m2.capture(X).items()}
    Ks = [ref_semantic_ip_rsm(a) for a in acts1.values()]
    Ls = [ref_semantic_ip_rsm(a) for a in acts2.values()]
    want = np.array([[ref_cka_biased(K, L) for L in Ls] for K in Ks])
    np.testing.assert_allclose(res.matrix, want, rtol=1e-9)
    assert res.measure == "semantic_cka" and res.n_samples == N
    assert res.row_layers == m1.layers and res.col_layers == m2.layers
    assert res.params["kernel"] == "linear" and res.params["matching"] == "auto"  # "ip" renamed
    assert res.params["baseline"] is False and res.params["psd"] is None


def test_baseline_ip_equals_linear_cka(data):
    X, loader = data
    m1 = SimilarityModel(convnet(1), model_name="A", layers_to_include=relu_layers(convnet(1)))
    m2 = SimilarityModel(convnet(3), model_name="C")
    res = SemanticCKA(m1, m2, kernel="ip", baseline=True).compute(loader, progress=False)
    a1 = m1.capture(X)
    a2 = m2.capture(X)
    want = np.array([[linear_cka(a.reshape(N, -1), b.reshape(N, -1)) for b in a2.values()]
                     for a in a1.values()])
    np.testing.assert_allclose(res.matrix, want, rtol=1e-9, atol=1e-12)
    assert res.params["baseline"] is True


@pytest.mark.parametrize("kernel", ["rbf", "ip", "cosine"])
def test_self_comparison_symmetric_unit_diagonal_and_fallback_notes(data, kernel):
    _, loader = data
    m = SimilarityModel(convnet(4), model_name="net")
    res = SemanticCKA(m, m, kernel=kernel).compute(loader, progress=False)
    M = res.matrix
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-12)
    notes = " | ".join(res.notes)
    assert "net.4: a single position (S = 1)" in notes           # (n, 5, 1, 1) after pooling
    assert "net.5: output (5,) has no spatial extent" in notes    # Flatten
    assert "net.6: output (4,) has no spatial extent" in notes    # Linear
    # the fallback layers' RSMs are the baseline ones: same entries as with baseline=True
    base = SemanticCKA(m, m, kernel=kernel, baseline=True).compute(loader, progress=False)
    np.testing.assert_allclose(M[4:, 4:], base.matrix[4:, 4:], atol=1e-12)


def test_semantic_cka_ignores_spatial_shifts_baseline_does_not(data):
    X, loader = data
    torch.manual_seed(5)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).double()
    shifted = nn.Sequential(conv, Roll())
    m1 = SimilarityModel(conv, model_name="plain", layers_to_include=["1"])
    m2 = SimilarityModel(shifted, model_name="shifted", layers_to_include=["1"])
    for kernel in ("ip", "cosine", "rbf"):
        sem = SemanticCKA(m1, m2, kernel=kernel).compute(loader, progress=False)
        assert sem.matrix[0, 0] == pytest.approx(1.0, abs=1e-12)
        base = SemanticCKA(m1, m2, kernel=kernel, baseline=True).compute(loader, progress=False)
        assert base.matrix[0, 0] < 0.99


def test_indefinite_rsm_note_and_clip(data):
    torch.manual_seed(6)
    X = torch.randn(8, 2, 1, 3, dtype=torch.float64)  # S = 3 positions, C = 2 channels
    loader = DataLoader(TensorDataset(X), batch_size=8)
    ident = nn.Sequential(nn.Identity())
    m = SimilarityModel(ident, model_name="id", layers_to_include=["0"])
    res = SemanticCKA(m, m, kernel="ip").compute(loader, progress=False)
    assert any("not positive semi-definite" in n for n in res.notes)
    clipped = SemanticCKA(m, m, kernel="ip", psd="clip").compute(loader, progress=False)
    assert not any("not positive semi-definite" in n for n in clipped.notes)
    assert clipped.matrix[0, 0] == pytest.approx(1.0)


def test_unbiased_and_approximate_matching_options(data):
    X, loader = data
    m1 = SimilarityModel(convnet(1), model_name="A", layers_to_include=relu_layers(convnet(1)))
    m2 = SimilarityModel(convnet(2), model_name="B", layers_to_include=relu_layers(convnet(2)))
    res = SemanticCKA(m1, m2, kernel="ip", unbiased=True).compute(loader, progress=False)
    acts1 = {k: v.numpy() for k, v in m1.capture(X).items()}
    acts2 = {k: v.numpy() for k, v in m2.capture(X).items()}
    Ks = [ref_semantic_ip_rsm(a) for a in acts1.values()]
    Ls = [ref_semantic_ip_rsm(a) for a in acts2.values()]
    want = np.array([[ref_cka_unbiased(K, L) for L in Ls] for K in Ks])
    np.testing.assert_allclose(res.matrix, want, rtol=1e-8)
    bo = SemanticCKA(m1, m2, kernel="ip", matching="batch_optimal", k=4)
    r = bo.compute(loader, progress=False)
    assert r.params["k"] == 4 and r.params["matching"] == "batch_optimal"
    assert np.all(np.isfinite(r.matrix))


def test_constant_layer_gives_nan_and_note():
    X = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    loader = DataLoader(TensorDataset(X), batch_size=6)

    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    net = nn.Sequential(nn.Identity(), Zero())
    m = SimilarityModel(net, model_name="z", layers_to_include=["0", "1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = SemanticCKA(m, m, kernel="ip").compute(loader, progress=False)
    assert np.isnan(res.matrix[1]).all() and np.isnan(res.matrix[:, 1]).all()
    assert res.matrix[0, 0] == pytest.approx(1.0)
    # one note (and one warning) for the run, the layer named once although both sides hold it
    constant = [n for n in res.notes if "semantic RSM after centring" in n]
    assert constant == ["layer '1' of z is constant in its semantic RSM after centring (or of "
                        "non-positive self-HSIC): its semantic_cka is undefined and set to NaN"]
    assert sum("semantic RSM after centring" in str(w.message) for w in caught) == 1


def test_bad_arguments(data):
    _, loader = data
    m = SimilarityModel(convnet(1), model_name="A")
    with pytest.raises(ValueError, match=r"unknown kernel 'poly'.*\['linear', 'cosine', 'rbf'\]"):
        SemanticCKA(m, m, kernel="poly")
    with pytest.raises(ValueError, match="unknown matching.*'hungarian'.*'exact'"):
        SemanticCKA(m, m, matching="hungarian")
    with pytest.raises(ValueError, match="psd must be None"):
        SemanticCKA(m, m, psd="abs")
    with pytest.raises(ValueError, match="psd must be None"):
        rsm_cka_matrix([np.eye(3)], [np.eye(3)], psd="abs")
    with pytest.raises(ValueError, match="unknown layout"):
        SemanticCKA(m, m, layout="nhwc")
    with pytest.raises(ValueError, match="n_workers"):
        SemanticCKA(m, m, n_workers=0)
    small = DataLoader(TensorDataset(torch.randn(3, 3, 6, 6, dtype=torch.float64)), batch_size=3)
    with pytest.raises(ValueError, match="at least 4 samples"):
        SemanticCKA(m, m, unbiased=True).compute(small, progress=False)
    with pytest.raises(TypeError, match="SimilarityModel"):
        SemanticCKA(convnet(1), m)


def test_identical_layers_build_one_rsm(data, rsm_calls):
    _, loader = data
    net = convnet(7)
    m1 = SimilarityModel(net, model_name="n", layers_to_include=["1"])
    m2 = SimilarityModel(net, model_name="n", layers_to_include=["1", "3"])
    calls = rsm_calls
    res = SemanticCKA(m1, m2, kernel="ip").compute(loader, progress=False)
    assert len(calls) == 2  # layer "1" once, layer "3" once
    assert res.matrix.shape == (1, 2) and res.matrix[0, 0] == pytest.approx(1.0)


def test_infeasible_exact_refused_at_first_batch():
    net = nn.Sequential(nn.Identity()).double()
    m = SimilarityModel(net, model_name="big", layers_to_include=["0"])
    X = torch.zeros(256, 1, 56, 56, dtype=torch.float64)  # S = 3136, 256 samples planned
    loader = DataLoader(TensorDataset(X), batch_size=8)
    meas = SemanticCKA(m, m, kernel="ip", matching="exact")
    with pytest.raises(ValueError, match=r"(?s)would take about [0-9.]+ (h|days), above max_minutes=60; "
                       r"shrink it with fewer samples .*max_positions=.*big.0 +3136 +1 +32640 +"
                       r"exact"):
        meas.compute(loader, progress=False)
    assert meas._n_batches == 0  # nothing collected


def test_five_d_activations_are_position_sets():
    torch.manual_seed(8)
    X = torch.relu(torch.randn(6, 2, 2, 2, 2, dtype=torch.float64))  # (n, c, d, h, w)
    loader = DataLoader(TensorDataset(X), batch_size=6)
    m = SimilarityModel(nn.Sequential(nn.Identity()), model_name="v", layers_to_include=["0"])
    meas = SemanticCKA(m, m, kernel="ip")
    res = meas.compute(loader, progress=False)
    assert res.matrix[0, 0] == pytest.approx(1.0)
    assert [n for n in res.notes if not n.startswith("matching: ")] == []
    K = meas._rsm("v", "0", X)
    np.testing.assert_allclose(K, semantic_sim_parallel(X.reshape(6, 2, 8), progress=False))

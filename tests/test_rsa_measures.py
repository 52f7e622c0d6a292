"""Tests for the layer x layer measures RSA, Procrustes and CCA (measures/rsa.py, procrustes.py, cca.py)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simtorch_semantic.functional.cca import cca_similarity
from simtorch_semantic.functional.cka import linear_cka
from simtorch_semantic.functional.procrustes import procrustes_angular, procrustes_disparity
from simtorch_semantic.functional.rsa import compare_rdms, rdm
from simtorch_semantic.measures.cca import CCA
from simtorch_semantic.measures.procrustes import Procrustes
from simtorch_semantic.measures.rsa import RSA
from simtorch_semantic.model import SimilarityModel

N = 48


def mlp(seed, widths=(10, 12, 8, 6)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    X = torch.randn(N, 10)
    loader = DataLoader(TensorDataset(X, torch.zeros(N)), batch_size=16)
    m1 = SimilarityModel(mlp(1), model_name="A", layers_to_include=[nn.Linear])
    m2 = SimilarityModel(mlp(2, (10, 7, 5)), model_name="B")
    acts1 = {k: v.double() for k, v in m1.capture(X).items()}
    acts2 = {k: v.double() for k, v in m2.capture(X).items()}
    return loader, m1, m2, acts1, acts2


def expected(acts1, acts2, fn):
    return np.array([[fn(a, b) for b in acts2.values()] for a in acts1.values()])


@pytest.mark.parametrize(
    "metric,method,center",
    [("pearson", "pearson", False), ("L2squared", "cosine", True), ("cosine", "spearman", False),
     ("L2", "kendall", False)],
)
def test_rsa_matches_functional(setup, metric, method, center):
    loader, m1, m2, acts1, acts2 = setup
    res = RSA(m1, m2, metric=metric, method=method, center=center).compute(loader, progress=False)
    want = expected(acts1, acts2, lambda a, b: compare_rdms(rdm(a, metric), rdm(b, metric), method, center))
    assert res.matrix.shape == (3, 4)
    np.testing.assert_allclose(res.matrix, want, atol=1e-10)
    assert res.row_layers == m1.layers and res.col_layers == m2.layers
    assert res.higher_is_similar is True and res.measure == "rsa"
    assert res.params == {"metric": metric, "method": method, "center": center}
    assert res.n_samples == N


def test_centred_rsa_measure_equals_linear_cka(setup):
    loader, m1, m2, acts1, acts2 = setup
    res = RSA(m1, m2, metric="L2squared", method="cosine", center=True).compute(loader, progress=False)
    np.testing.assert_allclose(res.matrix, expected(acts1, acts2, linear_cka), atol=1e-10)


def test_rsa_self_comparison_is_symmetric_with_unit_diagonal(setup):
    loader, m1, _, _, _ = setup
    res = RSA(m1, m1).compute(loader, progress=False)
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.matrix, res.matrix.T, atol=1e-12)


@pytest.mark.parametrize("angular", [False, True])
def test_procrustes_matches_functional(setup, angular):
    loader, m1, m2, acts1, acts2 = setup
    res = Procrustes(m1, m2, angular=angular).compute(loader, progress=False)
    fn = procrustes_angular if angular else procrustes_disparity
    np.testing.assert_allclose(res.matrix, expected(acts1, acts2, fn), atol=1e-10)
    assert res.higher_is_similar is False and res.measure == "procrustes"
    assert res.params == {"angular": angular}
    self_res = Procrustes(m1, m1, angular=angular).compute(loader, progress=False)
    assert np.all(np.abs(np.diag(self_res.matrix)) < 1e-7)


@pytest.mark.parametrize("variant", ["mean_rho", "r2", "svcca", "pwcca"])
def test_cca_matches_functional(setup, variant):
    loader, m1, m2, acts1, acts2 = setup
    res = CCA(m1, m2, variant=variant, keep=0.95).compute(loader, progress=False)
    # the layers are float32: CCA's rank cut-off follows the input's precision, so the reference
    # gets the activations in float32 too (their float64 copies are exact, hence the round trip)
    acts1, acts2 = ({k: v.float() for k, v in a.items()} for a in (acts1, acts2))
    want = expected(acts1, acts2, lambda a, b: cca_similarity(a, b, variant, keep=0.95))
    np.testing.assert_allclose(res.matrix, want, atol=1e-10)
    assert res.higher_is_similar is True and res.measure == "cca"
    assert np.all((res.matrix >= 0) & (res.matrix <= 1))


def test_cca_ridge_and_dims_options(setup):
    loader, m1, m2, acts1, acts2 = setup
    res = CCA(m1, m2, epsilon=0.1, dims=4).compute(loader, progress=False)
    want = expected(acts1, acts2, lambda a, b: cca_similarity(a, b, epsilon=0.1, dims=4))
    np.testing.assert_allclose(res.matrix, want, atol=1e-10)
    assert res.params == {"variant": "mean_rho", "epsilon": 0.1, "dims": 4}


def test_wide_layer_small_n_cca_error_and_dims_path():
    torch.manual_seed(3)
    narrow = SimilarityModel(nn.Sequential(nn.Linear(6, 4), nn.Tanh()), model_name="narrow")
    wide = SimilarityModel(nn.Sequential(nn.Linear(6, 40), nn.Tanh()), model_name="wide",
                           layers_to_include=["1"])
    loader = DataLoader(TensorDataset(torch.randn(20, 6) * 3), batch_size=10)
    # 40 features on n = 20 samples: rank 19 = n - 1, every canonical correlation would be 1
    with pytest.raises(ValueError, match=r"layer '1' of wide has 40 features and rank 19 = n - 1.*dims=k"):
        CCA(narrow, wide).compute(loader, progress=False)
    res = CCA(narrow, wide, dims=4).compute(loader, progress=False)
    assert res.matrix.shape == (2, 1) and np.all(np.isfinite(res.matrix))
    res = CCA(narrow, wide, epsilon=0.5).compute(loader, progress=False)
    assert np.all((res.matrix >= 0) & (res.matrix <= 1))


def test_tiny_torchvision_model_runs():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = tv.models.resnet18(weights=None, num_classes=5)
    m = SimilarityModel(net, model_name="resnet18", layers_to_include=["layer1", "layer4", "fc"])
    loader = DataLoader(TensorDataset(torch.randn(12, 3, 16, 16)), batch_size=12)
    res = RSA(m, m, metric="L2squared", method="cosine", center=True).compute(loader, progress=False)
    assert res.matrix.shape == (3, 3) and np.allclose(np.diag(res.matrix), 1.0)
    pro = Procrustes(m, m, angular=True).compute(loader, progress=False)
    assert np.all(np.abs(np.diag(pro.matrix)) < 1e-6)


def test_constant_layer_gives_nan_and_note():
    class Const(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 3) + 1.0

    net = nn.Sequential(nn.Linear(5, 4), Const())
    m = SimilarityModel(net, model_name="C")
    loader = DataLoader(TensorDataset(torch.randn(12, 5)), batch_size=6)
    for measure in (RSA(m, m, metric="L2"), Procrustes(m, m), CCA(m, m)):
        with pytest.warns(RuntimeWarning, match=r"layer '1' of C"):
            res = measure.compute(loader, progress=False)
        assert np.isnan(res.matrix[1]).all() and np.isnan(res.matrix[:, 1]).all()
        assert np.isfinite(res.matrix[0, 0])
        assert any("'1'" in note for note in res.notes)


def test_constant_pattern_under_pearson_is_noted():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(6, 4) + 0.1)  # positive weights
        net[0].bias.zero_()
    X = torch.randn(12, 4).abs()
    X[3] = -X[3]  # all-negative input -> all-zero (constant) ReLU pattern
    m = SimilarityModel(net, model_name="R", layers_to_include=["1"])
    loader = DataLoader(TensorDataset(X), batch_size=6)
    with pytest.warns(RuntimeWarning, match=r"rows \[3\] of X are constant"):
        res = RSA(m, m, metric="pearson").compute(loader, progress=False)
    assert np.isnan(res.matrix).all()
    assert any("rows [3]" in note for note in res.notes)


def test_measure_bad_arguments(setup):
    _, m1, m2, _, _ = setup
    with pytest.raises(ValueError, match=r"unknown metric 'euclid'.*'pearson'"):
        RSA(m1, m2, metric="euclid")
    with pytest.raises(ValueError, match=r"unknown method 'tau'.*'kendall'"):
        RSA(m1, m2, method="tau")
    with pytest.raises(ValueError, match="center must be True or False"):
        RSA(m1, m2, center="yes")
    with pytest.raises(ValueError, match="angular must be True or False"):
        Procrustes(m1, m2, angular=None)
    with pytest.raises(ValueError, match=r"unknown variant 'svd'.*'pwcca'"):
        CCA(m1, m2, variant="svd")
    with pytest.raises(ValueError, match="keep must be a fraction"):
        CCA(m1, m2, variant="svcca", keep=0)
    with pytest.raises(TypeError, match="must be a SimilarityModel"):
        RSA(m1, "model")


def test_too_few_samples(setup):
    _, m1, m2, _, _ = setup
    loader = DataLoader(TensorDataset(torch.randn(2, 10)), batch_size=2)
    for measure in (RSA(m1, m2), Procrustes(m1, m2), CCA(m1, m2)):
        with pytest.raises(ValueError, match="at least 3 samples"):
            measure.compute(loader, progress=False)


def test_memory_estimate_error(setup):
    loader, m1, m2, _, _ = setup
    with pytest.raises(MemoryError, match="per sample"):
        RSA(m1, m2, max_memory=1000).compute(loader, progress=False)


def test_results_are_plottable_like_cka(setup):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loader, m1, m2, _, _ = setup
    measure = Procrustes(m1, m2, angular=True)
    res = measure.compute(loader, progress=False)
    ax = res.plot(title="procrustes")
    assert ax is not None
    assert measure.plot_similarity(title="again") is not None
    plt.close("all")

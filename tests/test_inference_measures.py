"""Inference options on the measures (issue 11): intervals, p-values, calibrated scores, results
I/O and plots, against plain references written here."""
import json

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from reference import ref_cka_grams, ref_hsic_u, ref_linear_gram  # noqa: E402
from simtorch_semantic import (CCA, CKA, RSA, DeltaCKA, Procrustes, SemanticCKA,  # noqa: E402
                               SimilarityModel, SimilarityResult)
from simtorch_semantic.functional.inference import (bootstrap_counts, bootstrap_indices,  # noqa: E402
                                                    make_generator)
from simtorch_semantic.measures.cka import StreamingCKA  # noqa: E402
from simtorch_semantic.plotting import plot_corresponding_layers  # noqa: E402


class Tiny(nn.Module):
    def __init__(self, seed, width=12):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Linear(6, width)
        self.act = nn.ReLU()
        self.b = nn.Linear(width, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.b(self.act(self.a(x)))


LAYERS = ["a", "act", "b"]


def wrap(model, name):
    return SimilarityModel(model, name, layers_to_include=LAYERS)


def noisy_copy(model, seed, scale=0.05):
    copy = Tiny(0)
    copy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return copy


def acts(model, x):
    out = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, o.detach().double().numpy())) for n in LAYERS]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


@pytest.fixture
def data():
    return torch.randn(96, 6, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- CKA, streaming
def test_streaming_bootstrap_interval_equals_plain_batch_resampling(data):
    m1, m2 = Tiny(1), Tiny(2)
    R, batch = 300, 8
    result = CKA(wrap(m1, "m1"), wrap(m2, "m2"), n_bootstrap=R, seed=3).compute(
        DataLoader(data, batch_size=batch), progress=False)
    a1, a2 = acts(m1, data), acts(m2, data)
    B = len(data) // batch
    xy, xx, yy = np.zeros((B, 3, 3)), np.zeros((B, 3)), np.zeros((B, 3))
    for t in range(B):
        sl = slice(t * batch, (t + 1) * batch)
        K = [ref_linear_gram(a1[l][sl]) for l in LAYERS]
        L = [ref_linear_gram(a2[l][sl]) for l in LAYERS]
        xy[t] = [[ref_hsic_u(k, m) for m in L] for k in K]
        xx[t] = [ref_hsic_u(k, k) for k in K]
        yy[t] = [ref_hsic_u(m, m) for m in L]
    counts = bootstrap_counts(B, R, make_generator(3)[0]).numpy()  # the measure's draws
    reps = np.stack([(c @ xy.reshape(B, -1)).reshape(3, 3) / np.sqrt(np.outer(c @ xx, c @ yy))
                     for c in counts])
    np.testing.assert_allclose(result.ci_low, np.percentile(reps, 2.5, axis=0), rtol=1e-5)
    np.testing.assert_allclose(result.ci_high, np.percentile(reps, 97.5, axis=0), rtol=1e-5)
    assert result.p_value is None and result.calibrated is None
    assert result.params["inference"]["n_bootstrap"] == R
    assert result.params["inference"]["seed"] == 3


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_dependent_models_have_small_p_values(data, estimator):
    m1 = Tiny(1)
    for other in (m1, noisy_copy(m1, 5)):
        result = CKA(wrap(m1, "m1"), wrap(other, "m2"), estimator=estimator, n_permutations=199,
                     seed=0).compute(DataLoader(data, batch_size=16), progress=False)
        diag = np.diag(result.p_value)
        assert np.all(diag < 0.01) and np.all(np.diag(result.p_value_adjusted) < 0.01)
        assert np.all(np.diag(result.calibrated) > 0.5)
        assert result.null_mean.shape == (3, 3)


def test_same_seed_same_result_and_bca(data):
    def run(seed):
        return CKA(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2"), n_bootstrap=50, n_permutations=30,
                   seed=seed, interval="bca").compute(DataLoader(data, batch_size=8), progress=False)
    r1, r2 = run(4), run(4)
    for name in ("ci_low", "ci_high", "p_value", "p_value_adjusted", "null_mean", "calibrated"):
        np.testing.assert_array_equal(getattr(r1, name), getattr(r2, name))
    assert np.all(r1.ci_low <= r1.ci_high)
    fresh = run(None)
    assert isinstance(fresh.params["inference"]["seed"], int)


def test_few_batches_are_noted(data):
    with pytest.warns(RuntimeWarning, match="only 3 were seen"):
        result = CKA(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2"), n_bootstrap=20, seed=0).compute(
            DataLoader(data, batch_size=32), progress=False)
    assert any("resamples whole batches" in note for note in result.notes)


# ----------------------------------------------------------------------------- CKA, full
@pytest.mark.parametrize("unbiased", [False, True])
def test_full_bootstrap_interval_equals_plain_sample_resampling(data, unbiased):
    m1, m2 = Tiny(1), Tiny(2)
    R = 40
    x = data[:40]
    result = CKA(wrap(m1, "m1"), wrap(m2, "m2"), estimator="full", unbiased=unbiased, n_bootstrap=R,
                 seed=9).compute(DataLoader(x, batch_size=16), progress=False)
    a1, a2 = acts(m1, x), acts(m2, x)
    idx = bootstrap_indices(40, R, make_generator(9)[0]).numpy()
    reps = np.array([[[ref_cka_grams(ref_linear_gram(a1[p][i]), ref_linear_gram(a2[q][i]), unbiased)
                       for q in LAYERS] for p in LAYERS] for i in idx])
    np.testing.assert_allclose(result.ci_low, np.percentile(reps, 2.5, axis=0), rtol=1e-7)
    np.testing.assert_allclose(result.ci_high, np.percentile(reps, 97.5, axis=0), rtol=1e-7)


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Flatten()

    def forward(self, x):
        return self.out(x)


def test_calibrated_biased_cka_of_independent_wide_inputs_is_near_zero():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(32, 1000, generator=g), torch.randn(32, 1000, generator=g)
    s1 = SimilarityModel(Flat(), "f1", layers_to_include=["out"])
    s2 = SimilarityModel(Flat(), "f2", layers_to_include=["out"])
    result = CKA(s1, s2, estimator="full", n_permutations=200, seed=0).compute(
        [x1], dataloader2=[x2], progress=False)  # model 2 fed independent samples
    assert result.matrix[0, 0] > 0.9                  # raw biased CKA: ~0.97
    assert abs(result.calibrated[0, 0]) < 0.1
    assert result.p_value[0, 0] > 0.01


# ----------------------------------------------------------------------------- other measures
def ref_disparity(X, Y):
    """1 - (nuclear norm of Xn' Yn)^2 with centred, unit-Frobenius Xn, Yn."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xn, Yn = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    return 1.0 - np.linalg.svd(Xn.T @ Yn, compute_uv=False).sum() ** 2


def test_procrustes_bootstrap_matches_plain_recomputation(data):
    m1, m2 = Tiny(1), Tiny(2)
    x = data[:30]
    R = 12
    result = Procrustes(wrap(m1, "m1"), wrap(m2, "m2"), n_bootstrap=R, n_permutations=19,
                        seed=2).compute(DataLoader(x, batch_size=10), progress=False)
    a1, a2 = acts(m1, x), acts(m2, x)
    idx = bootstrap_indices(30, R, make_generator(2)[0]).numpy()
    reps = np.array([[[ref_disparity(a1[p][i], a2[q][i]) for q in LAYERS] for p in LAYERS]
                     for i in idx])
    np.testing.assert_allclose(result.ci_low, np.percentile(reps, 2.5, axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.ci_high, np.percentile(reps, 97.5, axis=0), rtol=1e-6, atol=1e-9)
    # a distance: calibrated = (null_mean - score) / null_mean
    np.testing.assert_allclose(result.calibrated,
                               (result.null_mean - result.matrix) / result.null_mean, rtol=1e-12)


@pytest.mark.parametrize("cls", [Procrustes, RSA, CCA])
def test_recomputed_measures_of_a_model_with_itself_are_significant(data, cls):
    m1 = Tiny(1)
    result = cls(wrap(m1, "m1"), wrap(m1, "m1b"), n_permutations=19, seed=0).compute(
        DataLoader(data[:24], batch_size=12), progress=False)
    # no permutation comes near a model compared with itself: the smallest p-value, 1/(1+19)
    np.testing.assert_allclose(np.diag(result.p_value), 0.05)


def test_semantic_cka_takes_inference_options(data):
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 3, 1)

        def forward(self, x):
            return self.c(x)

    torch.manual_seed(0)
    x = torch.randn(12, 2, 2, 2)
    net = Conv()
    s = SimilarityModel(net, "c", layers_to_include=["c"])
    result = SemanticCKA(s, SimilarityModel(net, "c2", layers_to_include=["c"]), n_permutations=49,
                         n_bootstrap=20, seed=0).compute([x], progress=False)
    assert result.p_value[0, 0] < 0.05 and result.ci_low.shape == (1, 1)


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("kwargs,match", [
    (dict(n_bootstrap=1), "n_bootstrap must be 0 \\(off\\) or an integer >= 2"),
    (dict(n_bootstrap=-5), "n_bootstrap must be 0"),
    (dict(n_bootstrap=True), "n_bootstrap must be 0"),
    (dict(n_permutations=2.5), "n_permutations must be 0 \\(off\\) or an integer >= 1"),
    (dict(confidence=1.0), "confidence must be a number strictly between 0 and 1"),
    (dict(seed=-1), "seed must be a non-negative integer or None"),
    (dict(interval="basic"), "interval must be one of"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CKA(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2"), **kwargs)


def test_a_measure_without_inference_refuses_the_options_clearly():
    class NoInference(StreamingCKA):
        inference_unsupported = "no resampling scheme for this measure"

    with pytest.raises(ValueError, match="NoInference: no resampling scheme for this measure; "
                                         "leave n_bootstrap and n_permutations at 0"):
        NoInference(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2"), n_permutations=10)
    assert NoInference(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2")).n_permutations == 0
    # dCKA has inference now (tests/test_inference_dcka.py)
    assert DeltaCKA(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2"), n_permutations=10).n_permutations == 10


# ----------------------------------------------------------------------------- results
def inferred_result():
    rng = np.random.default_rng(0)
    m = rng.uniform(size=(2, 3))
    return SimilarityResult(m, ["a", "b"], ["x", "y", "z"], measure="cka", ci_low=m - 0.1,
                            ci_high=m + 0.1, p_value=np.array([[0.001, 0.5, 0.02], [0.3, np.nan, 0.01]]),
                            p_value_adjusted=np.array([[0.004, 0.9, 0.07], [0.8, np.nan, 0.03]]),
                            null_mean=np.full((2, 3), 0.2), calibrated=(m - 0.2) / 0.8)


@pytest.mark.parametrize("name", ["r.npz", "r.csv", "r.json"])
def test_inference_arrays_round_trip(tmp_path, name):
    result = inferred_result()
    written = result.save(tmp_path / name)
    loaded = SimilarityResult.load(tmp_path / name)
    for field, value in result.inference_arrays().items():
        np.testing.assert_array_equal(getattr(loaded, field), value)
    if name != "r.npz":
        cells = tmp_path / "r_cells.csv"
        assert cells in written
        header = cells.read_text().splitlines()[0].split(",")
        assert header == ["row_layer", "col_layer", "value", "ci_low", "ci_high", "p_value",
                          "p_value_adjusted", "null_mean", "calibrated"]
        assert "p_value" in json.loads((tmp_path / "r.json").read_text())
    plain = SimilarityResult(np.eye(2), ["a", "b"], ["x", "y"])
    assert plain.save(tmp_path / "p.csv") == [tmp_path / "p.csv", tmp_path / "p.json"]
    assert SimilarityResult.load(tmp_path / "p.json").p_value is None


def test_long_dataframe_and_significance():
    result = inferred_result()
    frame = result.to_dataframe(long=True)
    assert len(frame) == 6 and list(frame.columns[:3]) == ["row_layer", "col_layer", "value"]
    row = frame[(frame.row_layer == "a") & (frame.col_layer == "z")].iloc[0]
    assert row.value == result.matrix[0, 2] and row.p_value_adjusted == 0.07
    assert frame.ci_low.notna().all()
    np.testing.assert_array_equal(result.significant(0.05), [[True, False, False], [False, False, True]])
    np.testing.assert_array_equal(result.significant(0.05, adjusted=False),
                                  [[True, False, True], [False, False, True]])
    plain = SimilarityResult(np.eye(2), ["a", "b"], ["x", "y"])
    assert plain.to_dataframe(long=True).p_value.isna().all()
    with pytest.raises(ValueError, match="no p-values: compute it with n_permutations > 0"):
        plain.significant()


def test_result_rejects_misshapen_inference_arrays():
    with pytest.raises(ValueError, match=r"p_value has shape \(3,\) but the matrix is \(2, 2\)"):
        SimilarityResult(np.eye(2), ["a", "b"], ["x", "y"], p_value=np.zeros(3))


def test_plots_show_significance_and_bands():
    result = inferred_result()
    ax = result.plot(significance="hatch")
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 4                       # adjusted p >= 0.05 or NaN: 4 cells
    plt.close(ax.figure)
    ax = result.plot(significance="mask")
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="significance must be 'hatch', 'mask' or None"):
        result.plot(significance="stars")
    ax = plot_corresponding_layers(result)
    assert len(ax.collections) >= 2                # the band and the points
    plt.close(ax.figure)
    ax = plot_corresponding_layers(result, pairs="best", values="calibrated")
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="pairs must be 'depth' or 'best'"):
        plot_corresponding_layers(result, pairs="diag")
    with pytest.raises(ValueError, match="values='calibrated' needs"):
        plot_corresponding_layers(SimilarityResult(np.eye(2), ["a", "b"], ["x", "y"]),
                                  values="calibrated")

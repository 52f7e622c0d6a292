"""CKA / DeltaCKA measures over DataLoaders, against plain float64 references on the captured data."""
import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

matplotlib.use("Agg")

from simtorch_semantic.measures.base import BaseSimilarity  # noqa: E402
from simtorch_semantic.measures.cka import CKA, DeltaCKA  # noqa: E402
from simtorch_semantic.model import SimilarityModel  # noqa: E402
from simtorch_semantic.results import SimilarityResult  # noqa: E402


# ------------------------------------------------------------------ plain references
from reference import ref_hsic_b as ref_hsic_biased  # noqa: E402
from reference import ref_hsic_u as ref_hsic_unbiased  # noqa: E402


def ref_cka(X, Y, hsic):
    X = np.asarray(X, np.float64).reshape(len(X), -1)
    Y = np.asarray(Y, np.float64).reshape(len(Y), -1)
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def ref_minibatch_cka(X, Y, batch):
    xy = xx = yy = 0.0
    for s in range(0, len(X), batch):
        x = np.asarray(X[s:s + batch], np.float64).reshape(len(X[s:s + batch]), -1)
        y = np.asarray(Y[s:s + batch], np.float64).reshape(len(x), -1)
        K, L = x @ x.T, y @ y.T
        xy += ref_hsic_unbiased(K, L); xx += ref_hsic_unbiased(K, K); yy += ref_hsic_unbiased(L, L)
    return xy / np.sqrt(xx * yy)


# ------------------------------------------------------------------ tiny models
class Tiny(nn.Module):
    def __init__(self, seed, width=12):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Linear(6, width)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Linear(width, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@pytest.fixture
def data():
    return torch.randn(96, 6, generator=torch.Generator().manual_seed(0))


def activations(model, x, layers):
    out = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone())) for n in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


LAYERS = ["a", "act", "b"]


def models():
    return (SimilarityModel(Tiny(1), "m1", layers_to_include=LAYERS),
            SimilarityModel(Tiny(2), "m2", layers_to_include=LAYERS))


# ------------------------------------------------------------------ correctness
def test_minibatch_cka_matches_reference_sum_of_unbiased_hsic(data):
    s1, s2 = models()
    result = CKA(s1, s2).compute(DataLoader(data, batch_size=32), progress=False)
    assert isinstance(result, SimilarityResult)
    assert result.row_layers == LAYERS and result.col_layers == LAYERS
    assert result.n_samples == 96 and result.matrix.dtype == np.float64
    a1, a2 = activations(s1.model, data, LAYERS), activations(s2.model, data, LAYERS)
    # the in-place ReLU overwrote layer "a"'s output after it was captured: the reference
    # hooks clone, and so must the measure; compare every pair
    for i, l1 in enumerate(LAYERS):
        for j, l2 in enumerate(LAYERS):
            assert result.matrix[i, j] == pytest.approx(ref_minibatch_cka(a1[l1], a2[l2], 32), abs=1e-6)


def test_full_estimator_biased_and_unbiased_match_reference(data):
    s1, s2 = models()
    loader = DataLoader(data, batch_size=20)  # last batch of 16, batches need not be equal
    a1, a2 = activations(s1.model, data, LAYERS), activations(s2.model, data, LAYERS)
    for unbiased, hsic in ((False, ref_hsic_biased), (True, ref_hsic_unbiased)):
        m = CKA(s1, s2, estimator="full", unbiased=unbiased).compute(loader, progress=False).matrix
        ref = np.array([[ref_cka(a1[p], a2[q], hsic) for q in LAYERS] for p in LAYERS])
        np.testing.assert_allclose(m, ref, atol=1e-6)


def test_single_batch_minibatch_equals_full_unbiased(data):
    s1, s2 = models()
    loader = DataLoader(data, batch_size=96)
    mini = CKA(s1, s2).compute(loader, progress=False).matrix
    full = CKA(s1, s2, estimator="full", unbiased=True).compute(loader, progress=False).matrix
    np.testing.assert_allclose(mini, full, atol=1e-10)


def test_minibatch_estimate_is_stable_across_batch_sizes():
    x = torch.randn(1024, 6, generator=torch.Generator().manual_seed(3))
    s1, s2 = models()
    small = CKA(s1, s2).compute(DataLoader(x, batch_size=32), progress=False).matrix
    large = CKA(s1, s2).compute(DataLoader(x, batch_size=128), progress=False).matrix
    full = CKA(s1, s2, estimator="full", unbiased=True).compute(DataLoader(x, batch_size=128),
                                                                 progress=False).matrix
    assert np.abs(small - large).max() < 0.03
    assert np.abs(small - full).max() < 0.03


def test_self_comparison_same_object_gives_ones_on_diagonal(data):
    model = Tiny(4)
    s1 = SimilarityModel(model, "a", layers_to_include=LAYERS)
    s2 = SimilarityModel(model, "b", layers_to_include=LAYERS)
    m = CKA(s1, s2).compute(DataLoader(data, batch_size=32), progress=False).matrix
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-9)


def test_rbf_full_matches_reference_with_global_median(data):
    s1, s2 = models()
    a1, a2 = activations(s1.model, data, ["b"]), activations(s2.model, data, ["a"])

    def rbf(X):
        X = np.asarray(X, np.float64)
        D = ((X[:, None] - X[None]) ** 2).sum(-1)
        d = np.sqrt(D[np.triu_indices(len(X), 1)])
        sigma = 0.8 * np.median(d[d > 0])
        return np.exp(-D / (2 * sigma ** 2))

    K, L = rbf(a1["b"]), rbf(a2["a"])
    ref = ref_hsic_biased(K, L) / np.sqrt(ref_hsic_biased(K, K) * ref_hsic_biased(L, L))
    s1 = SimilarityModel(s1.model, "m1", layers_to_include=["b"])
    s2 = SimilarityModel(s2.model, "m2", layers_to_include=["a"])
    got = CKA(s1, s2, kernel="rbf", estimator="full").compute(DataLoader(data, batch_size=30), progress=False)
    assert got.matrix[0, 0] == pytest.approx(ref, abs=1e-6)
    assert got.params["kernel"] == "rbf"


def test_float32_features_with_large_mean_stay_accurate():
    class Shifted(nn.Module):
        def __init__(self, W, shift):
            super().__init__()
            self.register_buffer("W", W)
            self.lin = nn.Identity()
            self.shift = shift

        def forward(self, x):
            return self.lin(x @ self.W + self.shift)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 40, generator=g)
    W1, W2 = torch.randn(40, 300, generator=g), torch.randn(40, 200, generator=g)
    ref = ref_minibatch_cka((x @ W1).double().numpy(), (x @ W2).double().numpy(), 64)
    # mean 1000x the spread, in float32
    s1 = SimilarityModel(Shifted(W1, 1000.0 * 6.3), "s1", layers_to_include=["lin"])
    s2 = SimilarityModel(Shifted(W2, 1000.0 * 6.3), "s2", layers_to_include=["lin"])
    got = CKA(s1, s2).compute(DataLoader(x, batch_size=64), progress=False).matrix[0, 0]
    assert abs(got - ref) < 1e-4


def test_update_result_reset_cycle(data):
    s1, s2 = models()
    measure = CKA(s1, s2)
    for s in range(0, 96, 32):
        measure.update(data[s:s + 32])
    first = measure.result()
    np.testing.assert_allclose(first.matrix, CKA(s1, s2).compute(DataLoader(data, batch_size=32),
                                                                  progress=False).matrix, atol=1e-12)
    measure.reset()
    with pytest.raises(RuntimeError, match="no data"):
        measure.result()
    assert measure.sim_matrix is not None


def test_batch_types_and_second_loader(data):
    s1, s2 = models()
    labels = torch.arange(96)
    base = CKA(s1, s2).compute(DataLoader(data, batch_size=32), progress=False).matrix
    tup = CKA(s1, s2).compute(DataLoader(TensorDataset(data, labels), batch_size=32), progress=False).matrix
    dicts = [{"img": data[s:s + 32], "y": labels[s:s + 32]} for s in range(0, 96, 32)]
    dct = CKA(s1, s2, input_key="img").compute(dicts, progress=False).matrix
    fn = CKA(s1, s2, input_fn=lambda b: b["img"]).compute(dicts, progress=False).matrix
    two = CKA(s1, s2).compute(DataLoader(data, batch_size=32), DataLoader(data.clone(), batch_size=32),
                              progress=False).matrix
    for m in (tup, dct, fn, two):
        np.testing.assert_allclose(m, base, atol=1e-12)


def test_deltacka_streaming_equals_full_and_functional(data):
    from simtorch_semantic.functional.dcka import dcka

    s1, s2 = models()
    one = DataLoader(data, batch_size=96)
    stream = DeltaCKA(s1, s2).compute(one, progress=False).matrix
    full = DeltaCKA(s1, s2, estimator="full", unbiased=True).compute(one, progress=False).matrix
    np.testing.assert_allclose(stream, full, atol=1e-6)  # float32 Grams in the stream
    a1, a2 = activations(s1.model, data, LAYERS), activations(s2.model, data, LAYERS)
    ref = dcka(a1["a"], a2["b"], data, unbiased=True)
    assert full[0, 2] == pytest.approx(ref, abs=1e-9)
    biased = DeltaCKA(s1, s2, estimator="full").compute(DataLoader(data, batch_size=40), progress=False)
    assert biased.matrix[2, 0] == pytest.approx(dcka(a1["b"], a2["a"], data), abs=1e-9)
    # over several batches the regression is solved once over the whole data set: finite, in range
    multi = DeltaCKA(s1, s2).compute(DataLoader(data, batch_size=32), progress=False).matrix
    assert np.all(np.isfinite(multi)) and np.all(multi <= 1 + 1e-9)


def test_deltacka_negative_eig_and_confounder(data):
    s1, s2 = models()
    loader = DataLoader(TensorDataset(data, torch.arange(96) % 3), batch_size=32)
    onehot = lambda batch: torch.nn.functional.one_hot(batch[1], 3).float()  # noqa: E731
    by_label = DeltaCKA(s1, s2, confounder=onehot).compute(loader, progress=False)
    assert by_label.params["confounder"] == "<lambda>"
    psd = DeltaCKA(s1, s2, estimator="full", remove_negative_eig=True).compute(loader, progress=False)
    assert np.all(np.isfinite(psd.matrix))
    with pytest.raises(ValueError, match="estimator='full'"):
        DeltaCKA(s1, s2, remove_negative_eig=True)


# ------------------------------------------------------------------ bad input
def test_batch_smaller_than_four_is_refused(data):
    s1, s2 = models()
    with pytest.raises(ValueError, match="at least 4 samples per batch"):
        CKA(s1, s2).compute(DataLoader(data[:34], batch_size=32), progress=False)
    # the full estimator takes it
    CKA(s1, s2, estimator="full").compute(DataLoader(data[:34], batch_size=32), progress=False)


def test_nan_in_activation_names_layer_and_batch(data):
    bad = data.clone()
    bad[40, 0] = float("nan")
    s1, s2 = models()
    for estimator in ("minibatch", "full"):
        with pytest.raises(ValueError, match=r"layer 'a' of m1 produced NaN or Inf in batch 1"):
            CKA(s1, s2, estimator=estimator).compute(DataLoader(bad, batch_size=32), progress=False)


def test_constant_activation_gives_nan_and_warning(data):
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 4)
            self.zero = nn.Identity()

        def forward(self, x):
            return self.zero(self.lin(x) * 0 + 2.5)

    s1 = SimilarityModel(Const(), "const", layers_to_include=["lin", "zero"])
    s2 = SimilarityModel(Tiny(1), "m2", layers_to_include=LAYERS)
    for estimator in ("minibatch", "full"):
        with pytest.warns(RuntimeWarning, match="layer 'zero' of const is constant"):
            result = CKA(s1, s2, estimator=estimator).compute(DataLoader(data, batch_size=32), progress=False)
        assert np.all(np.isnan(result.matrix[1])) and np.all(np.isfinite(result.matrix[0]))
        assert any("zero" in note for note in result.notes)


def test_integer_half_and_noncontiguous_outputs(data):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 8)
            self.ints = nn.Identity()
            self.fp16 = nn.Identity()
            self.trans = nn.Identity()

        def forward(self, x):
            h = self.lin(x)
            self.ints((h * 10).round().long())
            self.fp16(h.half())
            return self.trans(h.reshape(len(h), 2, 4).transpose(1, 2))

    layers = ["lin", "ints", "fp16", "trans"]
    s1 = SimilarityModel(Odd(), "odd", layers_to_include=layers)
    s2 = SimilarityModel(s1.model, "odd2", layers_to_include=layers)
    m = CKA(s1, s2).compute(DataLoader(data, batch_size=32), progress=False).matrix
    assert m.dtype == np.float64
    assert m[0, 1] > 0.99 and m[0, 2] > 0.999  # rounding and half precision barely change it
    assert m[0, 3] == pytest.approx(1.0, abs=1e-9)  # a transpose is a permutation of features
    tokens = torch.randint(0, 50, (64, 7))
    emb = SimilarityModel(nn.Sequential(nn.Embedding(50, 8), nn.Flatten()), "emb")
    out = CKA(emb, emb).compute(DataLoader(tokens, batch_size=32), progress=False).matrix
    np.testing.assert_allclose(np.diag(out), 1.0, atol=1e-9)


def test_bad_arguments():
    s1, s2 = models()
    with pytest.raises(TypeError, match="SimilarityModel"):
        CKA(s1.model, s2)
    with pytest.raises(ValueError, match="kernel must be one of"):
        CKA(s1, s2, kernel="poly")
    with pytest.raises(ValueError, match="estimator must be one of"):
        CKA(s1, s2, estimator="exact")
    with pytest.raises(ValueError, match="sigma_frac"):
        CKA(s1, s2, kernel="rbf", sigma_frac=0)
    with pytest.raises(ValueError, match="no batches"):
        CKA(s1, s2).compute(DataLoader(torch.empty(0, 6), batch_size=4), progress=False)
    with pytest.raises(ValueError, match="different numbers of samples"):
        CKA(s1, s2).compute(DataLoader(torch.randn(64, 6), batch_size=32),
                            DataLoader(torch.randn(32, 6), batch_size=32), progress=False)
    with pytest.raises(RuntimeError, match="nothing to plot"):
        CKA(s1, s2).plot_similarity()


def test_full_estimator_memory_error_before_exhausting(data):
    s1, s2 = models()
    with pytest.raises(MemoryError, match="estimator='minibatch'"):
        CKA(s1, s2, estimator="full", max_memory=10_000).compute(DataLoader(data, batch_size=32),
                                                                  progress=False)


def test_plot_similarity_keeps_global_style(tmp_path, data):
    import matplotlib.pyplot as plt

    s1, s2 = models()
    measure = CKA(s1, s2)
    measure.compute(DataLoader(data, batch_size=32), progress=False)
    before = dict(plt.rcParams)
    ax = measure.plot_similarity(title="t", savefig=True, save_path=tmp_path / "cka.png")
    assert (tmp_path / "cka.png").stat().st_size > 1000
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS[::-1]
    assert dict(plt.rcParams) == before
    plt.close("all")


def test_base_is_abstract():
    s1, s2 = models()
    with pytest.raises(NotImplementedError):
        BaseSimilarity(s1, s2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on CI)")
def test_models_on_different_devices(data):
    """Model 1 on CUDA, model 2 on the CPU, state on the CPU: inputs follow each model."""
    s1 = SimilarityModel(Tiny(1), "gpu", layers_to_include=LAYERS, device="cuda")
    s2 = SimilarityModel(Tiny(2), "cpu", layers_to_include=LAYERS, device="cpu")
    mixed = CKA(s1, s2, device="cpu").compute(DataLoader(data, batch_size=32), progress=False).matrix
    c1, c2 = models()
    ref = CKA(c1, c2).compute(DataLoader(data, batch_size=32), progress=False).matrix
    np.testing.assert_allclose(mixed, ref, atol=1e-5)

"""Inference for deconfounded CKA (issue 11): bootstrap intervals, permutation nulls and
calibrated scores of DeltaCKA, streaming and full, against plain NumPy references written here
(dCKA computed directly from the Grams of every resample or permutation), plus the statistical
properties at small sizes."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader

from reference import ref_H, ref_hsic_b, ref_hsic_u, ref_linear_gram  # noqa: E402
from simtorch_semantic import DeltaCKA, SimilarityModel, SimilarityResult
from simtorch_semantic.functional import dcka_from_hsic, dcka_hsic_terms, deconfound_gram
from simtorch_semantic.functional.inference import (
    bootstrap_counts, bootstrap_indices, dcka_bootstrap_from_grams, dcka_extended_grams,
    dcka_null_from_cross, dcka_permutation_null_from_grams, make_generator, permutation_p_values,
    permuted_hsic_cross, random_permutations, streaming_dcka_bootstrap, streaming_dcka_jackknife,
    streaming_dcka_permutation_null, westfall_young_p_values)
from simtorch_semantic.measures import inference as measures_inference

LAYERS = ["a", "act", "b"]


# ----------------------------------------------------------------------------- references
def ref_residual(K, KZ, unbiased=False, psd=False):
    """Centred Gram minus its least-squares projection (HSIC inner product) on the centred
    confounder Gram; optionally projected onto the PSD cone."""
    H = ref_H(len(K))
    h = ref_hsic_u if unbiased else ref_hsic_b
    R = H @ K @ H - h(K, KZ) / h(KZ, KZ) * (H @ KZ @ H)
    if psd:
        w, V = np.linalg.eigh(R)
        R = V @ np.diag(np.maximum(w, 0.0)) @ V.T
    return R


def ref_dcka_grams(K, L, KZ, unbiased=False, psd=False):
    h = ref_hsic_u if unbiased else ref_hsic_b
    Rk, Rl = ref_residual(K, KZ, unbiased, psd), ref_residual(L, KZ, unbiased, psd)
    return h(Rk, Rl) / math.sqrt(h(Rk, Rk) * h(Rl, Rl))


def ref_batch_terms(Ks, Ls, KZ):
    """The six unbiased HSIC terms of one batch, plainly."""
    h = ref_hsic_u
    return {"xy": np.array([[h(k, m) for m in Ls] for k in Ks]),
            "xx": np.array([h(k, k) for k in Ks]), "yy": np.array([h(m, m) for m in Ls]),
            "xz": np.array([h(k, KZ) for k in Ks]), "yz": np.array([h(m, KZ) for m in Ls]),
            "zz": np.array(h(KZ, KZ))}


def ref_dcka_terms(t):
    """(xy - xz yz / zz) / sqrt((xx - xz^2 / zz)(yy - yz^2 / zz)) for one set of summed terms."""
    rxy = t["xy"] - np.outer(t["xz"], t["yz"]) / t["zz"]
    rxx = t["xx"] - t["xz"] ** 2 / t["zz"]
    ryy = t["yy"] - t["yz"] ** 2 / t["zz"]
    return rxy / np.sqrt(np.outer(rxx, ryy))


def confounded_batches(rng, B, n, shared=1.0, widths=(5, 4), dz=4):
    """Per-batch Grams of X, Y and Z: both X layers and both Y layers read Z and a shared
    latent S (scaled by ``shared``) plus noise."""
    out = []
    for _ in range(B):
        Z = rng.normal(size=(n, dz))
        S = rng.normal(size=(n, 3))
        X = [Z @ rng.normal(size=(dz, w)) + shared * S @ rng.normal(size=(3, w))
             + rng.normal(size=(n, w)) for w in widths]
        Y = [Z @ rng.normal(size=(dz, w)) + shared * S @ rng.normal(size=(3, w))
             + rng.normal(size=(n, w)) for w in widths[:1]]
        out.append((np.stack([ref_linear_gram(x) for x in X]),
                    np.stack([ref_linear_gram(y) for y in Y]), ref_linear_gram(Z)))
    return out


def torch_batches(batches):
    return [tuple(torch.from_numpy(a) for a in b) for b in batches]


def summed(terms_list):
    return {k: sum(t[k] for t in terms_list) for k in terms_list[0]}


# ----------------------------------------------------------------------------- functional
def test_deconfound_gram_of_a_stack_equals_each_matrix():
    rng = np.random.default_rng(0)
    Ks = np.stack([ref_linear_gram(rng.normal(size=(12, 3))) for _ in range(3)])
    KZ = ref_linear_gram(rng.normal(size=(12, 4)))
    for unbiased in (False, True):
        for psd in (False, True):
            stack = deconfound_gram(torch.from_numpy(Ks), torch.from_numpy(KZ), psd, unbiased)
            assert stack.shape == (3, 12, 12)
            for k, K in enumerate(Ks):
                np.testing.assert_allclose(stack[k].numpy(), ref_residual(K, KZ, unbiased, psd),
                                           rtol=1e-9, atol=1e-9)


def test_dcka_from_hsic_keeps_leading_replicate_dimensions():
    rng = np.random.default_rng(1)
    R, a, b = 4, 3, 2
    t = {"xy": rng.normal(size=(R, a, b)), "xx": rng.uniform(5, 6, size=(R, a)),
         "yy": rng.uniform(5, 6, size=(R, b)), "xz": rng.normal(size=(R, a)),
         "yz": rng.normal(size=(R, b)), "zz": rng.uniform(2, 3, size=R)}
    t["zz"][2] = 0.0                                   # a constant confounder: NaN replicate
    out = dcka_from_hsic({k: torch.from_numpy(v) for k, v in t.items()}).numpy()
    assert out.shape == (R, a, b)
    for r in range(R):
        if r == 2:
            assert np.isnan(out[r]).all()
        else:
            np.testing.assert_allclose(out[r], ref_dcka_terms({k: v[r] for k, v in t.items()}),
                                       rtol=1e-12)


def test_streaming_dcka_bootstrap_and_jackknife_equal_plain_batch_resampling():
    rng = np.random.default_rng(2)
    batches = confounded_batches(rng, 7, 8)
    per_batch = [ref_batch_terms(*b) for b in batches]
    terms = {k: torch.from_numpy(np.stack([t[k] for t in per_batch])) for k in per_batch[0]}
    R = 60
    reps = streaming_dcka_bootstrap(terms, R, make_generator(4)[0]).numpy()
    counts = bootstrap_counts(7, R, make_generator(4)[0]).numpy()     # the same draws
    ref = np.stack([ref_dcka_terms({k: np.tensordot(c, np.stack([t[k] for t in per_batch]), 1)
                                    for k in per_batch[0]}) for c in counts])
    assert reps.shape == (R, 2, 1)
    np.testing.assert_allclose(reps, ref, rtol=1e-10)
    jack = streaming_dcka_jackknife(terms).numpy()
    ref_jack = np.stack([ref_dcka_terms(summed([t for j, t in enumerate(per_batch) if j != i]))
                         for i in range(7)])
    np.testing.assert_allclose(jack, ref_jack, rtol=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("psd", [False, True])
def test_full_dcka_bootstrap_equals_plain_resampling(unbiased, psd):
    rng = np.random.default_rng(3)
    Ks, Ls, KZ = confounded_batches(rng, 1, 30)[0]
    idx = bootstrap_indices(30, 15, make_generator(1)[0])
    reps = dcka_bootstrap_from_grams(torch.from_numpy(Ks), torch.from_numpy(Ls),
                                     torch.from_numpy(KZ), idx, unbiased, psd).numpy()
    ref = np.array([[[ref_dcka_grams(K[np.ix_(i, i)], L[np.ix_(i, i)], KZ[np.ix_(i, i)],
                                     unbiased, psd) for L in Ls] for K in Ks]
                    for i in idx.numpy()])
    np.testing.assert_allclose(reps, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_full_dcka_null_permutes_model_twos_deconfounded_gram(unbiased):
    rng = np.random.default_rng(4)
    Ks, Ls, KZ = confounded_batches(rng, 1, 20)[0]
    perms = random_permutations(20, 12, make_generator(2)[0])
    K, L, Z = torch.from_numpy(Ks), torch.from_numpy(Ls), torch.from_numpy(KZ)
    null = dcka_permutation_null_from_grams(K, L, Z, perms, unbiased).numpy()
    h = ref_hsic_u if unbiased else ref_hsic_b
    ref = np.empty_like(null)
    for r, p in enumerate(perms.numpy()):
        for i, Ki in enumerate(Ks):
            for j, Lj in enumerate(Ls):
                Rk, Rl = ref_residual(Ki, KZ, unbiased), ref_residual(Lj, KZ, unbiased)
                ref[r, i, j] = h(Rk, Rl[np.ix_(p, p)]) / math.sqrt(h(Rk, Rk) * h(Rl, Rl))
    np.testing.assert_allclose(null, ref, rtol=1e-9, atol=1e-12)
    # the bilinear form used by the streaming estimator gives the same null on the full data
    cross = permuted_hsic_cross(*dcka_extended_grams(K, L, Z), perms, unbiased)
    np.testing.assert_allclose(dcka_null_from_cross(cross, dcka_hsic_terms(K, L, Z, unbiased)).numpy(),
                               ref, rtol=1e-8, atol=1e-12)
    # float32 products (the measures' default) agree closely
    null32 = dcka_permutation_null_from_grams(K, L, Z, perms, unbiased, dtype=torch.float32)
    np.testing.assert_allclose(null32.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_streaming_dcka_null_equals_plain_permuted_residuals():
    rng = np.random.default_rng(5)
    batches = confounded_batches(rng, 3, 9)
    R = 10
    null = streaming_dcka_permutation_null(torch_batches(batches), R, make_generator(6)[0]).numpy()
    gen = make_generator(6)[0]
    perms = [random_permutations(9, R, gen).numpy() for _ in batches]  # one draw per batch, in order
    t = summed([ref_batch_terms(*b) for b in batches])
    alpha, beta = t["xz"] / t["zz"], t["yz"] / t["zz"]   # the regression over all batches
    den = np.sqrt(np.outer(t["xx"] - t["xz"] ** 2 / t["zz"], t["yy"] - t["yz"] ** 2 / t["zz"]))
    ref = np.zeros((R, 2, 1))
    for (Ks, Ls, KZ), p in zip(batches, perms):
        for r in range(R):
            for i, K in enumerate(Ks):
                for j, L in enumerate(Ls):
                    Rl = (L - beta[j] * KZ)[np.ix_(p[r], p[r])]   # deconfounded, then permuted
                    ref[r, i, j] += ref_hsic_u(K - alpha[i] * KZ, Rl)
    np.testing.assert_allclose(null, ref / den, rtol=1e-9)


def test_dcka_null_from_cross_checks_its_input():
    K = torch.eye(6, dtype=torch.float64)[None].repeat(2, 1, 1)
    terms = dcka_hsic_terms(K, K[:1], torch.ones(6, 6, dtype=torch.float64) + torch.eye(6))
    with pytest.raises(ValueError, match=r"cross must have shape \[R, 3, 2\]"):
        dcka_null_from_cross(torch.zeros(4, 2, 1), terms)
    with pytest.raises(ValueError, match="dCKA needs the six HSIC terms.*missing \\['zz'\\]"):
        dcka_null_from_cross(torch.zeros(4, 3, 2), {"xy": 0, "xx": 0, "yy": 0, "xz": 0, "yz": 0})
    with pytest.raises(ValueError, match=r"KZ must be the confounder's \[6, 6\] Gram"):
        dcka_permutation_null_from_grams(K, K, torch.eye(5), random_permutations(6, 2))
    with pytest.raises(ValueError, match="same leading batch dimension"):
        streaming_dcka_bootstrap({"xy": torch.zeros(3, 1, 1), "xx": torch.zeros(3, 1),
                                  "yy": torch.zeros(3, 1), "xz": torch.zeros(3, 1),
                                  "yz": torch.zeros(3, 1), "zz": torch.zeros(2)}, 5)


def independent_triples(rng, B, n):
    """Per-batch Grams of independent X, Y and Z (one layer each)."""
    return [tuple(ref_linear_gram(rng.normal(size=(n, d)))[None] if k < 2 else
                  ref_linear_gram(rng.normal(size=(n, d))) for k, d in enumerate((3, 3, 4)))
            for _ in range(B)]


@pytest.mark.parametrize("route", ["streaming", "full"])
def test_independent_representations_give_uniform_p_values(route):
    # the unbiased HSIC (the streaming estimator's); the biased one: next test
    rng = np.random.default_rng(7)
    p_values = []
    for seed in range(150):
        if route == "streaming":
            batches = torch_batches(independent_triples(rng, 3, 8))
            obs = dcka_from_hsic(summed([vars(dcka_hsic_terms(*b)) for b in batches])).numpy()
            null = streaming_dcka_permutation_null(batches, 49, make_generator(seed)[0])
        else:
            K, L, Z = torch_batches(independent_triples(rng, 1, 24))[0]
            obs = dcka_from_hsic(dcka_hsic_terms(K, L, Z, unbiased=True)).numpy()
            null = dcka_permutation_null_from_grams(K, L, Z, random_permutations(
                24, 49, make_generator(seed)[0]), unbiased=True)
        p_values.append(permutation_p_values(obs, null)[0, 0])
    p_values = np.array(p_values)
    # p-values live on the grid k/50; compare with the uniform on (0, 1]
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.02 <= np.mean(p_values <= 0.1) <= 0.2


def test_biased_dcka_sits_above_its_null_for_independent_wide_representations():
    # why the full measure notes that its biased p-values run small: the observed value keeps
    # a*b*sum_i Zc_ii^2 of the shared confounder's diagonal, which a permutation cannot keep
    rng = np.random.default_rng(9)
    p_values = []
    for seed in range(60):
        K, L, Z = (torch.from_numpy(ref_linear_gram(rng.normal(size=(24, d)))) for d in (20, 20, 4))
        obs = dcka_from_hsic(dcka_hsic_terms(K[None], L[None], Z, unbiased=False)).numpy()
        null = dcka_permutation_null_from_grams(K[None], L[None], Z, random_permutations(
            24, 49, make_generator(seed)[0]))
        p_values.append(permutation_p_values(obs, null)[0, 0])
    assert np.mean(np.array(p_values) <= 0.05) > 0.2          # nominal 0.05


def test_shared_information_beyond_the_confounder_gives_small_p_values():
    rng = np.random.default_rng(8)
    batches = torch_batches(confounded_batches(rng, 4, 16, shared=2.0))
    obs = dcka_from_hsic(summed([vars(dcka_hsic_terms(*b)) for b in batches])).numpy()
    null = streaming_dcka_permutation_null(batches, 199, make_generator(0)[0])
    assert np.all(permutation_p_values(obs, null) < 0.01)
    assert np.all(westfall_young_p_values(obs, null) < 0.01)


# ----------------------------------------------------------------------------- measures
class Tiny(nn.Module):
    def __init__(self, seed, width=12):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Linear(6, width)
        self.act = nn.Tanh()
        self.b = nn.Linear(width, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def wrap(model, name, layers=LAYERS):
    return SimilarityModel(model, name, layers_to_include=layers)


def noisy_copy(model, seed, scale=0.05):
    copy = Tiny(0)
    copy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return copy


def grams(model, x):
    """Centred linear Grams of every layer, plainly (forward hooks)."""
    out = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, o.detach().numpy())) for n in LAYERS]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    H = ref_H(len(x))
    return [H @ ref_linear_gram(out[n]) @ H for n in LAYERS]


@pytest.fixture
def data():
    return torch.randn(64, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_streaming_measure_bootstrap_equals_plain_batch_resampling(data):
    m1, m2 = Tiny(1), Tiny(2)
    R, batch = 200, 8
    result = DeltaCKA(wrap(m1, "m1"), wrap(m2, "m2"), n_bootstrap=R, seed=3).compute(
        DataLoader(data, batch_size=batch), progress=False)
    B = len(data) // batch
    per_batch = []
    for t in range(B):
        x = data[t * batch:(t + 1) * batch]
        per_batch.append(ref_batch_terms(grams(m1, x), grams(m2, x), ref_linear_gram(x.numpy())))
    np.testing.assert_allclose(result.matrix, ref_dcka_terms(summed(per_batch)), rtol=1e-9)
    counts = bootstrap_counts(B, R, make_generator(3)[0]).numpy()       # the measure's draws
    stacked = {k: np.stack([t[k] for t in per_batch]) for k in per_batch[0]}
    reps = np.stack([ref_dcka_terms({k: np.tensordot(c, v, 1) for k, v in stacked.items()})
                     for c in counts])
    np.testing.assert_allclose(result.ci_low, np.percentile(reps, 2.5, axis=0), rtol=1e-9)
    np.testing.assert_allclose(result.ci_high, np.percentile(reps, 97.5, axis=0), rtol=1e-9)
    assert result.p_value is None and result.calibrated is None
    assert "confounder is resampled" in result.params["inference"]["resampled"]


def test_streaming_measure_null_permutes_deconfounded_grams_within_batches(data, monkeypatch):
    drawn = []
    original = measures_inference.random_permutations
    monkeypatch.setattr(measures_inference, "random_permutations",
                        lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    m1, m2 = Tiny(1), Tiny(2)
    R, batch = 9, 16
    measure = DeltaCKA(wrap(m1, "m1"), wrap(m2, "m2"), n_permutations=R, seed=1)
    measure.permutation_dtype = torch.float64
    result = measure.compute(DataLoader(data, batch_size=batch), progress=False)
    assert len(drawn) == len(data) // batch                      # one draw per batch
    per_batch, null_num = [], np.zeros((R, 3, 3))
    xs = [data[t * batch:(t + 1) * batch] for t in range(len(drawn))]
    for x in xs:
        per_batch.append(ref_batch_terms(grams(m1, x), grams(m2, x), ref_linear_gram(x.numpy())))
    t = summed(per_batch)
    alpha, beta = t["xz"] / t["zz"], t["yz"] / t["zz"]
    for x, perms in zip(xs, drawn):
        Ks, Ls, KZ = grams(m1, x), grams(m2, x), ref_linear_gram(x.numpy())
        for r, p in enumerate(perms.numpy()):
            for i in range(3):
                for j in range(3):
                    Rl = (Ls[j] - beta[j] * KZ)[np.ix_(p, p)]
                    null_num[r, i, j] += ref_hsic_u(Ks[i] - alpha[i] * KZ, Rl)
    null = null_num / np.sqrt(np.outer(t["xx"] - t["xz"] ** 2 / t["zz"],
                                       t["yy"] - t["yz"] ** 2 / t["zz"]))
    np.testing.assert_allclose(result.null_mean, null.mean(0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(result.p_value, permutation_p_values(result.matrix, null))
    np.testing.assert_allclose(result.calibrated, (result.matrix - null.mean(0)) / (1 - null.mean(0)),
                               rtol=1e-8)


@pytest.mark.parametrize("unbiased,psd", [(False, False), (True, False), (False, True)])
def test_full_measure_bootstrap_and_null_equal_plain_resampling(data, unbiased, psd):
    m1, m2 = Tiny(1), Tiny(2)
    x = data[:30]
    R, P = 20, 15
    result = DeltaCKA(wrap(m1, "m1"), wrap(m2, "m2"), estimator="full", unbiased=unbiased,
                      remove_negative_eig=psd, n_bootstrap=R, n_permutations=P, seed=9).compute(
        DataLoader(x, batch_size=10), progress=False)
    g1, g2, gz = grams(m1, x), grams(m2, x), ref_linear_gram(x.numpy())
    gen = make_generator(9)[0]
    idx = bootstrap_indices(30, R, gen).numpy()                  # the bootstrap draws first,
    perms = random_permutations(30, P, gen).numpy()              # then the permutations
    reps = np.array([[[ref_dcka_grams(K[np.ix_(i, i)], L[np.ix_(i, i)], gz[np.ix_(i, i)],
                                      unbiased, psd) for L in g2] for K in g1] for i in idx])
    np.testing.assert_allclose(result.ci_low, np.percentile(reps, 2.5, axis=0), rtol=1e-8)
    np.testing.assert_allclose(result.ci_high, np.percentile(reps, 97.5, axis=0), rtol=1e-8)
    h = ref_hsic_u if unbiased else ref_hsic_b
    Rk = [ref_residual(K, gz, unbiased, psd) for K in g1]
    Rl = [ref_residual(L, gz, unbiased, psd) for L in g2]
    null = np.array([[[h(a, b[np.ix_(p, p)]) / math.sqrt(h(a, a) * h(b, b)) for b in Rl]
                      for a in Rk] for p in perms])
    # the measure's products run in float32 by default (measure.permutation_dtype)
    np.testing.assert_allclose(result.null_mean, null.mean(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_dependent_models_have_small_p_values_and_calibrated_scores(data, estimator):
    m1 = Tiny(1)
    for other in (m1, noisy_copy(m1, 5)):
        result = DeltaCKA(wrap(m1, "m1"), wrap(other, "m2"), estimator=estimator,
                          n_permutations=199, n_bootstrap=30, seed=0).compute(
            DataLoader(data, batch_size=16), progress=False)
        assert np.all(np.diag(result.p_value) < 0.01)
        assert np.all(np.diag(result.p_value_adjusted) < 0.01)
        assert result.calibrated.shape == result.null_mean.shape == result.matrix.shape == (3, 3)
        assert np.all(np.diag(result.calibrated) > 0.5)
        assert np.all(result.ci_low <= result.ci_high)


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_models_fed_independent_inputs_give_uniform_p_values(estimator):
    # model 2 sees other samples than model 1 (and than the confounder, model 1's input)
    p_values = []
    s1 = wrap(Tiny(1), "m1", ["act"])
    s2 = wrap(Tiny(2), "m2", ["act"])
    g = torch.Generator().manual_seed(11)
    for seed in range(80):
        x1 = torch.randn(32, 6, generator=g, dtype=torch.float64)
        x2 = torch.randn(32, 6, generator=g, dtype=torch.float64)
        result = DeltaCKA(s1, s2, estimator=estimator, unbiased=True, n_permutations=49,
                          seed=seed).compute(
            DataLoader(x1, batch_size=8), dataloader2=DataLoader(x2, batch_size=8), progress=False)
        p_values.append(result.p_value[0, 0])
    assert stats.kstest(np.array(p_values), "uniform").pvalue > 0.01


def test_biased_full_dcka_notes_that_its_p_values_run_small(data):
    m1, m2 = wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2")
    loader = DataLoader(data[:24], batch_size=8)
    with pytest.warns(RuntimeWarning, match="use unbiased=True for p-values"):
        result = DeltaCKA(m1, m2, estimator="full", n_permutations=9, seed=0).compute(
            loader, progress=False)
    assert any("biased HSIC" in note for note in result.notes)
    for options in (dict(unbiased=True, n_permutations=9), dict(n_bootstrap=5)):
        quiet = DeltaCKA(m1, m2, estimator="full", seed=0, **options).compute(loader, progress=False)
        assert not any("biased HSIC" in note for note in quiet.notes)


def test_same_seed_same_result_bca_and_round_trip(data, tmp_path):
    def run(seed, estimator):
        return DeltaCKA(wrap(Tiny(1), "m1"), wrap(Tiny(2), "m2"), estimator=estimator,
                        n_bootstrap=40, n_permutations=20, seed=seed, interval="bca").compute(
            DataLoader(data, batch_size=8), progress=False)
    for estimator in ("minibatch", "full"):
        r1, r2 = run(4, estimator), run(4, estimator)
        for name in ("ci_low", "ci_high", "p_value", "p_value_adjusted", "null_mean", "calibrated"):
            np.testing.assert_array_equal(getattr(r1, name), getattr(r2, name))
        assert np.all(r1.ci_low <= r1.ci_high)
        assert r1.params["inference"]["interval"] == "bca"
    loaded = SimilarityResult.load(r1.save(tmp_path / "d.npz")[0])
    np.testing.assert_array_equal(loaded.calibrated, r1.calibrated)
    assert loaded.measure == "dcka"

"""BaseSimilarity's state registry, the CKA front doors and their forms, failing early (NaN/Inf at
the batch where it appears, batch sizes before the first batch) and one constant-layer warning per
run (issue 8's reports, reproduced)."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from reference import ref_hsic_u
from simtorch_semantic.measures import RSA, BaseSimilarity, CKA, DeltaCKA
from simtorch_semantic.measures.cka import FullCKA, FullDeltaCKA, StreamingCKA, StreamingDeltaCKA
from simtorch_semantic.model import SimilarityModel


class Net(nn.Module):
    def __init__(self, seed, zero_head=False):
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.act = nn.ReLU()
        self.head = nn.Linear(10, 3)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            if zero_head:  # as torchvision's ViT heads.head: zero-initialised
                self.head.weight.zero_()
                self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.act(self.a(x)))


def data(n=40):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(0))


def pair(zero_head=False):
    return (SimilarityModel(Net(1, zero_head), "n1"), SimilarityModel(Net(2), "n2"))


class Counting:
    """An iterable of batches that counts how many were taken (no len(): read batch by batch)."""

    def __init__(self, batches):
        self.batches, self.taken = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.taken += 1
            yield b


# ------------------------------------------------------------------ the registry
class SumOfMeans(BaseSimilarity):
    """A toy measure on the registry: per layer pair, the sum over batches of mean(a) * mean(b)."""

    def _add_states(self):
        self.add_state("total", lambda n1, n2: torch.zeros(n1, n2, dtype=torch.float64))
        self.add_state("peak", torch.zeros((), dtype=torch.float64), reduce="max")
        self.add_state("per_batch", [], reduce="cat")

    def _reduce(self, layer, activation):
        return activation.double().mean()

    def _update_state(self, feats1, feats2, batch):
        a = torch.stack(list(feats1.values()))
        b = torch.stack(list(feats2.values()))
        self.total += a[:, None] * b[None, :]
        self.peak = torch.maximum(self.peak, a.abs().max())
        self.per_batch.append(a)

    def _compute_matrix(self):
        return self.total.numpy()


def test_registry_reset_lazy_sizing_and_states():
    s1, s2 = pair()
    m = SumOfMeans(s1, s2)
    assert m.total is None and m.per_batch == [] and float(m.peak) == 0  # sized at batch 1
    x = data()
    res = m.compute(DataLoader(x, batch_size=10), progress=False)
    assert m.total.shape == (3, 3) and len(m.per_batch) == 4 and m._n_batches == 4
    with torch.no_grad():
        means = [[np.float64(t.double().mean()) for t in acts(s, x[i:i + 10])]
                 for s in (s1, s2) for i in range(0, 40, 10)]
    expected = sum(np.outer(means[i], means[4 + i]) for i in range(4))
    np.testing.assert_allclose(res.matrix, expected, rtol=1e-12)
    assert m._cat_state("per_batch").shape == (4, 3)
    m.reset()
    assert m.total is None and m.per_batch == [] and m._n_samples == 0 and float(m.peak) == 0


def acts(sim, x):
    return list(sim.capture(x).values())


def test_add_state_bad_arguments():
    s1, s2 = pair()
    m = SumOfMeans(s1, s2)
    with pytest.raises(ValueError, match="reduce must be one of"):
        m.add_state("x", 0, reduce="mean")
    with pytest.raises(ValueError, match="must be empty"):
        m.add_state("x", [torch.zeros(1)], reduce="cat")
    with pytest.raises(ValueError, match="needs an empty list"):
        m.add_state("x", torch.zeros(1), reduce="cat")
    with pytest.raises(ValueError, match="identifier"):
        m.add_state("not a name", 0)
    with pytest.raises(TypeError, match="must be a tensor"):
        m.add_state("x", "zero")


# ------------------------------------------------------------------ front doors and forms
def test_front_doors_return_the_forms():
    s1, s2 = pair()
    forms = [(CKA(s1, s2), StreamingCKA), (CKA(s1, s2, kernel="linear", estimator="full"), FullCKA),
             (CKA(s1, s2, estimator="full"), FullCKA), (DeltaCKA(s1, s2), StreamingDeltaCKA),
             (DeltaCKA(s1, s2, estimator="full"), FullDeltaCKA), (FullCKA(s1, s2), FullCKA)]
    for measure, form in forms:
        assert type(measure) is form and isinstance(measure, CKA)
    assert isinstance(DeltaCKA(s1, s2), DeltaCKA) and not isinstance(CKA(s1, s2), DeltaCKA)
    assert FullCKA(s1, s2).estimator == "full" and CKA(s1, s2).estimator == "minibatch"
    with pytest.raises(ValueError, match="estimator must be one of"):
        CKA(s1, s2, estimator="exact")
    with pytest.raises(ValueError, match="StreamingCKA is the estimator='minibatch' form"):
        StreamingCKA(s1, s2, estimator="full")
    with pytest.raises(NotImplementedError, match="abstract"):
        BaseSimilarity(s1, s2)


def test_kept_batch_terms_are_each_batchs_unbiased_hsic():
    s1, s2 = pair()
    m = CKA(s1, s2)
    m.keep_batch_stats = True
    x = data()
    m.compute(DataLoader(x, batch_size=10), progress=False)
    stats = m.batch_stats()
    assert stats["xy"].shape == (4, 3, 3) and stats["xx"].shape == (4, 3)
    np.testing.assert_allclose(stats["xy"].sum(0).numpy(), m.hsic_xy.numpy(), rtol=1e-12)
    for b in range(4):  # layer 'a' of model 1 vs 'head' of model 2, plain float64 reference
        X = acts(s1, x[10 * b:10 * b + 10])[0].double().numpy()
        Y = acts(s2, x[10 * b:10 * b + 10])[2].double().numpy()
        assert float(stats["xy"][b, 0, 2]) == pytest.approx(ref_hsic_u(X @ X.T, Y @ Y.T), rel=1e-6)  # float32 Gram
    assert CKA(s1, s2).batch_stats() == {}  # off by default


# ------------------------------------------------------------------ fail early (issue 8)
@pytest.mark.parametrize("make", [lambda s1, s2: CKA(s1, s2), lambda s1, s2: DeltaCKA(s1, s2),
                                  lambda s1, s2: CKA(s1, s2, estimator="full"),
                                  lambda s1, s2: RSA(s1, s2)])
def test_nan_in_batch_0_stops_at_batch_0(make):
    x = data()
    x[3, 1] = float("nan")
    loader = Counting([x[i:i + 8] for i in range(0, 40, 8)])
    s1, s2 = pair()
    with pytest.raises(ValueError, match=r"layer 'a' of n1 produced NaN or Inf in batch 0"):
        make(s1, s2).compute(loader, progress=False)
    assert loader.taken == 1  # not after every batch ran


def test_nan_in_the_confounder_stops_at_its_batch():
    s1, s2 = pair()
    z = torch.randn(40, 2)
    z[17, 0] = float("inf")
    loader = Counting([(data()[i:i + 8], z[i:i + 8]) for i in range(0, 40, 8)])
    with pytest.raises(ValueError, match="confounder holds NaN or Inf in batch 2"):
        DeltaCKA(s1, s2, confounder=lambda b: b[1]).compute(loader, progress=False)
    assert loader.taken == 3


def test_too_small_last_batch_is_refused_before_the_first_batch():
    s1, s2 = pair()
    calls = []
    s1.model.register_forward_hook(lambda *a: calls.append(1))
    loader = DataLoader(data(34), batch_size=8)  # 4 batches of 8, then one of 2
    with pytest.raises(ValueError, match="batch 4 has 2"):
        CKA(s1, s2).compute(loader, progress=False)
    assert calls == []  # no forward pass ran
    with pytest.raises(ValueError, match="batch 1 has 2"):  # max_batches respected
        CKA(s1, s2).compute(DataLoader(data(10), batch_size=8), progress=False)
    CKA(s1, s2).compute(loader, max_batches=4, progress=False)  # the small batch is never read
    CKA(s1, s2).compute(DataLoader(data(34), batch_size=8, drop_last=True), progress=False)
    # a loader without a length still stops at the batch itself
    gen = Counting([data(34)[i:i + 8] for i in range(0, 34, 8)])
    with pytest.raises(ValueError, match="batch 4 has 2"):
        CKA(s1, s2).compute(gen, progress=False)


def test_nonfinite_flags_are_read_every_few_batches_off_the_cpu(monkeypatch):
    """On a device other than the CPU the flags are read every nonfinite_check_every batches
    (no per-batch host sync); simulated here by counting the reads on the CPU."""
    s1, s2 = pair()
    m = CKA(s1, s2)
    reads = []
    original = m._raise_if_nonfinite
    monkeypatch.setattr(m, "_raise_if_nonfinite", lambda: (reads.append(m._n_batches), original()))
    monkeypatch.setattr(m, "device", torch.device("meta"), raising=False)
    m.nonfinite_check_every = 3
    monkeypatch.setattr(m, "_update_state", lambda f1, f2, b: None)
    monkeypatch.setattr(m, "_size_states", lambda n1, n2: setattr(m, "_nonfinite1", torch.zeros(3)))
    for i in range(7):
        m.update(data()[:8])
    assert reads == [3, 6]


# ------------------------------------------------------------------ one constant-layer warning
@pytest.mark.parametrize("make", [lambda s, t: CKA(s, t), lambda s, t: CKA(s, t, estimator="full"),
                                  lambda s, t: DeltaCKA(s, t)])
def test_zero_initialised_head_gives_one_warning_per_run(make):
    s = SimilarityModel(Net(1, zero_head=True), "vit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = make(s, s).compute(DataLoader(data(), batch_size=8), progress=False)
    constant = [w for w in caught if "constant" in str(w.message)]
    assert len(constant) == 1, [str(w.message) for w in caught]
    text = str(constant[0].message)
    assert text.count("'head'") == 1 and "of vit" in text  # a self-comparison lists it once
    assert np.isnan(res.matrix[2]).all() and np.isnan(res.matrix[:, 2]).all()
    assert len([n for n in res.notes if "constant" in n]) == 1


def test_constant_layers_of_both_models_in_one_warning():
    s = SimilarityModel(Net(1, zero_head=True), "m1")
    t = SimilarityModel(Net(2, zero_head=True), "m2", layers_to_include=["act", "head"])
    with pytest.warns(RuntimeWarning) as caught:
        CKA(s, t).compute(DataLoader(data(), batch_size=8), progress=False)
    messages = [str(w.message) for w in caught if "constant" in str(w.message)]
    assert messages == ["layers 'head' of m1; 'head' of m2 are constant over the samples (HSIC "
                        "with itself is 0): their cka is undefined and set to NaN"]

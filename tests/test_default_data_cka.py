"""Minibatch CKA on the default data estimates the full-data CKA (issue 8, "data that does not lie").

The minibatch estimator sums the unbiased HSIC (Song et al. 2012) over batches. The unbiased HSIC of
a batch is a U-statistic, so over a uniformly random batch of the ``n`` samples its expectation is
the full-data unbiased HSIC, and the minibatch CKA scatters around the full unbiased CKA with a
spread set by the batching. That spread is measured here, independently of the package, by
re-batching the same activations many times (plain NumPy); the package's minibatch CKA on the
default dataset must lie within 4 of those standard deviations of its full unbiased CKA.

In view order (``shuffle=False``) the batches are stratified by photograph, so they are not random
subsets and this argument does not hold; the default (shuffled) order makes it hold.
"""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from simtorch_semantic import CKA, SimilarityModel, default_dataset

from reference import ref_cka_grams, ref_linear_gram


def ref_hsic_u_batched(K):
    """Unbiased HSIC of every layer pair within each batch: ``K [B, L, m, m]`` -> ``[B, L, L]``.

    Song et al. (2012): with zero-diagonal Grams Kt, Lt,
    ``[tr(Kt Lt) + 1'Kt1 1'Lt1 / ((m-1)(m-2)) - 2/(m-2) 1'Kt Lt 1] / (m (m-3))``.
    """
    m = K.shape[-1]
    Kt = K * (1.0 - np.eye(m))
    trace = np.einsum("blij,bkij->blk", Kt, Kt)                 # Grams are symmetric
    total = Kt.sum(axis=(2, 3))                                   # [B, L]
    rows = Kt.sum(axis=3)                                         # [B, L, m]
    cross = np.einsum("bli,bki->blk", rows, rows)
    return (trace + total[:, :, None] * total[:, None, :] / ((m - 1) * (m - 2))
            - 2.0 / (m - 2) * cross) / (m * (m - 3))


def ref_minibatch_cka(grams, order, batch):
    """CKA from unbiased HSIC summed over the consecutive batches of ``order`` (grams ``[L, n, n]``)."""
    idx = np.asarray(order).reshape(-1, batch)                    # [B, m]
    K = grams[:, idx[:, :, None], idx[:, None, :]].transpose(1, 0, 2, 3)  # [B, L, m, m]
    h = ref_hsic_u_batched(K).sum(axis=0)
    d = np.sqrt(np.diag(h))
    return h / np.outer(d, d)


def test_minibatch_cka_on_default_data_is_within_its_sampling_error_of_the_full_estimate():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10))
    model = SimilarityModel(net, layers_to_include=["0", "2", "4", "6", "8"])
    n, batch = 112, 8                                             # 16 views of each of 7 photos
    ds = default_dataset(n=n, size=32, seed=0)
    assert ds.n_distinct_images == 7
    X = torch.stack([ds[i] for i in range(n)])                    # the loader's order
    minibatch = CKA(model, model).compute(DataLoader(X, batch_size=batch), progress=False).matrix
    full = CKA(model, model, estimator="full", unbiased=True).compute(
        DataLoader(X, batch_size=56), progress=False).matrix

    acts = model.capture(X)
    grams = np.stack([ref_linear_gram(a.double().numpy()) for a in acts.values()])  # [L, n, n]
    # the reference reproduces both package estimates
    np.testing.assert_allclose(ref_minibatch_cka(grams, np.arange(n), batch), minibatch, atol=1e-6)
    for i in range(len(grams)):
        for j in range(len(grams)):
            assert abs(ref_cka_grams(grams[i], grams[j], unbiased=True) - full[i, j]) < 1e-6

    # sampling error of the minibatch estimate: its spread over random batchings of these samples
    rng = np.random.default_rng(0)
    draws = np.stack([ref_minibatch_cka(grams, rng.permutation(n), batch) for _ in range(300)])
    sd = draws.std(axis=0)
    off = ~np.eye(len(full), dtype=bool)
    assert (sd[off] > 1e-4).all()
    # the random-batching mean is the full estimate up to the small bias of a ratio
    assert np.all(np.abs(draws.mean(axis=0) - full)[off] < sd[off])
    z = (minibatch - full)[off] / sd[off]
    assert np.all(np.abs(z) < 4.0), z

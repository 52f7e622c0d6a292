"""kNN measures (functional/neighbors.py) against plain NumPy / scikit-learn references."""
import math

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from sklearn.neighbors import NearestNeighbors

from simtorch_semantic.functional import neighbors as nb

from catalogue_data import KINDS, make_pair  # noqa: E402


# --------------------------------------------------------------------------- references
def ref_knn(X, k, metric="cosine"):
    """k nearest neighbours of every row (self excluded), nearest first, by scikit-learn."""
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute").fit(X)
    _, idx = nn.kneighbors(X)
    out = []
    for i, row in enumerate(idx):
        row = [j for j in row if j != i][:k]
        out.append(row)
    return np.array(out)


def ref_jaccard(X, Y, k, metric="cosine"):
    a, b = ref_knn(X, k, metric), ref_knn(Y, k, metric)
    return float(np.mean([len(set(r) & set(s)) / len(set(r) | set(s)) for r, s in zip(a, b)]))


def ref_mutual(X, Y, k, metric="cosine"):
    a, b = ref_knn(X, k, metric), ref_knn(Y, k, metric)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b)]))


def ref_rank_similarity(X, Y, k, metric="cosine"):
    a, b = ref_knn(X, k, metric), ref_knn(Y, k, metric)
    scores = []
    for r, s in zip(a, b):
        common = set(r) & set(s)
        if not common:
            scores.append(0.0)
            continue
        total = 0.0
        for j in common:
            rx = list(r).index(j) + 1
            ry = list(s).index(j) + 1
            total += 2.0 / ((1 + abs(rx - ry)) * (rx + ry))
        scores.append(total / sum(1.0 / m for m in range(1, len(common) + 1)))
    return float(np.mean(scores))


def ref_second_order(X, Y, k, use_distance=False):
    a, b = ref_knn(X, k), ref_knn(Y, k)
    Sx = 1 - scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(X, "cosine"))
    Sy = 1 - scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(Y, "cosine"))
    if use_distance:
        Sx, Sy = 1 - Sx, 1 - Sy
    vals = []
    for i, (r, s) in enumerate(zip(a, b)):
        u = sorted(set(r) | set(s))
        vals.append(1 - scipy.spatial.distance.cosine(Sx[i, u], Sy[i, u]))
    return float(np.mean(vals))


def ref_hsic_u(K, L):
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ K @ L @ one)) / (n * (n - 3))


def ref_hsic_b(K, L):
    n = K.shape[0]
    H = np.eye(n) - 1 / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_cknna(X, Y, k, unbiased=True, normalize=True):
    if normalize:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    K, L = X @ X.T, Y @ Y.T
    n = len(X)

    def mask(G):
        M = np.zeros((n, n))
        for i in range(n):
            order = [j for j in np.argsort(-G[i], kind="stable") if j != i][:k]
            M[i, order] = 1
        return M

    hs = ref_hsic_u if unbiased else ref_hsic_b
    mk, ml = mask(K), mask(L)
    m = mk * ml
    return hs(m * K, m * L) / math.sqrt(hs(mk * K, mk * K) * hs(ml * L, ml * L))


# --------------------------------------------------------------------------- comparisons
KIND_DTYPES = [(k, d) for k in KINDS for d in ("float64", "float32")]


def _inputs(kind, dtype, n=40):
    X, Y = make_pair(kind, n=n)
    if dtype == "float32":
        X, Y = X.astype(np.float32), Y.astype(np.float32)
    return X, Y, X.astype(np.float64), Y.astype(np.float64)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@pytest.mark.parametrize("k", [1, 5])
def test_jaccard_mutual_rank_match_references(kind, dtype, k):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert nb.jaccard_knn(X, Y, k=k) == pytest.approx(ref_jaccard(X64, Y64, k), abs=1e-12)
    assert nb.mutual_knn(X, Y, k=k) == pytest.approx(ref_mutual(X64, Y64, k), abs=1e-12)
    assert nb.rank_similarity(X, Y, k=k) == pytest.approx(ref_rank_similarity(X64, Y64, k), abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_euclidean_metric_matches_reference(kind):
    X, Y = make_pair(kind)
    assert nb.jaccard_knn(X, Y, k=4, metric="euclidean") == pytest.approx(
        ref_jaccard(X, Y, 4, "euclidean"), abs=1e-12)
    assert nb.rank_similarity(X, Y, k=4, metric="Euclidean") == pytest.approx(
        ref_rank_similarity(X, Y, 4, "euclidean"), abs=1e-12)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_second_order_cosine_matches_reference(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert nb.second_order_cosine(X, Y, k=5) == pytest.approx(ref_second_order(X64, Y64, 5), abs=1e-9)
    assert nb.second_order_cosine(X, Y, k=5, vectors="distance") == pytest.approx(
        ref_second_order(X64, Y64, 5, use_distance=True), abs=1e-9)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_cknna_matches_reference(kind, dtype):
    X, Y, X64, Y64 = _inputs(kind, dtype)
    assert nb.cknna(X, Y, k=8) == pytest.approx(ref_cknna(X64, Y64, 8), abs=1e-9)
    assert nb.cknna(X, Y, k=8, unbiased=False, normalize=False) == pytest.approx(
        ref_cknna(X64, Y64, 8, unbiased=False, normalize=False), abs=1e-9)


def test_cknna_with_all_neighbours_is_unbiased_cka():
    """k = n - 1 keeps every pair: CKNNA is linear CKA (unbiased HSIC) of the normalised rows."""
    X, Y = make_pair("random", n=20)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    K, L = Xn @ Xn.T, Yn @ Yn.T
    cka = ref_hsic_u(K, L) / math.sqrt(ref_hsic_u(K, K) * ref_hsic_u(L, L))
    assert nb.cknna(X, Y, k=19) == pytest.approx(cka, abs=1e-10)


def test_knn_values_on_a_hand_made_example():
    # four points on a line: neighbours of 0 are (1, 2), of 3 are (2, 1) ...
    X = np.array([[0.0], [1.0], [3.0], [7.0]])
    Y = np.array([[0.0], [1.0], [7.0], [3.0]])  # samples 2 and 3 swapped
    # k=1: X nn = [1, 0, 1, 2]; Y nn = [1, 0, 3, 1] -> Jaccard = mean(1, 1, 0, 0)
    assert nb.jaccard_knn(X, Y, k=1, metric="euclidean") == pytest.approx(0.5)
    assert nb.mutual_knn(X, Y, k=1, metric="euclidean") == pytest.approx(0.5)


def test_prepare_score_equal_plain_functions():
    X, Y = make_pair("real")
    gx, gy = nb.knn_prepare(X, k=6), nb.knn_prepare(Y, k=6)
    assert nb.jaccard_knn_score(gx, gy) == nb.jaccard_knn(X, Y, k=6)
    assert nb.mutual_knn_score(gx, gy) == nb.mutual_knn(X, Y, k=6)
    assert nb.rank_similarity_score(gx, gy) == nb.rank_similarity(X, Y, k=6)
    sx, sy = nb.second_order_cosine_prepare(X, k=6), nb.second_order_cosine_prepare(Y, k=6)
    assert nb.second_order_cosine_score(sx, sy) == nb.second_order_cosine(X, Y, k=6)
    cx, cy = nb.cknna_prepare(X, k=6), nb.cknna_prepare(Y, k=6)
    assert nb.cknna_score(cx, cy) == nb.cknna(X, Y, k=6)


def test_torch_input_and_trailing_dimensions():
    X, Y = make_pair("random", n=30)
    Xt = torch.as_tensor(X).reshape(30, 3, 4)
    assert nb.mutual_knn(Xt, torch.as_tensor(Y), k=3) == pytest.approx(ref_mutual(X, Y, 3), abs=1e-12)


# --------------------------------------------------------------------------- degenerate / errors
def test_k_too_large_for_n():
    X, Y = make_pair("random", n=6)
    for fn in (nb.jaccard_knn, nb.mutual_knn, nb.rank_similarity, nb.second_order_cosine, nb.cknna):
        with pytest.raises(ValueError, match=r"k=10 neighbours need at least k \+ 1 = 11 samples, got n=6"):
            fn(X, Y)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        nb.jaccard_knn(X, Y, k=0)


def test_constant_and_zero_rows():
    X, Y = make_pair("random", n=20)
    for fn in (nb.jaccard_knn, nb.mutual_knn, nb.rank_similarity, nb.second_order_cosine, nb.cknna):
        with pytest.raises(ValueError, match="all 20 samples identical"):
            fn(np.ones_like(X), Y, k=3)
    Z = X.copy()
    Z[4] = 0
    with pytest.raises(ValueError, match=r"rows \[4\] of X are all zeros.*metric='euclidean'"):
        nb.jaccard_knn(Z, Y, k=3)
    nb.jaccard_knn(Z, Y, k=3, metric="euclidean")  # fine with distances


def test_bad_options():
    X, Y = make_pair("random", n=20)
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        nb.mutual_knn(X, Y, metric="manhattan")
    with pytest.raises(ValueError, match="unknown vectors"):
        nb.second_order_cosine(X, Y, k=3, vectors="ranks")
    with pytest.raises(ValueError, match="normalize must be True or False"):
        nb.cknna(X, Y, k=3, normalize=1)
    with pytest.raises(ValueError, match="same samples"):
        nb.jaccard_knn(X, Y[:10], k=3)
    with pytest.raises(ValueError, match="different k or metric"):
        nb.jaccard_knn_score(nb.knn_prepare(X, k=3), nb.knn_prepare(Y, k=4))
    with pytest.raises(ValueError, match="at least 4 samples"):
        nb.cknna(X[:3], Y[:3], k=1)


def test_cknna_nan_when_self_term_not_positive():
    # orthonormal samples: every off-diagonal kernel value is 0, so the masked self-HSIC is 0
    X = np.eye(6)
    Y = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.warns(RuntimeWarning, match="returned as NaN") as rec:
        assert math.isnan(nb.cknna(X, Y, k=2))
    assert len(rec) == 1

"""Plain float64 NumPy references for the CKA family, shared by the tests.

Written from the formulas (Kornblith et al. 2019; Song et al. 2012), independently of the package:
no import from simtorch_semantic here.
"""
import math

import numpy as np


def ref_H(n):
    return np.eye(n) - np.ones((n, n)) / n


def ref_hsic_b(K, L):
    n = K.shape[0]
    H = ref_H(n)
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_hsic_u(K, L):
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    trace_KL = np.sum(Kt * Lt.T)  # tr(Kt Lt) without an n^3 product
    return (trace_KL + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * ((one @ Kt) @ (Lt @ one))) / (n * (n - 3))


def ref_cka_grams(K, L, unbiased=False):
    h = ref_hsic_u if unbiased else ref_hsic_b
    return h(K, L) / math.sqrt(h(K, K) * h(L, L))


def ref_linear_gram(X):
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    return X @ X.T


def ref_sq_dists(X):
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    return ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)


def ref_rbf_gram(X, sigma_frac=0.8, sigma=None):
    D = ref_sq_dists(X)
    if sigma is None:
        iu = np.triu_indices(len(D), 1)
        d = np.sqrt(D[iu])
        sigma = sigma_frac * np.median(d[d > 0])
    return np.exp(-D / (2 * sigma ** 2))


def ref_linear_cka(X, Y, unbiased=False):
    return ref_cka_grams(ref_linear_gram(X), ref_linear_gram(Y), unbiased)


def ref_rbf_cka(X, Y, sigma_frac=0.8, sigma=None, unbiased=False):
    return ref_cka_grams(ref_rbf_gram(X, sigma_frac, sigma), ref_rbf_gram(Y, sigma_frac, sigma),
                         unbiased)

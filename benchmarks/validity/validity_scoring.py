"""Scores of the validity tests, after ReSi (Klabunde et al., ICLR 2025) and Ding et al. (NeurIPS 2021).

All functions take *similarities oriented so that higher = more similar* (a distance ``d`` enters
as ``-d``; see :func:`oriented`), as NumPy float64 arrays.

* Rank correlation (tests 1-2): Spearman's rho between the dissimilarity ``-s`` of model pairs and
  a ground-truth difference of their behaviour (accuracy, JSD, disagreement); a good measure has
  rho near 1. The p-value is one-sided (H1: rho > 0) from ``n_resamples`` random pairings
  (a permutation test, as ReSi, since the pairs are few): ``(1 + #{rho_perm >= rho}) /
  (1 + n_resamples)``.
* Group separation (tests 3-5): for every group g, positives are the similarities of two models
  of g, negatives those of a model of g and a model outside it (both orders). The score is the
  area under the precision-recall curve (average precision; 1 = perfect separation) averaged over
  groups; the violation rate (fraction of (positive, negative) pairs with positive <= negative)
  is reported beside it.
* Ordered violations (tests 6-7): the similarity must fall as a distance grows (layer distance,
  number of deleted principal components); the violation rate is the fraction of comparisons
  ``(near, far)`` with ``s_near <= s_far``. Ties count as violations: a measure that cannot tell
  the two apart fails the comparison (ReSi counts ties as violations in its group tests).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["oriented", "rankdata", "spearman", "spearman_permutation", "average_precision",
           "group_separation", "chance_auprc", "layer_monotonicity", "ordered_violations"]


def oriented(values, higher_is_similar: bool) -> np.ndarray:
    """``values`` as float64 with the sign flipped for distances (higher = more similar)."""
    v = np.asarray(values, dtype=np.float64)
    return v if higher_is_similar else -v


def rankdata(a) -> np.ndarray:
    """Average ranks (1-based) of ``a [..., m]`` along the last axis; ties get their mean rank."""
    from scipy.stats import rankdata as _rank

    return _rank(np.asarray(a, dtype=np.float64), axis=-1)


def _pearson_rows(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``A [k, m]`` with ``b [m]`` (NaN for a constant row)."""
    Ac = A - A.mean(axis=-1, keepdims=True)
    bc = b - b.mean()
    den = np.sqrt((Ac * Ac).sum(axis=-1) * (bc * bc).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (Ac @ bc) / np.where(den > 0, den, 1.0), np.nan)


def spearman(x, y) -> float:
    """Spearman's rho of ``x [m]`` and ``y [m]`` (NaN when either is constant)."""
    return float(_pearson_rows(rankdata(np.asarray(x))[None, :], rankdata(np.asarray(y)))[0])


def spearman_permutation(dissimilarity, difference, n_resamples: int = 999, seed: int = 0):
    """``(rho, p)``: Spearman's rho of ``dissimilarity [m]`` and ``difference [m]`` and its
    one-sided permutation p-value (H1: rho > 0) from ``n_resamples`` shuffles of the pairing."""
    d = np.asarray(dissimilarity, dtype=np.float64)
    f = np.asarray(difference, dtype=np.float64)
    if d.shape != f.shape or d.ndim != 1:
        raise ValueError(f"dissimilarity and difference must be 1-D of the same length, got "
                         f"{d.shape} and {f.shape}")
    if len(d) < 3:
        return math.nan, math.nan
    rd, rf = rankdata(d), rankdata(f)
    rho = float(_pearson_rows(rd[None, :], rf)[0])
    if not math.isfinite(rho):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    perm = rng.permuted(np.tile(rd, (n_resamples, 1)), axis=1)
    null = _pearson_rows(perm, rf)
    p = (1.0 + float(np.sum(null >= rho - 1e-12))) / (1.0 + n_resamples)
    return rho, p


def average_precision(positives, negatives) -> float:
    """Area under the precision-recall curve (average precision, step-wise, as scikit-learn's
    ``average_precision_score``) of scores ``positives [p]`` (label 1) and ``negatives [q]``
    (label 0); ties of a score are one threshold."""
    from sklearn.metrics import average_precision_score

    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    return float(average_precision_score(y, np.concatenate([pos, neg])))


def _violation_rate(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    return float(np.mean(pos[:, None] <= neg[None, :]))


def group_separation(S, groups) -> dict:
    """Group separation of the models behind ``S [m, m]`` (oriented similarities; ``S[i, j]``
    compares model i with model j; the diagonal is ignored; NaN entries are dropped).

    ``groups [m]``: a group label per model. Returns ``{"auprc", "violation_rate",
    "n_comparisons"}``: the means over groups (NaN when a group has no finite positive or
    negative) and the number of finite off-diagonal entries used.
    """
    S = np.asarray(S, dtype=np.float64)
    g = np.asarray(groups)
    m = len(g)
    off = ~np.eye(m, dtype=bool)
    aps, vrs = [], []
    for label in list(dict.fromkeys(g.tolist())):
        inside = g == label
        pos_mask = inside[:, None] & inside[None, :] & off
        neg_mask = (inside[:, None] & ~inside[None, :]) | (~inside[:, None] & inside[None, :])
        pos, neg = S[pos_mask], S[neg_mask]
        pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
        if len(pos) == 0 or len(neg) == 0:
            return {"auprc": math.nan, "violation_rate": math.nan,
                    "n_comparisons": int(np.isfinite(S[off]).sum())}
        aps.append(average_precision(pos, neg))
        vrs.append(_violation_rate(pos, neg))
    return {"auprc": float(np.mean(aps)), "violation_rate": float(np.mean(vrs)),
            "n_comparisons": int(np.isfinite(S[off]).sum())}


def chance_auprc(groups) -> float:
    """AUPRC of a measure that orders pairs at random: the mean over groups of the share of
    positives (same-group pairs) among the pairs that involve the group."""
    g = np.asarray(groups)
    shares = []
    for label in dict.fromkeys(g.tolist()):
        k, m = int((g == label).sum()), len(g)
        pos, neg = k * (k - 1), 2 * k * (m - k)
        shares.append(pos / (pos + neg))
    return float(np.mean(shares))


def layer_monotonicity(S) -> dict:
    """Monotonicity of the layers of one model, ``S [L, L]`` oriented similarities of layer i
    (first argument) to layer j, layers in forward order.

    For every source layer i and two targets j, k on the same side of i with
    ``|j - i| < |k - i|``, a violation is ``S[i, j] <= S[i, k]``. Returns ``{"violation_rate",
    "spearman", "n_comparisons"}``; ``spearman`` is the mean over sources and sides of the
    Spearman correlation between ``-S[i, targets]`` and the layer distance (ReSi's second
    monotonicity figure; NaN where fewer than 2 targets).
    """
    S = np.asarray(S, dtype=np.float64)
    L = S.shape[0]
    viol = total = 0
    rhos = []
    for i in range(L):
        for side in (range(i + 1, L), range(i - 1, -1, -1)):     # nearest first
            targets = [j for j in side if math.isfinite(S[i, j])]
            s = np.array([S[i, j] for j in targets])
            for a in range(len(targets)):
                for b in range(a + 1, len(targets)):
                    total += 1
                    viol += int(s[a] <= s[b])
            if len(targets) >= 2:
                dist = np.array([abs(j - i) for j in targets], dtype=np.float64)
                rhos.append(spearman(-s, dist))
    rhos = [r for r in rhos if math.isfinite(r)]
    return {"violation_rate": viol / total if total else math.nan,
            "spearman": float(np.mean(rhos)) if rhos else math.nan,
            "n_comparisons": total}


def ordered_violations(s) -> dict:
    """``s [K+1]``: oriented similarities that should strictly fall with the index (``s[k]``:
    the reference against its copy with the top ``k`` principal components removed). Returns
    ``{"violation_rate", "spearman", "n_comparisons"}`` over all index pairs ``k < k'`` with both
    finite (violation: ``s[k] <= s[k']``); ``spearman`` correlates ``-s`` with ``k``."""
    s = np.asarray(s, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(s))
    v = s[idx]
    if len(v) < 2:
        return {"violation_rate": math.nan, "spearman": math.nan, "n_comparisons": 0}
    upper = np.triu(np.ones((len(v), len(v)), dtype=bool), 1)
    comp = v[:, None] <= v[None, :]
    return {"violation_rate": float(comp[upper].mean()),
            "spearman": spearman(-v, idx.astype(np.float64)),
            "n_comparisons": int(upper.sum())}

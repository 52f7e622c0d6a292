r"""Statistical inference for layer x layer matrices: bootstrap intervals, permutation tests,
family-wise adjusted p-values and calibrated scores.

Everything here works on whole matrices at once: a statistic's ``R`` replicates are a tensor
``[R, a, b]`` (or ``[R, ...]``), and every function is vectorised over the trailing cells.

Bootstrap intervals (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13-14)
    *Percentile*: the ``(1 - c)/2`` and ``(1 + c)/2`` quantiles of the replicates, for
    confidence ``c``. *BCa* (bias-corrected and accelerated): with the bias correction
    :math:`z_0 = \Phi^{-1}(\#\{\theta^*_r < \hat\theta\} / R)` (ties count one half) and the
    acceleration from jackknife values :math:`\theta_{(i)}` with mean :math:`\bar\theta`,
    :math:`a = \sum_i (\bar\theta - \theta_{(i)})^3 / (6 [\sum_i (\bar\theta - \theta_{(i)})^2]^{3/2})`,
    the interval is the replicates' quantiles at
    :math:`\Phi(z_0 + (z_0 + z_\alpha) / (1 - a (z_0 + z_\alpha)))` for
    :math:`z_\alpha = \Phi^{-1}((1 \mp c)/2)`. Quantiles interpolate linearly (NumPy's default);
    NaN replicates (e.g. a resample that makes a layer constant) are left out per cell.

Streaming CKA bootstrap
    The minibatch CKA (Nguyen et al. 2021) is ``sum_b xy_b / sqrt(sum_b xx_b * sum_b yy_b)``
    over per-batch unbiased HSIC terms. Resampling *batches* with replacement is a count matrix
    ``C [R, B]`` (multinomial, each row sums to B) times the per-batch terms: one matrix product
    ``C @ xy.reshape(B, -1)`` gives every replicate's sums for every layer pair.

Permutation nulls
    The null pairs model 1's representation of sample ``i`` with model 2's representation of
    another sample: HSIC(K, P L P^T) for a random permutation P. Self terms do not change, and
    the HSIC estimators commute with permutations (``P H P^T = H``; zeroed diagonals, row sums
    and totals permute along), so only the cross term is recomputed: the prepared Grams of the
    side with fewer layers are gathered with ``[n*n]`` flat indices for a chunk of permutations,
    and one ``[P*a, n*n] @ [n*n, b]`` product gives every pair for every permutation. For the
    streaming CKA every batch gets its own permutation (samples are only paired within a batch)
    and the cross terms are summed over batches like the observed ones.

Deconfounded CKA (dCKA, :mod:`~simtorch_semantic.functional.dcka`)
    *Bootstrap*: the confounder is resampled with the samples and the regression on it solved
    again in every replicate: the streaming form resamples batches of all six per-batch terms
    (``xy, xx, yy, xz, yz, zz``; :func:`streaming_bootstrap_terms`, then
    :func:`~simtorch_semantic.functional.dcka.dcka_from_hsic`), the full form gathers the rows and
    columns of every Gram *and* of the confounder's Gram. *Permutation null*: model 2's Gram is
    permuted together with its confounder, i.e. its deconfounded Gram is permuted:
    :math:`\langle K - \alpha K_Z,\; P (L - \beta K_Z) P^\top\rangle` against the unchanged
    residual self terms (the coefficients do not change when ``L`` and ``K_Z`` move together).
    The full form permutes the residual Grams directly; the streaming form only learns
    :math:`\alpha, \beta` at the end, so it permutes ``[L; K_Z]`` against ``[K; K_Z]`` in every
    batch (:func:`dcka_extended_grams`), sums the ``[R, a+1, b+1]`` cross terms and combines them
    by bilinearity (:func:`dcka_null_from_cross`). The null is exact when model 2's (deconfounded
    Gram, confounder) pairs are exchangeable against model 1's; see docs/inference.md for where
    it is not (a confounder both models read; the biased HSIC).

p-values (Phipson & Smyth 2010)
    ``(1 + #{null_r >= observed}) / (1 + R)`` for similarities (``<=`` for distances), never 0.

Family-wise adjusted p-values (Westfall & Young 1993, single-step max-T)
    Users read the maximum of a matrix, so each cell is compared with the distribution of the
    *maximum over all cells* of the null. Cells have different null distributions (biased CKA's
    null mean depends on the layers' widths), so every statistic is first standardised by its
    own cell's null mean and standard deviation: ``t = (s - mean_null) / sd_null`` (sign flipped
    for distances), and ``p_adj = (1 + #{max_cells t_null_r >= t_obs}) / (1 + R)``. This controls
    the family-wise error rate over the whole matrix (strong control under subset pivotality).

Calibrated scores
    For similarities bounded above by 1 (CKA, RSA correlations, CCA, semantic CKA):
    ``(score - null_mean) / (1 - null_mean)``: 0 at chance level, 1 for a perfect match, so
    biased CKA of independent wide representations (0.97 at n = 32, D = 1000) reads as ~0.
    For distances whose best value is 0 (Procrustes disparity, angular distances):
    ``(null_mean - score) / null_mean``: 0 at chance, 1 for distance 0. :func:`null_z_scores`
    gives the plain z-score ``(score - null_mean) / null_sd`` for any measure.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ._validation import to_tensor
from .cka import cka_from_hsic
from .dcka import DeconfoundedHSIC, dcka_from_hsic, dcka_hsic_terms, deconfound_gram
from .kernels import center_gram

__all__ = [
    "INTERVAL_METHODS", "make_generator", "bootstrap_counts", "bootstrap_indices",
    "random_permutations", "percentile_interval", "bca_interval", "bootstrap_interval",
    "streaming_bootstrap_terms", "streaming_jackknife_terms", "cka_from_terms",
    "streaming_bootstrap_hsic", "streaming_cka_bootstrap", "streaming_cka_jackknife",
    "streaming_dcka_bootstrap", "streaming_dcka_jackknife", "dcka_extended_grams",
    "dcka_null_from_cross", "permuted_hsic_cross", "streaming_cka_permutation_null",
    "streaming_dcka_permutation_null", "cka_bootstrap_from_grams",
    "cka_permutation_null_from_grams", "dcka_bootstrap_from_grams",
    "dcka_permutation_null_from_grams", "permutation_p_values", "westfall_young_p_values",
    "calibrated_scores", "null_z_scores",
]

INTERVAL_METHODS = ("percentile", "bca")

#: bytes one gathered chunk of permuted Grams may take
_CHUNK_BYTES = 64 * 2 ** 20


# ----------------------------------------------------------------------------- HSIC pieces
def _stack(Ks, name: str) -> torch.Tensor:
    """``[a, n, n]`` Grams (tensor, array or sequence of ``[n, n]``) as float64."""
    if isinstance(Ks, (list, tuple)) and Ks and isinstance(Ks[0], torch.Tensor):
        Ks = torch.stack([k.detach() for k in Ks])
    K = _f64(Ks, name)
    if K.dim() != 3 or K.shape[-1] != K.shape[-2]:
        raise ValueError(f"{name} must be a stack of square Gram matrices [count, n, n], got "
                         f"shape {tuple(K.shape)}")
    return K


def _prep(K: torch.Tensor, unbiased: bool):
    """Flattened Grams ready for cross products, as in Song et al.'s unbiased HSIC (zeroed
    diagonal, row sums ``r`` and totals ``s``) or the biased one (double-centred Gram)."""
    n = K.shape[-1]
    if unbiased:
        K = K.masked_fill(torch.eye(n, dtype=torch.bool, device=K.device), 0.0)
        r = K.sum(dim=-1)
        return K.reshape(K.shape[0], n * n), r, r.sum(dim=-1)
    return center_gram(K).reshape(K.shape[0], n * n), None, None


def _consts(n: int, unbiased: bool):
    """(c1, c2, norm) of the HSIC estimator for n samples (module docstring of hsic.py)."""
    if unbiased:
        return 1.0 / float((n - 1) * (n - 2)), 2.0 / float(n - 2), 1.0 / float(n * (n - 3))
    return 0.0, 0.0, 1.0 / float((n - 1) ** 2)


def _cross(P, Q, n: int, unbiased: bool) -> torch.Tensor:
    c1, c2, norm = _consts(n, unbiased)
    out = P[0] @ Q[0].T
    if unbiased:
        out = out + c1 * P[2][:, None] * Q[2][None, :] - c2 * (P[1] @ Q[1].T)
    return out * norm


def _self(P, n: int, unbiased: bool) -> torch.Tensor:
    c1, c2, norm = _consts(n, unbiased)
    out = (P[0] * P[0]).sum(-1)
    if unbiased:
        out = out + c1 * P[2] * P[2] - c2 * (P[1] * P[1]).sum(-1)
    return out * norm


# ----------------------------------------------------------------------------- checks
def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_confidence(confidence) -> float:
    if (isinstance(confidence, bool) or not isinstance(confidence, numbers.Real)
            or not 0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), "
                         f"got {confidence!r}")
    return float(confidence)


def _f64_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return to_tensor(x, name).to(torch.float64).numpy()


def _f64(x, name: str, device=None) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else to_tensor(x, name)
    t = t.to(torch.float64)
    return t if device is None else t.to(device)


# ----------------------------------------------------------------------------- random draws
def make_generator(seed=None, device="cpu") -> tuple[torch.Generator, int]:
    """A torch Generator on ``device`` seeded with ``seed`` (a fresh random seed when None).

    Returns ``(generator, seed)`` so the seed actually used can be recorded with a result.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen, int(seed)


def bootstrap_counts(n_units: int, n_bootstrap: int, generator=None, device="cpu") -> torch.Tensor:
    """How often each of ``n_units`` units is drawn in each of ``n_bootstrap`` resamples.

    Returns float64 ``[n_bootstrap, n_units]``; every row sums to ``n_units`` (drawing
    ``n_units`` times with replacement).
    """
    n_units = _check_count(n_units, "n_units")
    idx = bootstrap_indices(n_units, n_bootstrap, generator, device)
    counts = torch.zeros(idx.shape[0], n_units, dtype=torch.float64, device=idx.device)
    return counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))


def bootstrap_indices(n: int, n_bootstrap: int, generator=None, device="cpu") -> torch.Tensor:
    """``[n_bootstrap, n]`` int64 sample indices drawn uniformly with replacement."""
    n = _check_count(n, "n")
    n_bootstrap = _check_count(n_bootstrap, "n_bootstrap")
    device = generator.device if generator is not None else torch.device(device)
    return torch.randint(0, n, (n_bootstrap, n), generator=generator, device=device)


def random_permutations(n: int, count: int, generator=None, device="cpu") -> torch.Tensor:
    """``[count, n]`` int64: each row a uniformly random permutation of ``range(n)``."""
    n = _check_count(n, "n")
    count = _check_count(count, "n_permutations")
    device = generator.device if generator is not None else torch.device(device)
    return torch.rand(count, n, generator=generator, device=device).argsort(dim=1)


# ----------------------------------------------------------------------------- intervals
def _sorted_valid(replicates: np.ndarray):
    """Replicates sorted along axis 0 (NaN last) and the number of valid ones per cell."""
    reps = np.sort(replicates, axis=0)
    valid = np.isfinite(replicates).sum(axis=0)
    return reps, valid


def _quantile_per_cell(reps: np.ndarray, valid: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantile ``q`` (per cell) of sorted ``reps [R, ...]`` with ``valid``
    finite values per cell at the front; NaN where a cell has no valid replicate."""
    q = np.broadcast_to(q, valid.shape)
    pos = q * np.maximum(valid - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(valid - 1, 0))
    frac = pos - lo
    a = np.take_along_axis(reps, lo[None], axis=0)[0]
    b = np.take_along_axis(reps, hi[None], axis=0)[0]
    out = a + (b - a) * frac
    return np.where(valid > 0, out, np.nan)


def percentile_interval(replicates, confidence: float = 0.95):
    """Percentile bootstrap interval of every cell.

    ``replicates [R, ...]`` (torch or NumPy): R bootstrap values of a statistic of any shape.
    Returns ``(low, high)`` float64 NumPy arrays of the trailing shape: the ``(1-c)/2`` and
    ``(1+c)/2`` quantiles over the finite replicates (NaN where none is finite).
    """
    confidence = _check_confidence(confidence)
    reps = _f64_numpy(replicates, "replicates")
    if reps.ndim < 1 or reps.shape[0] < 2:
        raise ValueError(f"replicates must have shape [R, ...] with R >= 2 bootstrap values, "
                         f"got shape {reps.shape}")
    reps, valid = _sorted_valid(reps)
    alpha = (1.0 - confidence) / 2.0
    return (_quantile_per_cell(reps, valid, np.float64(alpha)),
            _quantile_per_cell(reps, valid, np.float64(1.0 - alpha)))


def bca_interval(replicates, estimate, jackknife, confidence: float = 0.95):
    """BCa bootstrap interval of every cell (Efron 1987; formula in the module docstring).

    ``replicates [R, ...]``: bootstrap values; ``estimate [...]``: the statistic on the full
    data; ``jackknife [m, ...]``: the statistic with each of ``m >= 2`` units (samples, batches
    or groups of samples) left out in turn. Returns ``(low, high)`` float64 NumPy arrays.
    Where the acceleration is undefined (all jackknife values equal) it is 0; the bias
    correction's proportion is clipped to ``[1/(2R), 1 - 1/(2R)]``.
    """
    confidence = _check_confidence(confidence)
    reps = _f64_numpy(replicates, "replicates")
    est = _f64_numpy(estimate, "estimate")
    jack = _f64_numpy(jackknife, "jackknife")
    if reps.ndim < 1 or reps.shape[0] < 2:
        raise ValueError(f"replicates must have shape [R, ...] with R >= 2, got {reps.shape}")
    if est.shape != reps.shape[1:]:
        raise ValueError(f"estimate has shape {est.shape} but replicates are {reps.shape}; "
                         "estimate must have the replicates' trailing shape")
    if jack.ndim < 1 or jack.shape[1:] != est.shape or jack.shape[0] < 2:
        raise ValueError(f"jackknife must have shape [m, *{est.shape}] with m >= 2 "
                         f"leave-one-out values, got {jack.shape}")
    valid = np.isfinite(reps)
    k = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = ((reps < est) & valid).sum(axis=0) + 0.5 * ((reps == est) & valid).sum(axis=0)
        prop = np.clip(below / np.maximum(k, 1), 0.5 / np.maximum(k, 1), 1 - 0.5 / np.maximum(k, 1))
    z0 = torch.special.ndtri(torch.from_numpy(prop)).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.nanmean(jack, axis=0) - jack
        num = np.nansum(d ** 3, axis=0)
        den = 6.0 * np.nansum(d ** 2, axis=0) ** 1.5
        accel = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    alpha = (1.0 - confidence) / 2.0
    out = []
    for level in (alpha, 1.0 - alpha):
        z = float(torch.special.ndtri(torch.tensor(level, dtype=torch.float64)))
        with np.errstate(invalid="ignore", divide="ignore"):
            adj = torch.special.ndtr(torch.from_numpy(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))).numpy()
        adj = np.nan_to_num(adj, nan=level)
        sorted_reps, _ = _sorted_valid(reps)
        out.append(_quantile_per_cell(sorted_reps, k, adj))
    bad = ~np.isfinite(est)
    return tuple(np.where(bad, np.nan, o) for o in out)


def bootstrap_interval(replicates, confidence: float = 0.95, method: str = "percentile",
                       estimate=None, jackknife=None):
    """Percentile or BCa interval (``method`` in :data:`INTERVAL_METHODS`); BCa needs
    ``estimate`` and ``jackknife``. Returns ``(low, high)`` float64 NumPy arrays."""
    if method == "percentile":
        return percentile_interval(replicates, confidence)
    if method == "bca":
        if estimate is None or jackknife is None:
            raise ValueError("method='bca' needs the full-data estimate and the jackknife values")
        return bca_interval(replicates, estimate, jackknife, confidence)
    raise ValueError(f"interval method must be one of {INTERVAL_METHODS}, got {method!r}")


# ----------------------------------------------------------------------------- streaming CKA
def _check_terms(xy, xx, yy):
    xy = _f64(xy, "xy")
    xx = _f64(xx, "xx", xy.device)
    yy = _f64(yy, "yy", xy.device)
    if xy.dim() != 3 or xx.dim() != 2 or yy.dim() != 2 or xx.shape != xy.shape[:2] \
            or yy.shape != (xy.shape[0], xy.shape[2]):
        raise ValueError(
            f"per-batch HSIC terms must be xy [B, L1, L2], xx [B, L1], yy [B, L2]; got shapes "
            f"{tuple(xy.shape)}, {tuple(xx.shape)}, {tuple(yy.shape)}")
    return xy, xx, yy


def _check_batch_terms(terms) -> dict:
    """Per-batch terms ``{name: [B, ...]}`` as float64 tensors on one device, same ``B``."""
    if not hasattr(terms, "items") or not terms:
        raise TypeError("terms must be a non-empty mapping of per-batch HSIC terms, e.g. "
                        "{'xy': [B, L1, L2], 'xx': [B, L1], 'yy': [B, L2]}")
    out, device = {}, None
    for name, value in terms.items():
        out[name] = _f64(value, name, device)
        device = out[name].device
    sizes = {name: (v.shape[0] if v.dim() else None) for name, v in out.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"every per-batch term needs the same leading batch dimension B; got "
                         f"{ {n: tuple(v.shape) for n, v in out.items()} }")
    return out


def streaming_bootstrap_terms(terms, counts) -> dict:
    """Resampled sums of per-batch terms: ``counts [R, B] @ term`` for every term.

    ``terms``: mapping ``name -> [B, ...]`` float64 per-batch terms (CKA's ``xy, xx, yy``; dCKA's
    six); ``counts [R, B]`` (how often each batch is drawn). Returns ``name -> [R, ...]``: one
    matrix product per term, no loop over replicates or layer pairs.
    """
    t = _check_batch_terms(terms)
    B = next(iter(t.values())).shape[0]
    counts = _f64(counts, "counts", next(iter(t.values())).device)
    if counts.dim() != 2 or counts.shape[1] != B:
        raise ValueError(f"counts must have shape [R, {B}] (one column per batch), got "
                         f"{tuple(counts.shape)}")
    return {name: (counts @ v.reshape(B, -1)).reshape(counts.shape[0], *v.shape[1:])
            for name, v in t.items()}


def streaming_jackknife_terms(terms) -> dict:
    """Leave-one-batch-out sums ``name -> [B, ...]`` (sum over all batches minus batch ``b``)."""
    t = _check_batch_terms(terms)
    if next(iter(t.values())).shape[0] < 2:
        raise ValueError("the jackknife needs at least 2 batches")
    return {name: v.sum(0) - v for name, v in t.items()}


def cka_from_terms(terms) -> torch.Tensor:
    """CKA ``[..., a, b]`` from a mapping of (summed) terms ``xy [..., a, b]``, ``xx [..., a]``,
    ``yy [..., b]``; leading dimensions (replicates) are kept. NaN where a self term is not
    positive."""
    xy, xx, yy = (_f64(terms[k], k) for k in ("xy", "xx", "yy"))
    return cka_from_hsic(xy, xx.to(xy.device)[..., :, None], yy.to(xy.device)[..., None, :])


def streaming_bootstrap_hsic(xy, xx, yy, counts):
    """Resampled sums of per-batch HSIC terms: ``counts [R, B] @ terms``.

    ``xy [B, L1, L2]``, ``xx [B, L1]``, ``yy [B, L2]`` (float64 per-batch terms),
    ``counts [R, B]`` (how often each batch is drawn). Returns ``(xy [R, L1, L2], xx [R, L1],
    yy [R, L2])`` (:func:`streaming_bootstrap_terms` on the three).
    """
    xy, xx, yy = _check_terms(xy, xx, yy)
    out = streaming_bootstrap_terms({"xy": xy, "xx": xx, "yy": yy}, counts)
    return out["xy"], out["xx"], out["yy"]


def streaming_cka_bootstrap(xy, xx, yy, n_bootstrap: int, generator=None) -> torch.Tensor:
    """Bootstrap replicates ``[R, L1, L2]`` of the minibatch CKA by resampling batches.

    Per-batch terms as in :func:`streaming_bootstrap_hsic`; batches are drawn with replacement
    (``B`` draws per replicate). NaN where a replicate's self-HSIC is not positive.
    """
    xy, xx, yy = _check_terms(xy, xx, yy)
    counts = bootstrap_counts(xy.shape[0], n_bootstrap, generator, xy.device)
    return cka_from_terms(streaming_bootstrap_terms({"xy": xy, "xx": xx, "yy": yy}, counts))


def streaming_cka_jackknife(xy, xx, yy) -> torch.Tensor:
    """Leave-one-batch-out minibatch CKA ``[B, L1, L2]`` (for BCa's acceleration)."""
    xy, xx, yy = _check_terms(xy, xx, yy)
    return cka_from_terms(streaming_jackknife_terms({"xy": xy, "xx": xx, "yy": yy}))


# ----------------------------------------------------------------------------- streaming dCKA
def _dcka_terms(terms) -> dict:
    names = ("xy", "xx", "yy", "xz", "yz", "zz")
    if isinstance(terms, DeconfoundedHSIC):
        terms = {k: getattr(terms, k) for k in names}
    missing = [k for k in names if k not in terms]
    if missing:
        raise ValueError(f"dCKA needs the six HSIC terms {names}; missing {missing}")
    return {k: terms[k] for k in names}


def streaming_dcka_bootstrap(terms, n_bootstrap: int, generator=None) -> torch.Tensor:
    """Bootstrap replicates ``[R, L1, L2]`` of the minibatch dCKA by resampling batches.

    ``terms``: the six per-batch terms ``xy [B, L1, L2]``, ``xx, xz [B, L1]``, ``yy, yz [B, L2]``,
    ``zz [B]``. Each replicate sums the drawn batches' terms and solves the regression on the
    confounder again (:func:`~simtorch_semantic.functional.dcka.dcka_from_hsic`).
    """
    t = _check_batch_terms(_dcka_terms(terms))
    counts = bootstrap_counts(t["xy"].shape[0], n_bootstrap, generator, t["xy"].device)
    return dcka_from_hsic(streaming_bootstrap_terms(t, counts))


def streaming_dcka_jackknife(terms) -> torch.Tensor:
    """Leave-one-batch-out minibatch dCKA ``[B, L1, L2]`` (for BCa's acceleration)."""
    return dcka_from_hsic(streaming_jackknife_terms(_dcka_terms(terms)))


def dcka_extended_grams(Ks, Ls, KZ) -> tuple:
    """``([Ks; KZ], [Ls; KZ])``: the Grams ``[a+1, n, n]``, ``[b+1, n, n]`` whose permuted cross
    HSIC (:func:`permuted_hsic_cross`) :func:`dcka_null_from_cross` turns into the dCKA null."""
    KZ = KZ[None] if KZ.dim() == 2 else KZ
    return torch.cat([Ks, KZ.to(Ks)]), torch.cat([Ls, KZ.to(Ls)])


def dcka_null_from_cross(cross, terms) -> torch.Tensor:
    r"""Permutation null ``[R, a, b]`` of dCKA from permuted cross terms (module docstring).

    ``cross [R, a+1, b+1]``: HSIC of ``[K_1..K_a, K_Z]`` with ``P_r [L_1..L_b, K_Z] P_r'``
    (summed over batches for the minibatch estimator), i.e. :func:`permuted_hsic_cross` of
    :func:`dcka_extended_grams`; ``terms``: the six unpermuted (summed) terms. With
    :math:`lpha_i = xz_i/zz`, :math:`eta_j = yz_j/zz`, the permuted residual cross term is
    :math:`\langle K_i - lpha_i K_Z, P (L_j - eta_j K_Z) P'
angle
    = c_{ij} - eta_j c_{iZ} - lpha_i c_{Zj} + lpha_ieta_j c_{ZZ}`, one ``[a, a+1]`` and
    one ``[b, b+1]`` product; the residual self terms ``xx - xz^2/zz``, ``yy - yz^2/zz`` do not
    change under a permutation. NaN where ``zz <= 0`` or a residual self term is not positive.
    """
    t = {k: _f64(v, k) for k, v in _dcka_terms(terms).items()}
    cross = _f64(cross, "cross", t["xy"].device)
    a, b = t["xy"].shape
    if cross.dim() != 3 or tuple(cross.shape[1:]) != (a + 1, b + 1):
        raise ValueError(f"cross must have shape [R, {a + 1}, {b + 1}] (model 1's {a} Grams and "
                         f"the confounder's against model 2's {b} and the confounder's), got "
                         f"{tuple(cross.shape)}")
    zz = t["zz"]
    zz_safe = torch.where(zz > 0, zz, torch.ones_like(zz))
    alpha, beta = t["xz"] / zz_safe, t["yz"] / zz_safe
    eye_a = torch.eye(a, dtype=torch.float64, device=cross.device)
    eye_b = torch.eye(b, dtype=torch.float64, device=cross.device)
    Ua = torch.cat([eye_a, -alpha[:, None]], dim=1)            # [a, a+1]
    Ub = torch.cat([eye_b, -beta[:, None]], dim=1)             # [b, b+1]
    rxy = torch.einsum("ik,rkl,jl->rij", Ua, cross, Ub)
    rxx = t["xx"] - t["xz"] ** 2 / zz_safe
    ryy = t["yy"] - t["yz"] ** 2 / zz_safe
    out = cka_from_hsic(rxy, rxx[None, :, None], ryy[None, None, :])
    return torch.where(zz > 0, out, torch.full_like(out, math.nan))


# ----------------------------------------------------------------------------- permutations
def _chunk(count: int, per_item_bytes: int) -> int:
    return max(1, min(count, _CHUNK_BYTES // max(per_item_bytes, 1)))


def _perm_prep(K: torch.Tensor, unbiased: bool, dtype) -> tuple:
    """What the permuted cross products need of a float64 Gram stack ``K [g, n, n]``.

    The Grams are double-centred first (exact for both estimators: the biased one centres
    anyway and the unbiased one is invariant to ``K_ij + f_i + f_j``), so the products lose
    little in ``float32``. Returns ``(flat [g, n*n] in dtype, upper [g, n(n-1)/2] in dtype, diag
    [g, n], rows [g, n], total [g])``: the unbiased estimator uses the zero-diagonal Gram's row
    sums and total, the biased one the diagonal.
    """
    n = K.shape[-1]
    K = center_gram(K)
    iu, ju = torch.triu_indices(n, n, offset=1, device=K.device)
    diag = K.diagonal(dim1=-2, dim2=-1)
    if unbiased:
        K = K.masked_fill(torch.eye(n, dtype=torch.bool, device=K.device), 0.0)
        rows = K.sum(dim=-1)
        extra = (None, rows, rows.sum(dim=-1))
    else:
        extra = (diag.clone(), None, None)
    flat = K.reshape(K.shape[0], n * n).to(dtype)
    return (flat, flat[:, iu * n + ju], *extra)


def _permuted_cross_prepared(P, Q, perms, n, unbiased, permute_first) -> torch.Tensor:
    """``[R, a, b]`` cross HSIC with ``Q``'s samples permuted (``P``, ``Q`` from :func:`_perm_prep`).

    When ``permute_first`` the gather is done on ``P`` with the inverse permutations (cheaper
    when ``P`` has fewer Grams): HSIC(K, pi L pi') = HSIC(pi' K pi, L). The Grams are symmetric,
    so only the ``n(n-1)/2`` entries above the diagonal are gathered and multiplied (twice
    their product is the off-diagonal part of the trace); the diagonal and row-sum terms are
    ``[n]``-long and done apart in float64.
    """
    R = perms.shape[0]
    a, b = P[0].shape[0], Q[0].shape[0]
    if permute_first:
        perms = perms.argsort(dim=1)
    G, other = (P, Q) if permute_first else (Q, P)
    g = G[0].shape[0]
    device = P[0].device
    out = torch.empty(R, a, b, dtype=torch.float64, device=device)
    c1, c2, norm = _consts(n, unbiased)
    if unbiased:
        totals = c1 * P[4][:, None] * Q[4][None, :]
    iu, ju = torch.triu_indices(n, n, offset=1, device=device)
    m = iu.numel()
    step = _chunk(R, g * m * G[0].element_size())
    for start in range(0, R, step):
        p = perms[start:start + step]                                   # [c, n]
        c = p.shape[0]
        flat = p[:, iu] * n + p[:, ju]                                  # [c, m]
        gathered = torch.index_select(G[0], 1, flat.reshape(-1))        # [g, c*m]
        prod = (gathered.reshape(g * c, m) @ other[1].T).to(torch.float64).reshape(g, c, -1)
        cross = 2.0 * (prod.permute(1, 0, 2) if permute_first else prod.permute(1, 2, 0))  # [c, a, b]
        k = 3 if unbiased else 2
        vec = G[k][:, p]                                                # [g, c, n] float64
        term = torch.einsum("gcn,on->cgo", vec, other[k])
        term = term if permute_first else term.transpose(1, 2)
        cross = cross + totals - c2 * term if unbiased else cross + term
        out[start:start + step] = cross * norm
    return out


def permuted_hsic_cross(Ks, Ls, perms, unbiased: bool = True, validate: bool = True,
                        dtype=torch.float64) -> torch.Tensor:
    r"""HSIC of every ``Ks[i]`` with every permuted ``Ls[j]`` for each permutation.

    ``Ks [a, n, n]``, ``Ls [b, n, n]`` Grams of the same ``n`` samples; ``perms [R, n]`` int64
    permutations. Returns float64 ``[R, a, b]`` with ``out[r, i, j] = HSIC(Ks[i], L_r)``,
    ``L_r[u, v] = Ls[j][perms[r, u], perms[r, v]]`` (unbiased estimator of Song et al. 2012, or
    biased). The side with fewer Grams is gathered, in chunks of at most 64 MiB, and every
    layer pair of a chunk comes from one matrix product: no loop over pairs or permutations.
    ``validate=False`` skips the checks (no host sync: for per-batch loops with trusted input).
    ``dtype=torch.float32`` does the gathers and the big product in single precision (half the
    memory traffic; the Grams are double-centred in float64 first, so little cancels); the
    result is float64 either way.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if not validate:
        K, L = Ks.to(torch.float64), Ls.to(torch.float64)
        n = K.shape[-1]
        return _permuted_cross_prepared(_perm_prep(K, unbiased, dtype), _perm_prep(L, unbiased, dtype),
                                        perms, n, unbiased, permute_first=K.shape[0] < L.shape[0])
    K = _stack(Ks, "Ks")
    L = _stack(Ls, "Ls").to(K.device)
    n = K.shape[-1]
    if L.shape[-1] != n:
        raise ValueError(f"Ks hold Grams of {n} samples but Ls of {L.shape[-1]}; both must come "
                         "from the same samples")
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    perms = torch.as_tensor(perms, device=K.device)
    if perms.dim() != 2 or perms.shape[1] != n or perms.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"perms must be an integer tensor [R, {n}] of permutations, got "
                         f"{tuple(perms.shape)} {perms.dtype}")
    perms = perms.long()
    if not bool((perms.sort(dim=1).values == torch.arange(n, device=K.device)).all()):
        raise ValueError("every row of perms must be a permutation of range(n)")
    P, Q = _perm_prep(K, unbiased, dtype), _perm_prep(L, unbiased, dtype)
    return _permuted_cross_prepared(P, Q, perms, n, unbiased, permute_first=K.shape[0] < L.shape[0])


def _batch_permuted_cross(K, L, n_permutations, generator, unbiased) -> torch.Tensor:
    """One batch's permuted cross terms ``[R, a, b]`` with fresh permutations from ``generator``."""
    device = generator.device if generator is not None else K.device
    perms = random_permutations(K.shape[-1], n_permutations, generator, device).to(K.device)
    return permuted_hsic_cross(K, L, perms, unbiased)


def _add(total, value):
    return value if total is None else total + value


def streaming_cka_permutation_null(batches, n_permutations: int, generator=None,
                                   unbiased: bool = True) -> torch.Tensor:
    """Permutation null ``[R, L1, L2]`` of the minibatch CKA.

    ``batches``: iterable of ``(Ks [L1, n_b, n_b], Ls [L2, n_b, n_b])``, one pair per batch.
    Each batch gets its own random permutations of model 2's samples (pairs only form within a
    batch); the permuted cross terms are summed over batches and divided by the unpermuted
    self terms. The measures do the same online, batch by batch, so no Gram is kept.
    """
    n_permutations = _check_count(n_permutations, "n_permutations")
    xy = xx = yy = None
    for Ks, Ls in batches:
        K, L = _stack(Ks, "Ks"), _stack(Ls, "Ls")
        n = K.shape[-1]
        xy = _add(xy, _batch_permuted_cross(K, L, n_permutations, generator, unbiased))
        xx = _add(xx, _self(_prep(K, unbiased), n, unbiased))
        yy = _add(yy, _self(_prep(L, unbiased), n, unbiased))
    if xy is None:
        raise ValueError("batches is empty: pass at least one (Ks, Ls) pair")
    return cka_from_terms({"xy": xy, "xx": xx, "yy": yy})


def streaming_dcka_permutation_null(batches, n_permutations: int, generator=None,
                                    unbiased: bool = True) -> torch.Tensor:
    """Permutation null ``[R, L1, L2]`` of the minibatch dCKA.

    ``batches``: iterable of ``(Ks [L1, n_b, n_b], Ls [L2, n_b, n_b], KZ [n_b, n_b])``. Within
    each batch model 2's samples are permuted *together with their confounder*: the null pairs
    model 1's deconfounded Gram with ``P (L - beta K_Z) P'``, model 2's deconfounded Gram of
    other samples (module docstring). The regression coefficients are those of the whole data
    (summed terms), as in the observed value, so the permuted cross terms of
    :func:`dcka_extended_grams` are summed over batches and combined at the end
    (:func:`dcka_null_from_cross`). The measures do the same online.
    """
    n_permutations = _check_count(n_permutations, "n_permutations")
    cross = terms = None
    for Ks, Ls, KZ in batches:
        K, L = _stack(Ks, "Ks"), _stack(Ls, "Ls")
        Z = _f64(KZ, "KZ", K.device)
        cross = _add(cross, _batch_permuted_cross(*dcka_extended_grams(K, L, Z), n_permutations,
                                                  generator, unbiased))
        terms = _add(terms, dcka_hsic_terms(K, L, Z, unbiased))
    if cross is None:
        raise ValueError("batches is empty: pass at least one (Ks, Ls, KZ) triple")
    return dcka_null_from_cross(cross, terms)


# ----------------------------------------------------------------------------- full data
def _resampled_cka(Ks, Ls, indices, unbiased: bool, residuals=None) -> torch.Tensor:
    """``[R, a, b]``: CKA of the Grams gathered at each row of ``indices [R, m]``; with
    ``residuals(K_r, L_r, i) -> (K_r', L_r')`` the gathered Grams are transformed first."""
    K = _stack(Ks, "Ks")
    L = _stack(Ls, "Ls").to(K.device)
    idx = torch.as_tensor(indices, device=K.device).long()
    N = K.shape[-1]
    m = idx.shape[-1] if idx.dim() == 2 else 0
    if L.shape[-1] != N or idx.dim() != 2 or m < (4 if unbiased else 2):
        raise ValueError(f"indices must be [R, m] sample indices (m >= {4 if unbiased else 2}) into "
                         f"Grams of {N} samples; got Ks {tuple(K.shape)}, Ls {tuple(L.shape)}, "
                         f"indices {tuple(idx.shape)}")
    out = torch.empty(idx.shape[0], K.shape[0], L.shape[0], dtype=torch.float64, device=K.device)
    for r in range(idx.shape[0]):
        i = idx[r]
        Kr, Lr = K[:, i][:, :, i], L[:, i][:, :, i]
        if residuals is not None:
            Kr, Lr = residuals(Kr, Lr, i)
        P, Q = _prep(Kr, unbiased), _prep(Lr, unbiased)
        out[r] = cka_from_hsic(_cross(P, Q, m, unbiased), _self(P, m, unbiased), _self(Q, m, unbiased))
    return out


def cka_bootstrap_from_grams(Ks, Ls, indices, unbiased: bool = False) -> torch.Tensor:
    """CKA of every layer pair on resamples of the samples: ``[R, a, b]``.

    ``Ks [a, N, N]``, ``Ls [b, N, N]``: Grams of all N samples; ``indices [R, m]``: the samples
    of each resample (bootstrap: ``m = N`` drawn with replacement; a jackknife: the ``m`` kept
    samples). Replicate r uses ``K[idx][:, idx]`` (an index gather, no recomputed features; an
    RBF bandwidth stays the full data's). One replicate at a time, all layer pairs of it from
    one matrix product.
    """
    return _resampled_cka(Ks, Ls, indices, unbiased)


def cka_permutation_null_from_grams(Ks, Ls, perms, unbiased: bool = False,
                                    dtype=torch.float64) -> torch.Tensor:
    """Permutation null ``[R, a, b]`` of full-data CKA: CKA(K_i, P_r L_j P_r').

    ``Ks [a, N, N]``, ``Ls [b, N, N]``, ``perms [R, N]``; ``dtype`` of the gathered products as
    in :func:`permuted_hsic_cross`.
    """
    K = _stack(Ks, "Ks")
    L = _stack(Ls, "Ls").to(K.device)
    cross = permuted_hsic_cross(K, L, perms, unbiased, dtype=dtype)
    n = K.shape[-1]
    return cka_from_terms({"xy": cross, "xx": _self(_prep(K, unbiased), n, unbiased),
                           "yy": _self(_prep(L, unbiased), n, unbiased)})


def _confounder(KZ, N: int, device) -> torch.Tensor:
    Z = _f64(KZ, "KZ", device)
    if tuple(Z.shape) != (N, N):
        raise ValueError(f"KZ must be the confounder's [{N}, {N}] Gram of the same samples, got "
                         f"shape {tuple(Z.shape)}")
    return Z


def dcka_bootstrap_from_grams(Ks, Ls, KZ, indices, unbiased: bool = False,
                              remove_negative_eig: bool = False) -> torch.Tensor:
    """dCKA of every layer pair on resamples of the samples: ``[R, a, b]``.

    ``Ks [a, N, N]``, ``Ls [b, N, N]``, ``KZ [N, N]`` (the confounder's Gram): Grams of all N
    samples; ``indices [R, m]`` as in :func:`cka_bootstrap_from_grams`. Replicate r gathers the
    rows and columns ``idx`` of every Gram *and of the confounder's*, solves the regression on
    the gathered confounder again (:func:`~simtorch_semantic.functional.dcka.deconfound_gram`,
    with its PSD projection when ``remove_negative_eig``) and takes CKA of the residuals.
    """
    K = _stack(Ks, "Ks")
    Z = _confounder(KZ, K.shape[-1], K.device)

    def residuals(Kr, Lr, i):
        Zr = Z[i][:, i]
        return (deconfound_gram(Kr, Zr, remove_negative_eig, unbiased),
                deconfound_gram(Lr, Zr, remove_negative_eig, unbiased))

    return _resampled_cka(K, Ls, indices, unbiased, residuals)


def dcka_permutation_null_from_grams(Ks, Ls, KZ, perms, unbiased: bool = False,
                                     remove_negative_eig: bool = False,
                                     dtype=torch.float64) -> torch.Tensor:
    """Permutation null ``[R, a, b]`` of full-data dCKA: CKA(R_K_i, P_r R_L_j P_r').

    ``R_K``, ``R_L``: the deconfounded Grams of all N samples
    (:func:`~simtorch_semantic.functional.dcka.deconfound_gram` on ``KZ [N, N]``). Model 2's
    Gram is permuted together with its confounder, i.e. its *deconfounded* Gram is permuted;
    the regression coefficients do not change under that permutation. ``perms [R, N]``;
    ``dtype`` as in :func:`permuted_hsic_cross`. Without ``remove_negative_eig`` this equals
    :func:`dcka_null_from_cross` of the permuted :func:`dcka_extended_grams`.
    """
    K = _stack(Ks, "Ks")
    L = _stack(Ls, "Ls").to(K.device)
    Z = _confounder(KZ, K.shape[-1], K.device)
    return cka_permutation_null_from_grams(deconfound_gram(K, Z, remove_negative_eig, unbiased),
                                           deconfound_gram(L, Z, remove_negative_eig, unbiased),
                                           perms, unbiased, dtype)


# ----------------------------------------------------------------------------- p-values
def _obs_null(observed, null):
    obs = _f64_numpy(observed, "observed")
    nul = _f64_numpy(null, "null")
    if nul.ndim < 1 or nul.shape[1:] != obs.shape or nul.shape[0] < 1:
        raise ValueError(f"null must have shape [R, *{obs.shape}] (R permutation values of "
                         f"every cell), got {nul.shape}")
    return obs, nul


def _tolerance(obs: np.ndarray) -> np.ndarray:
    # a null value equal to the observed one up to float rounding counts as "as extreme"
    return 1e-10 * np.maximum(np.abs(obs), 1e-300)


def permutation_p_values(observed, null, higher_is_similar: bool = True) -> np.ndarray:
    """Per-cell permutation p-values ``(1 + #{null as extreme as observed}) / (1 + R)``.

    ``observed [...]``, ``null [R, ...]``. "As extreme" is ``>=`` for similarities and ``<=``
    for distances (``higher_is_similar=False``), up to a relative rounding tolerance of 1e-10.
    NaN null values count as not extreme; NaN where the observed value is NaN. Float64 NumPy.
    """
    obs, nul = _obs_null(observed, null)
    tol = _tolerance(obs)
    with np.errstate(invalid="ignore"):
        hits = (nul >= obs - tol) if higher_is_similar else (nul <= obs + tol)
    p = (1.0 + hits.sum(axis=0)) / (1.0 + nul.shape[0])
    return np.where(np.isfinite(obs), p, np.nan)


def westfall_young_p_values(observed, null, higher_is_similar: bool = True,
                            standardize: bool = True) -> np.ndarray:
    """Family-wise adjusted p-values over all cells (single-step max-T; module docstring).

    ``observed [...]``, ``null [R, ...]`` where null row r is one permutation of the *whole*
    matrix (the joint null). With ``standardize`` (default) every cell is put on the scale of
    its own null (mean and sd over the R values) before the maximum over cells; cells whose null
    has zero spread are left out of the maximum. Float64 NumPy ``[...]``, each value >= the
    per-cell p-value's lower bound ``1/(1+R)``; NaN where the observed value is NaN.
    """
    obs, nul = _obs_null(observed, null)
    sign = 1.0 if higher_is_similar else -1.0
    t_obs, t_null = sign * obs, sign * nul
    if standardize:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nanmean(t_null, axis=0)
            sd = np.nanstd(t_null, axis=0)
        ok = np.isfinite(sd) & (sd > 0)
        sd_safe = np.where(ok, sd, 1.0)
        t_obs = np.where(ok, (t_obs - mean) / sd_safe, np.where(t_obs > mean, np.inf, -np.inf))
        t_null = np.where(ok, (t_null - mean) / sd_safe, -np.inf)
    flat = t_null.reshape(t_null.shape[0], -1)
    flat = np.where(np.isnan(flat), -np.inf, flat)
    maxima = flat.max(axis=1) if flat.shape[1] else np.full(flat.shape[0], -np.inf)
    maxima = np.sort(maxima)
    tol = 1e-10 * np.maximum(np.abs(np.where(np.isfinite(t_obs), t_obs, 0.0)), 1e-300)
    # number of maxima >= t_obs - tol, by binary search on the sorted maxima
    with np.errstate(invalid="ignore"):
        target = np.where(np.isnan(t_obs), np.inf, t_obs - tol)
    count = maxima.size - np.searchsorted(maxima, target.ravel(), side="left").reshape(target.shape)
    p = (1.0 + count) / (1.0 + nul.shape[0])
    return np.where(np.isfinite(obs), np.minimum(p, 1.0), np.nan)


# ----------------------------------------------------------------------------- calibration
def calibrated_scores(score, null_mean, higher_is_similar: bool = True) -> np.ndarray:
    """Score relative to its permutation null (module docstring), float64 NumPy.

    Similarities bounded by 1: ``(score - null_mean) / (1 - null_mean)``; distances with best
    value 0 (``higher_is_similar=False``): ``(null_mean - score) / null_mean``. Both are 0 at
    chance level and 1 for a perfect match; NaN where the denominator is 0.
    """
    s = _f64_numpy(score, "score")
    m = _f64_numpy(null_mean, "null_mean")
    if s.shape != m.shape:
        raise ValueError(f"score {s.shape} and null_mean {m.shape} must have the same shape")
    with np.errstate(invalid="ignore", divide="ignore"):
        if higher_is_similar:
            den = 1.0 - m
            out = (s - m) / np.where(den != 0, den, np.nan)
        else:
            out = (m - s) / np.where(m != 0, m, np.nan)
    return out


def null_z_scores(score, null) -> np.ndarray:
    """``(score - mean(null)) / sd(null)`` per cell; ``null [R, ...]``; NaN where sd is 0."""
    s, nul = _obs_null(score, null)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(nul, axis=0)
        sd = np.nanstd(nul, axis=0, ddof=1) if nul.shape[0] > 1 else np.full_like(s, np.nan)
        return (s - mean) / np.where(sd > 0, sd, np.nan)

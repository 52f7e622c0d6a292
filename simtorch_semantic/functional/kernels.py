r"""Gram (kernel) matrices, centering and the median bandwidth.

For a representation ``X`` of ``n`` samples, flattened to ``[n, d]``:

* linear kernel: :math:`K = X_c X_c^\top` with centred features :math:`X_c = X - 1\bar{x}^\top`
  (``center=True``) or the raw :math:`K = X X^\top` (``center=False``);
* centering: :math:`H K H` with :math:`H = I_n - \tfrac{1}{n} 1 1^\top`;
* squared Euclidean distances: :math:`D_{ij} = K_{ii} + K_{jj} - 2 K_{ij}` from the centred Gram
  (clamped at 0, exact zeros on the diagonal);
* Gaussian (RBF) kernel: :math:`K_{ij} = \exp(-D_{ij} / (2\sigma^2))` with
  :math:`\sigma = \text{sigma\_frac} \cdot \operatorname{median}_{i<j,\,D_{ij}>0} \sqrt{D_{ij}}`
  unless ``sigma`` is given (Kornblith et al., 2019, "Similarity of Neural Network
  Representations Revisited", use a fraction of the median distance; default 0.8).

Precision. Centring is exact for every centred (biased) or unbiased HSIC: both are invariant to
shifting all samples by the same vector, which changes ``K`` only by terms of the form
:math:`a 1^\top + 1 a^\top + c 1 1^\top`. Centring matters in float32: for features whose mean is
1000x their spread, the raw Gram's entries are ~1e6 times larger than the part that carries the
signal and float32 rounding destroys it (CKA off by ~0.15), while the centred Gram keeps CKA within
1e-5 of a float64 reference. :func:`linear_gram` first shifts the features by the first sample
(one subtraction pass, no reduction over the activation; constant inputs become exactly zero) and
then double-centres the small ``[n, n]`` result, which equals the Gram of mean-centred features.

These functions are the hot path used inside forward hooks: they do not validate their input
(public functions in ``cka.py``/``dcka.py`` do). They accept ``[n, ...]`` tensors (flattened per
sample; NumPy arrays are converted), work on the input's device and compute in its floating dtype,
promoted to at least float32 (integer and half inputs become float32; float64 stays float64).
"""
from __future__ import annotations

import torch

from ._validation import to_tensor

__all__ = ["linear_gram", "streaming_linear_gram", "center_gram", "sq_distances", "median_distance",
           "median_bandwidth", "rbf_gram"]


def _flat(X) -> torch.Tensor:
    """``[n, ...]`` -> ``[n, d]`` float tensor (float32 or float64), no validation."""
    if not isinstance(X, torch.Tensor):
        X = to_tensor(X)
    X = X.detach()
    X = X.reshape(X.shape[0], -1)
    if X.dtype not in (torch.float32, torch.float64):
        X = X.to(torch.float32)
    return X


def center_gram(K: torch.Tensor) -> torch.Tensor:
    r"""Double-centre Gram matrices: :math:`H K H`, :math:`H = I - \tfrac{1}{n} 1 1^\top`.

    ``K``: ``[..., n, n]`` (a batch of Grams is centred matrix by matrix). Returns the same shape
    and dtype: :math:`K_{ij} - \bar{K}_{i\cdot} - \bar{K}_{\cdot j} + \bar{K}_{\cdot\cdot}`.
    """
    row = K.mean(dim=-1, keepdim=True)
    col = K.mean(dim=-2, keepdim=True)
    return K - row - col + row.mean(dim=-2, keepdim=True)


def linear_gram(X, center: bool = True) -> torch.Tensor:
    r"""Linear Gram matrix of ``X [n, ...]``: :math:`X_c X_c^\top` (``center=True``) or :math:`X X^\top`.

    ``X`` is flattened to ``[n, d]`` and computed in its dtype promoted to at least float32, on its
    device. With ``center=True`` the result is the Gram of mean-centred features (equivalently
    :math:`H X X^\top H`), computed as ``center_gram((X - X[0]) @ (X - X[0]).T)``, which keeps
    float32 accurate for features with a large mean (see the module docstring). Returns ``[n, n]``.
    No validation (hot path); see :func:`simtorch_semantic.functional._validation.as_matrix`.
    """
    X = _flat(X)
    if center:
        Xs = X - X[:1]
        return center_gram(Xs @ Xs.T)
    return X @ X.T


def sq_distances(X) -> torch.Tensor:
    r"""Pairwise squared Euclidean distances of the rows of ``X [n, ...]``: ``[n, n]``.

    :math:`D_{ij} = K_{ii} + K_{jj} - 2K_{ij}` with the centred linear Gram ``K`` (distances do not
    depend on centring, but centring protects float32), clamped at 0, diagonal exactly 0.
    """
    K = linear_gram(X, center=True)
    sq = K.diagonal()
    D = sq[:, None] + sq[None, :] - 2.0 * K
    D = D.clamp_min(0.0)
    D.fill_diagonal_(0.0)
    return D


def median_distance(sq_values) -> torch.Tensor:
    r"""The package's one RBF bandwidth rule: the median of the non-zero distances.

    ``sq_values``: squared distances of the pairs that count, any shape (each pair once; a
    torch tensor or NumPy array). Values ``<= 0`` (duplicated samples) are left out; with an even
    count the two middle *distances* are averaged (as ``numpy.median`` of the distances). Returns
    a 0-d tensor, 0 when no distance is positive. Stays on the device (no host sync). Used by
    :func:`median_bandwidth` (CKA, dCKA), the semantic RSMs and the overlay's RBF maps.
    """
    if not isinstance(sq_values, torch.Tensor):
        sq_values = to_tensor(sq_values, "sq_values")
    v = sq_values.reshape(-1).clamp_min(0.0).sqrt()
    if v.numel() == 0:
        return v.new_zeros(())
    v, _ = torch.sort(v)
    m = v.numel()
    nonzero = (v > 0).sum()
    zeros = m - nonzero
    lo = zeros + torch.div(nonzero - 1, 2, rounding_mode="floor")
    hi = zeros + torch.div(nonzero, 2, rounding_mode="floor")
    idx = torch.stack([lo, hi]).clamp(0, m - 1)
    return torch.where(nonzero > 0, v.index_select(0, idx).mean(), v.new_zeros(()))


def median_bandwidth(sq_dists: torch.Tensor) -> torch.Tensor:
    r"""Median of the non-zero pairwise distances :math:`\sqrt{D_{ij}}`, ``i < j``: a 0-d tensor.

    ``sq_dists``: squared distances ``[n, n]`` (from :func:`sq_distances`); the rule is
    :func:`median_distance` over the upper triangle. Returns 0 when all samples coincide.
    """
    n = sq_dists.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=sq_dists.device)
    return median_distance(sq_dists[iu[0], iu[1]])


def rbf_gram(X, sigma=None, sigma_frac: float = 0.8) -> torch.Tensor:
    r"""Gaussian (RBF) Gram matrix of ``X [n, ...]``: :math:`\exp(-\|x_i - x_j\|^2 / (2\sigma^2))`.

    ``sigma``: fixed bandwidth (number or 0-d tensor); when None,
    :math:`\sigma = \text{sigma\_frac} \times` :func:`median_bandwidth` of this ``X`` (Kornblith et
    al. 2019; default fraction 0.8). Returns ``[n, n]`` in ``X``'s promoted dtype. When every
    sample coincides (median 0) the Gram is all ones (its centred version is 0, so CKA is NaN).
    """
    D = sq_distances(X)
    if sigma is None:
        s = sigma_frac * median_bandwidth(D)
    else:
        s = torch.as_tensor(sigma, dtype=D.dtype, device=D.device)
    K = torch.exp(-D / (2.0 * s * s))
    return torch.where(D == 0, torch.ones((), dtype=D.dtype, device=D.device), K)


#: above this ratio of raw to centred Gram trace, float32 rounding of the raw Gram is visible
_CANCELLATION_RATIO = 64.0


def streaming_linear_gram(X) -> torch.Tensor:
    r"""Linear Gram of ``X [n, ...]`` for HSIC estimators, as cheap as the data allows: ``[n, n]``.

    Centred and unbiased HSIC do not change when every sample is shifted by the same vector, so
    the Gram only has to be *some* shifted Gram; what matters is float32 rounding. On the CPU,
    reading values costs no device synchronisation, so the raw :math:`X X^\top` (one GEMM, no
    extra pass over the activation) is formed first and kept when its trace is less than
    ``_CANCELLATION_RATIO`` times the trace of its centred version (features whose mean is not much
    larger than their spread, the normal case); otherwise the centred Gram of
    :func:`linear_gram` is formed instead (constant features then give exactly 0). On other devices
    inspecting the value would stall the stream, so :func:`linear_gram` (shift, then centre) is
    used directly. Either way the result differs from the centred Gram only by terms that every
    centred or unbiased HSIC removes. No validation (hot path).
    """
    X = _flat(X)
    if X.device.type != "cpu":
        return linear_gram(X, center=True)
    K = X @ X.T
    raw = K.diagonal().sum(dtype=torch.float64)
    centred = raw - K.sum(dtype=torch.float64) / X.shape[0]
    if bool(centred * _CANCELLATION_RATIO > raw):
        return K
    return linear_gram(X, center=True)

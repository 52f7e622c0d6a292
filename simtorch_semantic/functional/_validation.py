"""Input checks shared by the public functions of ``simtorch_semantic.functional``.

Every public function of ``functional/`` accepts a torch tensor or a NumPy array of shape
``[n, ...]`` (one row per sample; trailing dimensions are flattened per sample). The helpers here
turn such an input into a 2-D floating-point torch tensor ``[n, d]`` on the input's device and
raise errors that name the argument, say what is wrong and how to fix it.

Validation happens only at the edge (public functions); the hot paths (Gram matrices built inside
forward hooks, HSIC accumulation) trust their inputs.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

__all__ = ["as_matrix", "as_gram", "check_same_n", "check_finite", "check_min_samples",
           "check_positive", "is_constant", "to_tensor", "promote", "as_f64", "data_matrix",
           "check_choice", "check_bool", "warn_constant", "DegenerateInputError"]


class DegenerateInputError(ValueError):
    """A representation on which a measure is undefined (all samples identical, no variance).

    A ``ValueError``: functional code raises it for one pair; layer x layer code catches it per
    layer and reports NaN for that layer's row or column with a note naming it.
    """

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def to_tensor(X, name: str = "X") -> torch.Tensor:
    """Return ``X`` as a detached torch tensor (NumPy arrays and nested lists are converted).

    Shapes are kept; the device of a tensor is kept. Raises ``TypeError`` for objects that are not
    numeric arrays (object arrays, strings, complex numbers).
    """
    if isinstance(X, torch.Tensor):
        T = X.detach()
    else:
        if isinstance(X, (str, bytes)) or X is None:
            raise TypeError(
                f"{name} must be a torch tensor or a NumPy array of shape [n, ...], "
                f"got {type(X).__name__}.")
        try:
            A = np.asarray(X)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} could not be converted to an array: {exc}") from exc
        if A.dtype == object or A.dtype.kind in "USVMm":
            raise TypeError(
                f"{name} must hold numbers (a numeric torch tensor or NumPy array), got an array "
                f"of dtype {A.dtype}.")
        if not A.dtype.isnative:
            A = A.astype(A.dtype.newbyteorder("="))
        T = torch.as_tensor(np.ascontiguousarray(A))
    if T.is_complex():
        raise TypeError(f"{name} is complex ({T.dtype}); pass a real-valued array.")
    return T


def promote(T: torch.Tensor, min_dtype: torch.dtype) -> torch.Tensor:
    """Cast integer/bool/half tensors up to at least ``min_dtype`` (float dtypes only go up)."""
    if T.dtype in _FLOAT_TYPES:
        target = torch.promote_types(T.dtype, min_dtype)
        if target in (torch.float16, torch.bfloat16):  # pragma: no cover - min_dtype is >= fp32
            target = torch.float32
    else:  # bool, integer types
        target = min_dtype
    return T if T.dtype == target else T.to(target)


def check_finite(T: torch.Tensor, name: str = "X") -> None:
    """Raise ``ValueError`` naming ``name`` and the first row holding NaN or Inf.

    ``T``: tensor ``[n, ...]``. This synchronises with the device: use it at public functions
    only, never inside per-batch loops.
    """
    if T.is_floating_point() and T.numel() > 0:
        bad = ~torch.isfinite(T.reshape(T.shape[0], -1) if T.dim() > 0 else T)
        if bool(bad.any()):
            if T.dim() == 0:
                raise ValueError(f"{name} is NaN or Inf; the input must be finite.")
            rows = bad.any(dim=1).nonzero()
            row = int(rows[0, 0])
            kind = "NaN" if bool(torch.isnan(T.reshape(T.shape[0], -1)[row]).any()) else "Inf"
            raise ValueError(
                f"{name} contains {kind} values (first in row {row}); all values must be finite. "
                f"Check the data or the layer producing {name}.")


def as_matrix(X, name: str = "X", min_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Validate ``X`` and return it as a floating-point tensor ``[n, d]``.

    ``X``: torch tensor or NumPy array ``[n, ...]``; trailing dimensions are flattened per sample
    (non-contiguous tensors are copied as needed). Integer, bool and half-precision inputs are
    promoted to at least ``min_dtype``; float64 stays float64. The tensor's device is kept and the
    result carries no autograd graph.

    Raises ``ValueError`` (naming ``name``) for 0-/1-D input, fewer than 2 samples, zero features,
    or NaN/Inf values (with the first bad row), and ``TypeError`` for non-numeric input.
    """
    T = to_tensor(X, name)
    if T.dim() < 2:
        raise ValueError(
            f"{name} must have shape [n, ...] with one row per sample (at least 2-D), got shape "
            f"{tuple(T.shape)}. For n samples of a single feature use {name}.reshape(-1, 1).")
    n = T.shape[0]
    if n < 2:
        raise ValueError(
            f"{name} has {n} sample(s); similarity needs at least 2 samples (rows).")
    T = T.reshape(n, -1)
    if T.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(T.shape)}: each sample has zero features.")
    T = promote(T, min_dtype)
    check_finite(T, name)
    return T


def as_gram(K, name: str = "K", min_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Validate a Gram (kernel) matrix ``K [n, n]`` and return it as a float tensor.

    Raises ``ValueError`` naming ``name`` when ``K`` is not square 2-D, has fewer than 2 rows, or
    holds NaN/Inf.
    """
    T = to_tensor(K, name)
    if T.dim() != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(
            f"{name} must be a square Gram matrix [n, n], got shape {tuple(T.shape)}. Build one "
            f"with simtorch_semantic.functional.kernels.linear_gram(X).")
    if T.shape[0] < 2:
        raise ValueError(f"{name} is {tuple(T.shape)}; a Gram matrix needs at least 2 samples.")
    T = promote(T, min_dtype)
    check_finite(T, name)
    return T


def check_same_n(X, Y, names=("X", "Y")) -> int:
    """Check that ``X`` and ``Y`` hold the same number of samples (first dimension); return it."""
    nx, ny = X.shape[0], Y.shape[0]
    if nx != ny:
        raise ValueError(
            f"{names[0]} has {nx} samples (rows) but {names[1]} has {ny}; both must hold the same "
            f"samples in the same order.")
    return int(nx)


def check_min_samples(n: int, unbiased: bool, what: str = "the unbiased HSIC estimator") -> None:
    """Raise ``ValueError`` when ``unbiased`` and ``n < 4`` (Song et al. 2012 divide by n-3)."""
    if unbiased and n < 4:
        raise ValueError(
            f"{what} needs at least 4 samples per batch, got n={n}; use batches of 4 or more "
            f"samples, or the biased estimator (unbiased=False).")


def is_constant(X: torch.Tensor) -> bool:
    """Return True when all rows of ``X [n, d]`` are identical (a constant representation)."""
    return bool((X == X[:1]).all())


def check_positive(value, name: str, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not np.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def as_f64(v, device=None) -> torch.Tensor:
    """``v`` (Python number, tensor or array) as a detached float64 tensor, on ``device`` if given."""
    if isinstance(v, (int, float)):
        return torch.tensor(float(v), dtype=torch.float64, device=device)
    if not isinstance(v, torch.Tensor):
        v = to_tensor(v, "value")
    v = v.detach().to(torch.float64)
    return v if device is None else v.to(device)


def data_matrix(X, name: str = "X", dtype: torch.dtype = torch.float64, device=None,
                min_n: int = 3) -> torch.Tensor:
    """Validate ``X [n, ...]`` with :func:`as_matrix` and return it as ``[n, d]`` in ``dtype``.

    Additionally requires ``n >= min_n`` (most sample-geometry measures need 3). ``device``:
    where to put the result (default: ``X``'s device).
    """
    M = as_matrix(X, name=name)
    if M.shape[0] < min_n:
        raise ValueError(
            f"{name} has n={M.shape[0]} samples; at least {min_n} are needed (pass an array "
            f"of shape [n, ...] with n >= {min_n} samples in the first dimension).")
    dev = M.device if device is None else torch.device(device)
    return M.to(device=dev, dtype=dtype)


def check_choice(value, valid, what: str, where: str) -> str:
    """Map ``value`` case-insensitively onto one of ``valid`` or raise a ``ValueError`` that names
    ``where`` (the function or class), ``what`` (the option) and the valid values."""
    if isinstance(value, str):
        for v in valid:
            if isinstance(v, str) and value.lower() == v.lower():
                return v
    raise ValueError(
        f"{where}: unknown {what} {value!r}; valid {what}s are "
        + ", ".join(repr(v) for v in valid) + ".")


def check_bool(value, name: str, where: str) -> bool:
    """Return ``value`` as a bool; raise ``ValueError`` naming ``where`` unless it is True/False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: {name} must be True or False, got {value!r}.")
    return bool(value)


def warn_constant(name: str, n: int, what: str = "CKA", stacklevel: int = 4) -> None:
    """The one warning for a constant representation whose measure ``what`` is returned as NaN."""
    warnings.warn(
        f"{name} is constant (all {n} samples are identical): {what} is undefined and returned "
        f"as NaN.", RuntimeWarning, stacklevel=stacklevel)

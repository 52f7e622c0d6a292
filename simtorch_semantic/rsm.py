"""Semantic and baseline RSMs of many layers, cached on disk.

``get_or_calculate_RSM`` (permutation-invariant, Wald et al., NeurIPS 2024) and
``get_or_calculate_baseline_RSM`` (spatio-semantic, no permutation) compute one RSM per layer with
:func:`simtorch_semantic.functional.semantic.semantic_sim_parallel` /
:func:`~simtorch_semantic.functional.semantic.similarity_calculation` and keep the results under
``out_dir``.

Representations: a dict ``layer -> tensor / ndarray / path``, or a list of those (layers are then
named ``"0"``, ``"1"``, ... as in the original code). Paths point to ``.pt`` files (loaded with
``torch.load(weights_only=True)``; a tensor, or a dict holding exactly one tensor) or ``.npy``
files (``np.load(allow_pickle=False)``); they are loaded one layer at a time. Shapes (``layout=
"auto"``, the original entry point's convention): 4-D ``(n, c, h, w)``; 3-D ``(n, t, d)`` tokens.
Pass ``layout="ncs"`` for 3-D ``(n, c, s)`` maps (or ``"nsc"`` to force tokens).

Blocks: ``batch_size=None`` gives the full ``N x N`` RSM of each layer. ``batch_size=B`` splits the
samples into consecutive blocks ``[0, B), [B, 2B), ...`` (the last one may be smaller) and returns
one ``b x b`` RSM per block -- the diagonal blocks of the full RSM, as in the original code; pairs
of samples from different blocks are never compared. The RBF bandwidth is one per layer: the median
of the non-zero squared distances of every computed pair of every block (the whole set, not per
block; the original used one per block).

Cache: the file ``out_dir/<kind>_rsm_<key[:24]>.npz`` where ``key`` is the SHA-256 of every
layer's name, shape, dtype and raw bytes plus every parameter that changes the result (kind,
kernels, matching and its options, batch_size, layout). It is written with ``np.savez`` to a
temporary file in ``out_dir`` and renamed with ``os.replace`` (atomic), and read back with
``allow_pickle=False``; the full key and the parameters are stored inside and checked on load. An
unreadable, corrupt or foreign file triggers a warning, a recomputation and an overwrite.

Under an initialised torch.distributed process group every rank must make the same call: each
layer's pair problems are split across the ranks and gathered (every rank returns the full RSMs),
and rank 0 alone writes the cache file while the others wait for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from simtorch_semantic.distributed import barrier, pair_sharding, rank
from simtorch_semantic.results import atomic_write_bytes
from simtorch_semantic.functional.matching import check_exact_feasible, resolve_n_workers
from simtorch_semantic.functional.semantic import (
    _as_nsc,
    _check_kernels,
    _check_matching,
    _kernels_from_ip,
    _semantic_ip,
    _sq_dists,
    median_sigma,
)

__all__ = ["get_or_calculate_RSM", "get_or_calculate_baseline_RSM"]

_FORMAT = "simtorch_semantic.rsm/1"


# ---------------------------------------------------------------------------------------------
# inputs


def _layer_items(representations):
    """Return a list of (layer name, value) where value is a tensor, array or path."""
    if isinstance(representations, dict):
        items = [(str(k), v) for k, v in representations.items()]
    elif isinstance(representations, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(representations)]
    else:
        raise TypeError(
            "representations must be a dict layer -> tensor/array/path or a list of them, got "
            f"{type(representations).__name__}"
        )
    if not items:
        raise ValueError("representations is empty: give at least one layer")
    return items


def _load(value, layer):
    """The representation of one layer as a CPU tensor or NumPy array (loads a path)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if not p.is_file():
            raise FileNotFoundError(f"representation file of layer {layer!r} not found: {p}")
        suffix = p.suffix.lower()
        if suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
                if len(obj) != 1 or len(tensors) != 1:
                    raise ValueError(
                        f"{p} holds a dict with {len(obj)} entries; save one tensor per file "
                        "(or a dict with exactly one tensor)"
                    )
                obj = tensors[0]
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"{p} does not hold a tensor (got {type(obj).__name__})")
            return obj
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        raise ValueError(f"unsupported file type {p.suffix!r} for layer {layer!r}: use .pt or .npy")
    raise TypeError(
        f"representation of layer {layer!r} must be a tensor, an array or a path, got "
        f"{type(value).__name__}"
    )


def _resolve_layout(layout, ndim, layer):
    if layout == "auto":
        if ndim == 4:
            return "ncs"
        if ndim == 3:
            return "nsc"
        raise ValueError(
            f"layer {layer!r}: representations must be (n, c, h, w) or (n, t, d) (or (n, c, s) "
            f"with layout='ncs'), got {ndim}-D"
            + ("; flat (n, d) features have no positions to permute" if ndim == 2 else "")
        )
    if layout not in ("ncs", "nsc"):
        raise ValueError(f"unknown layout {layout!r}; valid: 'auto', 'ncs', 'nsc'")
    return layout


def _raw_bytes(x):
    """(shape, dtype name, bytes view) of a tensor or array, for hashing."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        return tuple(t.shape), str(t.dtype), data
    a = np.ascontiguousarray(x)
    if a.dtype == object:
        raise TypeError("representations must be numeric arrays, got dtype object")
    return tuple(a.shape), str(a.dtype), a.reshape(-1).view(np.uint8)


def _check_writable(out_dir):
    out = Path(out_dir)
    for path in (out, *out.parents):  # the cache path itself, or a folder above it, is a file
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under {str(path)!r}, which is a file"
                raise NotADirectoryError(
                    f"out_dir {str(out)!r} {where}, not a directory; pass a directory for the "
                    "RSM cache (it is created if missing)")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(
            f"out_dir {str(out)!r} cannot be created ({exc}); pass a writable directory for the "
            "RSM cache"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write_probe_")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise PermissionError(
            f"out_dir {str(out)!r} is not writable ({exc}); pass a writable directory for the "
            "RSM cache"
        ) from None
    return out


# ---------------------------------------------------------------------------------------------
# cache


def _cache_key(kind, params, items, layout):
    """SHA-256 over the parameters and every layer's name, layout, shape, dtype and bytes.

    Returns (hex key, list of (shape, resolved layout) per layer)."""
    h = hashlib.sha256()
    counts = []
    h.update(_FORMAT.encode())
    h.update(json.dumps({"kind": kind, **params}, sort_keys=True).encode())
    for name, value in items:
        x = _load(value, name)
        shape, dtype, data = _raw_bytes(x)
        lay = _resolve_layout(layout, len(shape), name)
        h.update(json.dumps([name, lay, shape, dtype]).encode())
        h.update(data)
        counts.append((shape, lay))
    return h.hexdigest(), counts


def _save(path, key, meta, results):
    arrays = {"__key__": np.array(key), "__meta__": np.array(json.dumps(meta))}
    for li, (layer, per_kernel) in enumerate(results.items()):
        for kern, val in per_kernel.items():
            if isinstance(val, list):
                for bi, block in enumerate(val):
                    arrays[f"L{li}__{kern}__B{bi}"] = block
            else:
                arrays[f"L{li}__{kern}"] = val
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_cache(path, key, meta):
    """The cached results, or raise (any reason: unreadable, corrupt, foreign)."""
    with np.load(path, allow_pickle=False) as z:
        stored_key = str(z["__key__"])
        if stored_key != key:
            raise ValueError(f"the file holds the key {stored_key[:24]}..., not {key[:24]}...")
        stored_meta = json.loads(str(z["__meta__"]))
        if stored_meta != meta:
            raise ValueError("the parameters stored in the file differ from the requested ones")
        out = {}
        for li, (layer, n_blocks) in enumerate(zip(meta["layers"], meta["n_blocks"])):
            per_kernel = {}
            for kern in meta["kernels"]:
                if n_blocks is None:
                    per_kernel[kern] = np.asarray(z[f"L{li}__{kern}"], dtype=np.float64)
                else:
                    per_kernel[kern] = [np.asarray(z[f"L{li}__{kern}__B{bi}"], dtype=np.float64)
                                        for bi in range(n_blocks)]
            out[layer] = per_kernel
        return out


# ---------------------------------------------------------------------------------------------
# computation


def _blocks(n, batch_size):
    if batch_size is None:
        return [(0, n)]
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def _layer_rsms(xs, kind, kernels, batch_size, matching, n_workers, progress, options, layer):
    """RSMs of one layer ``xs`` [N, S, C]: dict kernel -> matrix (or list of block matrices)."""
    parts = []
    for bi, (s, e) in enumerate(_blocks(xs.shape[0], batch_size)):
        blk = xs[s:e]
        if kind == "semantic":
            ip, n2, _ = _semantic_ip(blk, None, matching, n_workers, progress, options,
                                     desc=f"{layer} pairs" + (f" (block {bi})" if batch_size else ""))
        else:
            flat = blk.reshape(blk.shape[0], -1).double()
            ip = (flat @ flat.T).cpu().numpy()
            n2 = np.einsum("ij,ij->i", flat.cpu().numpy(), flat.cpu().numpy())
            ip = np.triu(ip) + np.triu(ip, 1).T
            ip[np.diag_indices_from(ip)] = n2
        parts.append((ip, n2))
    sigma = None
    if "rbf" in kernels:  # one bandwidth for the whole set of computed pairs
        d = [_sq_dists(ip, n2, n2)[np.triu_indices(ip.shape[0], 1)] for ip, n2 in parts]
        sigma = median_sigma(np.concatenate(d))
    mats = [_kernels_from_ip(ip, n2, n2, kernels, True, sigma)[0] for ip, n2 in parts]
    if batch_size is None:
        return mats[0]
    return {k: [m[k] for m in mats] for k in kernels}


def _get_or_calculate(kind, out_dir, representations, batch_size, kernel, matching, n_workers,
                      progress, layout, options):
    kernels, was_list = _check_kernels(kernel)
    if kind == "semantic":
        _check_matching(matching)
        n_workers = resolve_n_workers(n_workers)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be None (full RSM) or a positive integer, got "
                             f"{batch_size!r}")
        batch_size = int(batch_size)
    if layout not in ("auto", "ncs", "nsc"):
        raise ValueError(f"unknown layout {layout!r}; valid: 'auto', 'ncs', 'nsc'")
    try:
        opts_json = json.loads(json.dumps(options, sort_keys=True))
    except TypeError:
        raise TypeError("matching options must be JSON-serialisable numbers/strings (they are "
                        "part of the cache key)") from None
    out = _check_writable(out_dir)
    items = _layer_items(representations)
    params = {"kernels": kernels, "batch_size": batch_size, "layout": layout}
    if kind == "semantic":
        params.update(matching=matching, options=opts_json)
    key, shapes = _cache_key(kind, params, items, layout)
    counts = [shape[0] for shape, _ in shapes]
    path = out / f"{kind}_rsm_{key[:24]}.npz"
    meta = {"format": _FORMAT, "kind": kind, **params, "layers": [name for name, _ in items],
            "n_blocks": [None if batch_size is None else len(_blocks(n, batch_size))
                         for n in counts]}

    if kind == "semantic" and matching == "exact":  # refuse hours of work before starting
        for (shape, lay), n in zip(shapes, counts):
            S = int(np.prod(shape[2:])) if lay == "ncs" else int(np.prod(shape[1:-1]))
            pairs = sum((e - s) * (e - s - 1) // 2 for s, e in _blocks(n, batch_size))
            if pairs:
                check_exact_feasible(S, pairs, n_workers=n_workers)

    results = None
    if path.exists():
        try:
            results = _load_cache(path, key, meta)
        except Exception as exc:  # unreadable, corrupt or foreign: recompute and overwrite
            warnings.warn(f"RSM cache file {str(path)!r} cannot be used ({type(exc).__name__}: "
                          f"{exc}); recomputing and overwriting it", RuntimeWarning, stacklevel=3)
            results = None

    if results is None:
        results = {}
        with pair_sharding():  # under torch.distributed each rank solves its share of the pairs
            for name, value in tqdm(items, desc=f"{kind} RSMs", disable=not progress, leave=False):
                x = _load(value, name)
                ndim = x.ndim
                lay = _resolve_layout(layout, ndim, name)
                xs = _as_nsc(x, f"representations[{name!r}]", lay)
                results[name] = _layer_rsms(xs, kind, kernels, batch_size, matching, n_workers,
                                            progress, options, name)
                del x, xs
        if rank() == 0:  # one writer; the others wait until the file is complete
            _save(path, key, meta, results)
        barrier("RSM cache written")

    if was_list:
        return results
    return {layer: per_kernel[kernels[0]] for layer, per_kernel in results.items()}


def get_or_calculate_RSM(out_dir, representations, batch_size=None, kernel="linear",
                         matching="auto", n_workers=None, progress=True, layout="auto",
                         **matching_options):
    """Permutation-invariant (semantic) RSM of every layer, loaded from or stored in a cache.

    Args:
        out_dir: cache directory (created if missing; must be writable -- checked first:
            ``NotADirectoryError`` when it or a folder above it is a file, ``PermissionError``
            when it cannot be written).
        representations: dict ``layer -> (n, c, h, w) / (n, t, d)`` tensor, array or path (.pt,
            .npy), or a list of them (layers "0", "1", ...). See the module docstring.
        batch_size: None for the full ``N x N`` RSM; an int for one RSM per consecutive block
            of ``batch_size`` samples (module docstring).
        kernel: "linear" (old name "ip"), "cosine", "rbf" or a list of them.
        matching: "auto" (default: exact scipy for small S, a certified auction above, by the
            calibrated cost model ``functional.matching.choose_solver``) or a solver of
            ``functional.matching.SOLVERS``; ``**matching_options`` (e.g. ``rel_tol=`` for the
            auctions, ``k=`` for "batch_optimal") go to it and into the cache key.
        n_workers: solver threads (not part of the key: it does not change the result).
        progress: tqdm bars over layers and pairs.
        layout: "auto" (4-D ``(n, c, h, w)``, 3-D ``(n, t, d)``), "ncs" or "nsc".

    Returns:
        dict ``layer -> float64 [N, N]`` (or list of ``[b, b]`` blocks with ``batch_size``);
        for a list of kernels, dict ``layer -> {kernel -> ...}``.
    """
    return _get_or_calculate("semantic", out_dir, representations, batch_size, kernel,
                             matching, n_workers, progress, layout, matching_options)


def get_or_calculate_baseline_RSM(out_dir, representations, batch_size=None, kernel="linear",
                                  progress=True, layout="auto"):
    """Spatio-semantic baseline RSM (no permutation) of every layer, with the same cache.

    Same arguments and return value as :func:`get_or_calculate_RSM` without the matching; the
    RSM is ``kernel(vec(x_i), vec(x_j))`` of the flattened samples.
    """
    return _get_or_calculate("baseline", out_dir, representations, batch_size, kernel, None,
                             None, progress, layout, {})

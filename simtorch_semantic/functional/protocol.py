"""Running any registered measure: on a pair of stored activations, or prepared layer by layer.

:func:`similarity` is the one functional entry point (``simtorch_semantic.functional.similarity``).
:func:`prepare_all` and :func:`score_matrix` are what :class:`~simtorch_semantic.LayerSimilarity`
uses for a layer x layer matrix: every representation is prepared once (the measure's
``prepare``, or kept as is), then all pairs are scored with ``score_all_pairs`` when the measure
has one (a few batched products), else pair by pair with ``score`` (or ``fn``).
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ._validation import DegenerateInputError, to_tensor
from .registry import MeasureSpec, call_with_options, get_measure, resolve_options
from .spatial import SPATIAL_POLICIES, apply_spatial, to_vectors

__all__ = ["similarity", "prepare_input", "prepare_all", "score_matrix"]


def _check_widths(spec: MeasureSpec, X, Y) -> None:
    if spec.equal_widths and X.dim() == 2 and Y.dim() == 2 and X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"measure {spec.name!r} needs representations of equal width, got {X.shape[1]} and "
            f"{Y.shape[1]} features; reduce both to a common width first (e.g. PCA) or pick a "
            "measure with equal_widths=False (see describe_measure).")


def prepare_input(spec: MeasureSpec, X, spatial: str = "flatten", name: str = "X"):
    """One representation as the measure receives it: the spatial policy applied
    (``[n, ...] -> [m, d]``) unless the measure takes spatial input or model outputs."""
    if spec.inputs == "outputs" or spec.spatial_input:
        return X
    return to_vectors(X, spatial, name)


def similarity(X, Y, measure: str, *, spatial: str = "flatten", **options) -> float:
    """The registered measure ``measure`` (a name or alias, see ``list_measures()``) of two stored
    representations ``X [n, ...]`` and ``Y [n, ...]`` of the same samples (torch or NumPy).

    ``spatial``: how spatial maps / token sequences become vectors (``"flatten"``, ``"mean"``,
    ``"positions"``; see :mod:`simtorch_semantic.functional.spatial`), not applied to measures
    that take spatial input (``semantic_cka``) or model outputs. ``**options``: the measure's
    options (``describe_measure(measure)["options"]`` lists them with defaults; unknown names
    raise). Returns a Python float (NaN where the measure documents it).
    """
    spec = get_measure(measure)
    if spatial not in SPATIAL_POLICIES:
        raise ValueError(f"similarity: unknown spatial policy {spatial!r}; valid: "
                         f"{', '.join(repr(p) for p in SPATIAL_POLICIES)}.")
    opts = resolve_options(spec, options)
    if spec.inputs == "representations" and not spec.spatial_input:
        X, Y = apply_spatial(X, Y, spatial)
        _check_widths(spec, X, Y)
    return float(call_with_options(spec.fn, X, Y, options=opts))


def _names_param(f, param: str) -> bool:
    """True when ``f``'s signature has a parameter called ``param`` (not just ``**kwargs``)."""
    try:
        return param in inspect.signature(f).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def prepare_all(spec: MeasureSpec, acts: Sequence, options: dict, spatial: str = "flatten",
                names: Sequence[str] | None = None, progress: bool = False, desc: str = "preparing"):
    """Prepare every representation of ``acts`` once.

    Returns ``(prepared, problems)``: ``prepared[i]`` is the measure's prepared form of
    ``acts[i]`` (the policy-applied tensor when the measure has no ``prepare``), or None when the
    representation is degenerate (:class:`DegenerateInputError`); ``problems[i]`` lists the
    warnings and errors raised while preparing it (for notes). Other errors propagate.
    """
    names = list(names) if names is not None else [str(i) for i in range(len(acts))]
    prepared, problems = [], []
    for name, act in tqdm(list(zip(names, acts)), desc=desc, unit="layer",
                          disable=not progress or len(acts) < 2):
        msgs = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            X = prepare_input(spec, act, spatial, name)
            try:
                if spec.prepare is not None:
                    extra = {"name": name} if _names_param(spec.prepare, "name") else {}
                    p = call_with_options(spec.prepare, X, options={**options, **extra})
                else:
                    p = X if spec.inputs == "outputs" else to_tensor(X, name)
            except DegenerateInputError as exc:
                p = None
                msgs.append(str(exc))
        msgs += [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        prepared.append(p)
        problems.append(msgs)
    return prepared, problems


def score_matrix(spec: MeasureSpec, P1: Sequence, P2: Sequence, options: dict,
                 progress: bool = False) -> tuple[np.ndarray, list]:
    """``[len(P1), len(P2)]`` float64 matrix of the measure on every pair of prepared
    representations (None entries give NaN rows/columns).

    One ``score_all_pairs`` call when the measure has one, else one ``score`` (or ``fn``) call per
    pair with a progress bar. Returns ``(matrix, messages)``: the distinct warnings raised.
    """
    out = np.full((len(P1), len(P2)), math.nan)
    rows = [i for i, p in enumerate(P1) if p is not None]
    cols = [j for j, p in enumerate(P2) if p is not None]
    messages: list[str] = []
    if not rows or not cols:
        return out, messages
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec.score_all_pairs is not None:
            block = call_with_options(spec.score_all_pairs, [P1[i] for i in rows],
                                      [P2[j] for j in cols], options=options)
            out[np.ix_(rows, cols)] = np.asarray(block, dtype=np.float64)
        else:
            f = spec.score if spec.score is not None else spec.fn
            pairs = [(i, j) for i in rows for j in cols]
            for i, j in tqdm(pairs, desc=f"{spec.name} pairs", unit="pair",
                             disable=not progress or len(pairs) < 2):
                out[i, j] = float(call_with_options(f, P1[i], P2[j], options=options))
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, RuntimeWarning) and text not in messages:
            messages.append(text)
    return out, messages

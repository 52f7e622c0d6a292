"""The measure registry: one entry per representational similarity measure.

Every measure the package offers is registered here once, as a :class:`MeasureSpec`: its stable
name, aliases, the paper it follows, its direction and range, the invariances it has, whether it
needs equal widths, whether it can stream (per-batch sufficient statistics) or needs all samples,
and its options with their defaults. ``LayerSimilarity``, the CLI's ``--measure``, the docs'
tables and the invariance property tests all read this registry; adding a measure is one function
in a ``functional/`` family file plus one :func:`register` call in ``functional/catalogue.py``.

The protocol of a measure (shapes: ``X [n, ...]`` torch tensor or NumPy array, one row per sample):

- ``fn(X, Y, **options) -> float``: the measure on a pair of stored representations;
- ``prepare(X, **options) -> object`` (optional): the work that depends on one representation
  only (a centred Gram, an RDM, a kNN graph), done once per layer;
- ``score(px, py, **options) -> float`` (optional, with ``prepare``): the measure on a pair of
  prepared representations;
- ``score_all_pairs(pxs, pys, **options) -> np.ndarray [a, b]`` (optional): every pair of two
  lists of prepared representations at once, where the math batches.

A measure without ``prepare``/``score`` is scored pair by pair with ``fn``.

Options. ``options`` holds every option of the measure with its default; a call merges the
user's options over the defaults (:func:`resolve_options`, which rejects unknown names) and each
callable receives the options its signature names (:func:`call_with_options`; a ``**kwargs``
callable receives all of them), so ``prepare`` can take ``metric`` while ``score`` takes
``method``. ``invariances``, ``value_range`` and ``identical_value`` describe the measure with its
default options.

Inputs. ``fn``/``prepare`` receive one representation as ``[m, d]`` after the shared spatial
policy (:mod:`simtorch_semantic.functional.spatial`), except measures with ``spatial_input=True``
(they receive ``[n, ...]`` as stored, e.g. semantic CKA, which matches positions) and
``inputs="outputs"`` measures (model outputs ``[n, classes]``, passed as given).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["INVARIANCES", "MeasureSpec", "register", "get_measure", "list_measures", "describe_measure",
           "resolve_options", "call_with_options"]

#: The invariances a measure may declare (transformations T with m(T X, Y) == m(X, Y)).
INVARIANCES = ("permutation", "orthogonal", "isotropic_scaling", "translation", "invertible_linear")


@dataclass(frozen=True)
class MeasureSpec:
    """One registered measure.

    Attributes
    ----------
    name : str
        Stable name (``"cka"``, ``"jaccard_knn"``, ``"procrustes_angular"``).
    fn : callable
        ``fn(X, Y, **options) -> float`` on stored activations ``[n, ...]``.
    family : str
        The ``functional/`` module it lives in (``"cka"``, ``"neighbors"``, ...).
    paper : str
        The reference it follows.
    higher_is_similar : bool
        True for similarities, False for distances/divergences.
    value_range : tuple of float
        ``(low, high)``; ``float("inf")`` where unbounded.
    identical_value : float
        The value for ``fn(X, X)``.
    invariances : frozenset of str
        Subset of :data:`INVARIANCES`.
    symmetric : bool
        ``fn(X, Y) == fn(Y, X)``.
    equal_widths : bool
        Needs ``X`` and ``Y`` to have the same number of features.
    streaming : bool
        Can be computed from per-batch sufficient statistics (no activation kept).
    options : dict
        Option name -> default.
    aliases : tuple of str
        Other names accepted by :func:`get_measure` (similarity-repository style).
    inputs : str
        ``"representations"`` (layer activations) or ``"outputs"`` (model outputs, labels).
    prepare, score, score_all_pairs : callable or None
        The split protocol described in the module docstring.
    description : str
        One line for listings.
    spatial_input : bool
        The measure needs the spatial/token axes itself (receives ``[n, ...]`` as stored; the
        spatial policy is not applied). Default False.
    paired : bool
        ``X`` and ``Y`` must hold the same samples in the same order (default True; False for
        measures of two distributions, such as IMD, which accept ``X [n, ...]`` and ``Y [m, ...]``).
    """

    name: str
    fn: Callable[..., float]
    family: str
    paper: str
    higher_is_similar: bool
    value_range: tuple
    identical_value: float
    invariances: frozenset = frozenset()
    symmetric: bool = True
    equal_widths: bool = False
    streaming: bool = False
    options: dict = field(default_factory=dict)
    aliases: tuple = ()
    inputs: str = "representations"
    prepare: Callable[..., Any] | None = None
    score: Callable[..., float] | None = None
    score_all_pairs: Callable[..., Any] | None = None
    description: str = ""
    spatial_input: bool = False
    paired: bool = True

    def __post_init__(self):
        unknown = set(self.invariances) - set(INVARIANCES)
        if unknown:
            raise ValueError(f"measure {self.name!r}: unknown invariances {sorted(unknown)}; "
                             f"valid: {list(INVARIANCES)}")
        if (self.prepare is None) != (self.score is None):
            raise ValueError(f"measure {self.name!r}: give both prepare and score, or neither")
        if self.inputs not in ("representations", "outputs"):
            raise ValueError(f"measure {self.name!r}: inputs must be 'representations' or 'outputs'")

    def describe(self) -> dict:
        """The registry entry as a plain dict (what :func:`describe_measure` returns)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "family": self.family,
            "paper": self.paper,
            "description": self.description,
            "higher_is_similar": self.higher_is_similar,
            "value_range": tuple(self.value_range),
            "identical_value": self.identical_value,
            "invariances": sorted(self.invariances),
            "symmetric": self.symmetric,
            "equal_widths": self.equal_widths,
            "streaming": self.streaming,
            "inputs": self.inputs,
            "spatial_input": self.spatial_input,
            "paired": self.paired,
            "options": dict(self.options),
            "prepare_score": self.prepare is not None,
            "all_pairs": self.score_all_pairs is not None,
        }


_REGISTRY: dict[str, MeasureSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(spec: MeasureSpec) -> MeasureSpec:
    """Add ``spec`` to the registry; names and aliases must be new (case and ``-``/``_`` folded)."""
    for label in (spec.name, *spec.aliases):
        key = _key(label)
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"measure name or alias {label!r} is already registered")
    _REGISTRY[_key(spec.name)] = spec
    for alias in spec.aliases:
        _ALIASES[_key(alias)] = _key(spec.name)
    return spec


def _ensure_catalogue() -> None:
    # the entries live in catalogue.py, which imports every family; load it on first use
    from . import catalogue  # noqa: F401


def get_measure(name: str) -> MeasureSpec:
    """Return the :class:`MeasureSpec` registered as ``name`` (or one of its aliases).

    Raises ``ValueError`` naming the closest registered names for an unknown ``name``.
    """
    _ensure_catalogue()
    if not isinstance(name, str):
        raise TypeError(f"measure must be a name (str), got {type(name).__name__}")
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY) + list(_ALIASES), n=3, cutoff=0.5)
        hint = f"; close names: {', '.join(repr(c) for c in close)}" if close else ""
        raise ValueError(f"unknown measure {name!r}{hint}; see simtorch_semantic.list_measures()")
    return _REGISTRY[key]


def list_measures() -> list[str]:
    """The names of every registered measure, sorted."""
    _ensure_catalogue()
    return sorted(spec.name for spec in _REGISTRY.values())


def describe_measure(name: str) -> dict:
    """The properties of measure ``name`` as a dict (see :class:`MeasureSpec`)."""
    return get_measure(name).describe()


def resolve_options(spec: MeasureSpec, options: dict) -> dict:
    """The defaults of ``spec.options`` overridden by ``options``; unknown names raise a
    ``ValueError`` that lists the measure's options."""
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
        raise ValueError(
            f"measure {spec.name!r} has no option(s) {', '.join(repr(u) for u in unknown)}; its "
            f"options (with defaults) are: {valid}. See describe_measure({spec.name!r}).")
    merged = dict(spec.options)
    merged.update(options)
    return merged


def call_with_options(f: Callable, *args, options: dict):
    """Call ``f(*args, **o)`` where ``o`` holds the entries of ``options`` that ``f``'s signature
    names (all of them when ``f`` takes ``**kwargs``)."""
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return f(*args, **options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return f(*args, **options)
    return f(*args, **{k: v for k, v in options.items() if k in params})

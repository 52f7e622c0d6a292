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
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["INVARIANCES", "MeasureSpec", "register", "get_measure", "list_measures", "describe_measure"]

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
            "options": dict(self.options),
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

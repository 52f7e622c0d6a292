"""The registered measures: one :func:`~simtorch_semantic.functional.registry.register` call each.

Each entry points at functions of a ``functional/`` family module; see
:mod:`simtorch_semantic.functional.registry` for the protocol and the fields.
"""
from __future__ import annotations

from .cka import linear_cka
from .registry import MeasureSpec, register

register(MeasureSpec(
    name="cka",
    fn=linear_cka,
    family="cka",
    paper="Kornblith et al., Similarity of Neural Network Representations Revisited, ICML 2019",
    description="linear centred kernel alignment",
    higher_is_similar=True,
    value_range=(0.0, 1.0),
    identical_value=1.0,
    invariances=frozenset({"permutation", "orthogonal", "isotropic_scaling", "translation"}),
    streaming=True,
    options={"unbiased": False},
    aliases=("linear_cka", "cka-kernel=linear-hsic=gretton"),
))

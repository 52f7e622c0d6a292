"""The registered measures: one :func:`~simtorch_semantic.functional.registry.register` call each.

Each entry points at functions of a ``functional/`` family module; see
:mod:`simtorch_semantic.functional.registry` for the protocol and the fields. Invariances, ranges
and identical values hold for the default options.

Not registered: deconfounded CKA (dCKA, :func:`~simtorch_semantic.functional.dcka.dcka`). It
needs a third input, the confounder ``Z`` of the same samples, so it does not fit the protocol's
``fn(X, Y)``; use :func:`~simtorch_semantic.functional.dcka.dcka` on stored activations and
:class:`~simtorch_semantic.DeltaCKA` layer x layer (the CLI's ``--measure dcka`` maps to it).
"""
from __future__ import annotations

import math
from functools import partial

from .cca import cca_prepare, cca_score, cca_score_all_pairs, cca_similarity, pwcca, svcca
from .cka import cka_prepare, cka_score, cka_score_all_pairs, linear_cka, rbf_cka
from .procrustes import (procrustes_angular, procrustes_disparity, procrustes_prepare, procrustes_score,
                         procrustes_score_all_pairs)
from .registry import MeasureSpec, register
from .rsa import rsa, rsa_prepare, rsa_score, rsa_score_all_pairs
from .semantic_cka import semantic_cka, semantic_cka_prepare

_SHAPE = frozenset({"permutation", "orthogonal", "isotropic_scaling", "translation"})
_KORNBLITH = "Kornblith et al., Similarity of Neural Network Representations Revisited, ICML 2019"

# ---- the existing families

register(MeasureSpec(
    name="cka",
    fn=linear_cka,
    family="cka",
    paper=_KORNBLITH,
    description="linear centred kernel alignment",
    higher_is_similar=True,
    value_range=(0.0, 1.0),
    identical_value=1.0,
    invariances=_SHAPE,
    streaming=True,
    options={"unbiased": False},
    aliases=("linear_cka", "cka-kernel=linear-hsic=gretton"),
    prepare=partial(cka_prepare, kernel="linear"),
    score=cka_score,
    score_all_pairs=cka_score_all_pairs,
))

register(MeasureSpec(
    name="rbf_cka",
    fn=rbf_cka,
    family="cka",
    paper=_KORNBLITH,
    description="CKA with a Gaussian kernel, bandwidth sigma_frac x the median distance",
    higher_is_similar=True,
    value_range=(0.0, 1.0),
    identical_value=1.0,
    invariances=_SHAPE,
    options={"sigma_frac": 0.8, "sigma": None, "unbiased": False},
    aliases=("kernel_cka", "cka-kernel=rbf-hsic=gretton"),
    prepare=partial(cka_prepare, kernel="rbf"),
    score=cka_score,
    score_all_pairs=cka_score_all_pairs,
))

register(MeasureSpec(
    name="rsa",
    fn=rsa,
    family="rsa",
    paper="Kriegeskorte et al., Representational similarity analysis, Front. Syst. Neurosci. 2008",
    description="correlation of representational dissimilarity matrices (RDM metric, comparison)",
    higher_is_similar=True,
    value_range=(-1.0, 1.0),
    identical_value=1.0,
    # the default metric "pearson" (1 - correlation between samples' patterns) is not invariant
    # to rotations or shifts of the features; metric="L2squared" would be
    invariances=frozenset({"permutation", "isotropic_scaling"}),
    options={"metric": "pearson", "method": "pearson", "center": False},
    aliases=("representational_similarity_analysis", "rsa-rdm=pearson-compare=pearson"),
    prepare=rsa_prepare,
    score=rsa_score,
    score_all_pairs=rsa_score_all_pairs,
))

register(MeasureSpec(
    name="procrustes",
    fn=procrustes_disparity,
    family="procrustes",
    paper="Gower, Generalized Procrustes analysis, Psychometrika 1975 (scipy.spatial.procrustes)",
    description="orthogonal Procrustes disparity 1 - ||Xn^T Yn||_*^2 of standardised data",
    higher_is_similar=False,
    value_range=(0.0, 1.0),
    identical_value=0.0,
    invariances=_SHAPE,
    aliases=("procrustes_disparity", "procrustes-sq-euclidean"),
    prepare=procrustes_prepare,
    score=partial(procrustes_score, angular=False),
    score_all_pairs=partial(procrustes_score_all_pairs, angular=False),
))

register(MeasureSpec(
    name="procrustes_angular",
    fn=procrustes_angular,
    family="procrustes",
    paper="Williams et al., Generalized Shape Metrics on Neural Representations, NeurIPS 2021",
    description="angular Procrustes shape metric arccos ||Xn^T Yn||_*",
    higher_is_similar=False,
    value_range=(0.0, math.pi / 2),
    identical_value=0.0,
    invariances=_SHAPE,
    aliases=("angular_procrustes", "shape_metric-alpha=1-angular"),
    prepare=procrustes_prepare,
    score=partial(procrustes_score, angular=True),
    score_all_pairs=partial(procrustes_score_all_pairs, angular=True),
))

register(MeasureSpec(
    name="cca",
    fn=partial(cca_similarity, variant="mean_rho"),
    family="cca",
    paper="Hotelling 1936; mean canonical correlation as in Kornblith et al. 2019",
    description="mean canonical correlation (needs n > rank(X) + rank(Y) + 1)",
    higher_is_similar=True,
    value_range=(0.0, 1.0),
    identical_value=1.0,
    invariances=_SHAPE | {"invertible_linear"},
    options={"epsilon": 0.0, "dims": None},
    aliases=("mean_cca", "cca-mean_rho"),
    prepare=partial(cca_prepare, variant="mean_rho"),
    score=partial(cca_score, variant="mean_rho"),
    score_all_pairs=partial(cca_score_all_pairs, variant="mean_rho"),
))

register(MeasureSpec(
    name="svcca",
    fn=svcca,
    family="cca",
    paper="Raghu et al., SVCCA, NeurIPS 2017",
    description="mean canonical correlation after keeping `keep` of each input's variance (SVD)",
    higher_is_similar=True,
    value_range=(0.0, 1.0),
    identical_value=1.0,
    invariances=_SHAPE,
    options={"keep": 0.99, "epsilon": 0.0},
    aliases=("sv_cca", "svcca-var=0.99"),
    prepare=partial(cca_prepare, variant="svcca"),
    score=partial(cca_score, variant="svcca"),
    score_all_pairs=partial(cca_score_all_pairs, variant="svcca"),
))

register(MeasureSpec(
    name="pwcca",
    fn=pwcca,
    family="cca",
    paper="Morcos et al., Insights on representational similarity in neural networks, NeurIPS 2018",
    description="projection-weighted mean canonical correlation (weights from the lower-rank input)",
    higher_is_similar=True,
    value_range=(0.0, 1.0),
    identical_value=1.0,
    # the weights sum |<h_i, x_j>| over the neurons x_j: not invariant to rotations of them
    invariances=frozenset({"permutation", "isotropic_scaling", "translation"}),
    symmetric=False,
    options={"epsilon": 0.0, "dims": None},
    aliases=("projection_weighted_cca",),
    prepare=partial(cca_prepare, variant="pwcca"),
    score=partial(cca_score, variant="pwcca"),
    score_all_pairs=partial(cca_score_all_pairs, variant="pwcca"),
))

register(MeasureSpec(
    name="semantic_cka",
    fn=semantic_cka,
    family="semantic_cka",
    paper="Wald et al., Decoupling Semantic Similarity from Spatial Alignment for Neural Networks, "
          "NeurIPS 2024",
    description="CKA of permutation-invariant (semantic) RSMs of spatial maps [n, C, H, W]",
    higher_is_similar=True,
    # the semantic RSM can be indefinite (psd=None): CKA is then a cosine in [-1, 1]
    value_range=(-1.0, 1.0),
    identical_value=1.0,
    # transformations of the channels, the same at every position (translation: the RBF kernel
    # of aligned pairs and the optimal matching do not change when every position is shifted by c)
    invariances=frozenset({"permutation", "orthogonal", "isotropic_scaling", "translation"}),
    options={"kernel": "rbf", "matching": "exact", "baseline": False, "unbiased": False,
             "psd": None, "layout": "auto"},
    aliases=("perm_inv_cka", "semantic_cka-kernel=rbf"),
    prepare=semantic_cka_prepare,
    score=cka_score,
    score_all_pairs=cka_score_all_pairs,
    spatial_input=True,
))

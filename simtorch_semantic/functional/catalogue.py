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

# ---- measures added with the ReSi catalogue
# (Klabunde et al., "ReSi: A Comprehensive Benchmark for Representational Similarity Measures",
# ICLR 2025, plus Huh et al. 2024, Williams et al. 2021 and Khosla & Williams 2023). Invariances
# are those of the default options; the family modules' docstrings give the formulas.
import math  # noqa: E402

from . import alignment as _al  # noqa: E402
from . import neighbors as _nb  # noqa: E402
from . import outputs as _out  # noqa: E402
from . import rsm_measures as _rsm  # noqa: E402
from . import statistics as _st  # noqa: E402
from . import topology as _top  # noqa: E402

_RESI = "Klabunde et al., ReSi: A Comprehensive Benchmark for Representational Similarity Measures, ICLR 2025"
_PERM, _ORTH, _ISO, _TRANS, _LIN = ("permutation", "orthogonal", "isotropic_scaling", "translation",
                                    "invertible_linear")
_INF = float("inf")


def _entry(name, fn, family, paper, description, higher, value_range, identical, invariances=(),
           **kw):
    register(MeasureSpec(name=name, fn=fn, family=family, paper=paper, description=description,
                         higher_is_similar=higher, value_range=value_range,
                         identical_value=identical, invariances=frozenset(invariances), **kw))


# alignment
_entry("aligned_cosine", _al.aligned_cosine, "alignment",
       "Hamilton et al., Diachronic Word Embeddings Reveal Statistical Laws of Semantic Change, ACL "
       "2016; " + _RESI,
       "mean cosine of X Q and Y after the orthogonal Procrustes fit (uncentred)", True, (-1.0, 1.0),
       1.0, (_PERM, _ORTH, _ISO), aliases=("aligned_cossim", "aligned_cosine_similarity"),
       prepare=_al.aligned_cosine_prepare, score=_al.aligned_cosine_score)
_entry("hard_correlation_match", _al.hard_correlation_match, "alignment",
       "Li et al., Convergent Learning: Do Different Neural Networks Learn the Same Representations?, "
       "ICLR 2016; " + _RESI,
       "mean Pearson correlation of the best one-to-one matching of neurons", True, (-1.0, 1.0), 1.0,
       (_PERM, _ISO, _TRANS), aliases=("hard_correlation_matching", "correlation_match_hard"),
       prepare=_al.correlation_match_prepare,
       score=_al.hard_correlation_match_score)
_entry("soft_correlation_match", _al.soft_correlation_match, "alignment",
       "Li et al., Convergent Learning: Do Different Neural Networks Learn the Same Representations?, "
       "ICLR 2016; " + _RESI,
       "mean best-partner Pearson correlation of the neurons, both directions", True, (-1.0, 1.0), 1.0,
       (_PERM, _ISO, _TRANS), aliases=("soft_correlation_matching", "correlation_match_soft"),
       prepare=_al.correlation_match_prepare,
       score=_al.soft_correlation_match_score)
_entry("linear_regression", _al.linear_regression, "alignment",
       "Kornblith et al., Similarity of Neural Network Representations Revisited, ICML 2019; " + _RESI,
       "R^2 of the least-squares fit between the centred inputs (both directions averaged)", True,
       (0.0, 1.0), 1.0, (_PERM, _ORTH, _ISO, _TRANS), options={"direction": "mean"},
       aliases=("linear_predictability", "linreg"),
       prepare=_al.linear_regression_prepare, score=_al.linear_regression_score)
_entry("permutation_procrustes", _al.permutation_procrustes, "alignment",
       "Williams et al., Generalized Shape Metrics on Neural Representations, NeurIPS 2021; " + _RESI,
       "min over feature permutations of ||X P - Y||_F (uncentred, unscaled)", False, (0.0, _INF),
       0.0, (_PERM,), aliases=("procrustes_permutation",),
       prepare=_al.permutation_procrustes_prepare, score=_al.permutation_procrustes_score)
_entry("procrustes_size_shape", _al.procrustes_size_shape, "alignment",
       "Dryden & Mardia, Statistical Shape Analysis, 2016; Williams et al., NeurIPS 2021; " + _RESI,
       "min over rotations of ||Xc Q - Yc||_F (centred, unscaled)", False, (0.0, _INF), 0.0,
       (_PERM, _ORTH, _TRANS), aliases=("procrustes_size_and_shape", "procrustes_euclidean"),
       prepare=_al.procrustes_size_shape_prepare, score=_al.procrustes_size_shape_score)
_entry("shape_metric", _al.shape_metric, "alignment",
       "Williams et al., Generalized Shape Metrics on Neural Representations, NeurIPS 2021",
       "angular shape distance after partial whitening (alpha=0: CCA, alpha=1: Procrustes)", False,
       (0.0, math.pi / 2), 0.0, (_PERM, _ORTH, _TRANS), options={"alpha": 0.5},
       aliases=("generalized_shape_metric", "generalised_shape_metric"),
       prepare=_al.shape_metric_prepare, score=_al.shape_metric_score)
_entry("soft_matching", _al.soft_matching_distance, "alignment",
       "Khosla & Williams, Soft Matching Distance: A Metric on Neural Representations that Captures "
       "Single-Neuron Tuning, UniReps 2023",
       "optimal-transport matching of the (centred) neurons, sqrt of the mean squared distance",
       False, (0.0, _INF), 0.0, (_PERM, _TRANS), options={"center": True},
       aliases=("soft_matching_distance",),
       prepare=_al.soft_matching_prepare, score=_al.soft_matching_score)

# neighbours
_KNN = {"k": 10, "metric": "cosine"}
_entry("jaccard_knn", _nb.jaccard_knn, "neighbors",
       "Schumacher et al., The Effects of Randomness on the Stability of Node Embeddings, ECML PKDD "
       "2021; " + _RESI,
       "mean Jaccard index of the k-nearest-neighbour sets", True, (0.0, 1.0), 1.0,
       (_PERM, _ORTH, _ISO), options=dict(_KNN), aliases=("knn_jaccard", "jaccard_similarity"),
       prepare=_nb.knn_prepare, score=_nb.jaccard_knn_score)
_entry("mutual_knn", _nb.mutual_knn, "neighbors",
       "Huh et al., The Platonic Representation Hypothesis, ICML 2024",
       "mean fraction of shared k-nearest neighbours", True, (0.0, 1.0), 1.0, (_PERM, _ORTH, _ISO),
       options=dict(_KNN), aliases=("mutual_knn_alignment", "mknn"),
       prepare=_nb.knn_prepare, score=_nb.mutual_knn_score)
_entry("cknna", _nb.cknna, "neighbors",
       "Huh et al., The Platonic Representation Hypothesis, ICML 2024",
       "CKA restricted to mutual k-nearest-neighbour pairs (unbiased HSIC)", True, (-1.0, 1.0), 1.0,
       (_PERM, _ORTH, _ISO), symmetric=False,
       options={"k": 10, "normalize": True, "unbiased": True},
       aliases=("cknn_alignment", "mutual_knn_cka"),
       prepare=_nb.cknna_prepare, score=_nb.cknna_score)
_entry("rank_similarity", _nb.rank_similarity, "neighbors",
       "Wang et al., Towards Understanding the Instability of Network Embedding, IEEE TKDE "
       "2022; " + _RESI,
       "rank agreement of the shared k-nearest neighbours", True, (0.0, 1.0), 1.0,
       (_PERM, _ORTH, _ISO), options=dict(_KNN), aliases=("knn_rank_similarity",),
       prepare=_nb.knn_prepare, score=_nb.rank_similarity_score)
_entry("second_order_cosine", _nb.second_order_cosine, "neighbors",
       "Hamilton et al., Cultural Shift or Linguistic Drift?, EMNLP 2016; " + _RESI,
       "cosine of the similarity vectors over the union of the k-nearest-neighbour sets", True,
       (-1.0, 1.0), 1.0, (_PERM, _ORTH, _ISO), options={"k": 10, "vectors": "similarity"},
       aliases=("second_order_cosine_similarity", "second_order_cossim"),
       prepare=_nb.second_order_cosine_prepare, score=_nb.second_order_cosine_score)

# sample geometry
_entry("rsm_norm_difference", _rsm.rsm_norm_difference, "rsm_measures",
       "Shahbazi et al., Using Distance on the Riemannian Manifold to Compare Representations in "
       "Brain and in Models, NeuroImage 2021; " + _RESI,
       "Euclidean norm of the difference of the Euclidean distance matrices (upper triangles)",
       False, (0.0, _INF), 0.0, (_PERM, _ORTH, _TRANS), aliases=("rsm_norm_diff",),
       prepare=_rsm.rsm_norm_prepare, score=_rsm.rsm_norm_score,
       score_all_pairs=_rsm.rsm_norm_score_all_pairs)
_entry("distance_correlation", _rsm.distance_correlation, "rsm_measures",
       "Székely, Rizzo & Bakirov, Measuring and Testing Dependence by Correlation of Distances, "
       "Annals of Statistics 2007; " + _RESI,
       "distance correlation of the samples (double-centred Euclidean distances)", True, (0.0, 1.0),
       1.0, (_PERM, _ORTH, _ISO, _TRANS), aliases=("dcor",),
       prepare=_rsm.distance_correlation_prepare, score=_rsm.distance_correlation_score,
       score_all_pairs=_rsm.distance_correlation_score_all_pairs)
_entry("eigenspace_overlap", _rsm.eigenspace_overlap, "rsm_measures",
       "May et al., On the Downstream Performance of Compressed Word Embeddings, NeurIPS 2019; "
       + _RESI,
       "overlap ||U_X^T U_Y||_F^2 / max rank of the column spaces", True, (0.0, 1.0), 1.0,
       (_PERM, _ORTH, _ISO, _LIN), aliases=("eigenspace_overlap_score", "eos"),
       prepare=_rsm.eigenspace_overlap_prepare, score=_rsm.eigenspace_overlap_score)
_entry("gulp", _rsm.gulp, "rsm_measures",
       "Boix-Adsera et al., GULP: a Prediction-Based Metric Between Representations, NeurIPS 2022",
       "distance between the (ridge) linear predictors of the two representations", False,
       (0.0, _INF), 0.0, (_PERM, _ORTH, _ISO, _TRANS, _LIN), options={"lmbda": 0.0},
       aliases=("gulp_distance",), prepare=_rsm.gulp_prepare, score=_rsm.gulp_score)

# statistics
_entry("magnitude_difference", _st.magnitude_difference, "statistics",
       "Wang et al., Towards Understanding the Instability of Network Embedding, IEEE TKDE 2022; "
       + _RESI,
       "absolute difference of the norms of the mean samples", False, (0.0, _INF), 0.0,
       (_PERM, _ORTH), aliases=("magnitude",), prepare=_st.magnitude, score=_st.statistic_score,
       score_all_pairs=_st.statistic_score_all_pairs)
_entry("concentricity_difference", _st.concentricity_difference, "statistics",
       "Wang et al., Towards Understanding the Instability of Network Embedding, IEEE TKDE 2022; "
       + _RESI,
       "absolute difference of the mean cosines of the samples with their mean", False, (0.0, 2.0),
       0.0, (_PERM, _ORTH, _ISO), aliases=("concentricity",), prepare=_st.concentricity,
       score=_st.statistic_score, score_all_pairs=_st.statistic_score_all_pairs)
_entry("uniformity_difference", _st.uniformity_difference, "statistics",
       "Wang & Isola, Understanding Contrastive Representation Learning through Alignment and "
       "Uniformity on the Hypersphere, ICML 2020; " + _RESI,
       "absolute difference of log mean exp(-t ||x_i - x_j||^2)", False, (0.0, _INF), 0.0,
       (_PERM, _ORTH, _TRANS), options={"t": 2.0}, aliases=("uniformity",),
       prepare=_st.uniformity, score=_st.statistic_score,
       score_all_pairs=_st.statistic_score_all_pairs)

# topology
_entry("imd", _top.imd, "topology",
       "Tsitsulin et al., The Shape of Data: Intrinsic Distance for Data Distributions, ICLR 2020; "
       + _RESI,
       "multi-scale intrinsic distance: heat-kernel traces of the kNN graphs", False, (0.0, _INF),
       0.0, (_PERM, _ORTH, _ISO, _TRANS),
       options={"k": 5, "method": "exact", "steps": 10, "probes": 100, "seed": 0},
       aliases=("msid", "multiscale_intrinsic_distance", "imd_score"),
       prepare=_top.imd_prepare, score=_top.imd_score,
       paired=False)  # compares two distributions: X [n, ...] and Y [m, ...] need not pair up
_entry("rtd", _top.rtd, "topology",
       "Barannikov et al., Representation Topology Divergence: A Method for Comparing Neural "
       "Network Representations, ICML 2022; " + _RESI,
       "total H1 bar length of the R-Cross-Barcode (ripser), symmetrised, over sample subsets",
       False, (0.0, _INF), 0.0, (_PERM, _ORTH, _ISO, _TRANS),
       options={"trials": 10, "batch": 500, "seed": 0},
       aliases=("representation_topology_divergence",))

# model outputs
_entry("jensen_shannon", _out.jensen_shannon, "outputs",
       "Lin, Divergence Measures Based on the Shannon Entropy, IEEE Trans. Inf. Theory 1991; " + _RESI,
       "mean Jensen-Shannon divergence (bits) of the predicted class distributions", False,
       (0.0, 1.0), 0.0, (), options={"outputs": "logits"}, inputs="outputs",
       aliases=("jsd", "js_divergence"),
       prepare=_out.jensen_shannon_prepare, score=_out.jensen_shannon_score)
_entry("disagreement", _out.disagreement, "outputs",
       "Madani et al., Co-Validation: Using Model Disagreement on Unlabeled Data to Validate "
       "Classification Algorithms, NeurIPS 2004; " + _RESI,
       "fraction of samples with different predicted classes", False, (0.0, 1.0), 0.0, (),
       inputs="outputs", aliases=("prediction_disagreement",),
       prepare=_out.disagreement_prepare, score=_out.disagreement_score)
_entry("accuracy_difference", _out.accuracy_difference, "outputs", _RESI,
       "absolute difference of the accuracies (needs labels=)", False, (0.0, 1.0), 0.0, (),
       options={"labels": None}, inputs="outputs",
       aliases=("absolute_accuracy_difference", "abs_acc_diff"),
       prepare=_out.accuracy, score=_out.accuracy_score,
       score_all_pairs=_st.statistic_score_all_pairs)

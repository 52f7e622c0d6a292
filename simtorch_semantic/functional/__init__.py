"""Pure math on tensors: no hooks, no loaders, no state, no I/O.

Every function takes torch tensors or NumPy arrays of shape ``[n, ...]`` (flattened per sample
where the measure needs vectors) and returns float64. One module per family, with the formula in
its docstring: ``kernels`` (Gram matrices, centring, median bandwidth), ``hsic`` (biased,
unbiased, all-pairs), ``cka``, ``dcka``, ``rsa`` (RDMs and their comparison), ``procrustes``,
``cca``, ``matching`` (assignment solvers), ``semantic`` (permutation-invariant similarity) and
``inference`` (bootstrap intervals, permutation nulls and p-values, calibrated scores).

Every measure is registered once (``registry``, entries in ``catalogue``);
:func:`similarity(X, Y, measure, **options) <simtorch_semantic.functional.protocol.similarity>`
runs any of them on stored activations, with the shared spatial policy of ``spatial``.
"""

from .cca import CCA_VARIANTS, cca, cca_prepare, cca_score, cca_score_all_pairs, cca_similarity, pwcca, svcca
from .cka import (cka_from_grams, cka_from_hsic, cka_prepare, cka_prepare_gram, cka_score, cka_score_all_pairs,
                  linear_cka, rbf_cka)
from .dcka import DeconfoundedHSIC, dcka, dcka_from_hsic, dcka_hsic_terms, deconfound_gram
from .hsic import hsic_all_pairs, hsic_biased, hsic_cross, hsic_prepare, hsic_self, hsic_unbiased
from .kernels import (center_gram, linear_gram, median_bandwidth, median_distance, rbf_gram, sq_distances,
                      streaming_linear_gram)
from .inference import (bca_interval, calibrated_scores, percentile_interval, permutation_p_values,
                        permuted_hsic_cross, streaming_cka_bootstrap, westfall_young_p_values)
from .matching import SOLVERS, assignment_objective, check_exact_feasible, estimate_exact_seconds, solve_assignment
from .matching import MATCHINGS, CertifiedAssignment, batched_auction, choose_solver, dual_bound, estimate_seconds
from .procrustes import (procrustes_angular, procrustes_disparity, procrustes_nuclear_norm, procrustes_prepare,
                         procrustes_score, procrustes_score_all_pairs)
from .rsa import (COMPARE_METHODS, RDM_METRICS, compare_rdms, compare_rdms_all_pairs, double_center, rdm,
                  rsa_prepare, rsa_score, rsa_score_all_pairs, upper_triangle)
from .semantic_cka import semantic_cka_prepare, semantic_rsm
from .semantic import KERNELS, LAYOUTS, perm_inv_semantic_sim, semantic_sim_parallel, similarity_calculation
from .registry import INVARIANCES, MeasureSpec, describe_measure, get_measure, list_measures, register
from .spatial import SPATIAL_POLICIES, apply_spatial, to_vectors
from .protocol import similarity
from .semantic import pool_positions

__all__ = [
    "linear_gram", "streaming_linear_gram", "center_gram", "sq_distances", "median_bandwidth", "rbf_gram",
    "hsic_biased", "hsic_unbiased", "hsic_all_pairs",
    "linear_cka", "rbf_cka", "cka_from_grams", "cka_from_hsic",
    "dcka", "deconfound_gram", "dcka_from_hsic", "dcka_hsic_terms", "DeconfoundedHSIC",
    "RDM_METRICS", "COMPARE_METHODS", "rdm", "compare_rdms", "compare_rdms_all_pairs", "double_center",
    "upper_triangle",
    "procrustes_disparity", "procrustes_angular", "procrustes_nuclear_norm",
    "CCA_VARIANTS", "cca", "cca_similarity", "svcca", "pwcca",
    "SOLVERS", "solve_assignment", "assignment_objective", "estimate_exact_seconds", "check_exact_feasible",
    "MATCHINGS", "CertifiedAssignment", "batched_auction", "dual_bound", "estimate_seconds", "choose_solver",
    "KERNELS", "LAYOUTS", "perm_inv_semantic_sim", "semantic_sim_parallel", "similarity_calculation",
    "similarity", "list_measures", "describe_measure", "get_measure", "register", "MeasureSpec",
    "INVARIANCES", "SPATIAL_POLICIES", "to_vectors", "apply_spatial",
    "median_distance", "hsic_prepare", "hsic_cross", "hsic_self",
    "cka_prepare", "cka_prepare_gram", "cka_score", "cka_score_all_pairs",
    "rsa_prepare", "rsa_score", "rsa_score_all_pairs",
    "procrustes_prepare", "procrustes_score", "procrustes_score_all_pairs",
    "cca_prepare", "cca_score", "cca_score_all_pairs",
    "semantic_cka_prepare", "semantic_rsm",
    "pool_positions",
    "percentile_interval", "bca_interval", "streaming_cka_bootstrap", "permuted_hsic_cross",
    "permutation_p_values", "westfall_young_p_values", "calibrated_scores",
]

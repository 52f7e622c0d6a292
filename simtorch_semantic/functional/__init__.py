"""Pure math on tensors: no hooks, no loaders, no state, no I/O.

Every function takes torch tensors or NumPy arrays of shape ``[n, ...]`` (flattened per sample
where the measure needs vectors) and returns float64. One module per family, with the formula in
its docstring: ``kernels`` (Gram matrices, centring, median bandwidth), ``hsic`` (biased,
unbiased, all-pairs), ``cka``, ``dcka``, ``rsa`` (RDMs and their comparison), ``procrustes``,
``cca``, ``matching`` (assignment solvers) and ``semantic`` (permutation-invariant similarity).

Every measure is registered once (``registry``, entries in ``catalogue``);
:func:`similarity(X, Y, measure, **options) <simtorch_semantic.functional.protocol.similarity>`
runs any of them on stored activations, with the shared spatial policy of ``spatial``.
"""

from .cca import CCA_VARIANTS, cca, cca_similarity, pwcca, svcca
from .cka import cka_from_grams, cka_from_hsic, linear_cka, rbf_cka
from .dcka import DeconfoundedHSIC, dcka, dcka_from_hsic, dcka_hsic_terms, deconfound_gram
from .hsic import hsic_all_pairs, hsic_biased, hsic_unbiased
from .kernels import center_gram, linear_gram, median_bandwidth, rbf_gram, sq_distances, streaming_linear_gram
from .matching import SOLVERS, assignment_objective, check_exact_feasible, estimate_exact_seconds, solve_assignment
from .procrustes import procrustes_angular, procrustes_disparity, procrustes_nuclear_norm
from .rsa import COMPARE_METHODS, RDM_METRICS, compare_rdms, compare_rdms_all_pairs, double_center, rdm, upper_triangle
from .semantic import KERNELS, LAYOUTS, perm_inv_semantic_sim, semantic_sim_parallel, similarity_calculation
from .registry import INVARIANCES, MeasureSpec, describe_measure, get_measure, list_measures, register
from .spatial import SPATIAL_POLICIES
from .protocol import similarity

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
    "KERNELS", "LAYOUTS", "perm_inv_semantic_sim", "semantic_sim_parallel", "similarity_calculation",
    "similarity", "list_measures", "describe_measure", "get_measure", "register", "MeasureSpec",
    "INVARIANCES", "SPATIAL_POLICIES",
]

"""simtorch_semantic: compare what neural networks represent, layer by layer.

Wrap models with :class:`SimilarityModel`, pick a measure (:class:`CKA`, :class:`DeltaCKA`,
:class:`RSA`, :class:`Procrustes`, :class:`CCA`, :class:`SemanticCKA`) and call
``compute(dataloader)`` to get a :class:`SimilarityResult`; any registered measure
(:func:`list_measures`, :func:`describe_measure`) runs layer x layer through
:class:`LayerSimilarity`. The math on stored activations lives
in :mod:`simtorch_semantic.functional`; interactive overlays in :mod:`simtorch_semantic.overlay`
(``SimilarityOverlay`` is importable from here too, loaded on first use).
"""

__version__ = "0.1.0"

from .functional.registry import describe_measure, list_measures
from .functional.semantic import perm_inv_semantic_sim, semantic_sim_parallel, similarity_calculation
from .images import default_dataset, load_images
from .measures import (CCA, CKA, RSA, BaseSimilarity, CollectingSimilarity, DeltaCKA, LayerSimilarity, Procrustes,
                       SemanticCKA)
from .model import SimilarityModel, default_layers
from .plotting import plot_corresponding_layers, plot_rdm, plot_rdm_comparison, plot_similarity_matrix
from .results import SimilarityResult
from .rsm import get_or_calculate_baseline_RSM, get_or_calculate_RSM

__all__ = [
    "SimilarityModel", "default_layers",
    "BaseSimilarity", "CollectingSimilarity", "CKA", "DeltaCKA", "RSA", "Procrustes", "CCA", "SemanticCKA",
    "LayerSimilarity", "list_measures", "describe_measure",
    "SimilarityResult",
    "perm_inv_semantic_sim", "semantic_sim_parallel", "similarity_calculation",
    "get_or_calculate_RSM", "get_or_calculate_baseline_RSM",
    "plot_similarity_matrix", "plot_rdm", "plot_rdm_comparison", "plot_corresponding_layers",
    "default_dataset", "load_images",
    "SimilarityOverlay",
]


def __getattr__(name):
    # the overlay needs anywidget (an optional dependency): import it only when asked for
    if name == "SimilarityOverlay":
        from .overlay import SimilarityOverlay

        return SimilarityOverlay
    raise AttributeError(f"module 'simtorch_semantic' has no attribute {name!r}")

"""Interactive similarity overlays (Fong, Mordvintsev, Vedaldi and Olah, VISxAI 2021).

Hover a patch of an image and see, over every image, how similar each patch's activation vector
is to the hovered one, in one or several layers at once; group patches with NMF; measure how a
patch's representation changes under rotation or scaling.

>>> ov = SimilarityOverlay(model, [img1, img2], layers=["layer2", "layer3"])
>>> ov.show()                               # Jupyter widget (anywidget), hovering in JavaScript
>>> ov.save_html("overlay.html")            # standalone, no network; grows linearly
>>> ov.save_png("query.png", query=(0, 5, 7))
"""
from .grouping import NMFResult, factor_colors, factor_rgb, nmf_factors
from .maps import (EncodedFeatures, encode_features, flatten_positions, map_index, pack_upper,
                   pool_activations, quantize_maps, rbf_sigma2, similarity_maps,
                   similarity_matrix, unpack_upper, value_range)
from .plots import plot_nmf, plot_overlay_query, plot_sensitivity
from .transforms import (Sensitivity, index_maps, sensitivity_from_activations, transform_images,
                         transform_index, transform_points, transform_sensitivity)
from .widget import SimilarityOverlay

__all__ = [
    "SimilarityOverlay",
    "similarity_maps", "similarity_matrix", "flatten_positions", "pool_activations",
    "quantize_maps", "pack_upper", "unpack_upper", "map_index",
    "encode_features", "EncodedFeatures", "value_range", "rbf_sigma2",
    "nmf_factors", "NMFResult", "factor_colors", "factor_rgb",
    "transform_points", "transform_index", "index_maps", "transform_images",
    "sensitivity_from_activations", "transform_sensitivity", "Sensitivity",
    "plot_overlay_query", "plot_nmf", "plot_sensitivity",
]

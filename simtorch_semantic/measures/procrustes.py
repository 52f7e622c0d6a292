"""Procrustes distance between every layer pair of two models.

Each layer's activations of all N samples are collected and prepared **once** (centred, scaled to
unit Frobenius norm, reduced to at most N columns); each layer pair then costs one SVD of a
``[<=N, <=N]`` cross-product. The result holds distances (``higher_is_similar = False``):
the Procrustes disparity ``1 - ||Xn^T Yn||_*^2`` (``scipy.spatial.procrustes``) or, with
``angular=True``, the shape metric ``arccos ||Xn^T Yn||_*`` (Williams et al. 2021). See
:mod:`simtorch_semantic.functional.procrustes`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..functional._validation import DegenerateInputError, check_bool
from ..functional.procrustes import procrustes_prepare, procrustes_score_all_pairs
from .collect import CollectingSimilarity

__all__ = ["Procrustes"]


class Procrustes(CollectingSimilarity):
    """Procrustes distance between every layer of model 1 and every layer of model 2.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    angular : bool
        ``False`` (default): Procrustes disparity in [0, 1]. ``True``: angular shape distance in
        ``[0, pi/2]``, a metric.
    device : str or torch.device
        Where the decompositions run (float64).
    store_device, max_memory :
        Where the activations are kept and how many bytes they may take (see CollectingSimilarity).

    Notes
    -----
    Lower is more similar (``result.higher_is_similar`` is False). A layer whose samples are all
    identical has no shape: its distances are NaN and a note in the result names it.
    """

    name = "procrustes"
    higher_is_similar = False
    memory_hint = "use fewer samples (max_batches=) or fewer layers"

    def __init__(self, sim_model1, sim_model2, *, angular=False, device="cpu", store_device="cpu",
                 max_memory=None, input_key=None, input_fn=None, **inference):
        self.angular = check_bool(angular, "angular", "Procrustes")
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn, **inference)

    def _prepared(self, acts: dict, model) -> list:
        out = []
        for layer, act in self._layer_items(acts, model, "normalising"):
            X = act.reshape(act.shape[0], -1).to(self.device, torch.float64)
            try:
                out.append(procrustes_prepare(X))
            except DegenerateInputError:
                self._note(
                    f"layer {layer!r} of {model.model_name} is constant over the samples: its "
                    f"{self.name} distance is undefined and set to NaN"
                )
                out.append(None)
        return out

    def _matrix_from_activations(self, acts1: dict, acts2: dict) -> np.ndarray:
        n = next(iter(acts1.values())).shape[0]
        if n < 3:
            raise ValueError(
                f"Procrustes needs at least 3 samples, got {n}; use more batches or a larger batch size."
            )
        same = self._same_activations(acts1, acts2)
        P1 = self._prepared(acts1, self.sim_model1)
        P2 = P1 if same else self._prepared(acts2, self.sim_model2)
        out = np.full((len(P1), len(P2)), math.nan)
        rows = [i for i, P in enumerate(P1) if P is not None]
        cols = [j for j, P in enumerate(P2) if P is not None]
        if rows and cols:
            # all pairs in batched products and SVDs; the per-layer work is shared
            out[np.ix_(rows, cols)] = procrustes_score_all_pairs(
                [P1[i] for i in rows], [P2[j] for j in cols], angular=self.angular)
        return out

    def _params(self) -> dict:
        return {"angular": self.angular}

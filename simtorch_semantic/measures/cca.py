"""CCA similarities (mean CCA, R^2_CCA, SVCCA, PWCCA) between every layer pair of two models.

Each layer's activations of all N samples are collected and decomposed **once** (centring plus a
QR or SVD basis, with the SVCCA reduction or the ridge weights applied); each layer pair then
costs one SVD of a ``[r1, r2]`` product of bases. See :mod:`simtorch_semantic.functional.cca` for
the formulas.

CCA needs more samples than dimensions: a layer whose centred activations have rank N - 1 (for
instance a wide convolutional layer seen on few images) makes every canonical correlation 1.
Such layers raise an error that names them and says how to reduce the dimension (``dims=k``,
``variant="svcca"``, ``epsilon > 0`` or more samples).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..functional._validation import DegenerateInputError, check_choice
from ..functional.cca import CCA_VARIANTS, cca_prepare, cca_score_all_pairs, check_cca_options
from .collect import CollectingSimilarity

__all__ = ["CCA"]


class CCA(CollectingSimilarity):
    """CCA similarity between every layer of model 1 and every layer of model 2.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    variant : str
        ``"mean_rho"`` (mean canonical correlation, default), ``"r2"`` (mean squared canonical
        correlation), ``"svcca"`` (Raghu et al. 2017) or ``"pwcca"`` (Morcos et al. 2018).
    epsilon : float
        Ridge regularisation of the covariances (0: plain CCA).
    dims : int, optional
        Keep only the top-``dims`` principal components of each layer first.
    keep : float
        Fraction of variance SVCCA keeps (``variant="svcca"`` only; default 0.99).
    device : str or torch.device
        Where the decompositions run (float64).
    store_device, max_memory :
        Where the activations are kept and how many bytes they may take (see CollectingSimilarity).

    Similarities are in [0, 1], higher is more similar. A layer whose samples are all identical
    gives NaN (with a note in the result).
    """

    name = "cca"
    higher_is_similar = True
    memory_hint = "use fewer samples (max_batches=) or fewer layers"

    def __init__(self, sim_model1, sim_model2, *, variant="mean_rho", epsilon=0.0, dims=None, keep=0.99,
                 device="cpu", store_device="cpu", max_memory=None, input_key=None, input_fn=None, **inference):
        self.variant = check_choice(variant, CCA_VARIANTS, "variant", "CCA")
        check_cca_options(epsilon, dims, keep, "CCA")
        self.epsilon = float(epsilon)
        self.dims = dims
        self.keep = float(keep)
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn, **inference)

    def _bases(self, acts: dict, model) -> list:
        out = []
        for layer, act in self._layer_items(acts, model, "CCA bases"):
            # keep the layer's own dtype: the rank cut-off follows its precision (float32
            # round-off is not rank); cca_prepare converts to float64 itself
            raw = act.reshape(act.shape[0], -1).to(self.device)
            X = raw.to(torch.float64)
            try:
                b = cca_prepare(raw, self.variant, self.epsilon, self.dims, self.keep)
            except DegenerateInputError:
                self._note(
                    f"layer {layer!r} of {model.model_name} is constant over the samples: its "
                    f"{self.name} similarity is undefined and set to NaN"
                )
                out.append(None)
                continue
            except ValueError:
                rank = int(torch.linalg.matrix_rank(X - X.mean(dim=0, keepdim=True)))
                raise ValueError(
                    f"CCA: layer {layer!r} of {model.model_name} has {X.shape[1]} features and rank "
                    f"{rank} = n - 1 after centring on n={X.shape[0]} samples, so every canonical "
                    "correlation with it is 1. Reduce the dimension: pass dims=k (k < n - 1, keeps "
                    "the top-k principal components), use variant='svcca' (with keep < 1), ridge "
                    "epsilon > 0, or use more samples than features."
                ) from None
            out.append(b)
        return out

    def _matrix_from_activations(self, acts1: dict, acts2: dict) -> np.ndarray:
        n = next(iter(acts1.values())).shape[0]
        if n < 3:
            raise ValueError(f"CCA needs at least 3 samples, got {n}; use more batches or a larger batch size.")
        same = self._same_activations(acts1, acts2)
        B1 = self._bases(acts1, self.sim_model1)
        B2 = B1 if same else self._bases(acts2, self.sim_model2)
        out = np.full((len(B1), len(B2)), np.nan)
        rows = [i for i, b in enumerate(B1) if b is not None]
        cols = [j for j, b in enumerate(B2) if b is not None]
        if not rows or not cols:
            return out
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # all pairs at once (batched SVDs; pwcca pair by pair); bases are shared per layer
            out[np.ix_(rows, cols)] = cca_score_all_pairs([B1[i] for i in rows], [B2[j] for j in cols],
                                                          self.variant)
        if any(issubclass(w.category, RuntimeWarning) for w in caught):
            rank1 = {i: B1[i].rank for i in rows}
            rank2 = {j: B2[j].rank for j in cols}
            names1, names2 = list(acts1), list(acts2)
            forced = [(names1[i], names2[j]) for i in rows for j in cols if rank1[i] + rank2[j] > n - 1]
            shown = ", ".join(f"({a!r}, {b!r})" for a, b in forced[:5])
            more = f" and {len(forced) - 5} more" if len(forced) > 5 else ""
            self._note(
                f"for {len(forced)} layer pairs [{shown}{more}] the two ranks add up to more than "
                f"n - 1 = {n - 1}, so some canonical correlations are 1 by construction and the "
                "similarity is inflated; use more samples or fewer dimensions (dims=k, svcca)"
            )
        return out

    def _params(self) -> dict:
        params = {"variant": self.variant, "epsilon": self.epsilon, "dims": self.dims}
        if self.variant == "svcca":
            params["keep"] = self.keep
        return params

"""RSA between every layer pair of two models (representational similarity analysis).

Each selected layer's activations of all N samples are collected; each layer's RDM
(:func:`simtorch_semantic.functional.rsa.rdm`) is computed **once** and reduced to the entries that
are compared (upper triangle, or the double-centred full matrix with ``center=True``); all layer
pairs are then compared at once (one matrix product for cosine, Pearson and Spearman).

``RSA(m1, m2, metric="L2squared", method="cosine", center=True)`` is linear CKA (Williams 2024);
see the docstring of :mod:`simtorch_semantic.functional.rsa`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..functional._validation import check_bool, check_choice
from ..functional.rsa import COMPARE_METHODS, RDM_METRICS, rsa_prepare, rsa_score_all_pairs
from .collect import CollectingSimilarity

__all__ = ["RSA"]


class RSA(CollectingSimilarity):
    """Representational similarity analysis between every layer of model 1 and every layer of model 2.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    metric : str
        RDM metric: ``"pearson"`` (default), ``"L2"``, ``"L2squared"``, ``"L2_normalize"``,
        ``"L2squared_normalize"`` or ``"cosine"``.
    method : str
        RDM comparison: ``"pearson"`` (default), ``"cosine"``, ``"spearman"`` or ``"kendall"``.
    center : bool
        Double-centre the full RDMs before comparing (exact link with CKA); default compares the
        upper triangles.
    device : str or torch.device
        Where RDMs are computed and compared.
    dtype, chunk_size :
        Passed to :func:`~simtorch_semantic.functional.rsa.rdm`.
    store_device, max_memory :
        Where the activations are kept and how many bytes they may take (see CollectingSimilarity).

    Notes
    -----
    The result's ``[i, j]`` entry is ``compare_rdms(rdm(layer i of model 1), rdm(layer j of model 2))``;
    higher is more similar. A layer with constant patterns (``pearson``) or all-zero patterns has
    NaN RDM entries; its similarities are NaN and a note in the result names it.
    """

    name = "rsa"
    higher_is_similar = True
    memory_hint = "use fewer samples (max_batches=) or fewer layers"

    def __init__(self, sim_model1, sim_model2, *, metric="pearson", method="pearson", center=False,
                 device="cpu", dtype=torch.float64, chunk_size=None, store_device="cpu",
                 max_memory=None, input_key=None, input_fn=None, **inference):
        self.metric = check_choice(metric, RDM_METRICS, "metric", "RSA")
        self.method = check_choice(method, COMPARE_METHODS, "method", "RSA")
        self.center = check_bool(center, "center", "RSA")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"RSA: dtype must be a floating torch dtype such as torch.float64, got {dtype!r}.")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"RSA: chunk_size must be a positive integer or None, got {chunk_size!r}.")
        self.dtype = dtype
        self.chunk_size = chunk_size
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn, **inference)

    def _check_batch(self, n: int) -> None:
        pass  # any batch size; n >= 3 in total is checked when the RDMs are built

    def _check_rdm_memory(self, n: int, layers: int) -> None:
        per = n * n if self.center else n * (n - 1) // 2
        self._check_result_memory((layers * per + 3 * n * n) * 8,
                                  f"one RDM vector of {per} float64 entries per layer ({layers} layers, n={n})")

    def _prepared(self, acts: dict, model) -> list:
        """One :class:`~simtorch_semantic.functional.rsa.PreparedRDM` per layer (RDM built once)."""
        out = []
        for layer, act in self._layer_items(acts, model, "RDMs"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                p = rsa_prepare(act, self.metric, self.method, self.center, dtype=self.dtype,
                                chunk_size=self.chunk_size, device=self.device,
                                name=f"layer {layer!r}")
            for w in caught:
                if issubclass(w.category, RuntimeWarning):
                    self._note(f"layer {layer!r} of {model.model_name}: {w.message}")
            out.append(p)
        return out

    def _matrix_from_activations(self, acts1: dict, acts2: dict) -> np.ndarray:
        n = next(iter(acts1.values())).shape[0]
        if n < 3:
            raise ValueError(
                f"RSA needs at least 3 samples to compare RDMs, got {n}; use more batches or a "
                "larger batch size."
            )
        same = self._same_activations(acts1, acts2)
        self._check_rdm_memory(n, len(acts1) + (0 if same else len(acts2)))
        P1 = self._prepared(acts1, self.sim_model1)
        P2 = P1 if same else self._prepared(acts2, self.sim_model2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined layers are noted above
            return rsa_score_all_pairs(P1, P2, progress=self._progress)

    def _params(self) -> dict:
        return {"metric": self.metric, "method": self.method, "center": self.center}

"""LayerSimilarity: the layer x layer matrix of ANY registered measure over a DataLoader.

``LayerSimilarity(sim_model1, sim_model2, "jaccard_knn", k=10)`` collects every selected layer's
activations of all samples (:class:`~simtorch_semantic.measures.collect.CollectingSimilarity`,
with its memory check), applies the shared spatial policy (``spatial=``, see
:mod:`simtorch_semantic.functional.spatial`), prepares each layer **once** with the measure's
``prepare`` (a model compared with itself is prepared once in all) and scores all layer pairs with
the measure's ``score_all_pairs`` when it has one (batched products, no per-pair Python loop),
else pair by pair. The result carries the measure's direction (``higher_is_similar``), its
registered name and the options used.

The named classes (:class:`~simtorch_semantic.CKA`, :class:`~simtorch_semantic.RSA`, ...) stay the
front doors with family-specific features (the streaming minibatch CKA estimator, dCKA's
confounder, SemanticCKA's solver time check). LayerSimilarity does not stream: a measure
registered with ``streaming=True`` (``"cka"``) is computed here exactly on all samples; use
``CKA(..., estimator="minibatch")`` for flat memory.

Degenerate layers (e.g. every sample identical) give NaN rows/columns with a note naming the
layer; warnings raised while preparing a layer or scoring pairs become notes of the result.
"""
from __future__ import annotations

import numpy as np

from ..functional._validation import check_choice
from ..functional.protocol import prepare_all, score_matrix
from ..functional.registry import get_measure, resolve_options
from ..functional.spatial import SPATIAL_POLICIES, positions
from .collect import CollectingSimilarity

__all__ = ["LayerSimilarity"]


class LayerSimilarity(CollectingSimilarity):
    """Any registered measure between every layer of model 1 and every layer of model 2.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
    measure : str
        A registered name or alias (``simtorch_semantic.list_measures()``).
    spatial : {"flatten", "mean", "positions"}
        How spatial maps / token sequences become vectors (not applied to measures that take
        spatial input, such as ``"semantic_cka"``, or model outputs).
    device : str or torch.device
        Where the measure's math runs (activations are moved here, layer by layer).
    store_device, max_memory, input_key, input_fn :
        See :class:`CollectingSimilarity` / :class:`BaseSimilarity`.
    **options
        The measure's options (``describe_measure(measure)["options"]``); unknown names raise.
    """

    memory_hint = "use fewer samples (max_batches=), fewer layers, or spatial='mean'"

    def __init__(self, sim_model1, sim_model2, measure, *, spatial="flatten", device="cpu",
                 store_device="cpu", max_memory=None, input_key=None, input_fn=None, **options):
        self.spec = get_measure(measure)
        self.spatial = check_choice(spatial, SPATIAL_POLICIES, "spatial policy", "LayerSimilarity")
        self.options = resolve_options(self.spec, options)
        self.name = self.spec.name
        self.higher_is_similar = self.spec.higher_is_similar
        super().__init__(sim_model1, sim_model2, device, store_device=store_device,
                         max_memory=max_memory, input_key=input_key, input_fn=input_fn)

    @property
    def streaming(self) -> bool:
        return False

    def _check_batch(self, n: int) -> None:
        pass  # the sample count is checked by the measure once all samples are collected

    def _layer_acts(self, acts: dict) -> list:
        return [a.to(self.device) for a in acts.values()]

    def _check_positions(self, acts1: dict, acts2: dict) -> None:
        if self.spatial != "positions" or self.spec.spatial_input or self.spec.inputs == "outputs":
            return
        s1 = {layer: positions(a) for layer, a in acts1.items()}
        s2 = {layer: positions(a) for layer, a in acts2.items()}
        counts = set(s1.values()) | set(s2.values())
        if len(counts) > 1:
            shown = ", ".join(f"{layer!r}: {s}" for layer, s in list({**s1, **s2}.items())[:6])
            raise ValueError(
                f"spatial='positions' makes every position a sample, so every compared layer needs "
                f"the same number of positions; got {shown}. Select layers of one spatial size "
                f"(layers_to_include) or use spatial='mean' / 'flatten'.")

    def _prepare_layers(self, acts: dict, model) -> list:
        names = list(acts)
        prepared, problems = prepare_all(
            self.spec, self._layer_acts(acts), self.options, self.spatial,
            names=[f"layer {name!r}" for name in names], progress=self._progress,
            desc=f"{self.name}: preparing {model.model_name}")
        for name, p, msgs in zip(names, prepared, problems):
            for msg in msgs:
                self._note(f"{model.model_name}.{name}: {msg}")
            if p is None and not msgs:  # pragma: no cover - prepare_all always says why
                self._note(f"{model.model_name}.{name}: degenerate; its {self.name} is NaN")
        return prepared

    def _matrix_from_activations(self, acts1: dict, acts2: dict) -> np.ndarray:
        self._check_positions(acts1, acts2)
        same = self._same_activations(acts1, acts2)
        P1 = self._prepare_layers(acts1, self.sim_model1)
        P2 = P1 if same else self._prepare_layers(acts2, self.sim_model2)
        matrix, messages = score_matrix(self.spec, P1, P2, self.options, progress=self._progress)
        for msg in messages:
            self._note(msg)
        return matrix

    def _params(self) -> dict:
        params = {k: v for k, v in self.options.items() if isinstance(v, (str, int, float, bool, type(None)))}
        if not (self.spec.spatial_input or self.spec.inputs == "outputs"):
            params["spatial"] = self.spatial
        return params

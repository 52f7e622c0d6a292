"""BaseSimilarity: the loop over a DataLoader shared by every layer x layer measure.

A measure sees both models run on the same samples, batch by batch. Subclasses own their state
and three steps (the torchmetrics shape):

- ``_reduce(layer, activation)``: called inside the forward hook on the detached output; what it
  returns is what the measure keeps for that batch (a Gram matrix for streaming measures, the
  activation itself for measures that need all samples at once);
- ``_update_state(feats1, feats2, batch)``: fold one batch into the state;
- ``_compute_matrix()``: the ``[L1, L2]`` matrix from the state.

States that are sums can be all-reduced across processes with :meth:`_all_reduce` when a
``torch.distributed`` process group is up.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import batch_input, batch_size, expected_batches, paired_batches
from ..model import SimilarityModel
from ..results import SimilarityResult

__all__ = ["BaseSimilarity"]


class BaseSimilarity:
    """Layer x layer similarity between two :class:`SimilarityModel` over a DataLoader.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
        The wrapped models; their selected layers give the rows and columns of the result. The
        same model object may be wrapped twice to compare a network with itself.
    device : str or torch.device
        Where the measure keeps its state and does its math. Activations are computed on each
        model's own device and moved here.
    input_key : str, optional
        For loaders that yield dicts: the key holding the model input.
    input_fn : callable, optional
        ``input_fn(batch) -> model input`` for any other batch structure.

    Attributes
    ----------
    sim_matrix : np.ndarray or None
        The last computed matrix, ``[L1, L2]`` float64.
    """

    name = "similarity"
    higher_is_similar = True

    def __init__(self, sim_model1, sim_model2, device="cpu", *, input_key=None, input_fn=None):
        for arg, value in (("sim_model1", sim_model1), ("sim_model2", sim_model2)):
            if not isinstance(value, SimilarityModel):
                raise TypeError(
                    f"{arg} must be a SimilarityModel, got {type(value).__name__}; wrap your "
                    f"network first: SimilarityModel(model, layers_to_include=[...])"
                )
        if input_fn is not None and not callable(input_fn):
            raise TypeError(f"input_fn must be callable, got {type(input_fn).__name__}")
        self.sim_model1 = sim_model1
        self.sim_model2 = sim_model2
        self.device = torch.device(device)
        self.input_key = input_key
        self.input_fn = input_fn
        self.sim_matrix = None
        self._last_result = None
        self._progress = True  # the last compute()'s progress flag, for per-layer loops in result()
        self.reset()

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget every batch seen so far (the last result and ``sim_matrix`` are kept)."""
        self._n_samples = 0
        self._n_batches = 0
        self._notes = []
        self._reset_state()

    def update(self, batch, batch2=None) -> None:
        """Fold one batch into the state.

        ``batch`` is what a DataLoader yields (tensor ``[n, ...]``, tuple/list with the input
        first, dict with ``input_key``, or anything ``input_fn`` understands). ``batch2``, if
        given, is model 2's batch for the same ``n`` samples (default: the same batch).
        """
        x1 = self._input(batch)
        x2 = x1 if batch2 is None else self._input(batch2)
        n = batch_size(x1)
        if batch2 is not None and batch_size(x2) != n:
            raise ValueError(
                f"batch and batch2 hold different numbers of samples ({n} vs {batch_size(x2)}); "
                "both models must see the same samples"
            )
        self._check_batch(n)
        feats1 = self.sim_model1.capture(x1, reduce=self._reduce)
        feats2 = self.sim_model2.capture(x2, reduce=self._reduce)
        self._update_state(feats1, feats2, batch)
        self._n_samples += n
        self._n_batches += 1

    def compute(self, dataloader, dataloader2=None, max_batches=None, progress=True) -> SimilarityResult:
        """Run both models over ``dataloader`` and return the layer x layer result.

        Parameters
        ----------
        dataloader : iterable of batches
            Both models see every batch (one pass). ``dataloader2``, if given, feeds model 2
            instead; it must yield the same number of samples in batches of the same sizes.
        max_batches : int, optional
            Stop after this many batches.
        progress : bool
            Show a tqdm bar.
        """
        self.reset()
        self._progress = bool(progress)
        self._expect_samples(dataloader, max_batches)
        batches = paired_batches(dataloader, dataloader2, max_batches=max_batches,
                                 input_key=self.input_key, input_fn=self.input_fn, raw=True)
        total = expected_batches(dataloader, max_batches)
        desc = f"{self.name}: {self.sim_model1.model_name} vs {self.sim_model2.model_name}"
        for b1, b2 in tqdm(batches, total=total, disable=not progress, desc=desc, unit="batch"):
            self.update(b1, None if dataloader2 is None else b2)
        return self.result()

    def result(self) -> SimilarityResult:
        """The layer x layer result over every batch seen since the last ``reset()``."""
        if self._n_batches == 0:
            raise RuntimeError(
                f"{type(self).__name__} has seen no data: call compute(dataloader) or update(batch) first"
            )
        matrix = np.asarray(self._compute_matrix(), dtype=np.float64)
        result = SimilarityResult(
            matrix=matrix,
            row_layers=list(self.sim_model1.layers),
            col_layers=list(self.sim_model2.layers),
            model1_name=self.sim_model1.model_name,
            model2_name=self.sim_model2.model_name,
            measure=self.name,
            params=self._params(),
            n_samples=self._n_samples,
            higher_is_similar=self.higher_is_similar,
            notes=list(self._notes),
        )
        self.sim_matrix = result.matrix
        self._last_result = result
        return result

    def plot_similarity(self, title=None, xlabel=None, ylabel=None, savefig=False,
                        save_path="similarity.png", plot_cmap=None, ax=None):
        """Heatmap of the last result (simtorch-compatible signature); returns the Axes.

        Layer names of model 1 are on the y axis, model 2's on the x axis, with a colour bar.
        ``plot_cmap=None``: "magma" for similarities, reversed for distances.
        ``savefig=True`` writes the figure to ``save_path``. Global matplotlib style is untouched.
        """
        if self._last_result is None:
            raise RuntimeError("nothing to plot yet: call compute(dataloader) or result() first")
        ax = self._last_result.plot(title=title, xlabel=xlabel, ylabel=ylabel, cmap=plot_cmap, ax=ax)
        if savefig:
            ax.figure.savefig(save_path, dpi=150, bbox_inches="tight")
        return ax

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.sim_model1.model_name!r}, {self.sim_model2.model_name!r}, "
                f"{self._params()})")

    # ------------------------------------------------------------------ helpers for subclasses
    def _input(self, batch):
        return batch_input(batch, input_key=self.input_key, input_fn=self.input_fn)

    def _expect_samples(self, dataloader, max_batches) -> None:
        """Hook for measures that plan memory: called by compute() with the loader."""

    def _check_batch(self, n: int) -> None:
        """Raise if a batch of ``n`` samples cannot be used (default: any n >= 1)."""

    def _note(self, message: str) -> None:
        """Record a remark about a layer in the result's notes and warn with it."""
        self._notes.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    @staticmethod
    def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes when a torch.distributed group is initialised."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
        return tensor

    @staticmethod
    def _check_positive_float(name, value):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
        return float(value)

    # ------------------------------------------------------------------ subclass hooks
    def _reduce(self, layer: str, activation: torch.Tensor):
        """What to keep of one layer's batch output (default: a detached copy)."""
        return activation.clone()

    def _reset_state(self) -> None:
        raise NotImplementedError

    def _update_state(self, feats1: dict, feats2: dict, batch) -> None:
        raise NotImplementedError

    def _compute_matrix(self) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict:
        return {}

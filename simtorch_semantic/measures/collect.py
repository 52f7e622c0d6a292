"""Measures that need every sample's activation at once (RSA, Procrustes, CCA, semantic, full CKA).

:class:`ActivationStore` keeps the per-layer activations of all batches, checks after each batch
that the planned total still fits in memory (raising a clear error with the estimate and the
alternative before memory runs out), and finds non-finite values. :class:`CollectingSimilarity`
is the BaseSimilarity built on it: subclasses only implement
``_matrix_from_activations(acts1, acts2) -> [L1, L2]``.

NaN/Inf are flagged per layer as each batch is stored (the base's fail-early check). Under a
torch.distributed process group, ``result()`` all-gathers every store in global sample order (the
indices of each rank's shard, :mod:`simtorch_semantic.distributed`), so every rank computes the
matrix from exactly the samples one process would hold, in the same order.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as _dist
from ..functional.semantic import available_bytes
from .base import BaseSimilarity

__all__ = ["ActivationStore", "CollectingSimilarity", "available_memory"]


#: free bytes on a device, or None when unknown (one implementation, in functional/semantic.py)
available_memory = available_bytes


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ActivationStore:
    """Per-layer activations of all batches, for one model.

    ``add(feats)`` appends one batch (``{layer: tensor [n, ...]}``); ``tensors()`` concatenates
    each layer to ``[N, ...]`` (one layer at a time, freeing the pieces); ``first_nonfinite()``
    names the first layer and batch holding NaN/Inf.
    """

    def __init__(self, store_device="cpu"):
        self.store_device = torch.device(store_device)
        self._chunks: dict[str, list] = {}
        self._ends: list[int] = []  # cumulative sample counts after each batch
        self.nbytes = 0

    def keep(self, activation: torch.Tensor) -> torch.Tensor:
        """Copy of one activation on the store device (always a copy: in-place safe)."""
        return activation.to(self.store_device, copy=True)

    def add(self, feats: dict) -> None:
        n = None
        for name, value in feats.items():
            self._chunks.setdefault(name, []).append(value)
            self.nbytes += value.numel() * value.element_size()
            n = value.shape[0]
        self._ends.append((self._ends[-1] if self._ends else 0) + (n or 0))

    @property
    def n_samples(self) -> int:
        return self._ends[-1] if self._ends else 0

    def tensors(self) -> dict:
        out = {}
        for name in list(self._chunks):
            chunks = self._chunks[name]
            out[name] = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=0)
            self._chunks[name] = [out[name]]
        return out

    def first_nonfinite(self):
        """``(layer, batch_index)`` of the first non-finite value, or None."""
        for name, chunks in self._chunks.items():
            start = 0
            for chunk in chunks:
                flat = chunk.reshape(chunk.shape[0], -1)
                bad = ~torch.isfinite(flat).all(dim=1)
                if bool(bad.any()):
                    row = start + int(torch.nonzero(bad)[0, 0])
                    return name, bisect.bisect_right(self._ends, row)
                start += chunk.shape[0]
        return None


class CollectingSimilarity(BaseSimilarity):
    """A BaseSimilarity that keeps every layer's activations of all N samples.

    Parameters (besides BaseSimilarity's)
    ----------
    store_device : str or torch.device
        Where activations are kept (default CPU, the largest memory).
    max_memory : int, optional
        Bytes the stored activations may use; default: 80% of what is free on ``store_device``
        when the first batch arrives.

    Subclasses implement ``_matrix_from_activations(acts1, acts2)`` where ``acts1`` maps model 1's
    layers to ``[N, ...]`` tensors (the layer's output shape kept) and return ``[L1, L2]``.
    """

    #: told to the user when memory would run out
    memory_hint = "use fewer samples (max_batches=), fewer layers, or store_device='cpu'"

    def __init__(self, sim_model1, sim_model2, device="cpu", *, store_device="cpu", max_memory=None,
                 input_key=None, input_fn=None, **inference):
        self.store_device = torch.device(store_device)
        if max_memory is not None and (not isinstance(max_memory, (int, np.integer)) or max_memory <= 0):
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        self.max_memory = max_memory
        self._planned_samples = None
        super().__init__(sim_model1, sim_model2, device, input_key=input_key, input_fn=input_fn, **inference)

    # -- state
    def _reset_state(self) -> None:
        self._store1 = ActivationStore(self.store_device)
        self._store2 = ActivationStore(self.store_device)
        self._budget = self.max_memory

    def _reduce(self, layer, activation):
        return self._store1.keep(activation)

    def _expect_samples(self, dataloader, max_batches) -> None:
        self._planned_samples = None
        try:
            n = len(dataloader.dataset)
            if max_batches is not None and getattr(dataloader, "batch_size", None):
                n = min(n, max_batches * dataloader.batch_size)
            self._planned_samples = n
        except (AttributeError, TypeError):
            pass

    def _update_state(self, feats1, feats2, batch) -> None:
        self._mark_nonfinite(1, list(feats1.values()))
        self._mark_nonfinite(2, list(feats2.values()))
        self._store1.add(feats1)
        self._store2.add(feats2)
        self._check_memory()

    # -- many processes
    def _stores(self) -> list:
        """``[(attribute name, ActivationStore)]`` gathered across ranks by ``result()``."""
        return [("_store1", self._store1), ("_store2", self._store2)]

    def _sample_keys(self, n: int) -> torch.Tensor:
        """Global sort keys of this rank's ``n`` stored samples: their data set indices from
        the shard plan of compute(), or rank-major order for update() calls."""
        if self._shard_batches is not None:
            keys = [i for b in self._shard_batches for i in b]
            if len(keys) == n:
                return torch.tensor(keys, dtype=torch.int64)
        return torch.arange(n, dtype=torch.int64) + _dist.rank() * 2 ** 40

    def _sync_states(self) -> None:
        super()._sync_states()
        self._local_stores = self._stores()
        for attr, store in self._local_stores:
            gathered = ActivationStore(store.store_device)
            keys = self._sample_keys(store.n_samples)
            gathered.add({name: _dist.gather_rows(t, keys.to(t.device), what=f"activations {name}")
                          for name, t in store.tensors().items()})
            setattr(self, attr, gathered)

    def _restore_local(self) -> None:
        for attr, store in getattr(self, "_local_stores", []):
            setattr(self, attr, store)
        self._local_stores = []

    def _check_memory(self) -> None:
        used = self._store1.nbytes + self._store2.nbytes
        seen = self._store1.n_samples
        if self._budget is None:
            free = available_memory(self.store_device)
            if free is None:
                return
            self._budget = int(0.8 * (free + used))
        planned = max(self._planned_samples or seen, seen)
        estimate = used / seen * planned
        if estimate > self._budget:
            raise MemoryError(
                f"{type(self).__name__} keeps every selected layer's activations: "
                f"{_fmt_bytes(used / seen)} per sample, about {_fmt_bytes(estimate)} for {planned} "
                f"samples, but only {_fmt_bytes(self._budget)} may be used on {self.store_device}; "
                f"{self.memory_hint}"
            )

    def _compute_matrix(self) -> np.ndarray:
        acts1 = self._store1.tensors()
        acts2 = self._store2.tensors()
        return self._matrix_from_activations(acts1, acts2)

    def _matrix_from_activations(self, acts1: dict, acts2: dict) -> np.ndarray:
        raise NotImplementedError

    # -- helpers for subclasses
    def _check_result_memory(self, need: int, what: str) -> None:
        """Raise a MemoryError before a result step that needs ``need`` bytes on ``self.device``
        (described by ``what``) when that is more than 80% of what is free there."""
        free = available_memory(self.device)
        if free is not None and need > 0.8 * free:
            raise MemoryError(
                f"{type(self).__name__} needs {what}, about {_fmt_bytes(need)}, but only "
                f"{_fmt_bytes(free)} is free on {self.device}; {self.memory_hint}"
            )

    def _layer_items(self, acts: dict, model, what: str):
        """``acts.items()`` with a progress bar over layers (for per-layer work in result())."""
        items = list(acts.items())
        return tqdm(items, desc=f"{what} {model.model_name}", unit="layer",
                    disable=not self._progress or len(items) < 2)

    @staticmethod
    def _same_activations(acts1: dict, acts2: dict) -> bool:
        """True when both models produced identical activations (a model compared with itself),
        so per-layer work for model 1 can be reused for model 2."""
        if list(acts1) != list(acts2):
            return False
        return all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                   for a, b in zip(acts1.values(), acts2.values()))

    def _params(self) -> dict:
        return {}

"""BaseSimilarity: the loop over a DataLoader shared by every layer x layer measure.

A measure sees both models run on the same samples, batch by batch. Subclasses own their state
and three steps (the torchmetrics shape):

- ``_reduce(layer, activation)``: called inside the forward hook on the detached output; what it
  returns is what the measure keeps for that batch (a Gram matrix for streaming measures, the
  activation itself for measures that need all samples at once);
- ``_update_state(feats1, feats2, batch)``: fold one batch into the state;
- ``_compute_matrix()``: the ``[L1, L2]`` matrix from the state.

State registry
--------------
Subclasses declare their state with :meth:`BaseSimilarity.add_state` (as torchmetrics'
``Metric.add_state``)::

    self.add_state("xy", lambda n1, n2: torch.zeros(n1, n2, dtype=torch.float64), reduce="sum")

``default`` is a tensor, a Python number, an empty list (per-batch values, ``reduce="cat"``) or a
callable ``(L1, L2) -> tensor`` evaluated at the first batch, once both models' layer counts are
known (*lazy sizing*). :meth:`reset` restores every default; under an initialised
:mod:`torch.distributed` process group :meth:`result` reduces every state across ranks first:
``"sum"`` and ``"max"`` with an all-reduce, ``"cat"`` (a list with one tensor per batch) by
gathering the batches in global batch order (local batch ``k`` of rank ``r`` is batch
``k * W + r``, the order of :class:`~simtorch_semantic.distributed.ShardBatchSampler`). The local
values are restored afterwards, so ``update()`` may continue. The sample and batch counts
(``_n_samples``, ``_n_batches``) and the per-layer non-finite flags (``_nonfinite1``,
``_nonfinite2``: 1 + the first batch holding NaN/Inf, 0 for none; ``"max"``) are states of the base.

Fail early
----------
Before the first batch, when the loader knows its length, every planned batch size is checked
(``_check_batch``): a last batch too small for the unbiased estimator stops the run before any
forward pass. NaN/Inf are flagged per layer as each batch is folded in; the flags are read on the
host after every batch when the measure lives on the CPU (free) and every
``nonfinite_check_every`` batches otherwise (no per-batch host sync on CUDA), and at the end, so
the error names the layer and the batch where the values first appeared.

Many processes: see :mod:`simtorch_semantic.distributed`.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as _dist
from ..data import batch_input, batch_size, expected_batches, paired_batches
from ..model import SimilarityModel
from ..results import SimilarityResult
from .inference import InferenceMixin

__all__ = ["BaseSimilarity"]

_REDUCES = ("sum", "cat", "max")


class BaseSimilarity(InferenceMixin):
    """Layer x layer similarity between two :class:`SimilarityModel` over a DataLoader.

    Parameters
    ----------
    sim_model1, sim_model2 : SimilarityModel
        The wrapped models; their selected layers give the rows and columns of the result. The
        same model object may be wrapped twice to compare a network with itself.
    device : str or torch.device
        Where the measure keeps its state and does its math. Activations are computed on each
        model's own device and moved here.
    input_key : str or list of str, optional
        For loaders that yield dicts: the key holding the model input, or the keys passed to
        the model as keyword arguments; None passes the whole dict (``model(**batch)``, e.g. a
        tokenizer's ``input_ids``/``attention_mask``).
    input_fn : callable, optional
        ``input_fn(batch) -> model input`` for any other batch structure.
    n_bootstrap, n_permutations, confidence, seed, interval :
        Inference for every cell (keyword-only, every measure; off by default): bootstrap
        intervals, permutation p-values (per cell and family-wise adjusted) and calibrated
        scores in the result. See :class:`~simtorch_semantic.measures.inference.InferenceMixin`
        and docs/inference.md for what is resampled.

    Attributes
    ----------
    sim_matrix : np.ndarray or None
        The last computed matrix, ``[L1, L2]`` float64.
    """

    name = "similarity"
    higher_is_similar = True
    #: on a non-CPU device, read the NaN/Inf flags on the host every this many batches
    nonfinite_check_every = 8

    def __init__(self, sim_model1, sim_model2, device="cpu", *, input_key=None, input_fn=None,
                 **inference):
        if type(self)._update_state is BaseSimilarity._update_state:
            raise NotImplementedError(
                f"{type(self).__name__} is abstract: subclass it and implement _update_state and "
                "_compute_matrix (or use a measure such as CKA)")
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
        self._shard_batches = None  # global sample indices of this rank's batches (compute())
        self._mode = None  # compute(distributed=...) while it runs; None: follow the process group
        self._batch_index = 0  # index of the batch being checked (_check_batch)
        self._init_inference(**inference)  # before _add_states: inference may add states
        self.add_state("_n_samples", 0, reduce="sum")
        self.add_state("_n_batches", 0, reduce="sum")
        self.add_state("_nonfinite1", lambda n1, n2: torch.zeros(n1, dtype=torch.long), reduce="max")
        self.add_state("_nonfinite2", lambda n1, n2: torch.zeros(n2, dtype=torch.long), reduce="max")
        self._add_states()
        self.reset()

    # ------------------------------------------------------------------ state registry
    def add_state(self, name: str, default, reduce: str = "sum") -> None:
        """Declare a state: reset to ``default`` by :meth:`reset`, reduced across processes.

        Args:
            name: attribute name of the state.
            default: a tensor (copied to ``self.device`` at each reset), a Python int/float, an
                empty list (one tensor appended per batch; ``reduce="cat"``), or a callable
                ``(L1, L2) -> tensor`` evaluated at the first batch (the attribute is None
                until then) for states sized by the layer counts.
            reduce: ``"sum"``, ``"max"`` or ``"cat"`` (per-batch values gathered in global
                batch order).
        """
        if reduce not in _REDUCES:
            raise ValueError(f"add_state: reduce must be one of {_REDUCES}, got {reduce!r}")
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"add_state: name must be an identifier, got {name!r}")
        if isinstance(default, list):
            if default or reduce != "cat":
                raise ValueError("add_state: a list default must be empty and use reduce='cat'")
        elif reduce == "cat":
            raise ValueError("add_state: reduce='cat' needs an empty list as default")
        elif not (isinstance(default, (torch.Tensor, numbers.Number)) or callable(default)):
            raise TypeError(f"add_state: default of {name!r} must be a tensor, a number, [] or a "
                            f"callable (L1, L2) -> tensor, got {type(default).__name__}")
        self.__dict__.setdefault("_states", {})[name] = (default, reduce)
        setattr(self, name, self._fresh(default))

    def _fresh(self, default):
        if isinstance(default, list):
            return []
        if isinstance(default, torch.Tensor):
            return default.detach().to(self.device, copy=True)
        if callable(default):
            return None  # sized at the first batch
        return default

    def _size_states(self, n1: int, n2: int) -> None:
        """Create the lazily sized states for ``n1 x n2`` layers (first batch)."""
        for name, (default, _) in self._states.items():
            if callable(default) and not isinstance(default, torch.Tensor) \
                    and getattr(self, name) is None:
                setattr(self, name, torch.as_tensor(default(n1, n2)).to(self.device))

    def _cat_state(self, name: str) -> torch.Tensor | None:
        """A ``"cat"`` state stacked to ``[batches, ...]`` (None when empty)."""
        values = getattr(self, name)
        return torch.stack(values) if values else None

    @contextlib.contextmanager
    def _synced(self):
        """Every state reduced over the ranks of the process group for the duration of the
        block (nothing happens without one); the local values are restored afterwards."""
        if not self._many:
            yield
            return
        local = {name: getattr(self, name) for name in self._states}
        try:
            self._sync_states()
            yield
        finally:
            for name, value in local.items():
                setattr(self, name, value)
            self._restore_local()

    def _sync_states(self) -> None:
        scalars = [name for name, (d, r) in self._states.items()
                   if isinstance(d, numbers.Number) and not isinstance(d, bool)]
        for name, (_, reduce) in self._states.items():
            value = getattr(self, name)
            if name in scalars:
                continue
            if reduce == "cat":
                stacked = torch.stack(value) if value else None
                sizes = _dist.all_reduce(torch.tensor([0 if stacked is None else 1]), "max",
                                         what=f"state {name}")
                if int(sizes[0]) == 0:
                    continue
                if stacked is None:  # this rank saw no batch: nothing of its own to send
                    raise RuntimeError(f"rank {_dist.rank()} holds no batch of state {name!r}")
                setattr(self, name, list(_dist.gather_batches(stacked, what=f"state {name}")))
            else:
                if value is None:
                    raise RuntimeError(f"rank {_dist.rank()} has seen no batch; give every rank "
                                       "at least one batch (fewer ranks or smaller batches)")
                setattr(self, name, _dist.all_reduce(value, reduce, what=f"state {name}"))
        if scalars:
            packed = torch.tensor([float(getattr(self, n)) for n in scalars], dtype=torch.float64)
            summed = _dist.all_reduce(packed, "sum", what="sample and batch counts")
            for name, value in zip(scalars, summed.tolist()):
                default = self._states[name][0]
                setattr(self, name, int(round(value)) if isinstance(default, int) else value)

    def _restore_local(self) -> None:
        """Hook: undo whatever ``_sync_states`` changed beyond the registered states."""

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget every batch seen so far (the last result and ``sim_matrix`` are kept)."""
        for name, (default, _) in self._states.items():
            setattr(self, name, self._fresh(default))
        self._notes = []
        self._reset_inference()
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
        self._batch_index = self._n_batches
        self._check_batch(n)
        feats1 = self.sim_model1.capture(x1, reduce=self._reduce)
        feats2 = self.sim_model2.capture(x2, reduce=self._reduce)
        if self._nonfinite1 is None:
            self._size_states(len(feats1), len(feats2))
        # rows: the batch size, or the valid tokens with token_reduction="tokens"
        rows1, rows2 = self.sim_model1.n_rows, self.sim_model2.n_rows
        if rows1 != rows2:
            raise ValueError(
                f"batch {self._n_batches}: {self.sim_model1.model_name} gives {rows1} rows per "
                f"layer but {self.sim_model2.model_name} gives {rows2}; with "
                "token_reduction='tokens' both models must see the same tokens (same tokenizer "
                "and attention mask)")
        n = n if rows1 is None else rows1
        self._update_state(feats1, feats2, batch)
        self._n_samples += n
        self._n_batches += 1
        if self.device.type == "cpu" or self._n_batches % self.nonfinite_check_every == 0:
            self._raise_if_nonfinite()

    def compute(self, dataloader, dataloader2=None, max_batches=None, progress=True, *,
                distributed=None) -> SimilarityResult:
        """Run both models over ``dataloader`` and return the layer x layer result.

        Parameters
        ----------
        dataloader : iterable of batches
            Both models see every batch (one pass). ``dataloader2``, if given, feeds model 2
            instead; it must yield the same number of samples in batches of the same sizes.
        max_batches : int, optional
            Stop after this many batches.
        progress : bool
            Show a tqdm bar (on rank 0 only under torch.distributed).
        distributed : bool, optional
            Default: work on this rank's shard and combine the ranks when a torch.distributed
            process group with more than one rank is initialised (every rank must call
            ``compute``; see :mod:`simtorch_semantic.distributed`). ``False``: this process
            alone, over the whole loader.
        """
        self.reset()
        self._mode = distributed
        many = self._many
        self._progress = bool(progress) and (not many or _dist.rank() == 0)
        self._shard_batches = None
        error = None
        try:
            self._plan(dataloader, dataloader2, max_batches, many)
        except Exception as exc:  # noqa: BLE001 - exchanged with the other ranks below
            if not many:
                raise
            error = exc
        if many:
            _dist.check_same(self._fingerprint(), error, "before the first batch")
            self._check_no_duplicates(self._shard_batches)
        try:
            self._run(dataloader, dataloader2, max_batches)
        except Exception as exc:  # noqa: BLE001
            if not many:
                raise
            error = exc
        if many:
            _dist.exchange_errors(error, "while reading its shard")
        try:
            return self.result()
        finally:
            self._mode = None

    def _run(self, dataloader, dataloader2, max_batches) -> None:
        batches = paired_batches(dataloader, dataloader2, max_batches=max_batches,
                                 input_key=self.input_key, input_fn=self.input_fn, raw=True)
        total = expected_batches(dataloader, max_batches)
        desc = f"{self.name}: {self.sim_model1.model_name} vs {self.sim_model2.model_name}"
        for b1, b2 in tqdm(batches, total=total, disable=not self._progress, desc=desc,
                           unit="batch"):
            self.update(b1, None if dataloader2 is None else b2)
        self._raise_if_nonfinite()

    def result(self) -> SimilarityResult:
        """The layer x layer result over every batch seen since the last ``reset()`` (over every
        rank's batches under torch.distributed: every rank must call it)."""
        with self._synced():
            if self._n_batches == 0:
                raise RuntimeError(
                    f"{type(self).__name__} has seen no data: call compute(dataloader) or "
                    "update(batch) first"
                )
            self._raise_if_nonfinite()
            matrix = np.asarray(self._compute_matrix(), dtype=np.float64)
            n_samples = self._n_samples
            inference = self._run_inference(matrix)
        result = SimilarityResult(
            matrix=matrix,
            row_layers=list(self.sim_model1.layers),
            col_layers=list(self.sim_model2.layers),
            model1_name=self.sim_model1.model_name,
            model2_name=self.sim_model2.model_name,
            measure=self.name,
            params={**self._params(), **self._inference_params()},
            n_samples=n_samples,
            higher_is_similar=self.higher_is_similar,
            notes=list(self._notes),
            **inference,
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

    @property
    def _many(self) -> bool:
        """True when this computation spans the ranks of a torch.distributed process group."""
        return _dist.active() and self._mode is not False

    # ------------------------------------------------------------------ planning (compute)
    def _plan(self, dataloader, dataloader2, max_batches, many: bool) -> None:
        """Checks before the first batch: planned batch sizes, memory plan, and the shard's
        sample indices under torch.distributed."""
        self._expect_samples(dataloader, max_batches)
        sizes = planned_batch_sizes(dataloader, max_batches)
        if many:
            batches = _dist.loader_batches(dataloader)
            if batches is None:
                raise ValueError(
                    f"under torch.distributed (world size {_dist.world_size()}) compute() needs "
                    "each rank's shard of the data: build the loader with "
                    "simtorch_semantic.distributed.shard_loader(dataset, batch_size) or "
                    "DataLoader(dataset, batch_size, sampler=DistributedSampler(dataset, "
                    "shuffle=False, drop_last=True)); or pass distributed=False to compute on "
                    "this rank alone")
            if dataloader2 is not None and _dist.loader_batches(dataloader2) != batches:
                raise ValueError("dataloader2 must shard the samples exactly as dataloader "
                                 "(the same sampler settings)")
            if max_batches is not None:
                batches = batches[:max_batches]
            if not batches:
                raise ValueError(
                    f"rank {_dist.rank()} of {_dist.world_size()} has no batch to read; every rank "
                    "needs at least one batch (use fewer ranks or smaller batches)")
            self._shard_batches = batches
            sizes = [len(b) for b in batches]
        for index, n in enumerate(sizes or []):
            self._batch_index = index
            self._check_batch(n)

    def _fingerprint(self) -> dict:
        """What must agree on every rank: measure, options, models, layers, weights, plan."""
        info = {"measure": type(self).__name__, "options": repr(self._params())}
        for side, model in (("model 1", self.sim_model1), ("model 2", self.sim_model2)):
            params = [p.detach() for p in model.model.parameters()]
            total = square = 0.0
            if params:  # one host read per model
                by_device = {}
                with torch.no_grad():
                    for p in params:
                        by_device.setdefault(p.device, []).append(
                            torch.stack([p.double().sum(), p.double().square().sum()]))
                    sums = sum(torch.stack(v).sum(0).cpu() for v in by_device.values())
                total, square = (float(v) for v in sums)
            info[f"{side} name"] = model.model_name
            info[f"{side} layers"] = sorted(model.layers)
            info[f"{side} parameter count"] = sum(p.numel() for p in params)
            info[f"{side} weight checksum"] = [total, square]
        return info

    def _check_no_duplicates(self, batches) -> None:
        """Collective: refuse samples that several ranks would read (a padding sampler)."""
        mine = torch.tensor(sorted(i for b in batches for i in b), dtype=torch.int64)
        everything = _dist._all_gather_padded(mine, "sample indices")
        flat = torch.cat(everything)
        if flat.numel() != torch.unique(flat).numel():
            counts = [int(t.numel()) for t in everything]
            raise _dist.RankFailedError(
                f"some samples are read by more than one rank (samples per rank: {counts}, "
                f"distinct: {int(torch.unique(flat).numel())}); torch's DistributedSampler pads "
                "its shards by repeating samples unless drop_last=True or the world size divides "
                "the data set; use simtorch_semantic.distributed.shard_loader(dataset, batch_size)")

    # ------------------------------------------------------------------ helpers for subclasses
    def _input(self, batch):
        return batch_input(batch, input_key=self.input_key, input_fn=self.input_fn)

    def _expect_samples(self, dataloader, max_batches) -> None:
        """Hook for measures that plan memory: called by compute() with the loader."""

    def _check_batch(self, n: int) -> None:
        """Raise if a batch of ``n`` samples cannot be used (default: any n >= 1).

        Called before the first batch for every planned batch (when the loader knows its
        length) and again as each batch arrives; ``self._batch_index`` is that batch's index."""

    def _mark_nonfinite(self, side: int, values) -> None:
        """Flag (without a host sync) the layers of model ``side`` (1 or 2) whose values of the
        current batch hold NaN/Inf. ``values``: a ``[L, ...]`` tensor or a list of ``L`` tensors."""
        if isinstance(values, torch.Tensor):
            bad = ~torch.isfinite(values).flatten(1).all(dim=1)
        else:
            bad = torch.stack([~torch.isfinite(v).all() for v in values]).to(self.device)
        name = "_nonfinite1" if side == 1 else "_nonfinite2"
        flags = getattr(self, name)
        stamp = torch.full_like(flags, self._n_batches + 1)
        setattr(self, name, torch.where(bad.to(flags.device) & (flags == 0), stamp, flags))

    def _raise_if_nonfinite(self) -> None:
        """Raise naming the first flagged layer and its batch (one host read of the flags)."""
        for flags, model in ((self._nonfinite1, self.sim_model1), (self._nonfinite2, self.sim_model2)):
            if flags is None:
                continue
            flags = flags.cpu()
            if bool((flags > 0).any()):
                i = int(torch.nonzero(flags > 0)[0, 0])
                where = f" on rank {_dist.rank()}" if self._many else ""
                raise ValueError(
                    f"layer {model.layers[i]!r} of {model.model_name} produced NaN or Inf in batch "
                    f"{int(flags[i]) - 1}{where}; check the inputs and the model (e.g. overflow in "
                    "half precision)"
                )

    def _note(self, message: str) -> None:
        """Record a remark in the result's notes and warn with it."""
        self._notes.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _note_constant(self, constant: list, reason: str) -> None:
        """One note (and one warning) per run listing every such layer of both models.

        ``constant``: ``[(SimilarityModel, [layer names that are `reason`])]``, e.g. one entry
        per side; a model compared with itself is listed once.
        """
        parts, seen, count = [], set(), 0
        for model, layers in constant:
            key = (model.model_name, tuple(layers))
            if not layers or key in seen:
                continue
            seen.add(key)
            count += len(layers)
            parts.append(f"{', '.join(repr(layer) for layer in layers)} of {model.model_name}")
        if parts:
            noun, verb, its = ("layer", "is", "its") if count == 1 else ("layers", "are", "their")
            self._note(f"{noun} {'; '.join(parts)} {verb} {reason}: {its} {self.name} is "
                       "undefined and set to NaN")

    @staticmethod
    def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes when a torch.distributed group is initialised."""
        return _dist.all_reduce(tensor) if _dist.active() else tensor

    @staticmethod
    def _check_positive_float(name, value):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
        return float(value)

    # ------------------------------------------------------------------ subclass hooks
    def _reduce(self, layer: str, activation: torch.Tensor):
        """What to keep of one layer's batch output (default: a detached copy)."""
        return activation.clone()

    def _add_states(self) -> None:
        """Declare the measure's states with :meth:`add_state` (called once by ``__init__``)."""

    def _reset_state(self) -> None:
        """Reset state kept outside the registry (default: nothing)."""

    def _update_state(self, feats1: dict, feats2: dict, batch) -> None:
        raise NotImplementedError

    def _compute_matrix(self) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict:
        return {}


def planned_batch_sizes(loader, max_batches=None) -> list[int] | None:
    """The sizes of the batches a torch DataLoader will yield, when it can tell without loading
    data (a batch size and a sized sampler, or a sized batch sampler of index lists); else None.
    """
    if not isinstance(loader, torch.utils.data.DataLoader):
        return None
    size = loader.batch_size
    if size is None:
        batch_sampler = loader.batch_sampler
        if isinstance(batch_sampler, _dist.ShardBatchSampler):
            sizes = [len(b) for b in batch_sampler]
        else:
            return None
    else:
        try:
            n = len(loader.sampler)
        except TypeError:
            return None
        full, rest = divmod(n, size)
        sizes = [size] * full + ([rest] if rest and not loader.drop_last else [])
    return sizes if max_batches is None else sizes[:max_batches]

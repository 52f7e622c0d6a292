"""From batches to model inputs: batch unpacking and pairing of one or two data loaders.

A *batch* is whatever a loader yields: a tensor, a tuple/list whose first item is the input
(``(images, labels)``), a dict (``{"pixel_values": ..., "label": ...}``; the input is
``batch[input_key]``, the sub-dict of the keys when ``input_key`` is a list, or the whole dict,
passed to the model as keyword arguments, when ``input_key`` is None: a tokenizer's
``{"input_ids", "attention_mask"}`` batch goes straight to ``model(**batch)``), or anything a
user ``input_fn(batch)`` turns into the model input.

:func:`paired_batches` runs over one loader (both models see the same batch) or two loaders in
lockstep (model 1 sees loader 1, model 2 sees loader 2). With two loaders, the batches must hold
the same samples, so the sample counts (up front, when both loaders know them) and every pair's
batch sizes (while iterating) must agree, and both loaders must end together; otherwise a
``ValueError`` says where they differ.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["batch_input", "batch_size", "paired_batches", "expected_batches"]


def _type_name(obj: Any) -> str:
    return type(obj).__name__


def _from_mapping(batch: Mapping, input_key) -> Any:
    keys = list(batch.keys())
    if not keys:
        raise ValueError("the batch is an empty dict; it holds no model input")
    if input_key is None:
        return batch                      # every key is a keyword argument of the model
    if isinstance(input_key, (list, tuple)):
        missing = [k for k in input_key if k not in batch]
        if missing or not input_key:
            raise ValueError(
                f"input_key {list(input_key)} names keys that are not in the batch: {missing}; "
                f"its keys are {keys}" if input_key else
                "input_key is an empty list; name the batch keys the model takes")
        return {k: batch[k] for k in input_key}
    if input_key not in batch:
        raise ValueError(
            f"input_key {input_key!r} is not in the batch; its keys are {keys}; pass one of "
            "them as input_key= (or a list of them, or None for the whole dict)"
        )
    return batch[input_key]


def batch_input(batch, input_key=None, input_fn=None):
    """The model input of one batch.

    Rules, in order: ``input_fn(batch)`` when ``input_fn`` is given; a tensor is the input; a
    NumPy array becomes a tensor; a tuple/list gives its first item (and when that item is a dict,
    what the dict gives); a dict gives ``batch[input_key]`` (a key), ``{k: batch[k]}`` for the
    keys in ``input_key`` (a list), or the dict itself (``input_key=None``; the model is then
    called as ``model(**batch)``, see :meth:`SimilarityModel.capture`).

    Args:
        batch: one item yielded by a data loader.
        input_key: key (or list of keys) of the input in dict batches; None: the whole dict.
        input_fn: ``callable(batch) -> input``; wins over every other rule.

    Returns:
        The model input, e.g. a tensor ``[batch, ...]``.
    """
    if input_fn is not None:
        if not callable(input_fn):
            raise TypeError(
                f"input_fn must be a callable batch -> model input, got {_type_name(input_fn)}")
        return input_fn(batch)
    if isinstance(batch, torch.Tensor):
        if input_key is not None:
            raise ValueError(
                f"input_key={input_key!r} was given but the batch is a tensor, not a dict; "
                "drop input_key")
        return batch
    if isinstance(batch, np.ndarray):
        return torch.as_tensor(batch)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError(f"the batch is an empty {_type_name(batch)}; it holds no model input")
        first = batch[0]
        if isinstance(first, Mapping):
            return _from_mapping(first, input_key)
        if input_key is not None:
            raise ValueError(
                f"input_key={input_key!r} was given but the batch is a {_type_name(batch)} whose "
                f"first item is a {_type_name(first)}, not a dict; drop input_key or pass "
                "input_fn=")
        return first
    if isinstance(batch, Mapping):
        return _from_mapping(batch, input_key)
    raise TypeError(
        f"cannot take the model input from a batch of type {_type_name(batch)}; batches must be "
        "a tensor, a tuple/list whose first item is the input, or a dict (with input_key=); for "
        "anything else pass input_fn=callable(batch) -> input"
    )


def _first_tensor(x: Any):
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for item in x:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def batch_size(x) -> int:
    """Number of samples in a model input: the first dimension of the first tensor found.

    ``x`` may be a tensor/array or nested tuples, lists and dicts of them (searched depth-first
    in order).
    """
    found = _first_tensor(x)
    if found is None:
        raise TypeError(
            f"cannot find a tensor in the model input of type {_type_name(x)} to read the batch "
            "size from; inputs must be tensors or tuples/lists/dicts holding tensors")
    if found.ndim == 0:
        raise ValueError(
            "the first tensor of the model input is 0-dimensional and has no batch dimension; "
            "inputs must be shaped [batch, ...]")
    return int(found.shape[0])


def _check_max_batches(max_batches) -> None:
    if max_batches is None:
        return
    if isinstance(max_batches, bool) or not isinstance(max_batches, (int, np.integer)):
        raise TypeError(
            f"max_batches must be a positive int or None, got {_type_name(max_batches)}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches}")


def _check_loader(loader, name: str) -> None:
    if isinstance(loader, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{name} is a {_type_name(loader)}, not a loader of batches; wrap it, e.g. "
            f"DataLoader(TensorDataset(x), batch_size=64) or [x] for a single batch")
    if isinstance(loader, (str, bytes, Mapping)) or not hasattr(loader, "__iter__"):
        raise TypeError(
            f"{name} must be an iterable of batches (e.g. a torch DataLoader or a list of "
            f"tensors), got {_type_name(loader)}")


def _len_or_none(obj) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def expected_batches(loader, max_batches=None) -> int | None:
    """Number of batches a pass over ``loader`` yields (``min`` with ``max_batches``), or ``None``
    when the loader has no length (an iterable dataset, a generator). Meant for tqdm totals."""
    _check_max_batches(max_batches)
    n = _len_or_none(loader)
    if n is None:
        return max_batches
    return n if max_batches is None else min(n, int(max_batches))


def _sample_count(loader) -> int | None:
    """Samples a loader yields, when it knows: its sampler's or dataset's length (drop_last
    respected for a torch DataLoader with a batch size), else ``None``."""
    if _len_or_none(loader) is None:
        return None
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    n = None
    sampler = getattr(loader, "sampler", None)
    if isinstance(loader, torch.utils.data.DataLoader) and sampler is not None:
        n = _len_or_none(sampler)
    if n is None:
        n = _len_or_none(dataset)
    if n is None:
        return None
    size = getattr(loader, "batch_size", None)
    if isinstance(loader, torch.utils.data.DataLoader) and getattr(loader, "drop_last", False) \
            and isinstance(size, int) and size > 0:
        n = (n // size) * size
    return n


def paired_batches(loader1, loader2=None, max_batches=None, input_key=None, input_fn=None,
                   *, raw=False) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x1, x2)``: the inputs of model 1 and model 2 for each batch, in order.

    With one loader, ``x1`` and ``x2`` are the same object. With two loaders they advance in
    lockstep and must agree: equal sample counts (checked before the first batch when both
    loaders expose ``len()`` and a sized ``.dataset``), equal batch sizes for every pair, and the
    same number of batches.

    Args:
        loader1: iterable of batches for model 1 (and model 2 when ``loader2`` is None).
        loader2: optional iterable of batches for model 2, over the same samples.
        max_batches: stop after this many batches (positive int) or ``None`` for all.
        input_key, input_fn: how to take the input out of a batch; see :func:`batch_input`.
        raw: yield the raw batches instead of the model inputs (checks unchanged).

    Raises (when the generator is created):
        TypeError/ValueError for a bad loader or ``max_batches``, and ValueError when the two
        loaders' sample counts differ. (While iterating:) ValueError when the loader yields no
        batches, when a pair's batch sizes differ, or when one loader ends before the other.
    """
    _check_max_batches(max_batches)
    _check_loader(loader1, "loader1")
    if input_fn is not None and not callable(input_fn):
        raise TypeError(
            f"input_fn must be a callable batch -> model input, got {_type_name(input_fn)}")
    if loader2 is not None:
        _check_loader(loader2, "loader2")
        n1, n2 = _sample_count(loader1), _sample_count(loader2)
        if n1 is not None and n2 is not None and n1 != n2:
            raise ValueError(
                f"the two loaders hold different numbers of samples: loader1 has {n1} and "
                f"loader2 has {n2}; both models must see the same samples, so pass loaders over "
                "equally many samples in the same order (or one loader for both models)")
    return _iterate(loader1, loader2, max_batches, input_key, input_fn, raw)


def _iterate(loader1, loader2, max_batches, input_key, input_fn, raw):
    count = 0
    if loader2 is None:
        for batch in loader1:
            x = batch_input(batch, input_key, input_fn)
            yield (batch, batch) if raw else (x, x)
            count += 1
            if max_batches is not None and count >= max_batches:
                return
        if count == 0:
            raise ValueError(
                "the data loader yielded no batches; give it at least one sample (check the "
                "dataset, and drop_last=True with fewer samples than the batch size)")
        return

    it1, it2 = iter(loader1), iter(loader2)
    done = object()
    while max_batches is None or count < max_batches:
        b1, b2 = next(it1, done), next(it2, done)
        if b1 is done or b2 is done:
            if b1 is done and b2 is done:
                break
            ended, other = ("loader1", "loader2") if b1 is done else ("loader2", "loader1")
            raise ValueError(
                f"{ended} ended after {count} batches but {other} has more; both loaders must "
                "yield the same samples in batches of equal size")
        x1 = batch_input(b1, input_key, input_fn)
        x2 = batch_input(b2, input_key, input_fn)
        s1, s2 = batch_size(x1), batch_size(x2)
        if s1 != s2:
            raise ValueError(
                f"batch {count} has {s1} samples from loader1 but {s2} from loader2; both "
                "loaders must yield the same samples in batches of equal size (same batch_size, "
                "drop_last and sampler)")
        yield (b1, b2) if raw else (x1, x2)
        count += 1
    if count == 0:
        raise ValueError(
            "the data loaders yielded no batches; give them at least one sample (check the "
            "datasets, and drop_last=True with fewer samples than the batch size)")

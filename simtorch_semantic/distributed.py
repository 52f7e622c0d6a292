"""Helpers for running the measures on many processes with :mod:`torch.distributed`.

Launch with ``torchrun --nproc-per-node=N script.py`` (or the CLI:
``torchrun --nproc-per-node=N -m simtorch_semantic compare ...``). Under an initialised process
group ``BaseSimilarity.compute(loader)`` works on each rank's shard of the data and returns the
same result on every rank:

- streaming measures (minibatch CKA and dCKA) sum their per-batch HSIC terms on each rank and
  all-reduce the sums (identical to one process over the same batches up to float64 rounding);
- measures that need every sample (RSA, Procrustes, CCA, SemanticCKA, full CKA) all-gather the
  collected activations in sample order and compute the matrix from the same data on every rank
  (exactly equal to one process); SemanticCKA and the cached semantic RSMs
  (:mod:`simtorch_semantic.rsm`) additionally split each layer's pair problems across ranks.

Each rank's loader must yield that rank's shard: build it with :func:`shard_loader` (consecutive
batches dealt out to the ranks in turn, nothing padded: one process over
``DataLoader(dataset, batch_size)`` sees exactly the same batches) or give a
:class:`torch.utils.data.DistributedSampler` (sample ``i`` goes to rank ``i % world``; it must not
pad: ``drop_last=True`` or a data set whose length the world size divides).

Failures: before the first batch every rank checks that all ranks compare the same models (layer
names, parameter count and a checksum of the weights) with the same measure and options; an error
on any rank (up front, or while reading its shard) is exchanged with the others, and every rank
raises :class:`RankFailedError` naming the rank and its error. A rank that dies without raising
makes the others fail at the next collective (connection closed, or the process group's timeout:
:func:`init_from_env` sets ``timeout=`` seconds, default 600).

Nothing here is needed, nor does anything change, when no process group is initialised.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import threading

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

__all__ = [
    "active", "rank", "world_size", "init_from_env", "launched_by_torchrun", "shutdown",
    "ShardBatchSampler", "shard_loader", "RankFailedError",
    "all_reduce", "barrier", "gather_rows", "gather_batches", "exchange_errors", "check_same",
    "pair_sharding", "share", "fill_pairs",
]

_DEFAULT_TIMEOUT_S = 600
_local = threading.local()
_owned = False  # True when init_from_env() created the process group (shutdown() destroys it)


class RankFailedError(RuntimeError):
    """Raised on every rank when one or more ranks failed; the message names them."""


# ------------------------------------------------------------------------------- the group
def active() -> bool:
    """True when a torch.distributed process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_by_torchrun() -> bool:
    """True when the environment of torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) is set
    with a world size above 1."""
    env = os.environ
    return all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")) \
        and int(env.get("WORLD_SIZE", "1")) > 1


def init_from_env(device="cpu", timeout: float | None = None):
    """Initialise the process group from torchrun's environment and pick this rank's device.

    Args:
        device: the requested device; ``"cuda"`` (no index) becomes ``cuda:LOCAL_RANK`` and the
            backend is NCCL, otherwise gloo.
        timeout: seconds a collective may wait for the other ranks (default 600, or the
            environment variable ``SIMTORCH_SEMANTIC_DIST_TIMEOUT``).

    Returns:
        The ``torch.device`` this rank should use. Does nothing but map the device when a group
        is already initialised or when not launched by torchrun (one process).
    """
    global _owned
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized() or not launched_by_torchrun():
        return device
    if timeout is None:
        timeout = float(os.environ.get("SIMTORCH_SEMANTIC_DIST_TIMEOUT", _DEFAULT_TIMEOUT_S))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    _owned = True
    return device


def shutdown() -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(what: str):
    """Context that turns a failed collective into an error saying which step and why."""
    return _CollectiveGuard(what)


class _CollectiveGuard:
    def __init__(self, what):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and isinstance(exc, (RuntimeError, dist.DistBackendError)) \
                and not isinstance(exc, RankFailedError):
            raise RankFailedError(
                f"rank {rank()} of {world_size()}: the collective '{self.what}' failed "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); another rank has "
                "probably stopped (see its error) or did not answer within the process group's "
                "timeout") from exc
        return False


# ------------------------------------------------------------------------------- sharding
class ShardBatchSampler(Sampler):
    """Batches of ``range(n)`` (or of ``indices``) dealt out to the ranks in turn, no padding.

    Global batch ``g`` holds samples ``[g * batch_size, (g + 1) * batch_size)`` (the last one may
    be smaller, or dropped with ``drop_last``); rank ``r`` gets batches ``r, r + W, r + 2W, ...``.
    One process over ``DataLoader(dataset, batch_size)`` sees exactly these batches, so streaming
    sums agree to rounding and collected samples are put back in order by their indices.

    Args:
        n: number of samples (``len(dataset)``).
        batch_size: samples per batch.
        rank, world_size: default from the process group (0 and 1 without one).
        drop_last: drop a last incomplete batch.
    """

    def __init__(self, n: int, batch_size: int, rank_: int | None = None,
                 world_size_: int | None = None, drop_last: bool = False):
        for name, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ShardBatchSampler: {name} must be a positive integer, got {value!r}")
        self.n, self.batch_size, self.drop_last = int(n), int(batch_size), bool(drop_last)
        self.rank = rank() if rank_ is None else int(rank_)
        self.world_size = world_size() if world_size_ is None else int(world_size_)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"ShardBatchSampler: rank {self.rank} is not in [0, {self.world_size})")

    def global_batches(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        for g in range(self.rank, self.global_batches(), self.world_size):
            start = g * self.batch_size
            yield list(range(start, min(self.n, start + self.batch_size)))

    def __len__(self):
        return len(range(self.rank, self.global_batches(), self.world_size))


def shard_loader(dataset, batch_size: int, drop_last: bool = False, **loader_kwargs) -> DataLoader:
    """A DataLoader over this rank's shard of ``dataset`` (:class:`ShardBatchSampler`).

    ``loader_kwargs`` go to :class:`torch.utils.data.DataLoader` (``num_workers``,
    ``collate_fn``, ``pin_memory``...; not ``shuffle``, ``sampler`` or ``batch_size``). Without a
    process group it is a plain in-order loader over every batch.
    """
    bad = {"shuffle", "sampler", "batch_sampler", "batch_size"} & set(loader_kwargs)
    if bad:
        raise ValueError(f"shard_loader: {sorted(bad)} cannot be combined with the shard's batch "
                         "sampler; shuffle the data set itself if you need another order")
    sampler = ShardBatchSampler(len(dataset), batch_size, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)


def loader_batches(loader) -> list[list[int]] | None:
    """Global sample indices of each batch ``loader`` yields on this rank, when the loader is a
    sharded DataLoader (:class:`ShardBatchSampler` or :class:`DistributedSampler`); else None."""
    if not isinstance(loader, DataLoader):
        return None
    batch_sampler = loader.batch_sampler
    if isinstance(batch_sampler, ShardBatchSampler) or isinstance(loader.sampler, DistributedSampler):
        return [list(map(int, b)) for b in batch_sampler]
    return None


# ------------------------------------------------------------------------------- collectives
def all_reduce(tensor: torch.Tensor, op: str = "sum", what: str = "all_reduce") -> torch.Tensor:
    """``tensor`` reduced over ranks (``op`` "sum" or "max"), a new tensor on its own device."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    comm = tensor.detach().to(_comm_device(), copy=True)
    with _collective(what):
        dist.all_reduce(comm, op=ops[op])
    return comm.to(tensor.device)


def _all_gather_padded(tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
    """Every rank's ``tensor [n_r, ...]`` (same trailing shape and dtype), as a list by rank."""
    dev = _comm_device()
    n = torch.tensor([tensor.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    with _collective(what + " (sizes)"):
        dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    top = max(sizes)
    padded = torch.zeros((top, *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
    padded[:tensor.shape[0]] = tensor.to(dev)
    pieces = [torch.empty_like(padded) for _ in sizes]
    with _collective(what):
        dist.all_gather(pieces, padded)
    return [p[:s].to(tensor.device) for p, s in zip(pieces, sizes)]


def gather_rows(tensor: torch.Tensor, index: torch.Tensor, what: str = "gather rows") -> torch.Tensor:
    """All ranks' rows ``tensor [n_r, ...]`` put in the order of their global sample ``index
    [n_r]``: returns ``[sum n_r, ...]`` sorted by index (the same on every rank)."""
    parts = _all_gather_padded(tensor, what)
    keys = _all_gather_padded(index.to(torch.int64).to(tensor.device), what + " (indices)")
    order = torch.argsort(torch.cat(keys))
    return torch.cat(parts)[order]


def gather_batches(tensor: torch.Tensor, what: str = "gather batches") -> torch.Tensor:
    """All ranks' per-batch statistics ``tensor [B_r, ...]`` in global batch order: local batch
    ``k`` of rank ``r`` is global batch ``k * W + r`` (the order of :class:`ShardBatchSampler`).
    Returns ``[sum B_r, ...]``."""
    parts = _all_gather_padded(tensor, what)
    rows = []
    for k in range(max(p.shape[0] for p in parts)):
        rows.extend(p[k] for p in parts if k < p.shape[0])
    return torch.stack(rows)


def barrier(what: str = "barrier") -> None:
    """Wait for every rank (no-op without a process group)."""
    if active():
        with _collective(what):
            dist.barrier()


def _object_gather(obj, what):
    out = [None] * world_size()
    with _collective(what):
        dist.all_gather_object(out, obj)
    return out


def exchange_errors(error: BaseException | None, stage: str) -> None:
    """Collective: every rank reports whether it failed at ``stage``; if any did, every rank
    raises :class:`RankFailedError` naming the failed ranks and their errors (chained to the
    local error on a rank that failed)."""
    mine = None if error is None else f"{type(error).__name__}: {' '.join(str(error).split())}"
    reports = _object_gather(mine, f"error exchange {stage}")
    failed = [(r, msg) for r, msg in enumerate(reports) if msg is not None]
    if failed:
        lines = "; ".join(f"rank {r} failed {stage}: {msg}" for r, msg in failed)
        raise RankFailedError(f"{lines} (seen from rank {rank()} of {world_size()})") from error


def check_same(fingerprint: dict, error: BaseException | None, stage: str) -> None:
    """Collective: raise on every rank when any rank had ``error`` or when a rank's
    ``fingerprint`` (a dict of plain values) differs from rank 0's, naming the rank and the key."""
    mine = None if error is None else f"{type(error).__name__}: {' '.join(str(error).split())}"
    reports = _object_gather((mine, fingerprint), f"configuration check {stage}")
    failed = [(r, msg) for r, (msg, _) in enumerate(reports) if msg is not None]
    if failed:
        lines = "; ".join(f"rank {r} failed {stage}: {msg}" for r, msg in failed)
        raise RankFailedError(f"{lines} (seen from rank {rank()} of {world_size()})") from error
    ref = reports[0][1]
    for r, (_, other) in enumerate(reports[1:], start=1):
        for key in sorted(set(ref) | set(other)):
            a, b = ref.get(key), other.get(key)
            if not _same(a, b):
                raise RankFailedError(
                    f"rank {r} differs from rank 0 {stage}: {key} is {_short(b)} on rank {r} but "
                    f"{_short(a)} on rank 0; every rank must compare the same models (same "
                    "weights, same layers) with the same measure and options")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# ------------------------------------------------------------------------------- pair problems
@contextlib.contextmanager
def pair_sharding(enabled: bool = True):
    """Within this context (and with a process group up), :func:`share` splits pair problems
    across ranks and :func:`fill_pairs` gathers them; outside it they cover every pair, so a plain
    call of a semantic function is never a collective by surprise. Every rank must then make
    the same calls with the same inputs."""
    before = getattr(_local, "sharding", False)
    _local.sharding = bool(enabled)
    try:
        yield
    finally:
        _local.sharding = before


def _sharding() -> bool:
    return getattr(_local, "sharding", False) and active()


def share(n_items: int) -> slice:
    """This rank's contiguous share of ``n_items`` pair problems (all of them unless inside
    :func:`pair_sharding` with a process group)."""
    if not _sharding():
        return slice(0, n_items)
    W, r = world_size(), rank()
    bounds = [n_items * k // W for k in range(W + 1)]
    return slice(bounds[r], bounds[r + 1])


def fill_pairs(out: np.ndarray, I: np.ndarray, J: np.ndarray, mine: slice) -> np.ndarray:
    """Fill ``out[I, J]`` for every pair from the ranks that computed them.

    ``out[I[mine], J[mine]]`` holds this rank's values; the others are gathered with one
    all-reduce of a vector of ``len(I)`` float64 values, zero except at each rank's own pairs, so
    every value arrives exactly. No-op unless sharding is on (see :func:`share`).
    """
    if not _sharding():
        return out
    vals = np.zeros(I.size, dtype=np.float64)
    vals[mine] = out[I[mine], J[mine]]
    total = all_reduce(torch.from_numpy(vals), "sum", what="semantic pair values")
    out[I, J] = total.numpy()
    return out

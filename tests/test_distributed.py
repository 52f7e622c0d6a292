"""Measures under torch.distributed (gloo, CPU): processes spawned from pytest give the results of
one process over the same samples; errors on one rank stop every rank with its name.

Each process group runs a list of scenarios (building a group costs seconds); the parent runs the
same scenarios without a process group as the reference. Streaming measures agree to 1e-12
(sums in another order), measures that gather the samples exactly.
"""
from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from simtorch_semantic import distributed as sdist
from simtorch_semantic.measures import CKA, RSA, DeltaCKA, Procrustes, SemanticCKA
from simtorch_semantic.measures.cka import StreamingCKA
from simtorch_semantic.model import SimilarityModel
from simtorch_semantic.functional import semantic as fsemantic
from simtorch_semantic.rsm import get_or_calculate_RSM

N, BATCH = 52, 8          # 7 batches: 6 of 8 and one of 4 (uneven shards on 2 and 3 ranks)
STREAMING = ("cka", "rbf_cka", "dcka", "dcka_label", "batch_xy", "cka_ci_low", "cka_ci_high",
             "cka_p_value")
GATHERING = ("full_cka", "full_dcka", "rsa", "procrustes", "semantic", "rsm", "cache_files",
             "full_cka_ci_low", "full_cka_p_adjusted")


class Net(nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(36, 5)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.conv(x)))))


def dataset(nan_at=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 6, 6, generator=g)
    if nan_at is not None:
        x[nan_at, 0, 0, 0] = float("nan")
    return TensorDataset(x, torch.arange(N) % 3)


def onehot(batch):
    return torch.nn.functional.one_hot(batch[1], 3).double()


class KeepBatches(StreamingCKA):
    """Streaming CKA that keeps its per-batch terms and records them as result() sees them."""

    keep_batch_stats = True

    def _compute_matrix(self):
        self.seen_batches = self.batch_stats()
        return super()._compute_matrix()


def models(seed2=2, layers1=None):
    return (SimilarityModel(Net(1), "net1", layers_to_include=layers1),
            SimilarityModel(Net(seed2), "net2"))


def results_scenarios(world, cache_dir):
    """Every measure over shard_loader(dataset) (plus a DistributedSampler) and a cached semantic
    RSM: name -> value."""
    reps = torch.randn(20, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    solved = []  # pair problems this rank solves (190 in all)
    original = fsemantic.solve_assignment
    fsemantic.solve_assignment = lambda aff, *a, **k: (solved.append(len(aff)), original(aff, *a, **k))[1]
    try:
        rsms = get_or_calculate_RSM(cache_dir, {"a": reps}, kernel="rbf", matching="exact",
                                    n_workers=1, progress=False)
    finally:
        fsemantic.solve_assignment = original
    out = {"rsm": rsms["a"], "cache_files": np.array(len(list(cache_dir.glob("*.npz")))),
           "pairs_solved": np.array(sum(solved))}
    ds = dataset()
    loader = sdist.shard_loader(ds, BATCH)
    m1, m2 = models()
    run = lambda measure: measure.compute(loader, progress=False)  # noqa: E731
    res = run(CKA(m1, m2))
    out["cka"], out["n_samples"] = res.matrix, np.array(res.n_samples)
    out["rbf_cka"] = run(CKA(m1, m2, kernel="rbf")).matrix
    out["dcka"] = run(DeltaCKA(m1, m2)).matrix
    out["dcka_label"] = run(DeltaCKA(m1, m2, confounder=onehot)).matrix
    keep = KeepBatches(m1, m2)
    run(keep)
    out["batch_xy"] = keep.seen_batches["xy"].numpy()
    out["full_cka"] = run(CKA(m1, m2, estimator="full", unbiased=True)).matrix
    boot = run(CKA(m1, m2, n_bootstrap=40, seed=1))  # per-batch terms gathered in batch order
    out["cka_ci_low"], out["cka_ci_high"] = boot.ci_low, boot.ci_high
    out["cka_p_value"] = run(CKA(m1, m2, n_permutations=20, seed=1)).p_value
    full = run(CKA(m1, m2, estimator="full", unbiased=True, n_bootstrap=10, n_permutations=10, seed=1))
    out["full_cka_ci_low"], out["full_cka_p_adjusted"] = full.ci_low, full.p_value_adjusted
    out["full_dcka"] = run(DeltaCKA(m1, m2, estimator="full")).matrix
    dboot = run(DeltaCKA(m1, m2, n_bootstrap=40, n_permutations=20, seed=1))  # six terms a batch
    out["dcka_ci_low"], out["dcka_p_value"] = dboot.ci_low, dboot.p_value
    dfull = run(DeltaCKA(m1, m2, estimator="full", unbiased=True, n_bootstrap=10, n_permutations=10,
                         seed=1))
    out["full_dcka_ci_high"], out["full_dcka_null_mean"] = dfull.ci_high, dfull.null_mean
    out["rsa"] = run(RSA(m1, m2)).matrix
    out["procrustes"] = run(Procrustes(m1, m2)).matrix
    s1 = SimilarityModel(Net(1), "net1", layers_to_include=["conv", "pool"])
    s2 = SimilarityModel(Net(2), "net2", layers_to_include=["conv", "pool"])
    small = sdist.shard_loader(Subset(ds, range(3 * BATCH)), BATCH)  # 276 pair problems a layer
    out["semantic"] = SemanticCKA(s1, s2, kernel="ip", matching="exact", n_workers=1).compute(
        small, progress=False).matrix
    # torch's DistributedSampler (sample i to rank i % world; drop_last: 52 or 51 samples)
    if world > 1:
        sampler = DistributedSampler(ds, shuffle=False, drop_last=True)
        loader = DataLoader(ds, batch_size=BATCH, sampler=sampler)
        out["rsa_sampler"] = RSA(m1, m2).compute(loader, progress=False).matrix
    else:
        for kept in (N, N - N % 3):
            out[f"rsa_first{kept}"] = RSA(m1, m2).compute(
                DataLoader(Subset(ds, range(kept)), batch_size=BATCH), progress=False).matrix
    return out


def error_scenarios(world):
    """Each scenario must fail on every rank; name -> the error message seen on this rank."""
    rank = sdist.rank()
    ds = dataset()
    loader = sdist.shard_loader(ds, BATCH)
    errors = {}

    def expect_error(name, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"{type(exc).__name__}: {exc}"
        else:
            errors[name] = "no error"

    def confounder(batch):
        if rank == 1:
            raise ValueError("confounder broke on purpose")
        return batch[0]

    m1, m2 = models()
    expect_error("raises", lambda: DeltaCKA(m1, m2, confounder=confounder).compute(loader, progress=False))
    # the NaN sample sits in global batch 2, read by rank 2 as its local batch 0
    nan_loader = sdist.shard_loader(dataset(nan_at=2 * BATCH + 1), BATCH)
    expect_error("nan", lambda: CKA(m1, m2).compute(nan_loader, progress=False))
    a1, a2 = models(layers1=["conv", "fc"] if rank == 1 else ["conv", "act"])
    expect_error("layers", lambda: CKA(a1, a2).compute(loader, progress=False))
    b1, b2 = models(seed2=7 if rank == 2 else 2)
    expect_error("weights", lambda: RSA(b1, b2).compute(loader, progress=False))
    padded = DataLoader(ds, batch_size=BATCH, sampler=DistributedSampler(ds, shuffle=False))
    expect_error("padding", lambda: RSA(m1, m2).compute(padded, progress=False))
    expect_error("plain_loader", lambda: CKA(m1, m2).compute(DataLoader(ds, batch_size=BATCH),
                                                               progress=False))
    # the group is still usable after every failure above
    after = CKA(m1, m2).compute(loader, progress=False).matrix
    return errors, after


def dying_scenario(world):
    """Rank 1 dies without a word in its second batch; rank 0 must stop with an error."""
    rank = sdist.rank()

    def confounder(batch):
        if rank == 1 and confounder.calls == 1:
            os._exit(3)
        confounder.calls += 1
        return batch[0]

    confounder.calls = 0
    m1, m2 = models()
    try:
        DeltaCKA(m1, m2, confounder=confounder).compute(sdist.shard_loader(dataset(), 4),
                                                        progress=False)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return "no error"


# ------------------------------------------------------------------ process harness
def _entry(kind, rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=90))
    try:
        if kind == "dying":
            np.savez(os.path.join(out_dir, f"rank{rank}.npz"), error=np.array(dying_scenario(world)))
            os._exit(0)  # no collective teardown with a dead peer
        if kind == "results":
            values = results_scenarios(world, Path(out_dir) / "cache")
            np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **values)
        else:
            errors, after = error_scenarios(world)
            np.savez(os.path.join(out_dir, f"rank{rank}.npz"), after=after,
                     **{f"error_{k}": np.array(v) for k, v in errors.items()})
    except BaseException:  # noqa: BLE001 - reported to the parent through a file
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as handle:
            handle.write(traceback.format_exc())
        raise
    finally:
        torch.distributed.destroy_process_group()


def run_group(tmp_path, kind, world, exitcodes=None):
    """Run ``kind`` on ``world`` forked processes; per-rank dicts of the saved arrays."""
    out = tmp_path / f"{kind}{world}"
    out.mkdir()
    ctx = mp.get_context("fork")  # no re-import of torch in each process (seconds under load)
    procs = [ctx.Process(target=_entry, args=(kind, r, world, str(out / "pg"), str(out)))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
    errs = [f.read_text() for f in sorted(out.glob("*.err"))]
    assert not errs, "\n".join(errs)
    codes = [p.exitcode for p in procs]
    assert codes == (exitcodes or [0] * world), codes
    return [dict(np.load(out / f"rank{r}.npz", allow_pickle=False)) if codes[r] == 0 else None
            for r in range(world)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: the same summation order in every product
    try:
        return {k: np.asarray(v) for k, v in results_scenarios(1, tmp_path_factory.mktemp("c")).items()}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("world", [2, 3])
def test_results_equal_one_process(tmp_path, reference, world):
    ranks = run_group(tmp_path, "results", world)
    # DistributedSampler(drop_last=True) keeps the first world * (N // world) samples
    reference = dict(reference, rsa_sampler=reference[f"rsa_first{N - N % world}"])
    solved = [int(r.pop("pairs_solved")) for r in ranks]
    assert sum(solved) == int(reference["pairs_solved"]) == 190 and max(solved) < 190, solved
    for name in ranks[0]:
        ref = reference[name]
        values = [r[name] for r in ranks]
        for r, value in enumerate(values[1:], start=1):  # the same result on every rank
            np.testing.assert_array_equal(value, values[0], err_msg=f"{name}: rank {r} vs rank 0")
        if name == "rsa_sampler":  # other batch compositions: float32 activations to rounding
            np.testing.assert_allclose(values[0], ref, rtol=0, atol=1e-6, err_msg=name)
        elif name in GATHERING or name == "n_samples":
            np.testing.assert_array_equal(values[0], ref, err_msg=name)
        else:
            assert values[0].shape == ref.shape, name
            np.testing.assert_allclose(values[0], ref, rtol=0, atol=1e-12, err_msg=name)
    assert int(ranks[0]["n_samples"]) == N and int(ranks[0]["cache_files"]) == 1
    assert ranks[0]["batch_xy"].shape[0] == 7  # every batch, in the order one process reads them


def test_a_failing_rank_stops_every_rank(tmp_path, reference):
    ranks = run_group(tmp_path, "errors", 3)
    for r, got in enumerate(ranks):
        msg = {k[len("error_"):]: str(v) for k, v in got.items() if k.startswith("error_")}
        assert "RankFailedError" in msg["raises"] and "rank 1 failed" in msg["raises"]
        assert "confounder broke on purpose" in msg["raises"]
        assert "rank 2 failed" in msg["nan"] and "NaN or Inf in batch 0 on rank 2" in msg["nan"]
        assert "rank 1 differs from rank 0" in msg["layers"] and "model 1 layers" in msg["layers"]
        assert "rank 2 differs from rank 0" in msg["weights"] and "checksum" in msg["weights"]
        assert "more than one rank" in msg["padding"] and "shard_loader" in msg["padding"]
        assert "shard_loader" in msg["plain_loader"]
        np.testing.assert_allclose(got["after"], reference["cka"], rtol=0, atol=1e-12)


def test_a_rank_that_dies_does_not_hang_the_others(tmp_path):
    ranks = run_group(tmp_path, "dying", 2, exitcodes=[0, 3])
    message = str(ranks[0]["error"])
    assert "RankFailedError" in message and "rank 0 of 2" in message, message
    assert "another rank has probably stopped" in message


# ------------------------------------------------------------------ helpers without a group
def test_shard_batch_sampler_deals_batches_in_turn():
    shards = [list(sdist.ShardBatchSampler(22, 4, r, 3)) for r in range(3)]
    assert shards[0] == [[0, 1, 2, 3], [12, 13, 14, 15]]
    assert shards[1] == [[4, 5, 6, 7], [16, 17, 18, 19]]
    assert shards[2] == [[8, 9, 10, 11], [20, 21]]
    assert [len(s) for s in shards] == [2, 2, 2]
    assert len(sdist.ShardBatchSampler(22, 4, 2, 3, drop_last=True)) == 1
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sdist.ShardBatchSampler(10, 0)
    with pytest.raises(ValueError, match="rank 3 is not in"):
        sdist.ShardBatchSampler(10, 2, 3, 3)
    with pytest.raises(ValueError, match="shuffle"):
        sdist.shard_loader(dataset(), 4, shuffle=True)


def test_without_a_group_nothing_is_collective():
    assert not sdist.active() and sdist.rank() == 0 and sdist.world_size() == 1
    assert sdist.share(10) == slice(0, 10)
    with sdist.pair_sharding():
        assert sdist.share(10) == slice(0, 10)
    out = np.zeros((2, 2))
    assert sdist.fill_pairs(out, np.array([0]), np.array([1]), slice(0, 1)) is out
    loader = sdist.shard_loader(dataset(), BATCH)  # one process: every batch, in order
    assert [len(b[0]) for b in loader] == [8] * 6 + [4]
    m1, m2 = models()
    # distributed=False (or no group) reads a plain loader as before
    CKA(m1, m2).compute(DataLoader(dataset(), batch_size=BATCH), progress=False, distributed=False)


# ------------------------------------------------------------------ the CLI under torchrun
@pytest.mark.skipif(shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"),
                    reason="torchrun is not installed")
def test_cli_under_torchrun_equals_one_process(tmp_path):
    from simtorch_semantic.cli import main

    args = ["compare", "resnet18", "resnet18", "--samples", "24", "--batch-size", "8",
            "--image-size", "32", "--layers-a", "layer1.0,layer2.0,fc",
            "--layers-b", "layer1.1,layer3.0", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "simtorch_semantic", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=240, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 3, proc.stdout  # rank 0 only: png, csv, json
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    import pandas as pd

    csv = [n for n in one if n.endswith(".csv")][0]
    a = pd.read_csv(tmp_path / "one" / csv, index_col=0)
    b = pd.read_csv(tmp_path / "two" / csv, index_col=0)
    assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns)
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=0, atol=1e-12)

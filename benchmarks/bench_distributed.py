"""Scale-out on torch.distributed (issue 12): 2 processes x 1 thread vs 1 process x 2 threads.

    PYTHONPATH=. python3 benchmarks/bench_distributed.py                 # both parts
    PYTHONPATH=. python3 benchmarks/bench_distributed.py --part p1 --repeats 3

p1   ResNet-18 vs ResNet-34 (random init, seed 0), every block output (14 x 22 layers), N = 512
     random 3x96x96 inputs, batch 64, streaming linear CKA (as benchmarks/bench_cka.py).
     "1 x 2": this process with torch.set_num_threads(2) over DataLoader(dataset, 64);
     "2 x 1": two gloo ranks with one thread each over shard_loader(dataset, 64), 4 batches each,
     timed on rank 0 from a barrier before compute() to its return (the reduction included).
rsm  get_or_calculate_RSM of one layer, N = 96 samples, S = 49 positions, C = 64 channels, exact
     matching (4560 pair problems): 1 process with n_workers=2 vs 2 ranks with n_workers=1 each.

The two set-ups run alternately (one repeat of each in turn) so that the load of the machine hits
both alike; every figure is the median over repeats of the wall time of one compute. The process
group and the models are built once, outside the timings. Prints one JSON line per part.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

N, BATCH, SIZE = 512, 64, 96


def make_inputs():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 3, SIZE, SIZE, generator=g))


def make_measure():
    import torchvision

    from simtorch_semantic.measures.cka import CKA
    from simtorch_semantic.model import SimilarityModel

    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None).eval()
    r34 = torchvision.models.resnet34(weights=None).eval()
    s1, s2 = SimilarityModel(r18, "resnet18"), SimilarityModel(r34, "resnet34")
    assert len(s1.layers) == 14 and len(s2.layers) == 22
    return CKA(s1, s2)


def rsm_inputs():
    g = torch.Generator().manual_seed(1)
    return {"layer": torch.relu(torch.randn(96, 64, 7, 7, generator=g))}


def run_rsm(n_workers):
    from simtorch_semantic.rsm import get_or_calculate_RSM

    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: always computed
        if dist.is_initialized():  # one directory for all ranks: rank 0 writes it
            names = [None] * dist.get_world_size()
            dist.all_gather_object(names, cache)
            cache = names[0]
        return get_or_calculate_RSM(cache, rsm_inputs(), kernel="ip", matching="exact",
                                    n_workers=n_workers, progress=False)["layer"]


def rank_main(rank, world, init_file, go, done):
    """One rank of the 2 x 1 set-up: waits for 'go', runs one compute, reports its time."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=1800))
    from simtorch_semantic.distributed import shard_loader

    measure = make_measure()
    loader = shard_loader(make_inputs(), BATCH)
    measure.compute(loader, max_batches=1, progress=False)  # warm-up
    while True:
        part = go[rank].get()
        if part is None:
            break
        dist.barrier()
        start = time.perf_counter()
        if part == "p1":
            value = measure.compute(loader, progress=False).matrix
        else:
            value = run_rsm(1)
        done.put((rank, part, time.perf_counter() - start, value))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["p1", "rsm", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    parts = ["p1", "rsm"] if args.part == "all" else [args.part]

    ctx = mp.get_context("fork")  # forked before this process runs any torch op
    tmp = tempfile.mkdtemp()
    go = [ctx.Queue() for _ in range(2)]
    done = ctx.Queue()
    ranks = [ctx.Process(target=rank_main, args=(r, 2, os.path.join(tmp, "pg"), go, done))
             for r in range(2)]
    for p in ranks:
        p.start()

    torch.set_num_threads(2)
    measure = make_measure()
    loader = DataLoader(make_inputs(), batch_size=BATCH)
    measure.compute(loader, max_batches=1, progress=False)  # warm-up
    for part in parts:
        one, two, diffs = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            ref = measure.compute(loader, progress=False).matrix if part == "p1" else run_rsm(2)
            one.append(time.perf_counter() - start)
            for q in go:
                q.put(part)
            got = sorted(done.get() for _ in range(2))
            two.append(got[0][2])
            diffs.append(float(abs(torch.as_tensor(got[0][3]) - torch.as_tensor(ref)).max()))
        print(json.dumps({
            "part": part, "repeats": args.repeats, "load_average": os.getloadavg(),
            "one_process_two_threads_s": statistics.median(one), "runs_1x2": one,
            "two_processes_one_thread_s": statistics.median(two), "runs_2x1": two,
            "speedup_2x1_over_1x2": statistics.median(o / t for o, t in zip(one, two)),
            "max_abs_diff": max(diffs)}), flush=True)
    for q in go:
        q.put(None)
    for p in ranks:
        p.join()


if __name__ == "__main__":
    main()

"""Cost of inference on the streaming CKA or dCKA (issue 11), P1 setting of bench_cka.py.

    PYTHONPATH=. python3 benchmarks/bench_inference.py [--repeats 3] [--n-bootstrap 1000]
                                                       [--n-permutations 1000] [--measure dcka]

ResNet-18 vs ResNet-34 (random init), all 14 x 22 block outputs, N = 512 random 3x96x96
inputs, batch 64, CPU. In one process and alternately: the plain ``CKA(s1, s2).compute`` and
``CKA(s1, s2, n_bootstrap=B, n_permutations=P, seed=0).compute`` on the same batches (with
``--measure dcka``: ``DeltaCKA``, the input as confounder, both times); the ratio
is inference time / plain time of the same repeat, median over repeats, in wall time and in
process CPU time (the machine may be shared: CPU time is what the process itself spent). Also
times the result step alone (intervals, p-values) and reports the load average before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from bench_cka import RandomImages, make_models  # noqa: E402

from simtorch_semantic.measures.cka import CKA, DeltaCKA  # noqa: E402


def components(repeats: int) -> dict:
    """CPU seconds (1 thread) per P1 batch: the permutation null's gathers and products for
    1000 permutations (float64 and float32) against the forward pass of both models."""
    import torchvision

    from simtorch_semantic.functional.inference import make_generator, permuted_hsic_cross, random_permutations

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    Ks = torch.randn(14, 64, 64, generator=g, dtype=torch.float64)
    Ls = torch.randn(22, 64, 64, generator=g, dtype=torch.float64)
    Ks, Ls = Ks @ Ks.transpose(1, 2), Ls @ Ls.transpose(1, 2)
    gen = make_generator(0)[0]
    out = {}
    for name, dtype in (("null_float64_cpu_s", torch.float64), ("null_float32_cpu_s", torch.float32)):
        times = []
        for _ in range(repeats):
            start = time.process_time()
            permuted_hsic_cross(Ks, Ls, random_permutations(64, 1000, gen), True, validate=False,
                                dtype=dtype)
            times.append(time.process_time() - start)
        out[name] = round(statistics.median(times), 3)
    r18 = torchvision.models.resnet18(weights=None).eval()
    r34 = torchvision.models.resnet34(weights=None).eval()
    x = torch.randn(64, 3, 96, 96, generator=g)
    times = []
    with torch.no_grad():
        r18(x), r34(x)
        for _ in range(repeats):
            start = time.process_time()
            r18(x), r34(x)
            times.append(time.process_time() - start)
    out["forward_both_cpu_s"] = round(statistics.median(times), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--components", action="store_true",
                        help="only the per-batch component timings (1 thread, CPU time)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up runs")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--n-permutations", type=int, default=1000)
    parser.add_argument("--measure", choices=("cka", "dcka"), default="cka",
                        help="streaming CKA (default) or streaming dCKA (the input as confounder)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.components:
        print(json.dumps({"load_average_before": [round(v, 2) for v in load_before],
                          **components(args.repeats),
                          "load_average_after": [round(v, 2) for v in os.getloadavg()]}, indent=1))
        return
    s1, s2 = make_models()
    batches = [b for b in DataLoader(RandomImages(512), batch_size=64)]
    cls = DeltaCKA if args.measure == "dcka" else CKA
    plain = cls(s1, s2)
    inferred = cls(s1, s2, n_bootstrap=args.n_bootstrap, n_permutations=args.n_permutations, seed=0)

    def run(measure):
        return measure.compute(batches, progress=False)

    if not args.no_warmup:
        run(plain), run(inferred)  # warm-up
    t_plain, t_inf, t_result, c_plain, c_inf = [], [], [], [], []
    for _ in range(args.repeats):
        for measure, store, cpu in ((plain, t_plain, c_plain), (inferred, t_inf, c_inf)):
            start, start_cpu = time.perf_counter(), time.process_time()
            run(measure)
            store.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        start = time.perf_counter()
        inferred.result()  # the result step alone: intervals, p-values, adjusted p-values
        t_result.append(time.perf_counter() - start)
    ratios = [i / p for i, p in zip(t_inf, t_plain)]
    cpu_ratios = [i / p for i, p in zip(c_inf, c_plain)]
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "measure": args.measure,
        "n_bootstrap": args.n_bootstrap, "n_permutations": args.n_permutations,
        "plain_s_median": round(statistics.median(t_plain), 3),
        "inference_s_median": round(statistics.median(t_inf), 3),
        "result_step_s_median": round(statistics.median(t_result), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "plain_cpu_s_median": round(statistics.median(c_plain), 3),
        "inference_cpu_s_median": round(statistics.median(c_inf), 3),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
        "cpu_ratios": [round(r, 3) for r in cpu_ratios],
    }, indent=1))


if __name__ == "__main__":
    main()

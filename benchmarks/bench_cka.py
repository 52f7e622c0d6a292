"""Speed, memory and accuracy of the streaming CKA (issue: foundation).

    python3 benchmarks/bench_cka.py            # everything (about 5 minutes on 2 cores)
    python3 benchmarks/bench_cka.py --part speed|memory|accuracy

speed     ResNet-18 vs ResNet-34 (random init), all 14 x 22 block outputs, N = 512 random
          3x96x96 inputs, batch 64, CPU: CKA(...).compute time / bare forward time of both models
          on the same batches, measured alternately in one process, median of --repeats runs.
memory    peak resident memory of a fresh process running CKA.compute at N = 512 and N = 4096
          (samples generated on the fly, so the data set itself takes no memory).
accuracy  float32 features whose mean is 1000x their spread, streamed through the CKA measure,
          against a float64 reference; and a naive uncentred float32 Gram for contrast.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from simtorch_semantic.measures.cka import CKA
from simtorch_semantic.model import SimilarityModel


class RandomImages(Dataset):
    """``n`` random 3 x size x size images, each generated from its index (no stored data)."""

    def __init__(self, n, size=96):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=g)


def make_models():
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None).eval()
    r34 = torchvision.models.resnet34(weights=None).eval()
    return SimilarityModel(r18, "resnet18"), SimilarityModel(r34, "resnet34")


def bench_speed(repeats: int, torch_cka_path: str | None = None) -> dict:
    s1, s2 = make_models()
    assert len(s1.layers) == 14 and len(s2.layers) == 22, (s1.layers, s2.layers)
    batches = [b for b in DataLoader(RandomImages(512), batch_size=64)]

    def bare():
        with torch.no_grad():
            for x in batches:
                s1.model(x)
                s2.model(x)

    measure = CKA(s1, s2)

    def cka():
        measure.compute(batches, progress=False)

    bare(); cka()  # warm-up (allocator, kernels)
    t_bare, t_cka = [], []
    for _ in range(repeats):
        for fn, store in ((bare, t_bare), (cka, t_cka)):
            start = time.perf_counter()
            fn()
            store.append(time.perf_counter() - start)
    ratios = [c / b for c, b in zip(t_cka, t_bare)]
    report = {"bare_forward_s": statistics.median(t_bare), "cka_compute_s": statistics.median(t_cka),
              "ratio_median": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
              "repeats": repeats}

    # Ablation: the same measure with the Gram of every layer formed from centred features
    # (one more pass over each activation) instead of the cancellation check.
    from simtorch_semantic.functional import kernels
    from simtorch_semantic.measures import cka as cka_module

    original = cka_module.streaming_linear_gram
    cka_module.streaming_linear_gram = lambda X: kernels.linear_gram(X, center=True)
    try:
        t_c, t_b = [], []
        for _ in range(max(1, repeats // 2)):
            for fn, store in ((bare, t_b), (cka, t_c)):
                start = time.perf_counter()
                fn()
                store.append(time.perf_counter() - start)
    finally:
        cka_module.streaming_linear_gram = original
    report["always_centred_ratio_median"] = statistics.median([c / b for c, b in zip(t_c, t_b)])

    if torch_cka_path:
        sys.path.insert(0, torch_cka_path)
        from torch_cka import CKA as TorchCKA  # the published package, for comparison only

        # torch-cka keeps its hooks on the models for good: give it its own copies
        m1, m2 = make_models()
        other = TorchCKA(m1.model, m2.model, "r18", "r34", model1_layers=m1.layers,
                         model2_layers=m2.layers, device="cpu")
        class _Loader(list):  # torch-cka reads loader.dataset and unpacks (x, *rest) batches
            dataset = "random"

        loader = _Loader((x,) for x in batches)
        t_o, t_b = [], []
        for _ in range(max(1, repeats // 2)):
            start = time.perf_counter()
            bare()
            t_b.append(time.perf_counter() - start)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other.compare(loader)
            t_o.append(time.perf_counter() - start)
        report["torch_cka_0.21_ratio_median"] = statistics.median([o / b for o, b in zip(t_o, t_b)])
    return report


def _memory_child(n: int) -> None:
    s1, s2 = make_models()
    loader = DataLoader(RandomImages(n), batch_size=64)
    CKA(s1, s2).compute(loader, progress=False)
    print(json.dumps({"n": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_memory() -> dict:
    out = {}
    for n in (512, 4096):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], check=True,
                              capture_output=True, text=True)
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    return {"peak_rss_mib_n512": out[512], "peak_rss_mib_n4096": out[4096],
            "ratio": out[4096] / out[512]}


def bench_accuracy() -> dict:
    from torch import nn

    from simtorch_semantic.functional.cka import cka_from_grams

    class Shifted(nn.Module):
        def __init__(self, W, shift):
            super().__init__()
            self.register_buffer("W", W)
            self.out = nn.Identity()
            self.shift = shift

        def forward(self, x):
            return self.out(x @ self.W + self.shift)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 64, generator=g)
    W1, W2 = torch.randn(64, 2048, generator=g), torch.randn(64, 1024, generator=g)
    f1, f2 = (x @ W1).double(), (x @ W2).double()
    shift = 1000.0 * float(f1.std())
    # float64 reference: the same minibatch estimator on centred float64 features
    xy = xx = yy = 0.0
    for s in range(0, 1024, 64):
        K = f1[s:s + 64] @ f1[s:s + 64].T
        L = f2[s:s + 64] @ f2[s:s + 64].T
        from simtorch_semantic.functional.hsic import hsic_unbiased
        xy += float(hsic_unbiased(K, L)); xx += float(hsic_unbiased(K, K)); yy += float(hsic_unbiased(L, L))
    reference = xy / (xx * yy) ** 0.5
    s1 = SimilarityModel(Shifted(W1, shift), "a", layers_to_include=["out"])
    s2 = SimilarityModel(Shifted(W2, shift), "b", layers_to_include=["out"])
    got = CKA(s1, s2).compute(DataLoader(x, batch_size=64), progress=False).matrix[0, 0]
    a32, b32 = (f1 + shift).float(), (f2 + shift).float()
    naive = cka_from_grams(a32 @ a32.T, b32 @ b32.T)
    full_ref = cka_from_grams(f1 @ f1.T, f2 @ f2.T)
    return {"reference": reference, "streaming_float32": float(got), "abs_error": abs(float(got) - reference),
            "naive_uncentred_float32_abs_error_full": abs(float(naive) - float(full_ref))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "memory", "accuracy", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-cka-path", help="folder holding the torch_cka package (0.21), to time it "
                        "on the same batches; e.g. unpack its wheel: pip download --no-deps torch-cka")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                         f"torch {torch.__version__}, {platform.processor() or 'cpu'}"}
    if args.part in ("accuracy", "all"):
        report["accuracy"] = bench_accuracy()
        print(json.dumps({"accuracy": report["accuracy"]}), flush=True)
    if args.part in ("speed", "all"):
        report["speed"] = bench_speed(args.repeats, args.torch_cka_path)
        print(json.dumps({"speed": report["speed"]}), flush=True)
    if args.part in ("memory", "all"):
        report["memory"] = bench_memory()
        print(json.dumps({"memory": report["memory"]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

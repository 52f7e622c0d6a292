"""Effect of ``max_positions`` (average-pooling the maps before matching) on semantic CKA.

ResNet-18 vs ResNet-34 (random init, seed 0), ``--n`` samples of the shipped photographs at
``--image-size`` px, layers ``layer1.*`` and ``layer2.*`` (S = (px/4)^2 and (px/8)^2 positions),
semantic CKA (RBF kernel, matching="auto") at full resolution and with each ``max_positions``;
reported: max and mean absolute difference of the CKA matrices to full resolution, and the wall
time of each run.

    PYTHONPATH=. python3 benchmarks/bench_max_positions.py --n 24 --image-size 64 --mp 64 16
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simtorch_semantic.images import default_dataset  # noqa: E402
from simtorch_semantic.measures.semantic import SemanticCKA  # noqa: E402
from simtorch_semantic.model import SimilarityModel  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--mp", type=int, nargs="+", default=[64, 16])
    args = ap.parse_args(argv)
    import torchvision
    torch.manual_seed(0)
    a = torchvision.models.resnet18(weights=None)
    b = torchvision.models.resnet34(weights=None)
    la = ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    lb = ["layer1.0", "layer1.2", "layer2.0", "layer2.3"]
    ds = default_dataset(n=args.n, size=args.image_size, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.n)
    print(f"load average {os.getloadavg()[0]:.1f}; n = {args.n}, {args.image_size} px; S = "
          f"{(args.image_size // 4) ** 2} (layer1), {(args.image_size // 8) ** 2} (layer2)")
    runs = {}
    for mp in [None] + args.mp:
        m = SemanticCKA(SimilarityModel(a, "resnet18", la), SimilarityModel(b, "resnet34", lb),
                        max_positions=mp, max_minutes=None, print_plan=False)
        t = time.perf_counter()
        res = m.compute(loader, progress=False)
        runs[mp] = (res.matrix, time.perf_counter() - t)
    full, t_full = runs[None]
    print("| max_positions | max abs diff to full | mean abs diff | wall s | full wall s |")
    print("|---:|---:|---:|---:|---:|")
    for mp in args.mp:
        M, t = runs[mp]
        d = np.abs(M - full)
        print(f"| {mp} | {d.max():.4f} | {d.mean():.4f} | {t:.1f} | {t_full:.1f} |")
    print("full-resolution matrix:\n", np.array2string(full, precision=3))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

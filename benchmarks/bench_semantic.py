"""Speed of the exact semantic RSM against a plain per-pair NumPy + scipy reference.

Workload (issue 3): N = 64 samples, S = 196 positions (14 x 14), C = 256 channels, ReLU
features: the output of ``layer3`` of a randomly initialised torchvision ResNet-18 (fixed seed,
no downloaded weights) on 224 x 224 crops of scikit-image's bundled photographs.

Reported: median wall time of several runs of ``semantic_sim_parallel`` (all three kernels,
``matching="exact"``), per pair over the N(N-1)/2 pairs of the symmetric RSM, and the same for
the reference measured in the same process: for every pair ``cost = V_i @ V_j.T`` in NumPy,
``scipy.optimize.linear_sum_assignment(cost, maximize=True)``, then the aligned inner product in
float64 (one pair at a time, no threads). Also: max relative difference of the RSMs and the
number of pairs whose permutations differ.

Run:  python3 benchmarks/bench_semantic.py [--runs 5] [--workers 2] [--n 64]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def photographs_features(n, seed=0):
    """ReLU features [n, 256, 14, 14] (float32) of random crops of skimage photographs."""
    import torchvision
    from skimage import data
    from skimage.transform import resize

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat",
             "hubble_deep_field", "retina", "motorcycle_left", "colorwheel"]
    photos = []
    for nm in names:
        try:
            im = getattr(data, nm)()
        except Exception:  # an image missing from this skimage build: skip it
            continue
        if im.ndim == 3 and im.shape[2] >= 3:
            photos.append(np.asarray(im[..., :3], dtype=np.float32) / 255.0)
    rng = np.random.default_rng(seed)
    batch = []
    for k in range(n):
        im = photos[k % len(photos)]
        h, w = im.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        r0 = int(rng.integers(0, h - side + 1))
        c0 = int(rng.integers(0, w - side + 1))
        crop = resize(im[r0:r0 + side, c0:c0 + side], (224, 224), anti_aliasing=True)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        batch.append(np.ascontiguousarray(crop.transpose(2, 0, 1)))
    x = torch.from_numpy(np.stack(batch)).float()
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None).eval()
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                net.layer1, net.layer2, net.layer3)
    with torch.no_grad():
        f = trunk(x)
    return f.contiguous()  # ReLU output of the last block of layer3


def random_conv_features(n, seed=0):
    """ReLU features [n, 256, 14, 14] (float32): two random 3x3 convolutions (He scale), ReLU,
    on smoothed Gaussian noise images 56 x 56 (stride 2 twice)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, 3, 56, 56, generator=g)
    img = torch.nn.functional.avg_pool2d(img, 3, stride=1, padding=1)
    w1 = torch.randn(64, 3, 3, 3, generator=g) * (2.0 / 27) ** 0.5
    w2 = torch.randn(256, 64, 3, 3, generator=g) * (2.0 / 576) ** 0.5
    h = torch.relu(torch.nn.functional.conv2d(img, w1, stride=2, padding=1))
    return torch.relu(torch.nn.functional.conv2d(h, w2, stride=2, padding=1)).contiguous()


def solver_only_seconds(f, workers):
    """Time of scipy's exact solver alone on all pair affinities (precomputed), ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor
    v = f.flatten(2).transpose(1, 2).contiguous()
    n = v.shape[0]
    I, J = np.triu_indices(n, 1)
    aff = torch.bmm(v[I], v[J].transpose(1, 2)).numpy()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: linear_sum_assignment(aff[p], maximize=True), range(len(I))))
    return time.perf_counter() - t0


def reference_rsm(f):
    """Plain per-pair reference: float64 NumPy cost, scipy exact assignment, float64 aligned ip."""
    v = f.flatten(2).transpose(1, 2).contiguous().numpy()  # [N, S, C] float32
    v64 = v.astype(np.float64)
    n = v.shape[0]
    ip = np.zeros((n, n))
    perms = {}
    for i in range(n):
        ip[i, i] = np.sum(v64[i] * v64[i])
        for j in range(i + 1, n):
            cost = v64[i] @ v64[j].T
            rows, cols = linear_sum_assignment(cost, maximize=True)
            perms[i, j] = cols
            ip[i, j] = ip[j, i] = np.sum(v64[i][rows] * v64[j][cols])
    return ip, perms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ref-runs", type=int, default=1)
    ap.add_argument("--features", choices=["conv", "resnet"], default="conv")
    ap.add_argument("--float64", action="store_true", help="pass float64 features (float64 affinities)")
    args = ap.parse_args()

    from simtorch_semantic.functional.semantic import semantic_sim_parallel

    f = random_conv_features(args.n) if args.features == "conv" else photographs_features(args.n)
    if args.float64:
        f = f.double()
    n, c, h, w = f.shape
    pairs = n * (n - 1) // 2
    print(f"features {tuple(f.shape)} {f.dtype}, zero fraction {(f == 0).float().mean():.2f}; "
          f"{pairs} pairs; torch threads {torch.get_num_threads()}; workers {args.workers}")
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} usable CPUs, load average {os.getloadavg()}")

    times = []
    for r in range(args.runs):
        t0 = time.perf_counter()
        rsm = semantic_sim_parallel(f, kernel=["ip", "cosine", "rbf"], matching="exact",
                                    n_workers=args.workers, progress=False)
        times.append(time.perf_counter() - t0)
        print(f"  run {r}: {times[-1]:.3f} s = {times[-1] / pairs * 1e3:.3f} ms/pair")

    t_solver = solver_only_seconds(f, args.workers)
    print(f"  scipy solver alone ({args.workers} threads, float32-input affinities precomputed): "
          f"{t_solver / pairs * 1e3:.3f} ms/pair")
    ref_times = []
    for r in range(args.ref_runs):
        t0 = time.perf_counter()
        ref_ip, _ = reference_rsm(f)
        ref_times.append(time.perf_counter() - t0)
        print(f"  reference run {r}: {ref_times[-1]:.3f} s = "
              f"{ref_times[-1] / pairs * 1e3:.3f} ms/pair")

    rel = np.max(np.abs(rsm["ip"] - ref_ip) / np.abs(ref_ip).max())
    med, ref_med = statistics.median(times), statistics.median(ref_times)
    print(f"semantic_sim_parallel: median {med / pairs * 1e3:.3f} ms/pair "
          f"(runs {', '.join(f'{t / pairs * 1e3:.3f}' for t in times)})")
    print(f"per-pair reference:    median {ref_med / pairs * 1e3:.3f} ms/pair")
    print(f"speed-up {ref_med / med:.2f}x; max |ip - ref| / max|ref| = {rel:.2e} "
          f"(max abs {np.max(np.abs(rsm['ip'] - ref_ip)):.3e})")


if __name__ == "__main__":
    main()

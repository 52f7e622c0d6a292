"""Speed of the exact semantic RSM against a plain per-pair NumPy + scipy reference.

Workload (issue 3): N = 64 samples, S = 196 positions (14 x 14), C = 256 channels, ReLU features,
symmetric N x N RSM = N(N-1)/2 = 2016 pairs. Two feature sets (``--features``):

``conv``    two random 3x3 convolutions with ReLU (He scale, stride 2 each) on 56 x 56 Gaussian
            noise images; the exact solver's cost on these is what the issue's figures describe
            (scipy about 1-2 ms per 196 x 196 problem).
``resnet``  ``layer3`` of a randomly initialised torchvision ResNet-18 (fixed seed, no downloaded
            weights) on 224 x 224 crops of scikit-image's bundled photographs. Random-init
            ResNet maps are close to rank one (every position points the same way), which makes the
            assignment problems much harder for scipy (tens of ms each).

Measured in one process, per pair:

- ``semantic_sim_parallel(x, kernel=["ip", "cosine", "rbf"], matching="exact", n_workers=W)``:
  median wall time of ``--runs`` runs, end to end (validation, bmm affinities, threaded
  solver, float64 similarities, all three kernels);
- the solver alone: scipy's ``linear_sum_assignment`` on the precomputed (double-centred, as
  the pipeline hands them over) affinities in ``W`` threads: the floor for the pipeline;
- the plain reference: for every pair ``cost = V_i @ V_j.T`` (float64 NumPy),
  ``linear_sum_assignment(cost, maximize=True)``, the aligned inner product in float64; one pair
  at a time in one thread.

Then the max relative difference of the ``ip`` RSM to the reference (relative to max |ref|).

Run:  python3 benchmarks/bench_semantic.py [--features conv|resnet] [--runs 5] [--workers 2]
      [--float64]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def random_conv_features(n, seed=0):
    """ReLU features ``[n, 256, 14, 14]`` float32 of two random stride-2 convolutions."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, 3, 56, 56, generator=g)
    w1 = torch.randn(64, 3, 3, 3, generator=g) * (2.0 / 27) ** 0.5
    w2 = torch.randn(256, 64, 3, 3, generator=g) * (2.0 / 576) ** 0.5
    h = torch.relu(torch.nn.functional.conv2d(img, w1, stride=2, padding=1))
    return torch.relu(torch.nn.functional.conv2d(h, w2, stride=2, padding=1)).contiguous()


def photographs_features(n, seed=0):
    """ReLU features ``[n, 256, 14, 14]`` float32: random-init ResNet-18 layer3 on photo crops."""
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
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (x - mean) / std
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None).eval()
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                net.layer1, net.layer2, net.layer3)
    with torch.no_grad():
        f = trunk(x)
    return f.contiguous()  # the ReLU output of layer3's last block


def solver_only_seconds(f, workers):
    """Wall time of scipy's exact solver alone on every pair's (double-centred) affinity."""
    v = f.flatten(2).transpose(1, 2).contiguous()
    n = v.shape[0]
    I, J = np.triu_indices(n, 1)
    aff = torch.bmm(v[I], v[J].transpose(1, 2))
    aff = aff - aff.mean(dim=2, keepdim=True)  # the double-centred matrices the pipeline solves
    aff = (aff - aff.mean(dim=1, keepdim=True)).numpy()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: linear_sum_assignment(aff[p], maximize=True), range(len(I))))
    return time.perf_counter() - t0


def reference_rsm(f):
    """Plain per-pair reference: float64 NumPy cost, scipy exact assignment, float64 aligned ip."""
    v64 = f.flatten(2).transpose(1, 2).double().numpy()  # [N, S, C]
    n = v64.shape[0]
    ip = np.zeros((n, n))
    for i in range(n):
        ip[i, i] = np.sum(v64[i] * v64[i])
        for j in range(i + 1, n):
            cost = v64[i] @ v64[j].T
            rows, cols = linear_sum_assignment(cost, maximize=True)
            ip[i, j] = ip[j, i] = np.sum(v64[i][rows] * v64[j][cols])
    return ip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--features", choices=["conv", "resnet"], default="conv")
    ap.add_argument("--float64", action="store_true",
                    help="pass float64 features (float64 affinities for the solver)")
    args = ap.parse_args()

    from simtorch_semantic.functional.semantic import semantic_sim_parallel

    f = random_conv_features(args.n) if args.features == "conv" else photographs_features(args.n)
    if args.float64:
        f = f.double()
    n = f.shape[0]
    pairs = n * (n - 1) // 2
    print(f"features {args.features} {tuple(f.shape)} {f.dtype}, zero fraction "
          f"{float((f == 0).float().mean()):.2f}; {pairs} pairs; torch threads "
          f"{torch.get_num_threads()}; solver threads {args.workers}")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}")

    ms = lambda t: t / pairs * 1e3  # noqa: E731
    times, cpus = [], []
    for r in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        rsm = semantic_sim_parallel(f, kernel=["ip", "cosine", "rbf"], matching="exact",
                                    n_workers=args.workers, progress=False)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        print(f"  run {r}: {ms(times[-1]):.3f} ms/pair wall, {ms(cpus[-1]):.3f} CPU-ms/pair")
    c0 = time.process_time()
    t_solver = solver_only_seconds(f, args.workers)
    c_solver = time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    ref_ip = reference_rsm(f)
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0

    med = statistics.median(times)
    rel = float(np.max(np.abs(rsm["ip"] - ref_ip)) / np.max(np.abs(ref_ip)))
    print(f"semantic_sim_parallel : median {ms(med):.3f} ms/pair "
          f"(runs {', '.join(f'{ms(t):.3f}' for t in times)})")
    print(f"scipy solver alone    : {ms(t_solver):.3f} ms/pair ({args.workers} threads)")
    print(f"per-pair reference    : {ms(t_ref):.3f} ms/pair (1 thread)")
    cmed = statistics.median(cpus)
    print(f"CPU time per pair (process, all threads): pipeline {ms(cmed):.3f}, solver alone "
          f"{ms(c_solver):.3f}, reference {ms(c_ref):.3f} CPU-ms; pipeline CPU / {args.workers} "
          f"= {ms(cmed) / args.workers:.3f} ms/pair (wall on {args.workers} dedicated cores)")
    print(f"speed-up vs reference : {t_ref / med:.2f}x; pipeline / solver-alone "
          f"{med / t_solver:.2f}; max |ip - ref| / max |ref| = {rel:.2e}; load average at end "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| {args.features} | {str(f.dtype).replace('torch.', '')} | {ms(med):.3f} | "
          f"{ms(cmed):.3f} | {ms(t_solver):.3f} / {ms(c_solver):.3f} | {ms(t_ref):.3f} / "
          f"{ms(c_ref):.3f} | {t_ref / med:.2f}x | {rel:.1e} | {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()

"""Benchmark: building similarity-overlay maps for 6 images at 28 x 28 (target <= 2 s on CPU).

Measures, as medians over repeats:
  1. ``similarity_maps`` on random ReLU activations [6, C, 28, 28] (C = 128 and 512);
  2. float32 copy, quantisation to uint8, upper triangle and base64 (the widget's sprite);
  3. the whole ``SimilarityOverlay`` for 6 photographs through ResNet-18 (random weights,
     224 x 224 input, layer2 = 28 x 28 x 128), with and without NMF, and ``payload()``.

Usage: python3 benchmarks/bench_overlay.py [--device cpu] [--repeats 5]
Figures go to benchmarks/RESULTS.md (by hand).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import base64

import torch


CPU_TIMES = []


def _median_time(fn, repeats):
    """(median wall seconds, best wall seconds); the median process CPU seconds go to CPU_TIMES.

    On a shared machine the wall time depends on the other load; CPU seconds (summed over
    threads) measure the work itself.
    """
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES.append(statistics.median(cpu))
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from PIL import Image
    from skimage import data as skdata
    import torchvision

    from simtorch_semantic.overlay import (SimilarityOverlay, pack_upper, quantize_maps,
                                           similarity_maps)

    dev = torch.device(args.device)
    print(f"python {platform.python_version()}, torch {torch.__version__}, device {dev}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    for c in (128, 512):
        acts = torch.relu(torch.randn(6, c, 28, 28, device=dev))
        similarity_maps(acts)  # warm-up
        med, best = _median_time(lambda: similarity_maps(acts), args.repeats)
        print(f"similarity_maps [6, {c}, 28, 28] -> [6, 784, 6, 784]: median {med:.3f} s, "
              f"best {best:.3f} s, CPU {CPU_TIMES[-1]:.3f} s")
        S = similarity_maps(acts)

        m = 6 * 28 * 28

        def sprite():
            q, _, _ = quantize_maps(S.float())
            return base64.b64encode(pack_upper(q, m).tobytes())

        med, best = _median_time(sprite, args.repeats)
        print(f"  float32 copy + quantise + pack upper triangle + base64 ({S.numel() / 1e6:.1f} M "
              f"entries -> {len(sprite()) / 1e6:.1f} MB): median {med:.3f} s, best {best:.3f} s, "
              f"CPU {CPU_TIMES[-1]:.3f} s")

        def total():
            sprite_maps = similarity_maps(acts).float()
            q, _, _ = quantize_maps(sprite_maps)
            return base64.b64encode(pack_upper(q, m).tobytes())

        med, best = _median_time(total, args.repeats)
        print(f"  maps + sprite together: median {med:.3f} s, best {best:.3f} s, "
              f"CPU {CPU_TIMES[-1]:.3f} s")

    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field"]
    photos = []
    for n in names:
        arr = getattr(skdata, n)()
        if arr.ndim == 2:
            arr = arr[..., None].repeat(3, -1)
        photos.append(Image.fromarray(arr[..., :3]))
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    for nmf_k in (0, 4):
        SimilarityOverlay(model, photos, ["layer2"], device=dev, nmf_k=nmf_k)  # warm-up
        med, best = _median_time(
            lambda: SimilarityOverlay(model, photos, ["layer2"], device=dev, nmf_k=nmf_k),
            max(1, args.repeats // 2))
        print(f"SimilarityOverlay(resnet18, 6 photos 224px, layer2 28x28, nmf_k={nmf_k}): "
              f"median {med:.3f} s, best {best:.3f} s, "
              f"CPU {CPU_TIMES[-1]:.3f} s")
    ov = SimilarityOverlay(model, photos, ["layer2", "layer3"], device=dev, nmf_k=4)
    t = time.perf_counter()
    html = ov.to_html()
    print(f"payload + HTML (layer2 28x28 + layer3 14x14, 6 images): "
          f"{time.perf_counter() - t:.3f} s, {len(html) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

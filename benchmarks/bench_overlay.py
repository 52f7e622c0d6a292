"""Benchmark: similarity-overlay pages that grow linearly (issue 8).

The case of the issue: 7 photographs through ResNet-18 (random weights, 224 x 224 input),
layers layer1 (56 x 56 pooled to 28 x 28, C = 64), layer2 (28 x 28, C = 128) and layer3
(14 x 14, C = 256), i.e. 5488 + 5488 + 1372 positions. Measures, as medians over repeats
(wall seconds, and process CPU seconds, which do not depend on the other load):

  1. ``SimilarityOverlay(...)`` construction (image preparation, forward pass, no maps, no NMF);
  2. ``to_html()`` of that overlay, without the NMF view: the page size and build time;
  3. baseline in the same run: the previous design's page data, all maps precomputed, quantised
     to uint8 and sent as the upper triangle (quadratic in the positions); and the actual largest
     error of the shipped int8 features against the exact maps, over all pairs;
  4. the NMF grouping, computed when first shown (3 layers, scikit-learn, one BLAS thread), and
     the same scikit-learn call with its default threads for one layer;
  5. hover-to-paint in headless Chromium (/usr/bin/chromium, Playwright): ``performance.now()``
     around the mousemove handler (similarities of all positions of the shown layers, colour
     mapping, 21 canvases), over many hovers at random cells of the layer2 row.

Usage: PYTHONPATH=. python3 benchmarks/bench_overlay.py [--repeats 3] [--hovers 200]
Figures go to benchmarks/RESULTS.md (by hand).
"""
from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

NAMES = ["chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field",
         "immunohistochemistry"]
LAYERS = ["layer1", "layer2", "layer3"]


def timed(fn, repeats):
    """(median wall s, median CPU s, last result) over ``repeats`` calls."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu), out


def photos():
    from PIL import Image
    from skimage import data as skdata

    out = []
    for n in NAMES:
        arr = getattr(skdata, n)()
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        out.append(Image.fromarray(arr[..., :3]))
    return out


def old_design_bytes(ov) -> int:
    """Base64 size of the previous page data: every layer's quantised maps, upper triangle."""
    from simtorch_semantic.overlay import pack_upper, quantize_maps, similarity_maps

    total = 0
    for k in ov.layers:
        a = ov.activations[k]
        m = a.shape[0] * a.shape[2] * a.shape[3]
        q, _, _ = quantize_maps(similarity_maps(a).float())
        total += len(base64.b64encode(pack_upper(q, m).tobytes()))
    return total


def hover_times(html: Path, hovers: int, seed: int = 0):
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    rng = np.random.default_rng(seed)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(html.as_uri())
        page.wait_for_selector(".sto-root[data-ready=true]", timeout=60000)
        cells = page.locator('.sto-row:not(.sto-nmf-row)[data-layer="layer2"] .sto-cell')
        boxes = [cells.nth(k).bounding_box() for k in range(cells.count())]
        for _ in range(hovers):
            b = boxes[int(rng.integers(len(boxes)))]
            page.mouse.move(b["x"] + rng.uniform(0.02, 0.98) * b["width"],
                            b["y"] + rng.uniform(0.02, 0.98) * b["height"])
        times = page.evaluate("() => document.querySelector('.sto-root').stoTimes")
        version = browser.version
        browser.close()
    return np.asarray(times), version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hovers", type=int, default=200)
    ap.add_argument("--no-baseline", action="store_true", help="skip the quadratic baseline")
    args = ap.parse_args()
    import torchvision

    from simtorch_semantic.overlay import SimilarityOverlay, nmf_factors

    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f} (1 min) at the start")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    pics = photos()

    def build():
        return SimilarityOverlay(model, pics, LAYERS, max_side=28, nmf_k=4, progress=False)

    build()                                                               # warm-up
    w, c, ov = timed(build, args.repeats)
    grids = ", ".join(f"{k} {ov._grid(k)[0]}x{ov._grid(k)[1]}x{ov.activations[k].shape[1]}"
                      for k in ov.layers)
    print(f"construction, 7 photos, {grids}: median {w:.3f} s wall, {c:.3f} s CPU")

    def html():
        ov._payload_cache.clear()
        ov._encoded.clear()
        return ov.to_html(nmf=False)

    w, c, page = timed(html, args.repeats)
    size = len(page.encode("utf-8"))
    print(f"to_html(nmf=False): median {w:.3f} s wall, {c:.3f} s CPU, {size / 1e6:.2f} MB")
    for k in ov.layers:
        print(f"  {k}: error bound {ov.error_bound(k):.4f}, colour range {ov.value_range(k)}")

    if not args.no_baseline:
        from simtorch_semantic.overlay import similarity_maps

        for k in ov.layers:                  # the actual error over all pairs (quadratic)
            exact = similarity_maps(ov.activations[k]).reshape(ov.encoded(k).values.shape[0], -1)
            D = torch.from_numpy(ov.encoded(k).decoded())
            err = float((D @ D.T - exact).abs().max())
            print(f"  {k}: largest |painted value - exact cosine| over all pairs {err:.4f} "
                  f"(bound {ov.error_bound(k):.4f})")
        w, c, old = timed(lambda: old_design_bytes(ov), 1)
        print(f"baseline (previous design: all maps, uint8, upper triangle, base64): "
              f"{old / 1e6:.1f} MB of map data alone, {w:.3f} s wall, {c:.3f} s CPU; "
              f"ratio old / new page size {old / size:.1f}")

    def nmf():
        ov._nmf = None
        return ov.nmf

    w, c, _ = timed(nmf, 1)
    print(f"NMF of 3 layers when first shown (k=4, one BLAS thread): {w:.3f} s wall, {c:.3f} s CPU")
    from sklearn.decomposition import NMF

    a = ov.activations["layer2"]
    X = np.maximum(a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).double().numpy(), 0)
    w1, c1, _ = timed(lambda: NMF(4, init="nndsvda", random_state=0, tol=1e-2).fit_transform(X),
                      1)
    w2, c2, _ = timed(lambda: nmf_factors(a, k=4), 1)
    print(f"  layer2 alone: scikit-learn default threads {w1:.3f} s wall ({c1:.3f} CPU) vs "
          f"one BLAS thread {w2:.3f} s wall ({c2:.3f} CPU); ratio {w1 / w2:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = ov.save_html(Path(tmp) / "overlay.html", nmf=False)
        times, version = hover_times(path, args.hovers)
    rest = times[1:]
    print(f"hover-to-paint in headless Chromium {version}, {len(times)} hovers, 3 layers x 7 "
          f"images shown: first {times[0]:.2f} ms; then median {np.median(rest):.2f} ms, "
          f"p95 {np.percentile(rest, 95):.2f} ms, max {rest.max():.2f} ms; "
          f"share <= 16 ms {np.mean(rest <= 16):.3f}")
    print(f"load {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()

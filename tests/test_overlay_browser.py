"""Real-browser test: the standalone HTML in headless Chromium reacts to hovering as computed.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright's Python API; skipped only when
that binary or Playwright is missing.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium package)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from simtorch_semantic.overlay import (SimilarityOverlay, pack_upper, quantize_maps,  # noqa: E402
                                       unpack_upper)
from simtorch_semantic.overlay.widget import _lut  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 900, "height": 1100})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def overlay():
    photos = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee()),
              Image.fromarray(skdata.astronaut())]
    return SimilarityOverlay(tiny_net(), photos, ["1", "3"], size=48, nmf_k=3, cell=144)


def _open(page, path):
    page.goto(path.as_uri())
    page.wait_for_selector(".sto-root[data-ready=true]", timeout=30000)
    assert page.errors == []


def _hover(page, layer, image, i, j, h, w):
    """Move the mouse to the centre of cell (i, j) of image ``image`` in the row of ``layer``."""
    box = page.locator(f'.sto-row:not(.sto-nmf-row)[data-layer="{layer}"] '
                       f'.sto-cell[data-image="{image}"]').bounding_box()
    page.mouse.move(box["x"] + (j + 0.5) / w * box["width"],
                    box["y"] + (i + 0.5) / h * box["height"])
    page.wait_for_timeout(50)


def _canvas_rgb(page, layer, image):
    js = """([layer, image]) => {
      const row = document.querySelector(`.sto-row:not(.sto-nmf-row)[data-layer="${layer}"]`);
      const cv = row.querySelector(`.sto-cell[data-image="${image}"] canvas.sto-ov`);
      const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
      return {q: cv.dataset.query, opacity: cv.style.opacity, px: Array.from(d)};
    }"""
    out = page.evaluate(js, [layer, str(image)])
    px = np.asarray(out["px"], dtype=np.uint8).reshape(-1, 4)
    return out["q"], out["opacity"], px


def _markers(page, layer):
    js = """(layer) => Array.from(document.querySelectorAll(
        `.sto-row:not(.sto-nmf-row)[data-layer="${layer}"] .sto-marker`)).map(m => ({
          shown: getComputedStyle(m).display !== 'none', i: m.dataset.i, j: m.dataset.j}))"""
    return page.evaluate(js, layer)


def _expected(overlay, layer, n, i, j, cmap):
    """Colours the page must paint: LUT[quantised maps of query (n, i, j)] for each image.

    The page gets the upper triangle of the symmetric matrix, so entry (r, c) with c < r is the
    quantised S[c, r]; that is what it must show.
    """
    q, _, _ = quantize_maps(overlay.maps[layer])
    h, w = overlay._grid(layer)
    P, N = h * w, len(overlay.names)
    M = N * P
    full = unpack_upper(pack_upper(q, M), M)
    row = full[n * P + i * w + j].reshape(N, P)
    lut = np.frombuffer(_lut(cmap), dtype=np.uint8).reshape(256, 3)
    return lut[row]          # [N, P, 3]


def test_hovering_two_patches_updates_overlays_and_markers(page, overlay, tmp_path):
    path = overlay.save_html(tmp_path / "overlay.html")
    _open(page, path)
    # before any hover the overlays are blank
    _, _, px0 = _canvas_rgb(page, "1", 1)
    assert px0[:, 3].max() == 0

    shots = []
    for (n, i, j) in [(0, 5, 7), (2, 18, 3)]:
        _hover(page, "1", n, i, j, 24, 24)
        exp1 = _expected(overlay, "1", n, i, j, "viridis")
        for b in range(3):
            q, opacity, px = _canvas_rgb(page, "1", b)
            assert q == f"{n},{i},{j}"
            assert float(opacity) == pytest.approx(0.7)
            np.testing.assert_array_equal(px[:, :3], exp1[b])
            assert (px[:, 3] == 255).all()
        # synchronised layer: the same position on the 12 x 12 grid of layer "3"
        exp3 = _expected(overlay, "3", n, i // 2, j // 2, "viridis")
        q3, _, px3 = _canvas_rgb(page, "3", 1)
        assert q3 == f"{n},{i // 2},{j // 2}"
        np.testing.assert_array_equal(px3[:, :3], exp3[1])
        # the hovered patch is marked on the hovered image only, in both layers
        for layer, (mi, mj) in (("1", (i, j)), ("3", (i // 2, j // 2))):
            marks = _markers(page, layer)
            assert [m["shown"] for m in marks] == [b == n for b in range(3)]
            assert (marks[n]["i"], marks[n]["j"]) == (str(mi), str(mj))
        # self-similarity at the query decodes to 1
        self_val = page.evaluate(
            """() => document.querySelector('.sto-row[data-layer="1"]').dataset.self""")
        assert float(self_val) == pytest.approx(1.0, abs=0.01)
        shot = tmp_path / f"hover_{n}_{i}_{j}.png"
        page.locator(".sto-grid").screenshot(path=str(shot))
        shots.append(np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16))
    assert shots[0].shape == shots[1].shape
    changed = np.abs(shots[0] - shots[1]).max(axis=-1) > 8
    assert changed.mean() > 0.2                           # the overlays visibly changed
    assert page.errors == []


def test_controls_change_colours_opacity_and_layers(page, overlay, tmp_path):
    path = overlay.save_html(tmp_path / "overlay2.html")
    _open(page, path)
    _hover(page, "3", 1, 4, 9, 12, 12)
    page.select_option("select.sto-cmap", "gray")
    _, _, px = _canvas_rgb(page, "3", 0)
    np.testing.assert_array_equal(px[:, :3], _expected(overlay, "3", 1, 4, 9, "gray")[0])
    page.fill("input.sto-alpha", "0.3")
    page.dispatch_event("input.sto-alpha", "input")
    _, opacity, _ = _canvas_rgb(page, "3", 2)
    assert float(opacity) == pytest.approx(0.3)
    page.uncheck('.sto-layers input[data-layer="1"]')
    shown = page.evaluate("""() => getComputedStyle(document.querySelector(
        '.sto-row:not(.sto-nmf-row)[data-layer="1"]')).display""")
    assert shown == "none"
    assert not page.is_visible('.sto-nmf-row[data-layer="3"]')
    page.check("input.sto-nmf-toggle")
    assert page.is_visible('.sto-nmf-row[data-layer="3"]')
    # click pins the query: moving elsewhere changes nothing until the next click
    _hover(page, "3", 0, 1, 1, 12, 12)
    page.mouse.down()
    page.mouse.up()
    _hover(page, "3", 2, 8, 8, 12, 12)
    assert _canvas_rgb(page, "3", 0)[0] == "0,1,1"
    page.mouse.down()
    page.mouse.up()
    _hover(page, "3", 2, 8, 9, 12, 12)
    assert _canvas_rgb(page, "3", 0)[0] == "2,8,9"
    assert page.errors == []


def test_sensitivity_chart_follows_hover(page, tmp_path):
    photo = Image.fromarray(skdata.chelsea())
    ov = SimilarityOverlay.from_transform(tiny_net(), photo, ["3"], kind="rotation",
                                          values=[0, 45, 90, 180], size=48, nmf_k=0, cell=120)
    path = ov.save_html(tmp_path / "rot.html")
    _open(page, path)
    _hover(page, "3", 0, 2, 9, 12, 12)
    q = page.evaluate("() => document.querySelector('svg.sto-chart').dataset.query")
    assert q == f"3:{2 * 12 + 9}"
    assert page.locator("svg.sto-chart polyline").count() >= 1
    # on the 90-degree image the corresponding patch of (2, 9) is (12 - 1 - 9, 2) = (2, 2)
    marks = _markers(page, "3")
    assert marks[2]["shown"] and (marks[2]["i"], marks[2]["j"]) == ("2", "2")
    # hovering that patch of the 90-degree image maps back to the same original cell
    _hover(page, "3", 2, 2, 2, 12, 12)
    q2 = page.evaluate("() => document.querySelector('svg.sto-chart').dataset.query")
    assert q2 == q
    page.screenshot(path=str(tmp_path / "rot.png"), full_page=True)
    assert page.errors == []


def test_widget_esm_module_renders_with_an_anywidget_style_model(page, overlay, tmp_path):
    """The file anywidget loads (static/overlay.js as an ES module) renders and reacts to hover
    and to model changes sent from Python (change:cmap), with a Backbone-like model object."""
    from simtorch_semantic.overlay.widget import STATIC

    widget = overlay.show()
    js = (STATIC / "overlay.js").read_text(encoding="utf-8")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><style>"
                     + (STATIC / "overlay.css").read_text(encoding="utf-8")
                     + "</style></head><body><div id='w'></div></body></html>")
    page.goto(blank.as_uri())
    page.evaluate("""async ([js, state]) => {
      const url = URL.createObjectURL(new Blob([js], {type: 'text/javascript'}));
      const mod = await import(url);
      const values = Object.assign({}, state), handlers = {};
      window.__model = {
        get: (k) => values[k],
        set: (k, v) => { values[k] = v; (handlers['change:' + k] || []).forEach((f) => f()); },
        on: (e, f) => { (handlers[e] = handlers[e] || []).push(f); },
        off: () => {}, save_changes: () => { window.__saved = (window.__saved || 0) + 1; },
      };
      await mod.default.render({model: window.__model, el: document.getElementById('w')});
    }""", [js, {"data": widget.data, "alpha": widget.alpha, "cmap": widget.cmap,
                "layers_on": list(widget.layers_on), "show_nmf": widget.show_nmf}])
    page.wait_for_selector(".sto-root[data-ready=true]")
    _hover(page, "1", 1, 20, 4, 24, 24)
    q, _, px = _canvas_rgb(page, "1", 0)
    assert q == "1,20,4"
    np.testing.assert_array_equal(px[:, :3], _expected(overlay, "1", 1, 20, 4, "viridis")[0])
    page.evaluate("() => window.__model.set('cmap', 'magma')")       # as if sent from Python
    _, _, px = _canvas_rgb(page, "1", 0)
    np.testing.assert_array_equal(px[:, :3], _expected(overlay, "1", 1, 20, 4, "magma")[0])
    assert page.evaluate("() => document.querySelector('select.sto-cmap').value") == "magma"
    page.fill("input.sto-alpha", "0.5")
    page.dispatch_event("input.sto-alpha", "input")
    assert page.evaluate("() => window.__model.get('alpha')") == pytest.approx(0.5)
    assert page.evaluate("() => window.__saved") >= 1                # synced back to Python
    assert page.errors == []

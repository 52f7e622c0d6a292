"""The overlay widget inside a real JupyterLab: open notebooks/overlay.ipynb, run it, hover.

Starts ``jupyter lab`` (headless, no browser, a random token, a free localhost port, its own
config/runtime/settings directories) with this checkout on the kernel's PYTHONPATH, drives
Debian's Chromium (/usr/bin/chromium) through Playwright, runs every cell, hovers the overlay
widget and checks that its canvases change, ticks "NMF groups" (the kernel computes the factors
then and sends them back), and shuts the server down through its REST API. Skipped only when
Chromium, Playwright or JupyterLab is missing.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium package)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (the 'test' extra)")
pytest.importorskip("anywidget", reason="anywidget is not installed (the 'overlay' extra)")

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url, method="GET", timeout=5.0):
    req = urllib.request.Request(url, method=method)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=timeout) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running JupyterLab serving a copy of the overlay notebook: (base url, token)."""
    work = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / "overlay.ipynb", work / "overlay.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                     if env.get("PYTHONPATH") else [])),
        "JUPYTER_CONFIG_DIR": str(work / ".config"),
        "JUPYTER_RUNTIME_DIR": str(work / ".runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(work / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / ".workspaces"),
        "TORCH_HOME": str(work / ".torch"),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = "http://127.0.0.1:9"                 # the notebook must not need a network
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
           "--ServerApp.allow_remote_access=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")                      # CI containers run as root
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError("jupyter lab exited early:\n"
                                   + (work / "server.log").read_text(errors="replace")[-3000:])
            try:
                if _api(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter lab did not answer within 120 s")
            time.sleep(0.5)
        yield base, token, work
    finally:
        try:                                             # stops the kernels and the server
            _api(f"{base}/api/shutdown?token={token}", method="POST")
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


OV = '.sto-root[data-ready="true"]'


def _canvas(page, widget, layer, image):
    """RGBA pixels of one overlay canvas of the ``widget``-th overlay on the page."""
    js = """([w, layer, image]) => {
      const root = document.querySelectorAll('.sto-root[data-ready="true"]')[w];
      const cv = root.querySelector(
        `.sto-row:not(.sto-nmf-row)[data-layer="${layer}"] .sto-cell[data-image="${image}"] canvas.sto-ov`);
      return Array.from(cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data);
    }"""
    return np.asarray(page.evaluate(js, [widget, layer, str(image)]), dtype=np.int16).reshape(-1, 4)


def _hover(page, layer, image, fy, fx):
    cell = page.locator(OV).first.locator(
        f'.sto-row:not(.sto-nmf-row)[data-layer="{layer}"] .sto-cell[data-image="{image}"]')
    cell.scroll_into_view_if_needed()
    box = cell.bounding_box()
    page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_timeout(100)


def test_overlay_notebook_runs_and_reacts_to_hover_in_jupyterlab(lab, tmp_path):
    base, token, work = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/overlay.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                                   timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            # done when the last cell prints the HTML file's path; stop early on a traceback
            state = page.wait_for_function(
                """() => {
                  const outs = Array.from(document.querySelectorAll('.jp-OutputArea-output'));
                  if (outs.some((o) => /Traceback|Error:/.test(o.innerText))) return 'error';
                  const cells = document.querySelectorAll('.jp-Cell');
                  const last = cells[cells.length - 1];
                  return last && last.innerText.includes('overlay.html') ? 'done' : false;
                }""", timeout=420_000, polling=1000).json_value()
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            assert state == "done", "\n".join(outputs)[-4000:]
            assert (work / "overlay.html").stat().st_size < 4_000_000

            page.wait_for_selector(OV, timeout=60_000)
            assert page.locator(OV).count() >= 2          # the overlay and the rotation widget
            before = _canvas(page, 0, "layer2", 1)
            assert before[:, 3].max() == 0                 # nothing painted before a hover
            _hover(page, "layer2", 0, 0.35, 0.6)
            first = _canvas(page, 0, "layer2", 1)
            assert (first[:, 3] == 255).all() and first[:, :3].std() > 0
            _hover(page, "layer2", 2, 0.8, 0.2)
            second = _canvas(page, 0, "layer2", 1)
            assert np.abs(second[:, :3] - first[:, :3]).max() > 0   # the maps changed
            other = _canvas(page, 0, "layer3", 3)                    # synchronised rows
            assert (other[:, 3] == 255).all()
            bar = page.locator(OV).first.locator('.sto-row[data-layer="layer2"] .sto-scale')
            assert bar.locator(".sto-scale-hi").inner_text() == "1.00"

            # NMF groups: the kernel sends the factor maps when the box is first ticked
            root = page.locator(OV).first
            root.locator("input.sto-nmf-toggle").check()
            nmf_row = root.locator('.sto-nmf-row[data-layer="layer2"]')
            nmf_row.wait_for(state="visible", timeout=120_000)
            page.wait_for_function(
                """() => document.querySelector('.sto-root[data-ready="true"]').dataset.nmf
                        === 'loaded'""", timeout=120_000)
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
            assert errors == []
        finally:
            browser.close()

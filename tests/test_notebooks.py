"""The notebooks execute top to bottom offline in a fresh kernel (nbclient) and show their output."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
pytest.importorskip("ipykernel", reason="ipykernel is not installed")

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(name, tmp_path, monkeypatch):
    """Execute ``notebooks/<name>`` with ``tmp_path`` as working directory; return its outputs."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    # the kernel imports this checkout; proxies that refuse every connection keep it offline
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")        # small models: one thread is fastest here
    monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel shows figures inline
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(nb, tmp_path / f"executed_{name}")     # with the widgets' saved state
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs


def test_quickstart_notebook_runs_offline(tmp_path, monkeypatch):
    outputs = run_notebook("quickstart.ipynb", tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3                                  # samples, heatmap, CKA vs dCKA
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "exit status 0" in text
    assert "r18_vs_r34.npz" in text


def test_overlay_notebook_runs_offline(tmp_path, monkeypatch):
    outputs = run_notebook("overlay.ipynb", tmp_path, monkeypatch)
    widgets = [o for o in outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) >= 2                       # the overlay and the rotation widget
    assert 100_000 < (tmp_path / "overlay.html").stat().st_size < 4_000_000
    # the saved widget state grows linearly with the patches (27 MB when it held every map)
    assert (tmp_path / "executed_overlay.ipynb").stat().st_size < 6_000_000
    assert (tmp_path / "overlay_query.png").exists()


def test_transformers_notebook_runs_offline(tmp_path, monkeypatch):
    outputs = run_notebook("transformers.ipynb", tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4                  # ViT vs ResNet, BERT vs GPT-2, tokens, cross-modal
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    diffs = [float(line.rsplit("=", 1)[1]) for line in text.splitlines()
             if "more pad tokens =" in line]
    assert len(diffs) == 6 and max(diffs) < 1e-6          # padding never changes a value
    assert "encoder.layers.encoder_layer_3" in text and "'h.3'" in text


def test_semantic_notebook_runs_offline(tmp_path, monkeypatch):
    outputs = run_notebook("semantic.ipynb", tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2                                  # the shifted images, the two heatmaps
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "retrieval" in text and "diagonal, semantic" in text
    assert "of exact" in text                                # the solver comparison ran
    assert "semantic CKA plan" in text                       # measure.plan
    assert "PlanTooLarge: SemanticCKA" in text               # the run refused before any matching
    assert "ValueError: exact matching of" in text           # the cost check refused the plan


def test_stored_activations_notebook_runs_offline(tmp_path, monkeypatch):
    outputs = run_notebook("stored_activations.ipynb", tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3                                  # RDMs, RDM comparison, RSA matrix
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    # the three RSA <-> CKA identities hold to rounding: the printed differences are tiny
    rows = [line.split() for line in text.splitlines() if line.split()[:2][-1:] == ["RDMs"]]
    assert len(rows) == 3, text
    assert all(float(row[-1]) < 1e-9 for row in rows), rows


def test_catalogue_and_inference_notebook_runs_offline(tmp_path, monkeypatch):
    outputs = run_notebook("catalogue_and_inference.ipynb", tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "measures:" in text and "invariant to:" in text
    rows = [line for line in text.splitlines() if "(identical inputs:" in line]
    assert len(rows) == 7, text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images                                            # heatmap with hatching, layer curve
    # a real comparison: every cell significant; no correspondence: none
    assert "measure: procrustes_angular | higher_is_similar = False" in text
    assert "significant cells (family-wise 5%): 16 of 16" in text
    assert "significant cells (family-wise 5%): 0" in text

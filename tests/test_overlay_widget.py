"""SimilarityOverlay: capture, maps, payload, static PNG, standalone HTML, NMF, errors."""
import base64
import json
import re

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from simtorch_semantic.model import SimilarityModel
from simtorch_semantic.overlay import (NMFResult, SimilarityOverlay, nmf_factors,
                                       plot_sensitivity, similarity_maps, unpack_upper,
                                       transform_sensitivity)


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))


@pytest.fixture(scope="module")
def photos():
    return [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee()),
            Image.fromarray(skdata.astronaut())]


@pytest.fixture(scope="module")
def overlay(photos):
    return SimilarityOverlay(tiny_net(), photos, ["1", "3"], size=48, nmf_k=3,
                             names=["cat", "coffee", "astronaut"])


def test_maps_equal_similarity_of_captured_activations(overlay, photos):
    from simtorch_semantic.overlay._images import prepare_images

    x, _, _ = prepare_images(photos, None, 48)
    feats = SimilarityModel(tiny_net(), layers_to_include=["1", "3"]).capture(x)
    assert overlay.layers == ["1", "3"]
    assert overlay._grid("1") == (24, 24) and overlay._grid("3") == (12, 12)
    for layer in ("1", "3"):
        ref = similarity_maps(feats[layer])
        torch.testing.assert_close(overlay.maps[layer].double(), ref, atol=1e-6, rtol=0)


def test_query_maps_self_similarity_and_mapping(overlay):
    m = overlay.query_maps((1, 10, 6), layer="1")
    assert m.shape == (3, 24, 24)
    assert float(m[1, 10, 6]) == pytest.approx(1.0, abs=1e-6)
    # the same query seen in layer 3 is cell (5, 3)
    m3 = overlay.query_maps((1, 10, 6), layer="3")
    assert float(m3[1, 5, 3]) == pytest.approx(1.0, abs=1e-6)


def _reference_cosine(acts):
    """Exact cosine maps [M, M] of a layer output [N, C, H, W], in plain NumPy float64."""
    a = acts.double().numpy()
    Z = a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
    return _unit(Z) @ _unit(Z).T


def _unit(Z):
    """Rows divided by their norms; zero rows stay zero (cosine 0 to everything)."""
    Z = np.asarray(Z, dtype=np.float64)
    n = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(n > 0, n, 1.0)


def test_payload_ships_int8_features_that_reproduce_the_maps(overlay):
    pl = overlay.payload()
    assert [L["name"] for L in pl["layers"]] == ["1", "3"]
    assert [im["name"] for im in pl["images"]] == ["cat", "coffee", "astronaut"]
    assert pl["nmf"] is None and pl["nmf_k"] == 3                # NMF is not computed for it
    for L in pl["layers"]:
        acts = overlay.activations[L["name"]]
        n, c, h, w = acts.shape
        M = n * h * w
        assert L["mode"] == "features" and L["precision"] == "int8" and L["d"] == c
        q = np.frombuffer(base64.b64decode(L["feat"]), dtype=np.int8).reshape(M, c)
        # one byte per channel per position: linear in the number of positions
        assert len(base64.b64decode(L["feat"])) == M * c
        # the codes are round(127 x / max|x|) of each unit vector (reference in the test)
        Z = acts.double().numpy().transpose(0, 2, 3, 1).reshape(M, c)
        U = _unit(Z)
        top = np.abs(U).max(axis=1, keepdims=True)
        expect = np.rint(127 * U / np.where(top > 0, top, 1.0))
        assert np.abs(q.astype(int) - expect).max() <= 1           # float32 rounding ties
        # what the browser computes from them agrees with the exact maps within the bound
        D = _unit(q)
        err = np.abs(D @ D.T - _reference_cosine(acts)).max()
        assert err <= L["err"] and L["err"] == pytest.approx(overlay.error_bound(L["name"]))
        assert L["err"] < 0.05
        assert (L["lo"], L["hi"]) == (0.0, 1.0)                    # ReLU output: cosine >= 0
        assert "sprite" not in L and "norms" not in L
    for lut in pl["colormaps"].values():
        assert len(base64.b64decode(lut)) == 768
    assert pl["images"][0]["src"].startswith("data:image/jpeg;base64,")


def test_callable_similarity_ships_precomputed_maps(photos):
    ov = SimilarityOverlay(tiny_net(), photos[:2], ["3"], size=32, nmf_k=0, progress=False,
                           similarity=lambda X, Y: -torch.cdist(X, Y))
    L = ov.payload()["layers"][0]
    M = 2 * 8 * 8
    assert L["mode"] == "sprite"
    full = unpack_upper(np.frombuffer(base64.b64decode(L["sprite"]), dtype=np.uint8), M)
    dec = L["slo"] + full * (L["shi"] - L["slo"]) / 255
    ref = -torch.cdist(*(2 * [ov.activations["3"].double().permute(0, 2, 3, 1).reshape(M, -1)]))
    assert np.abs(dec - ref.numpy()).max() <= L["err"] + 1e-6
    assert (L["lo"], L["hi"]) == pytest.approx((float(ref.min()), 0.0), abs=1e-5)


def test_html_size_grows_linearly_with_positions(photos):
    """Twice the images, twice the shipped data (it was four times with all maps precomputed)."""
    sizes = []
    for k in (1, 2):
        ov = SimilarityOverlay(tiny_net(), [photos[0]] * (2 * k), ["1", "3"], size=64, nmf_k=0,
                               progress=False)
        sizes.append(sum(len(L["feat"]) for L in ov.payload()["layers"]))
    assert sizes[1] / sizes[0] == pytest.approx(2.0, rel=0.01)


def test_ip_and_rbf_payloads_carry_norms_and_bounds(photos):
    for sim in ("ip", "rbf"):
        ov = SimilarityOverlay(tiny_net(), photos[:2], ["3"], size=32, nmf_k=0, progress=False,
                               similarity=sim)
        L = ov.payload()["layers"][0]
        acts = ov.activations["3"].double().numpy()
        Z = acts.transpose(0, 2, 3, 1).reshape(-1, acts.shape[1])
        norms = np.frombuffer(base64.b64decode(L["norms"]), dtype="<f4")
        np.testing.assert_allclose(norms, np.linalg.norm(Z, axis=1), rtol=1e-6)
        q = np.frombuffer(base64.b64decode(L["feat"]), dtype=np.int8).reshape(Z.shape)
        D = _unit(q)
        ip = (D @ D.T) * np.outer(norms, norms)
        if sim == "ip":
            ref, got = Z @ Z.T, ip
            assert (L["lo"], L["hi"]) == pytest.approx((0.0, float((norms ** 2).max())))
        else:
            sq = (Z * Z).sum(1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0)
            np.fill_diagonal(d2, 0.0)                     # exact zero at a position itself
            sigma2 = np.median(d2[d2 > 0])
            assert L["sigma2"] == pytest.approx(sigma2)
            ref = np.exp(-d2 / (2 * sigma2))
            got = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * ip, 0) / (2 * sigma2))
        assert np.abs(got - ref).max() <= L["err"]
        # query_maps is exact
        m = ov.query_maps((1, 3, 4), layer="3").double().numpy().ravel()
        np.testing.assert_allclose(m, ref[64 + 3 * 8 + 4], rtol=1e-5, atol=1e-5)


def test_vrange_options_and_float16(photos):
    ov = SimilarityOverlay(tiny_net(), photos[:2], ["3"], size=32, nmf_k=0, progress=False,
                           vrange=(0.2, 0.9), precision="float16")
    L = ov.payload()["layers"][0]
    assert (L["lo"], L["hi"]) == (0.2, 0.9) and L["precision"] == "float16"
    assert ov.error_bound("3") < 2e-3                               # 11-bit mantissa
    ovq = SimilarityOverlay(tiny_net(), photos[:2], ["3"], size=32, nmf_k=0, progress=False,
                            vrange="query")
    pl = ovq.payload()
    assert pl["vrange"] == "query" and "lo" not in pl["layers"][0]
    m = ovq.query_maps((0, 2, 2), layer="3")
    assert ovq.value_range("3", query=(0, 2, 2)) == pytest.approx((float(m.min()),
                                                                  float(m.max())))
    with pytest.raises(ValueError, match="pass query="):
        ovq.value_range("3")


def test_construction_is_lazy_about_maps_and_nmf(photos, monkeypatch):
    import simtorch_semantic.overlay.widget as widget_mod

    calls = []

    def counting_nmf(*args, **kwargs):
        calls.append(kwargs.get("layer"))
        return nmf_factors(*args, **kwargs)

    def no_maps(*args, **kwargs):
        raise AssertionError("all-pairs maps must not be computed for the page")

    monkeypatch.setattr(widget_mod, "nmf_factors", counting_nmf)
    monkeypatch.setattr(widget_mod, "similarity_maps", no_maps)
    ov = SimilarityOverlay(tiny_net(), photos, ["1", "3"], size=48, nmf_k=3, progress=False)
    ov.to_html(nmf=False)
    w = ov.show()
    ov.save_png("/dev/null", query=(0, 3, 3))
    assert calls == [] and w.nmf == ""
    w.show_nmf = True                                  # as when the box is ticked in the page
    assert calls == ["1", "3"]
    nmf = json.loads(w.nmf)
    assert nmf["k"] == 3 and set(nmf["layers"]) == {"1", "3"}
    ov.to_html()                                       # included, not recomputed
    assert calls == ["1", "3"]
    assert ov.nmf["3"].weights.shape == (3, 3, 12, 12)
    monkeypatch.setattr(widget_mod, "similarity_maps", similarity_maps)
    assert ov.maps["3"].shape == (3, 144, 3, 144)      # all pairs on demand


def test_missing_scikit_learn_names_the_extra(photos, monkeypatch):
    import sys

    from simtorch_semantic.overlay.grouping import require_sklearn

    for mod in ("sklearn", "sklearn.decomposition"):
        monkeypatch.setitem(sys.modules, mod, None)           # "import sklearn" now fails
    with pytest.raises(ImportError, match=r'pip install "simtorch-semantic\[overlay\]"'):
        SimilarityOverlay(tiny_net(), photos[:1], ["3"], size=32, nmf_k=2)
    with pytest.raises(ImportError, match="nmf_k=0"):
        nmf_factors(torch.rand(1, 4, 3, 3), k=2)
    with pytest.raises(ImportError, match=r"simtorch-semantic\[overlay\]"):
        require_sklearn()
    ov = SimilarityOverlay(tiny_net(), photos[:1], ["3"], size=32, nmf_k=0, progress=False)
    html = ov.to_html()
    data = json.loads(html.split('id="sto-data">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert ov.nmf == {} and data["nmf_k"] == 0 and data["nmf"] is None


def test_sensitivity_plot_x_axis_covers_every_zoom(photos):
    sens = transform_sensitivity(tiny_net(), photos[0], ["3"], kind="scale",
                                 values=[0.5, 0.7, 1.0, 1.4, 2.0], size=32)
    ax = plot_sensitivity(sens, (0, 0))               # a corner: NaN for every zoom above 1
    y = ax.lines[0].get_ydata()
    assert np.isnan(y[-1]) and not np.isnan(y[0])
    lo, hi = ax.get_xlim()
    assert lo <= 0.5 and hi >= 2.0
    assert [float(t) for t in ax.get_xticks()] == pytest.approx([0.5, 0.7, 1.0, 1.4, 2.0])
    ax2 = plot_sensitivity(sens, (3, 3))
    assert ax2.get_xlim()[1] >= 2.0


def test_save_png_produces_an_image(overlay, tmp_path):
    before = dict(matplotlib.rcParams)
    path = overlay.save_png(tmp_path / "q.png", query=(0, 12, 8))
    assert dict(matplotlib.rcParams) == before
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 10


def test_save_html_is_self_contained(overlay, tmp_path):
    path = overlay.save_html(tmp_path / "o.html")
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", html, re.I)
    module_js = html.split('<script type="module">')[1]
    assert not re.search(r"^\s*import[\s(]", module_js, re.M)      # no module imports at all
    assert "<script src" not in html.lower() and "<link" not in html.lower()
    assert 'id="sto-data"' in html and "function render" in html
    payload = json.loads(html.split('id="sto-data">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert len(payload["layers"]) == 2


def test_show_returns_anywidget(overlay):
    import anywidget

    w = overlay.show()
    assert isinstance(w, anywidget.AnyWidget)
    assert json.loads(w.data)["layers"][0]["name"] == "1"
    assert w.alpha == pytest.approx(0.7) and w.cmap == "viridis" and w.layers_on == ["1", "3"]
    assert w.nmf == "" or json.loads(w.nmf)["k"] == 3


def test_image_inputs_paths_tensors_arrays(tmp_path, photos):
    p = tmp_path / "cat.png"
    photos[0].save(p)
    t = torch.from_numpy(skdata.coffee()).permute(2, 0, 1).float() / 255
    ov = SimilarityOverlay(tiny_net(), [str(p), t, skdata.astronaut()], "3", size=32, nmf_k=0)
    assert ov.names[0] == "cat" and len(ov.names) == 3 and ov.nmf == {}
    batch = torch.rand(2, 3, 40, 40)
    ov2 = SimilarityOverlay(tiny_net(), batch, ["3"], size=32, nmf_k=0)
    assert ov2.maps["3"].shape == (2, 64, 2, 64)
    # a custom transform that keeps tensors as they are
    ov3 = SimilarityOverlay(tiny_net(), batch, ["3"], transform=lambda z: z, nmf_k=0)
    assert ov3._grid("3") == (10, 10)
    # non-square pictures keep their aspect ratio in the front end
    wide = SimilarityOverlay(tiny_net(), torch.rand(2, 3, 16, 32), ["3"], transform=lambda z: z,
                             nmf_k=0, progress=False)
    assert wide._grid("3") == (4, 8) and wide.payload()["aspect"] == pytest.approx(0.5)


def test_max_side_pools_large_layers(photos):
    ov = SimilarityOverlay(tiny_net(), photos[:2], ["1"], size=64, max_side=8, nmf_k=0)
    assert ov._grid("1") == (8, 8)


def test_nmf_factors_shapes_and_reconstruction(overlay):
    res = overlay.nmf["3"]
    assert isinstance(res, NMFResult)
    a = overlay.activations["3"].double()
    assert res.weights.shape == (3, 3, 12, 12) and res.components.shape == (3, 16)
    assert (res.weights >= 0).all() and (res.components >= 0).all()
    X = a.permute(0, 2, 3, 1).reshape(-1, 16).numpy()
    W = res.weights.transpose(0, 2, 3, 1).reshape(-1, 3)
    rel = np.linalg.norm(X - W @ res.components) / np.linalg.norm(X)
    assert rel < 0.8
    rgb = res.rgb()
    assert rgb.shape == (3, 12, 12, 3) and rgb.min() >= 0 and rgb.max() <= 1
    fig = overlay.plot_nmf()
    assert len(fig.axes) == 6


def test_nmf_clips_negative_activations_with_warning():
    a = torch.randn(2, 4, 3, 3)
    with pytest.warns(UserWarning, match="negative activations"):
        res = nmf_factors(a, k=2)
    assert res.weights.shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match="positive int"):
        nmf_factors(a.abs(), k=0)
    with pytest.raises(ValueError, match="more than min"):
        nmf_factors(a.abs(), k=10)


def test_from_transform_and_sensitivity(photos):
    ov = SimilarityOverlay.from_transform(tiny_net(), photos[0], ["1", "3"], kind="rotation",
                                          values=[0, 45, 90], size=32, nmf_k=0)
    assert ov.names == ["0\u00b0", "45\u00b0", "90\u00b0"]
    s = ov.sensitivity["3"]
    assert s.curves.shape == (3, 64)
    np.testing.assert_allclose(s.curves[0], 1.0, atol=1e-5)       # 0 degrees = identity
    assert np.isnan(s.curve(0, 0)[1])                              # corner leaves at 45
    pl = ov.payload()
    assert pl["sensitivity"]["kind"] == "rotation"
    assert pl["sensitivity"]["layers"]["3"]["curves"][1][0] is None
    ax = ov.plot_sensitivity((3, 3))
    assert len(ax.lines) == 2
    # the functional entry point gives the same curves
    sens = transform_sensitivity(tiny_net(), photos[0], ["3"], kind="rotation",
                                 values=[0, 45, 90], size=32)
    np.testing.assert_allclose(sens["3"].curves, s.curves, atol=1e-5, equal_nan=True)
    ax2 = plot_sensitivity(sens["3"], (0, 0))
    y = ax2.lines[0].get_ydata()
    assert np.isnan(y[1]) and not np.isnan(y[0])


def test_scale_sweep_has_gaps(photos):
    sens = transform_sensitivity(tiny_net(), photos[1], "3", kind="scale", values=[1.0, 2.0],
                                 size=32)
    c = sens["3"].curve(0, 0)
    assert c[0] == pytest.approx(1.0, abs=1e-5) and np.isnan(c[1])


def test_similarity_options(photos):
    ov = SimilarityOverlay(tiny_net(), photos[:2], ["3"], size=32, nmf_k=0, similarity="ip")
    a = ov.activations["3"].double()
    Z = a.permute(0, 2, 3, 1).reshape(-1, 16)
    torch.testing.assert_close(ov.maps["3"].double().reshape(Z.shape[0], -1), Z @ Z.T,
                               rtol=1e-5, atol=1e-5)
    ov2 = SimilarityOverlay(tiny_net(), photos[:2], ["3"], size=32, nmf_k=0,
                            similarity=lambda X, Y: -torch.cdist(X, Y))
    assert float(ov2.maps["3"].max()) == pytest.approx(0.0, abs=1e-6)


def test_accepts_similarity_model(photos):
    sm = SimilarityModel(tiny_net(), "tiny", layers_to_include=["3"])
    ov = SimilarityOverlay(sm, photos[:1], None, size=32, nmf_k=0)
    assert ov.layers == ["3"] and ov.payload()["model"] == "tiny"


def test_errors(photos, overlay):
    net = tiny_net()
    with pytest.raises(ValueError, match=r"spatial output \[N, C, H, W\]"):
        SimilarityOverlay(net, photos[:1], ["6"], size=32)
    with pytest.raises(ValueError, match="not found"):
        SimilarityOverlay(net, photos[:1], ["conv9"], size=32)
    with pytest.raises(ValueError, match="layers is None"):
        SimilarityOverlay(net, photos[:1], None, size=32)
    with pytest.raises(ValueError, match="similarity must be"):
        SimilarityOverlay(net, photos[:1], ["3"], similarity="l2")
    with pytest.raises(ValueError, match="alpha must be in"):
        SimilarityOverlay(net, photos[:1], ["3"], alpha=2)
    with pytest.raises(ValueError, match="not a matplotlib colour map"):
        SimilarityOverlay(net, photos[:1], ["3"], cmap="nocmap")
    with pytest.raises(ValueError, match=r"expects RGB in \[0, 1\]"):
        SimilarityOverlay(net, torch.randn(3, 16, 16) * 5, ["3"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SimilarityOverlay(net, ["/nonexistent/cat.png"], ["3"])
    with pytest.raises(TypeError, match="PIL images, file paths"):
        SimilarityOverlay(net, [42], ["3"])
    with pytest.raises(ValueError, match="same shape"):
        SimilarityOverlay(net, [torch.rand(3, 8, 8), torch.rand(3, 9, 9)], ["3"],
                          transform=lambda z: z)
    with pytest.raises(ValueError, match="names has 1 entries"):
        SimilarityOverlay(net, photos[:2], ["3"], size=32, names=["a"])
    with pytest.raises(ValueError, match="outside the 24 x 24 grid"):
        overlay.save_png("/tmp/never.png", query=(0, 24, 0))
    with pytest.raises(ValueError, match="query image 5 out of range"):
        overlay.query_maps((5, 0, 0))
    with pytest.raises(ValueError, match="not in this overlay"):
        overlay.query_maps((0, 0, 0), layer="7")
    with pytest.raises(ValueError, match="no sensitivity data"):
        overlay.plot_sensitivity((0, 0))
    with pytest.raises(TypeError, match="unexpected arguments"):
        SimilarityOverlay.from_transform(net, photos[0], ["3"], values=[0], bogus=1)
    with pytest.raises(ValueError, match="vrange must be 'auto', 'query' or a pair"):
        SimilarityOverlay(net, photos[:1], ["3"], vrange="minmax")
    with pytest.raises(ValueError, match="finite lo < hi"):
        SimilarityOverlay(net, photos[:1], ["3"], vrange=(1, 0))
    with pytest.raises(ValueError, match="precision must be one of"):
        SimilarityOverlay(net, photos[:1], ["3"], precision="int4")
    with pytest.raises(ValueError, match="dims must be a positive int"):
        SimilarityOverlay(net, photos[:1], ["3"], dims=0)

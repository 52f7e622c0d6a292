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
                                       plot_sensitivity, quantize_maps, similarity_maps, unpack_upper,
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


def test_payload_sprites_decode_to_quantised_maps(overlay):
    pl = overlay.payload()
    assert [L["name"] for L in pl["layers"]] == ["1", "3"]
    assert [im["name"] for im in pl["images"]] == ["cat", "coffee", "astronaut"]
    for L in pl["layers"]:
        n, P = 3, L["h"] * L["w"]
        M = n * P
        packed = np.frombuffer(base64.b64decode(L["sprite"]), dtype=np.uint8)
        assert L["layout"] == "upper" and packed.size == M * (M + 1) // 2
        raw = unpack_upper(packed, M)
        q, lo, hi = quantize_maps(overlay.maps[L["name"]])
        q = q.reshape(M, M)
        iu = np.triu_indices(M)
        np.testing.assert_array_equal(raw[iu], q[iu])          # upper triangle sent as is
        assert np.abs(raw.astype(int) - q.astype(int)).max() <= 1   # lower: float symmetry
        assert (L["lo"], L["hi"]) == (lo, hi)
        raw = raw.ravel()
        # row of query (image 2, cell 17): its own cell decodes to ~1
        v = raw[(2 * P + 17) * n * P + 2 * P + 17]
        assert lo + v * (hi - lo) / 255 == pytest.approx(1.0, abs=(hi - lo) / 255)
        nmf = np.frombuffer(base64.b64decode(L["nmf"]), dtype=np.uint8)
        assert nmf.size == n * P * 3
    for lut in pl["colormaps"].values():
        assert len(base64.b64decode(lut)) == 768
    assert pl["images"][0]["src"].startswith("data:image/png;base64,")


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

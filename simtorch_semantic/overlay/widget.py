"""SimilarityOverlay: interactive similarity overlays in Jupyter and as standalone HTML.

Fong, Mordvintsev, Vedaldi and Olah, "Interactive Similarity Overlays", VISxAI 2021. For every
selected layer the page receives each position's activation vector once: unit-normalised,
optionally projected to ``dims`` dimensions and quantised to ``int8`` (or ``float16``)
(:func:`~simtorch_semantic.overlay.maps.encode_features`), base64-encoded. Hovering a patch is
handled entirely in JavaScript (``overlay/static/overlay.js``, shared by the anywidget widget and
the HTML export): the script takes the hovered position's vector, computes its similarity to
every position of every image with one typed-array product (``[N P, d] x [d]``) and paints every
image's overlay canvas, in every shown layer, at the hovered position mapped to that layer's grid.
The page therefore grows linearly with the number of positions ``N P`` (it grew as ``(N P)^2``
when all maps were precomputed); only a custom similarity callable still ships precomputed maps.

Nothing quadratic happens at construction: ``maps`` (all ``[N, P, N, P]`` maps, for analysis)
and the NMF grouping (``nmf``) are computed on first use; the widget asks for the NMF factors
only when its "NMF groups" box is first ticked.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..results import atomic_write_bytes
from ._capture import as_similarity_model, capture_spatial
from ._images import prepare_images, to_uint8_hwc
from .grouping import nmf_factors, require_sklearn
from .maps import (PRECISIONS, encode_features, flatten_positions, map_index, pack_upper,
                   quantize_maps, rbf_sigma2, similarity_maps, value_range)
from .transforms import (_check_kind, _check_values, sensitivity_from_activations,
                         transform_images)

STATIC = Path(__file__).resolve().parent / "static"
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "gray", "coolwarm", "RdBu_r")
OVERLAY_EXTRA = 'pip install "simtorch-semantic[overlay]"'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jpeg_data_url(rgb: np.ndarray, quality: int = 90) -> str:
    """A display picture as an inline JPEG (a tenth of the PNG's size for photographs)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + _b64(buf.getvalue())


def _lut(name: str) -> bytes:
    """256 x RGB uint8 table of a matplotlib colour map."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"cmap {name!r} is not a matplotlib colour map; try one of {COLORMAPS}")
    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    return (rgba[:, :3] * 255).round().astype(np.uint8).tobytes()


def _json_floats(a: np.ndarray, digits: int = 5) -> list:
    """A float array as nested lists with NaN -> None (JSON null)."""
    a = np.round(np.asarray(a, dtype=np.float64), digits)
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]


def _value_label(kind: str, v: float) -> str:
    return f"{v:g}\u00b0" if kind == "rotation" else f"\u00d7{v:g}"


def _check_vrange(vrange):
    if isinstance(vrange, str):
        if vrange not in ("auto", "query"):
            raise ValueError(f"vrange must be 'auto', 'query' or a pair (lo, hi), got {vrange!r}")
        return vrange
    try:
        lo, hi = (float(v) for v in vrange)
    except (TypeError, ValueError):
        raise ValueError(
            f"vrange must be 'auto', 'query' or a pair (lo, hi), got {vrange!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"vrange (lo, hi) needs finite lo < hi, got {vrange!r}")
    return (lo, hi)


class _LazyMaps(Mapping):
    """``{layer: [N, P, N, P] float32}``, each layer's maps computed on first access."""

    def __init__(self, overlay):
        self._ov = overlay
        self._cache: dict = {}

    def __getitem__(self, layer):
        if layer not in self._ov.activations:
            raise KeyError(layer)
        if layer not in self._cache:
            self._cache[layer] = similarity_maps(self._ov.activations[layer],
                                                 self._ov.similarity).float()
        return self._cache[layer]

    def __iter__(self):
        return iter(self._ov.layers)

    def __len__(self):
        return len(self._ov.layers)

    def __contains__(self, layer):
        return layer in self._ov.activations


class SimilarityOverlay:
    """Interactive similarity overlays of several images in several layers.

    Args:
        model: a ``torch.nn.Module`` or a :class:`~simtorch_semantic.model.SimilarityModel`.
        images: PIL images, file paths, numpy arrays ``[H, W, 3]`` or tensors ``[3, H, W]`` /
            ``[N, 3, H, W]`` (RGB in ``[0, 1]`` for the default transform).
        layers: layer names (or any ``layers_to_include`` selection) with spatial outputs.
        transform: ``None`` (resize shorter side to ``size``, centre crop, ImageNet
            normalisation) or a callable image -> tensor ``[3, H, W]``.
        device: where the model runs.
        similarity: ``"cosine"`` (default), ``"ip"``, ``"rbf"`` or a callable
            ``f(X [M, C], Y [M, C]) -> [M, M]``. The three names are computed in the browser
            from the shipped features; a callable cannot be, so its maps are precomputed and
            the page then grows as ``(N H W)^2``.
        size: side of the default transform's square crop (224).
        max_side: layers with a larger grid are average-pooled to at most ``max_side`` cells per
            side; ``None`` keeps all.
        nmf_k: number of NMF factors for the grouping view (0 or None turns it off). The factors
            are computed when first needed (``nmf``, ``plot_nmf``, the widget's "NMF groups"
            box, ``save_html``) and need scikit-learn (``pip install
            "simtorch-semantic[overlay]"``).
        cmap, alpha: initial colour map and overlay opacity of the widget.
        cell: displayed size of each image in pixels.
        names: one label per image (default: file names, or "image k").
        vrange: colour range of the maps: ``"auto"`` (per layer, known without computing all
            pairs: cosine ``[0, 1]`` when every activation is ``>= 0``, else ``[-1, 1]``;
            inner product ``[0 or -max|z|^2, max|z|^2]``; rbf ``[0, 1]``; a callable's
            min/max), ``"query"`` (min/max of the hovered query's maps in that layer) or a pair
            ``(lo, hi)``. The colour bar beside each row shows it.
        dims: project each layer's unit activation vectors onto their top ``dims`` singular
            directions before shipping (``None``: keep every channel); smaller pages, larger
            error (see ``error_bound``).
        precision: ``"int8"`` (default) or ``"float16"`` for the shipped vectors.
        progress: tqdm bars over capture chunks and layers (``False`` turns them off).

    Attributes:
        layers (list[str]), names (list[str]), images (display pictures ``[N, 3, S, S]`` in
        ``[0, 1]``), activations (``{layer: [N, C, H, W]}`` on CPU), maps (``{layer: [N, H*W,
        N, H*W]}`` float32, each computed on first access: quadratic), nmf (``{layer:
        NMFResult}``, computed on first access), sensitivity (``{layer: Sensitivity}`` or None;
        see :meth:`from_transform`).
    """

    def __init__(self, model, images, layers, transform=None, device="cpu", similarity="cosine",
                 *, size: int = 224, max_side: int | None = 32, nmf_k: int | None = 4,
                 cmap: str = "viridis", alpha: float = 0.7, cell: int = 160,
                 names=None, vrange="auto", dims: int | None = None, precision: str = "int8",
                 progress: bool = True):
        self._configure(model, layers, device, similarity, max_side, nmf_k, cmap, alpha, cell,
                        progress, vrange, dims, precision)
        x, display, auto_names = prepare_images(images, transform, size)
        if names is None:
            names = auto_names
        elif len(list(names)) != x.shape[0]:
            raise ValueError(f"names has {len(list(names))} entries for {x.shape[0]} images; "
                             "give one name per image or None")
        self._build(x, display, [str(n) for n in names])

    # ------------------------------------------------------------------ construction
    def _configure(self, model, layers, device, similarity, max_side, nmf_k, cmap, alpha, cell,
                   progress, vrange="auto", dims=None, precision="int8"):
        if not (isinstance(similarity, str) or callable(similarity)):
            raise TypeError(f"similarity must be a name or a callable, got {type(similarity).__name__}")
        if isinstance(similarity, str) and similarity not in ("cosine", "ip", "rbf"):
            raise ValueError(
                f"similarity must be 'cosine', 'ip', 'rbf' or a callable f(X, Y) -> [M, M], got "
                f"{similarity!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        _lut(cmap)
        if nmf_k is not None and (isinstance(nmf_k, bool) or not isinstance(nmf_k, int)
                                  or nmf_k < 0):
            raise ValueError(f"nmf_k must be a non-negative int or None, got {nmf_k!r}")
        if nmf_k:
            require_sklearn(available_only=True)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            raise ValueError(f"dims must be a positive int or None (keep every channel), got "
                             f"{dims!r}")
        if isinstance(layers, str):
            layers = [layers]
        self.sim_model = as_similarity_model(model, layers, device)
        self.similarity = similarity
        self.max_side = max_side
        self.nmf_k = nmf_k or 0
        self.cmap = cmap
        self.alpha = float(alpha)
        self.cell = int(cell)
        self.progress = progress
        self.vrange = _check_vrange(vrange)
        self.dims = dims
        self.precision = precision
        self.sensitivity = None
        self.sensitivity_labels = None
        self._payload_cache = {}
        self._encoded = {}
        self._sigma2 = {}
        self._nmf = None

    def _build(self, x: torch.Tensor, display: torch.Tensor, names: list):
        self.images = display
        self.names = list(names)
        acts = capture_spatial(self.sim_model, x, max_side=self.max_side, progress=self.progress)
        self.layers = list(acts)
        self.activations = {k: v.detach().cpu() for k, v in acts.items()}
        self.maps = _LazyMaps(self)

    @property
    def nmf(self) -> dict:
        """``{layer: NMFResult}`` (empty when ``nmf_k`` is 0), computed on first access."""
        if not self.nmf_k:
            return {}
        if self._nmf is None:
            out = {}
            for k in tqdm(self.layers, desc="NMF", disable=not self.progress):
                v = self.activations[k]
                kk = min(self.nmf_k, v.shape[1], v.shape[0] * v.shape[2] * v.shape[3])
                out[k] = nmf_factors(v, k=kk, layer=k)
            self._nmf = out
        return self._nmf

    @classmethod
    def from_transform(cls, model, image, layers, kind: str = "rotation", values=None,
                       transform=None, device="cpu", similarity="cosine", **kwargs):
        """Overlays of one image under a sweep of rotations or zooms, with sensitivity curves.

        The shown images are ``T_t(image)`` for each value (``kind="rotation"``: degrees,
        default ``0, 30, ..., 180``; ``kind="scale"``: zoom factors about the centre, default
        ``0.5 ... 2``). ``self.sensitivity[layer]`` holds, for every position of the untransformed
        image, its similarity to the corresponding patch of each transformed image (NaN where the
        position leaves the frame; see :mod:`~simtorch_semantic.overlay.transforms`). The widget
        and HTML draw that curve for the hovered patch. Other keyword arguments as for the
        constructor.
        """
        kind = _check_kind(kind)
        if values is None:
            values = np.arange(0, 181, 30) if kind == "rotation" else np.geomspace(0.5, 2.0, 7)
        vals = _check_values(kind, values)
        self = cls.__new__(cls)
        size = kwargs.pop("size", 224)
        self._configure(model, layers, device, similarity, kwargs.pop("max_side", 32),
                        kwargs.pop("nmf_k", 4), kwargs.pop("cmap", "viridis"),
                        kwargs.pop("alpha", 0.7), kwargs.pop("cell", 160),
                        kwargs.pop("progress", True), kwargs.pop("vrange", "auto"),
                        kwargs.pop("dims", None), kwargs.pop("precision", "int8"))
        if kwargs:
            raise TypeError(f"from_transform() got unexpected arguments {sorted(kwargs)}")
        x, display, _ = prepare_images([image] if not isinstance(image, list) else image,
                                       transform, size)
        if x.shape[0] != 1:
            raise ValueError(f"image must be one image, got {x.shape[0]}")
        xt = transform_images(x[0], kind, vals)
        dt = transform_images(display[0], kind, vals).clamp(0, 1)
        names = [_value_label(kind, v) for v in vals]
        ref = capture_spatial(self.sim_model, x, max_side=self.max_side)
        self._build(xt, dt, names)
        self.sensitivity = {
            k: sensitivity_from_activations(ref[k][0].cpu(), self.activations[k], kind, vals,
                                            layer=k, similarity=self.similarity)
            for k in self.layers}
        self.sensitivity_labels = names
        return self

    # ------------------------------------------------------------------ queries
    def _grid(self, layer: str) -> tuple:
        a = self.activations[layer]
        return int(a.shape[2]), int(a.shape[3])

    def _check_layer(self, layer: str) -> str:
        if layer not in self.activations:
            raise ValueError(f"layer {layer!r} is not in this overlay; its layers are {self.layers}")
        return layer

    def _rbf_sigma2(self, layer: str) -> float:
        """The default RBF bandwidth of a layer (median squared distance; quadratic, cached)."""
        if layer not in self._sigma2:
            self._sigma2[layer] = rbf_sigma2(flatten_positions(self.activations[layer]))
        return self._sigma2[layer]

    def query_maps(self, query, layer: str | None = None, ref_layer: str | None = None):
        """The exact maps of one query in one layer: ``[N, H, W]`` float32.

        ``query = (image, i, j)`` with ``(i, j)`` a cell of ``ref_layer``'s grid (default: the
        first layer), mapped to ``layer``'s grid by its centre (:func:`map_index`). One row of
        the maps, ``O(N H W C)`` (a callable similarity computes all of ``maps[layer]``).
        """
        layer = self._check_layer(layer or self.layers[0])
        ref_layer = self._check_layer(ref_layer or self.layers[0])
        n, i, j = self._check_query(query, ref_layer)
        h, w = self._grid(layer)
        i2, j2 = map_index(i, j, self._grid(ref_layer), (h, w))
        r = n * h * w + i2 * w + j2
        N = len(self.names)
        if callable(self.similarity):
            return self.maps[layer][n, i2 * w + j2].reshape(N, h, w)
        Z = flatten_positions(self.activations[layer])          # [M, C] float64
        z = Z[r]
        if self.similarity == "cosine":
            nz = Z.norm(dim=1)
            row = (Z @ z) / (nz.clamp_min(1e-12) * nz[r].clamp_min(1e-12))
            row = row.clamp(-1.0, 1.0)
        elif self.similarity == "ip":
            row = Z @ z
        else:
            d2 = ((Z - z) ** 2).sum(1)
            row = torch.exp(-d2 / (2.0 * self._rbf_sigma2(layer)))
        return row.float().reshape(N, h, w)

    def _check_query(self, query, layer):
        try:
            n, i, j = (int(v) for v in query)
        except (TypeError, ValueError):
            raise ValueError(f"query must be (image, i, j) integers, got {query!r}") from None
        h, w = self._grid(layer)
        if not 0 <= n < len(self.names):
            raise ValueError(f"query image {n} out of range: there are {len(self.names)} images")
        if not (0 <= i < h and 0 <= j < w):
            raise ValueError(
                f"query position ({i}, {j}) is outside the {h} x {w} grid of layer {layer!r}")
        return n, i, j

    def encoded(self, layer: str):
        """The shipped features of one layer (:class:`~.maps.EncodedFeatures`), cached."""
        layer = self._check_layer(layer)
        if callable(self.similarity):
            raise ValueError("a custom similarity callable is not computed from features; the "
                             "page gets its precomputed maps")
        if layer not in self._encoded:
            self._encoded[layer] = encode_features(self.activations[layer], dims=self.dims,
                                                   precision=self.precision)
        return self._encoded[layer]

    def value_range(self, layer: str, query=None) -> tuple:
        """Colour range ``(lo, hi)`` of ``layer``'s maps (see ``vrange``).

        With ``vrange="query"`` pass ``query = (image, i, j)`` (first layer's grid): the range is
        the min/max of that query's maps in ``layer``.
        """
        layer = self._check_layer(layer)
        if isinstance(self.vrange, tuple):
            return self.vrange
        if self.vrange == "query":
            if query is None:
                raise ValueError("vrange='query' has no fixed range; pass query=(image, i, j)")
            m = self.query_maps(query, layer=layer)
            lo, hi = float(m.min()), float(m.max())
            return (lo, hi) if hi > lo else (lo, lo + 1.0)
        if callable(self.similarity):
            m = self.maps[layer]
            lo, hi = float(m.min()), float(m.max())
            return (lo, hi) if hi > lo else (lo, lo + 1.0)
        return value_range(self.encoded(layer), self.similarity)

    def error_bound(self, layer: str) -> float:
        """Largest possible difference between the painted maps' values and the exact maps.

        Built-in similarities: the bound of :meth:`~.maps.EncodedFeatures.error_bound` (angles
        lost to projection and rounding); a callable: half a quantisation step of its maps.
        The painted colour adds at most half a colour step, ``(hi - lo) / 510``.
        """
        layer = self._check_layer(layer)
        if callable(self.similarity):
            m = self.maps[layer]
            return (float(m.max()) - float(m.min())) / 510.0
        sigma2 = self._rbf_sigma2(layer) if self.similarity == "rbf" else None
        return self.encoded(layer).error_bound(self.similarity, sigma2)

    # ------------------------------------------------------------------ front end data
    def _layer_entry(self, name: str) -> dict:
        h, w = self._grid(name)
        entry = {"name": name, "h": h, "w": w}
        if isinstance(self.vrange, tuple) or self.vrange == "auto":
            entry["lo"], entry["hi"] = self.value_range(name)
        if callable(self.similarity):
            q, lo, hi = quantize_maps(self.maps[name])
            m = len(self.names) * h * w
            entry.update(mode="sprite", slo=lo, shi=hi, sprite=_b64(pack_upper(q, m).tobytes()),
                         err=self.error_bound(name))
            return entry
        enc = self.encoded(name)
        entry.update(mode="features", d=enc.dims, precision=enc.precision,
                     feat=_b64(np.ascontiguousarray(enc.values).tobytes()),
                     err=self.error_bound(name))
        if self.similarity in ("ip", "rbf"):
            entry["norms"] = _b64(enc.norms.astype("<f4").tobytes())
        if self.similarity == "rbf":
            entry["sigma2"] = self._rbf_sigma2(name)
        return entry

    def nmf_payload(self) -> dict | None:
        """The NMF view for the front end: ``{"k", "colors", "layers": {name: base64 RGB}}``.

        ``None`` when ``nmf_k`` is 0. Computes the factors on first use.
        """
        if not self.nmf_k:
            return None
        nmf = self.nmf
        first = next(iter(nmf.values()))
        return {"k": int(first.weights.shape[1]),
                "colors": ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in col)
                           for col in first.colors],
                "layers": {k: _b64((r.rgb() * 255).round().astype(np.uint8).tobytes())
                           for k, r in nmf.items()}}

    def payload(self, nmf: bool | None = False) -> dict:
        """Everything the front end needs, JSON-serialisable (features or sprites in base64).

        ``nmf``: include the NMF view's factor maps (``None``: when ``nmf_k`` > 0). Without them
        the front end still offers the NMF box when ``nmf_k`` > 0 (the widget then asks Python).
        """
        include = bool(self.nmf_k) if nmf is None else bool(nmf) and bool(self.nmf_k)
        if include not in self._payload_cache:
            self._payload_cache[include] = self._make_payload(include)
        return self._payload_cache[include]

    def _make_payload(self, include_nmf: bool) -> dict:
        images = [{"name": nm, "src": _jpeg_data_url(to_uint8_hwc(d))}
                  for nm, d in zip(self.names, self.images)]
        layers = [self._layer_entry(name) for name in self.layers]
        sens = None
        if self.sensitivity:
            first = next(iter(self.sensitivity.values()))
            sens = {"kind": first.kind, "values": [float(v) for v in first.values],
                    "labels": list(self.sensitivity_labels),
                    "layers": {k: {"curves": _json_floats(s.curves),
                                   "forward": s.forward.tolist(), "inverse": s.inverse.tolist()}
                               for k, s in self.sensitivity.items()}}
        return {
            "version": 2, "similarity": self._similarity_name(), "cell": self.cell,
            "aspect": float(self.images.shape[-2]) / float(self.images.shape[-1]),
            "model": self.sim_model.model_name, "images": images, "layers": layers,
            "colormaps": {c: _b64(_lut(c)) for c in dict.fromkeys((self.cmap,) + COLORMAPS)},
            "vrange": "query" if self.vrange == "query" else "fixed",
            "nmf_k": self.nmf_k, "nmf": self.nmf_payload() if include_nmf else None,
            "sensitivity": sens,
        }

    def _state(self) -> dict:
        return {"alpha": self.alpha, "cmap": self.cmap, "layers_on": list(self.layers),
                "show_nmf": False}

    # ------------------------------------------------------------------ outputs
    def show(self):
        """The Jupyter widget (anywidget); display it or leave it as the cell's last value.

        The NMF factors are computed (in Python) the first time the "NMF groups" box is ticked;
        hovering never calls Python.
        """
        cls = _widget_class()
        widget = cls(data=json.dumps(self.payload(nmf=False)), **self._state())
        if self._nmf is not None and self.nmf_k:
            widget.nmf = json.dumps(self.nmf_payload())

        def _send_nmf(change):
            if change["new"] and self.nmf_k and not widget.nmf:
                widget.nmf = json.dumps(self.nmf_payload())

        widget.observe(_send_nmf, names="show_nmf")
        return widget

    def _repr_mimebundle_(self, **kwargs):
        return self.show()._repr_mimebundle_(**kwargs)

    def to_html(self, title: str | None = None, nmf: bool | None = None) -> str:
        """A standalone HTML document: inline CSS, script and data; no network access.

        ``nmf``: include the NMF view (``None``: when ``nmf_k`` > 0; computing the factors if
        they were not yet). The page grows linearly with the number of positions.
        """
        js = (STATIC / "overlay.js").read_text(encoding="utf-8")
        css = (STATIC / "overlay.css").read_text(encoding="utf-8")
        for name, text in (("overlay.js", js), ("overlay.css", css)):
            if "</script" in text.lower() or "</style" in text.lower():
                raise RuntimeError(f"{name} contains a closing tag and cannot be inlined")
        payload = self.payload(nmf=nmf)
        if payload["nmf"] is None:         # no Python behind the page to compute it later
            payload = dict(payload, nmf_k=0)
        data = json.dumps(payload).replace("</", "<\\/")
        state = json.dumps(self._state()).replace("</", "<\\/")
        title = title or f"Similarity overlays: {self.sim_model.model_name}"
        esc = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc}</title>\n<style>\n{css}\n</style></head>\n<body>\n"
            f"<h3 class=\"sto-title\">{esc}</h3>\n<div id=\"sto-app\"></div>\n"
            f"<script type=\"application/json\" id=\"sto-data\">{data}</script>\n"
            f"<script type=\"application/json\" id=\"sto-state\">{state}</script>\n"
            f"<script type=\"module\">\n{js}\n"
            "const el = document.getElementById('sto-app');\n"
            "const model = makeLocalModel(Object.assign(\n"
            "  {data: document.getElementById('sto-data').textContent, nmf: ''},\n"
            "  JSON.parse(document.getElementById('sto-state').textContent)));\n"
            "render({model, el}).catch((e) => { el.textContent = 'overlay failed: ' + e; });\n"
            "</script>\n</body></html>\n")

    def save_html(self, path, title: str | None = None, nmf: bool | None = None) -> Path:
        """Write :meth:`to_html` to ``path`` (via a temporary file, then renamed)."""
        path = Path(path)
        atomic_write_bytes(path, self.to_html(title, nmf=nmf).encode("utf-8"))
        return path

    def plot_query(self, query, layers=None, cmap: str | None = None, alpha: float | None = None):
        """Static matplotlib figure of one query (see :func:`plots.plot_overlay_query`)."""
        from .plots import plot_overlay_query

        return plot_overlay_query(self, query, layers=layers, cmap=cmap or self.cmap,
                                  alpha=self.alpha if alpha is None else alpha)

    def save_png(self, path, query=(0, 0, 0), layers=None, cmap: str | None = None,
                 alpha: float | None = None, dpi: int = 100) -> Path:
        """Save the static figure of ``query = (image, i, j)`` as a PNG (Agg, no global style).

        ``(i, j)`` is a cell of the first shown layer's grid; other layers show the cell that
        holds its centre.
        """
        fig = self.plot_query(query, layers=layers, cmap=cmap, alpha=alpha)
        path = Path(path)
        fig.savefig(path, dpi=dpi, format="png")
        return path

    def plot_nmf(self, layers=None):
        """Static figure of the colour-coded NMF factor maps (see :func:`plots.plot_nmf`)."""
        from .plots import plot_nmf

        if not self.nmf:
            raise ValueError("this overlay has no NMF grouping; create it with nmf_k >= 1")
        chosen = self.layers if layers is None else [self._check_layer(l) for l in layers]
        return plot_nmf({k: self.nmf[k] for k in chosen}, self.images, names=self.names)

    def plot_sensitivity(self, query, layers=None, ax=None):
        """Line chart of the sensitivity curve of ``query = (i, j)`` (first layer's grid)."""
        from .plots import plot_sensitivity

        if not self.sensitivity:
            raise ValueError("no sensitivity data; build the overlay with "
                             "SimilarityOverlay.from_transform(...)")
        chosen = self.layers if layers is None else [self._check_layer(l) for l in layers]
        return plot_sensitivity({k: self.sensitivity[k] for k in chosen}, query, ax=ax)

    def __repr__(self) -> str:
        grids = ", ".join(f"{k} {h}x{w}" for k in self.layers for h, w in [self._grid(k)])
        return (f"SimilarityOverlay({self.sim_model.model_name}, {len(self.names)} images, "
                f"layers: {grids}, similarity={self._similarity_name()!r})")

    def _similarity_name(self) -> str:
        if isinstance(self.similarity, str):
            return self.similarity
        name = getattr(self.similarity, "__name__", "custom")
        return "custom" if name == "<lambda>" else name


_WIDGET_CLASS = None


def _widget_class():
    """The anywidget class (imported lazily so the package works without anywidget)."""
    global _WIDGET_CLASS
    if _WIDGET_CLASS is None:
        try:
            import anywidget
            import traitlets
        except ImportError as err:
            raise ImportError(
                "SimilarityOverlay.show() needs anywidget: pip install "
                "\"simtorch-semantic[overlay]\" (or use save_html(path) for a standalone "
                "file)") from err

        class OverlayWidget(anywidget.AnyWidget):
            """Front end of :class:`SimilarityOverlay` (``overlay/static/overlay.js``)."""

            _esm = STATIC / "overlay.js"
            _css = STATIC / "overlay.css"
            data = traitlets.Unicode("").tag(sync=True)
            alpha = traitlets.Float(0.7).tag(sync=True)
            cmap = traitlets.Unicode("viridis").tag(sync=True)
            layers_on = traitlets.List(traitlets.Unicode()).tag(sync=True)
            show_nmf = traitlets.Bool(False).tag(sync=True)
            nmf = traitlets.Unicode("").tag(sync=True)      # NMF view, sent when first shown

        _WIDGET_CLASS = OverlayWidget
    return _WIDGET_CLASS

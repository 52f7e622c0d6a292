"""SimilarityOverlay: interactive similarity overlays in Jupyter and as standalone HTML.

Fong, Mordvintsev, Vedaldi and Olah, "Interactive Similarity Overlays", VISxAI 2021. For every
selected layer the maps ``S[a, q, b, p]`` (:func:`~simtorch_semantic.overlay.maps.similarity_maps`)
are computed once, quantised to ``uint8``, reduced to the upper triangle of the symmetric matrix
and base64-encoded ("sprites"; deflate would save only about 20 % on these noisy maps), and
sent to the browser together with the pictures and colour-map tables. Hovering a patch is handled
entirely in JavaScript (``overlay/static/overlay.js``, shared by the anywidget widget and the
HTML export): the script slices the row of the hovered query out of the sprite and paints every
image's overlay canvas, in every shown layer, at the hovered position mapped to that layer's grid.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..results import atomic_write_bytes
from ._capture import as_similarity_model, capture_spatial
from ._images import prepare_images, to_uint8_hwc
from .grouping import nmf_factors
from .maps import map_index, pack_upper, quantize_maps, similarity_maps
from .transforms import (_check_kind, _check_values, sensitivity_from_activations,
                         transform_images)

STATIC = Path(__file__).resolve().parent / "static"
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "gray", "coolwarm", "RdBu_r")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + _b64(buf.getvalue())


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


class SimilarityOverlay:
    """Interactive similarity overlays of several images in several layers.

    Args:
        model: a ``torch.nn.Module`` or a :class:`~simtorch_semantic.model.SimilarityModel`.
        images: PIL images, file paths, numpy arrays ``[H, W, 3]`` or tensors ``[3, H, W]`` /
            ``[N, 3, H, W]`` (RGB in ``[0, 1]`` for the default transform).
        layers: layer names (or any ``layers_to_include`` selection) with spatial outputs.
        transform: ``None`` (resize shorter side to ``size``, centre crop, ImageNet
            normalisation) or a callable image -> tensor ``[3, H, W]``.
        device: where the model runs and the maps are computed.
        similarity: ``"cosine"`` (default), ``"ip"``, ``"rbf"`` or a callable
            ``f(X [M, C], Y [M, C]) -> [M, M]``.
        size: side of the default transform's square crop (224).
        max_side: layers with a larger grid are average-pooled to at most ``max_side`` cells per
            side before the maps are built (the maps grow as ``(N H W)^2``); ``None`` keeps all.
        nmf_k: number of NMF factors for the grouping view (0 or None turns it off).
        cmap, alpha: initial colour map and overlay opacity of the widget.
        cell: displayed size of each image in pixels.
        names: one label per image (default: file names, or "image k").
        progress: tqdm bars over capture chunks, layers and NMF (``False`` turns them off).

    Attributes:
        layers (list[str]), names (list[str]), images (display pictures ``[N, 3, S, S]`` in
        ``[0, 1]``), activations (``{layer: [N, C, H, W]}`` on CPU), maps (``{layer: [N, H*W,
        N, H*W]}`` float32 on CPU), nmf (``{layer: NMFResult}``), sensitivity
        (``{layer: Sensitivity}`` or None; see :meth:`from_transform`).
    """

    def __init__(self, model, images, layers, transform=None, device="cpu", similarity="cosine",
                 *, size: int = 224, max_side: int | None = 32, nmf_k: int | None = 4,
                 cmap: str = "viridis", alpha: float = 0.7, cell: int = 160,
                 names=None, progress: bool = True):
        self._configure(model, layers, device, similarity, max_side, nmf_k, cmap, alpha, cell,
                        progress)
        x, display, auto_names = prepare_images(images, transform, size)
        if names is None:
            names = auto_names
        elif len(list(names)) != x.shape[0]:
            raise ValueError(f"names has {len(list(names))} entries for {x.shape[0]} images; "
                             "give one name per image or None")
        self._build(x, display, [str(n) for n in names])

    # ------------------------------------------------------------------ construction
    def _configure(self, model, layers, device, similarity, max_side, nmf_k, cmap, alpha, cell,
                   progress):
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
        self.sensitivity = None
        self.sensitivity_labels = None
        self._payload_cache = None

    def _build(self, x: torch.Tensor, display: torch.Tensor, names: list):
        self.images = display
        self.names = list(names)
        acts = capture_spatial(self.sim_model, x, max_side=self.max_side, progress=self.progress)
        self.layers = list(acts)
        self.activations = {k: v.detach().cpu() for k, v in acts.items()}
        self.maps = {}
        for k in tqdm(self.layers, desc="similarity maps", disable=not self.progress):
            self.maps[k] = similarity_maps(acts[k], self.similarity).float().cpu()
        self.nmf = {}
        if self.nmf_k:
            for k in tqdm(self.layers, desc="NMF", disable=not self.progress):
                v = self.activations[k]
                kk = min(self.nmf_k, v.shape[1], v.shape[0] * v.shape[2] * v.shape[3])
                self.nmf[k] = nmf_factors(v, k=kk, layer=k)

    @classmethod
    def from_transform(cls, model, image, layers, kind: str = "rotation", values=None,
                       transform=None, device="cpu", similarity="cosine", **kwargs):
        """Overlays of one image under a sweep of rotations or zooms, with sensitivity curves.

        The shown images are ``T_t(image)`` for each value (``kind="rotation"``: degrees,
        default ``0, 30, ..., 180``; ``kind="scale"``: zoom factors about the centre, default
        ``0.5 ... 2``). ``self.sensitivity[layer]`` holds, for every position of the untransformed
        image, its similarity to the corresponding patch of each transformed image (NaN where the
        position leaves the frame; see :mod:`~simtorch_semantic.overlay.transforms`). The widget
        and HTML draw that curve for the hovered patch.
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
                        kwargs.pop("progress", True))
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
        if layer not in self.maps:
            raise ValueError(f"layer {layer!r} is not in this overlay; its layers are {self.layers}")
        return layer

    def query_maps(self, query, layer: str | None = None, ref_layer: str | None = None):
        """The maps of one query in one layer: ``[N, H, W]`` float32.

        ``query = (image, i, j)`` with ``(i, j)`` a cell of ``ref_layer``'s grid (default: the
        first layer), mapped to ``layer``'s grid by its centre (:func:`map_index`).
        """
        layer = self._check_layer(layer or self.layers[0])
        ref_layer = self._check_layer(ref_layer or self.layers[0])
        n, i, j = self._check_query(query, ref_layer)
        h, w = self._grid(layer)
        i2, j2 = map_index(i, j, self._grid(ref_layer), (h, w))
        m = self.maps[layer]
        return m[n, i2 * w + j2].reshape(len(self.names), h, w)

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

    # ------------------------------------------------------------------ front end data
    def payload(self) -> dict:
        """Everything the front end needs, JSON-serialisable (uint8 sprites, base64)."""
        if self._payload_cache is not None:
            return self._payload_cache
        images = [{"name": nm, "src": _png_data_url(to_uint8_hwc(d))}
                  for nm, d in zip(self.names, self.images)]
        layers = []
        for name in self.layers:
            q, lo, hi = quantize_maps(self.maps[name])
            h, w = self._grid(name)
            m = len(self.names) * h * w
            sprite = pack_upper(q, m)
            entry = {"name": name, "h": h, "w": w, "lo": lo, "hi": hi, "layout": "upper",
                     "sprite": _b64(sprite.tobytes()), "nmf": None}
            if name in self.nmf:
                rgb = (self.nmf[name].rgb() * 255).round().astype(np.uint8)
                entry["nmf"] = _b64(rgb.tobytes())
            layers.append(entry)
        nmf = None
        if self.nmf:
            first = next(iter(self.nmf.values()))
            nmf = {"k": int(first.weights.shape[1]),
                   "colors": ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in col)
                              for col in first.colors]}
        sens = None
        if self.sensitivity:
            first = next(iter(self.sensitivity.values()))
            sens = {"kind": first.kind, "values": [float(v) for v in first.values],
                    "labels": list(self.sensitivity_labels),
                    "layers": {k: {"curves": _json_floats(s.curves),
                                   "forward": s.forward.tolist(), "inverse": s.inverse.tolist()}
                               for k, s in self.sensitivity.items()}}
        sim = self._similarity_name()
        self._payload_cache = {
            "version": 1, "similarity": sim, "cell": self.cell,
            "aspect": float(self.images.shape[-2]) / float(self.images.shape[-1]),
            "model": self.sim_model.model_name, "images": images, "layers": layers,
            "colormaps": {c: _b64(_lut(c)) for c in dict.fromkeys((self.cmap,) + COLORMAPS)},
            "nmf": nmf, "sensitivity": sens,
        }
        return self._payload_cache

    def _state(self) -> dict:
        return {"alpha": self.alpha, "cmap": self.cmap, "layers_on": list(self.layers),
                "show_nmf": False}

    # ------------------------------------------------------------------ outputs
    def show(self):
        """The Jupyter widget (anywidget); display it or leave it as the cell's last value."""
        cls = _widget_class()
        return cls(data=json.dumps(self.payload()), **self._state())

    def _repr_mimebundle_(self, **kwargs):
        return self.show()._repr_mimebundle_(**kwargs)

    def to_html(self, title: str | None = None) -> str:
        """A standalone HTML document: inline CSS, script and data; no network access."""
        js = (STATIC / "overlay.js").read_text(encoding="utf-8")
        css = (STATIC / "overlay.css").read_text(encoding="utf-8")
        for name, text in (("overlay.js", js), ("overlay.css", css)):
            if "</script" in text.lower() or "</style" in text.lower():
                raise RuntimeError(f"{name} contains a closing tag and cannot be inlined")
        data = json.dumps(self.payload()).replace("</", "<\\/")
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
            "  {data: document.getElementById('sto-data').textContent},\n"
            "  JSON.parse(document.getElementById('sto-state').textContent)));\n"
            "render({model, el}).catch((e) => { el.textContent = 'overlay failed: ' + e; });\n"
            "</script>\n</body></html>\n")

    def save_html(self, path, title: str | None = None) -> Path:
        """Write :meth:`to_html` to ``path`` (via a temporary file, then renamed)."""
        path = Path(path)
        atomic_write_bytes(path, self.to_html(title).encode("utf-8"))
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
                "SimilarityOverlay.show() needs anywidget: pip install anywidget "
                "(or use save_html(path) for a standalone file)") from err

        class OverlayWidget(anywidget.AnyWidget):
            """Front end of :class:`SimilarityOverlay` (``overlay/static/overlay.js``)."""

            _esm = STATIC / "overlay.js"
            _css = STATIC / "overlay.css"
            data = traitlets.Unicode("").tag(sync=True)
            alpha = traitlets.Float(0.7).tag(sync=True)
            cmap = traitlets.Unicode("viridis").tag(sync=True)
            layers_on = traitlets.List(traitlets.Unicode()).tag(sync=True)
            show_nmf = traitlets.Bool(False).tag(sync=True)

        _WIDGET_CLASS = OverlayWidget
    return _WIDGET_CLASS

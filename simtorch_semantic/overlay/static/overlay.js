// Interactive similarity overlays (Fong, Mordvintsev, Vedaldi, Olah; VISxAI 2021).
// One script for both front ends: the Jupyter widget (anywidget ESM, `export default {render}`)
// and the standalone HTML export (which builds a local model with makeLocalModel and calls
// render). Nothing calls back to Python on hover.
//
// Layer data, mode "features" (the similarity names "cosine", "ip", "rbf"): the M = N * P
// positions' activation vectors (P = h * w cells per image, row r = a * P + q for cell q of image
// a), unit-normalised in Python, optionally projected to d dimensions, and quantised to int8 (one
// scale per row, dropped) or float16; base64, row-major [M, d]. Here each row is renormalised
// (y' = q / |q|) and a hover computes cos'(r, c) = <y'_r, y'_c> for all c: one [M, d] x [d]
// product over typed arrays. "ip" multiplies by |z_r| |z_c| and "rbf" takes
// exp(-max(0, |z_r|^2 + |z_c|^2 - 2 |z_r| |z_c| cos') / (2 sigma^2)) (norms: float32, base64).
// Python states the error bound of the decoded values (layer.err).
//
// Layer data, mode "sprite" (a custom similarity callable): the quantised maps, the upper
// triangle of the symmetric M x M matrix row by row: entry (r, c), r <= c, is byte
// r * M - r * (r - 1) / 2 + (c - r); value = slo + byte * (shi - slo) / 255.

const SVG_NS = "http://www.w3.org/2000/svg";
const LAYER_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

function b64bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let k = 0; k < bin.length; k++) out[k] = bin.charCodeAt(k);
  return out;
}

function el_(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg_(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// A minimal stand-in for the anywidget model, used by the standalone HTML page.
function makeLocalModel(initial) {
  const values = Object.assign({}, initial);
  const handlers = {};
  return {
    get: (key) => values[key],
    set: (key, value) => {
      values[key] = value;
      for (const f of handlers["change:" + key] || []) f();
    },
    on: (event, f) => { (handlers[event] = handlers[event] || []).push(f); },
    off: () => {},
    save_changes: () => {},
  };
}

// Row r of the symmetric M x M matrix stored as its packed upper triangle.
function symmetricRow(packed, M, r) {
  const row = new Uint8Array(M);
  for (let c = 0; c < r; c++) row[c] = packed[c * M - (c * (c - 1)) / 2 + (r - c)];
  const start = r * M - (r * (r - 1)) / 2;
  row.set(packed.subarray(start, start + M - r), r);
  return row;
}

// Cell of an h x w grid under the fractional position (fy, fx) in [0, 1).
function cellAt(fy, fx, h, w) {
  return [Math.min(h - 1, Math.max(0, Math.floor(fy * h))),
          Math.min(w - 1, Math.max(0, Math.floor(fx * w)))];
}

function placeMarker(marker, i, j, h, w) {
  marker.style.left = (100 * j / w) + "%";
  marker.style.top = (100 * i / h) + "%";
  marker.style.width = (100 / w) + "%";
  marker.style.height = (100 / h) + "%";
  marker.style.display = "block";
  marker.dataset.i = String(i);
  marker.dataset.j = String(j);
}

// float16 bits -> number (IEEE 754 half precision).
function halfToFloat(h) {
  const e = (h >> 10) & 0x1f, f = h & 0x3ff, sign = h & 0x8000 ? -1 : 1;
  if (e === 0) return sign * f * 2 ** -24;
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
}

// Decode a layer's shipped vectors into a typed array [M * d] and the inverse norms of its rows
// (0 for a zero row, whose similarity is then 0 to everything, as in Python).
function decodeFeatures(L, M) {
  const bytes = b64bytes(L.feat);
  const d = L.d;
  let feat;
  if (L.precision === "int8") {
    feat = new Int8Array(bytes.buffer, bytes.byteOffset, M * d);
  } else {
    const half = new Uint16Array(bytes.buffer, bytes.byteOffset, M * d);
    feat = new Float32Array(M * d);
    for (let k = 0; k < M * d; k++) feat[k] = halfToFloat(half[k]);
  }
  const inv = new Float64Array(M);
  for (let r = 0; r < M; r++) {
    let s = 0;
    for (let k = r * d, e = k + d; k < e; k++) s += feat[k] * feat[k];
    inv[r] = s > 0 ? 1 / Math.sqrt(s) : 0;
  }
  let norms = null;
  if (L.norms) {
    const nb = b64bytes(L.norms);
    norms = new Float32Array(nb.buffer, nb.byteOffset, M);
  }
  return { feat, inv, norms, nzIdx: new Int32Array(d), nzVal: new Float64Array(d) };
}

// Similarity of row r to every row (features mode) into out [M]. After a ReLU many of the
// query's codes are 0: then only its non-zero components are visited (int8 sums are exact
// integers, so the order does not change the result).
function featureRow(L, r, out) {
  const { feat, inv, nzIdx, nzVal } = L.dec;
  const d = L.d, M = out.length;
  const ir = inv[r];
  let nnz = 0;
  for (let t = 0; t < d; t++) {
    const v = feat[r * d + t];
    if (v !== 0) { nzIdx[nnz] = t; nzVal[nnz] = v; nnz++; }
  }
  if (nnz < 0.75 * d) {
    for (let c = 0; c < M; c++) {
      let s = 0;
      const b = c * d;
      for (let u = 0; u < nnz; u++) s += nzVal[u] * feat[b + nzIdx[u]];
      out[c] = s * ir * inv[c];
    }
  } else {
    const q = feat.subarray(r * d, r * d + d);
    for (let c = 0, k = 0; c < M; c++) {
      let s = 0;
      for (let t = 0; t < d; t++, k++) s += q[t] * feat[k];
      out[c] = s * ir * inv[c];
    }
  }
  if (L.similarity === "ip" || L.similarity === "rbf") {
    const n = L.dec.norms, nr = n[r];
    if (L.similarity === "ip") {
      for (let c = 0; c < M; c++) out[c] *= nr * n[c];
    } else {
      const k2 = 1 / (2 * L.sigma2);
      for (let c = 0; c < M; c++) {
        const d2 = nr * nr + n[c] * n[c] - 2 * nr * n[c] * out[c];
        out[c] = Math.exp(-(d2 > 0 ? d2 : 0) * k2);
      }
    }
  }
}

// Row r of the sprite (sprite mode) decoded into out [M].
function spriteRow(L, r, out) {
  const row = symmetricRow(L.maps, out.length, r);
  const step = (L.shi - L.slo) / 255;
  for (let c = 0; c < out.length; c++) out[c] = L.slo + row[c] * step;
}

function fmt(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1e4) ? v.toExponential(2) : v.toFixed(2);
}

async function render({ model, el }) {
  const data = JSON.parse(model.get("data"));
  const N = data.images.length;
  const cell = data.cell || 160;
  const queryRange = data.vrange === "query";
  const layers = data.layers.map((L) => {
    const P = L.h * L.w, M = N * P;
    const out = {
      name: L.name, h: L.h, w: L.w, mode: L.mode, d: L.d, lo: L.lo, hi: L.hi, err: L.err,
      slo: L.slo, shi: L.shi, sigma2: L.sigma2, similarity: data.similarity,
      values: new Float64Array(M), nmf: null,
    };
    if (L.mode === "sprite") out.maps = b64bytes(L.sprite);
    else out.dec = decodeFeatures(L, M);
    return out;
  });
  const luts = {};
  for (const [name, text] of Object.entries(data.colormaps)) luts[name] = b64bytes(text);
  const sens = data.sensitivity;
  let query = null;      // {n, fy, fx}: hovered image and fractional position
  let pinned = false;

  const root = el_("div", { class: "sto-root" });
  root.style.setProperty("--sto-cell", cell + "px");
  root.style.setProperty("--sto-cell-h", Math.round(cell * (data.aspect || 1)) + "px");
  root.stoTimes = [];    // hover-to-paint times in ms (performance.now), newest last
  el.replaceChildren(root);

  // ---------------------------------------------------------------- controls
  const controls = el_("div", { class: "sto-controls" });
  const layerBoxes = el_("span", { class: "sto-layers" }, "layers: ");
  for (const L of layers) {
    const box = el_("input", { type: "checkbox", "data-layer": L.name });
    box.checked = (model.get("layers_on") || []).includes(L.name);
    box.addEventListener("change", () => {
      const on = layers.filter((M) => layerBoxes.querySelector(
        `input[data-layer="${CSS.escape(M.name)}"]`).checked).map((M) => M.name);
      model.set("layers_on", on);
      model.save_changes();
      update();
    });
    layerBoxes.append(el_("label", {}, box, ` ${L.name} (${L.h}\u00d7${L.w}) `));
  }
  const alpha = el_("input", { type: "range", min: "0", max: "1", step: "0.05", class: "sto-alpha" });
  alpha.value = String(model.get("alpha"));
  alpha.addEventListener("input", () => {
    model.set("alpha", parseFloat(alpha.value));
    model.save_changes();
    update();
  });
  const cmap = el_("select", { class: "sto-cmap" });
  for (const name of Object.keys(luts)) cmap.append(el_("option", { value: name }, name));
  cmap.value = model.get("cmap");
  cmap.addEventListener("change", () => {
    model.set("cmap", cmap.value);
    model.save_changes();
    update();
  });
  controls.append(layerBoxes, el_("label", {}, " opacity ", alpha), el_("label", {}, " colours ", cmap));
  let nmfBox = null;
  if (data.nmf_k > 0) {
    nmfBox = el_("input", { type: "checkbox", class: "sto-nmf-toggle" });
    nmfBox.checked = !!model.get("show_nmf");
    nmfBox.addEventListener("change", () => {
      model.set("show_nmf", nmfBox.checked);
      model.save_changes();
      update();
    });
    controls.append(el_("label", {}, " ", nmfBox, ` NMF groups (k=${data.nmf_k})`));
  }
  const defaultInfo = `${data.model} \u00b7 ${data.similarity} similarity \u00b7 hover a patch; click to pin`;
  const info = el_("div", { class: "sto-info" }, defaultInfo);
  root.append(controls, info);

  // ---------------------------------------------------------------- image grid
  const grid = el_("div", { class: "sto-grid" });
  root.append(grid);
  const header = el_("div", { class: "sto-row sto-header" }, el_("div", { class: "sto-label" }));
  for (const im of data.images) header.append(el_("div", { class: "sto-name" }, im.name));
  grid.append(header);

  function makeCell(n, L, kind) {
    const img = el_("img", { class: "sto-img", src: data.images[n].src, draggable: "false", alt: data.images[n].name });
    const canvas = el_("canvas", { class: kind === "nmf" ? "sto-nmf" : "sto-ov", width: String(L.w), height: String(L.h) });
    const marker = el_("div", { class: "sto-marker" });
    const box = el_("div", { class: "sto-cell", "data-image": String(n), "data-layer": L.name }, img, canvas, marker);
    box.addEventListener("mousemove", (ev) => {
      if (pinned) return;
      const t0 = performance.now();
      const r = box.getBoundingClientRect();
      query = { n, fy: Math.min(0.999999, Math.max(0, (ev.clientY - r.top) / r.height)),
                fx: Math.min(0.999999, Math.max(0, (ev.clientX - r.left) / r.width)) };
      update();
      root.stoTimes.push(performance.now() - t0);
      if (root.stoTimes.length > 1000) root.stoTimes.shift();
      root.dataset.paintMs = root.stoTimes[root.stoTimes.length - 1].toFixed(3);
    });
    box.addEventListener("click", () => { pinned = !pinned; root.dataset.pinned = String(pinned); });
    const ctx = canvas.getContext("2d");
    return { box, canvas, marker, ctx, image: ctx.createImageData(L.w, L.h) };
  }

  // colour bar of one layer row: the colour map from lo (bottom) to hi (top), labelled
  function makeScale(L) {
    const bar = el_("canvas", { class: "sto-scale-bar", width: "1", height: "256" });
    const hiLabel = el_("div", { class: "sto-scale-hi" });
    const loLabel = el_("div", { class: "sto-scale-lo" });
    const name = el_("div", { class: "sto-scale-name" }, data.similarity);
    const box = el_("div", { class: "sto-scale", "data-layer": L.name }, hiLabel, bar, loLabel, name);
    if (L.err !== undefined) box.title = `colour range of ${L.name}; painted values are within ` +
      `${fmt(L.err)} of the exact ${data.similarity} (quantisation bound)`;
    return { box, bar, hiLabel, loLabel };
  }

  function paintScale(S, lut, lo, hi) {
    const ctx = S.bar.getContext("2d");
    const image = ctx.createImageData(1, 256);
    for (let y = 0; y < 256; y++) {
      const v = 3 * (255 - y);
      image.data[4 * y] = lut[v]; image.data[4 * y + 1] = lut[v + 1];
      image.data[4 * y + 2] = lut[v + 2]; image.data[4 * y + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    const known = lo !== undefined && lo !== null;
    S.hiLabel.textContent = known ? fmt(hi) : "max";
    S.loLabel.textContent = known ? fmt(lo) : "min";
    S.box.dataset.lo = known ? String(lo) : "";
    S.box.dataset.hi = known ? String(hi) : "";
  }

  const rows = layers.map((L) => {
    const row = el_("div", { class: "sto-row", "data-layer": L.name },
      el_("div", { class: "sto-label" }, `${L.name}`, el_("br"), `${L.h}\u00d7${L.w}`));
    const cells = [];
    for (let n = 0; n < N; n++) { const c = makeCell(n, L, "ov"); cells.push(c); row.append(c.box); }
    const scale = makeScale(L);
    row.append(scale.box);
    grid.append(row);
    const nmfRow = el_("div", { class: "sto-row sto-nmf-row", "data-layer": L.name },
      el_("div", { class: "sto-label" }, `${L.name}`, el_("br"), "NMF"));
    nmfRow.style.display = "none";
    const nmfCells = [];
    if (data.nmf_k > 0) {
      for (let n = 0; n < N; n++) { const c = makeCell(n, L, "nmf"); nmfCells.push(c); nmfRow.append(c.box); }
      grid.append(nmfRow);
    }
    return { row, cells, nmfRow, nmfCells, scale };
  });

  // ---------------------------------------------------------------- NMF factor maps
  // In the HTML export they come with the data; the widget gets them from Python (model "nmf")
  // the first time its box is ticked.
  let nmfData = null;
  const nmfLegend = el_("div", { class: "sto-legend" });
  root.append(nmfLegend);
  function loadNmf() {
    if (nmfData) return true;
    const text = model.get("nmf");
    const nd = data.nmf || (text ? JSON.parse(text) : null);
    if (!nd) return false;
    nmfData = nd;
    layers.forEach((L, li) => {
      const rgb = b64bytes(nd.layers[L.name]);
      const P = L.h * L.w;
      rows[li].nmfCells.forEach((c, n) => {
        for (let p = 0; p < P; p++) {
          for (let k = 0; k < 3; k++) c.image.data[4 * p + k] = rgb[(n * P + p) * 3 + k];
          c.image.data[4 * p + 3] = 255;
        }
        c.ctx.putImageData(c.image, 0, 0);
      });
    });
    nmfLegend.replaceChildren("NMF factors: ");
    nd.colors.forEach((c, k) => nmfLegend.append(
      el_("span", { class: "sto-swatch", style: { background: c } }), ` ${k + 1} `));
    root.dataset.nmf = "loaded";
    return true;
  }
  loadNmf();

  // ---------------------------------------------------------------- sensitivity chart
  let chart = null;
  if (sens) {
    const W = 420, H = 220, m = { l: 48, r: 12, t: 12, b: 38 };
    const xs = sens.values;
    let ylo = Infinity, yhi = -Infinity;
    for (const S of Object.values(sens.layers)) for (const row of S.curves) for (const v of row) {
      if (v !== null) { ylo = Math.min(ylo, v); yhi = Math.max(yhi, v); }
    }
    if (!isFinite(ylo)) { ylo = 0; yhi = 1; }
    if (yhi - ylo < 1e-9) { yhi = ylo + 1; }
    const xlo = Math.min(...xs), xhi = Math.max(...xs) > xlo ? Math.max(...xs) : xlo + 1;
    const X = (v) => m.l + (W - m.l - m.r) * (v - xlo) / (xhi - xlo);
    const Y = (v) => H - m.b - (H - m.t - m.b) * (v - ylo) / (yhi - ylo);
    const svg = svg_("svg", { class: "sto-chart", width: String(W), height: String(H), viewBox: `0 0 ${W} ${H}` });
    svg.append(svg_("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, class: "sto-axis" }));
    svg.append(svg_("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, class: "sto-axis" }));
    xs.forEach((v, t) => {
      const tx = svg_("text", { x: X(v), y: H - m.b + 14, class: "sto-tick", "text-anchor": "middle" });
      tx.textContent = sens.labels[t];
      svg.append(tx);
    });
    for (const v of [ylo, (ylo + yhi) / 2, yhi]) {
      const ty = svg_("text", { x: m.l - 4, y: Y(v) + 4, class: "sto-tick", "text-anchor": "end" });
      ty.textContent = v.toFixed(2);
      svg.append(ty);
    }
    const xl = svg_("text", { x: (m.l + W - m.r) / 2, y: H - 4, class: "sto-axis-label", "text-anchor": "middle" });
    xl.textContent = sens.kind === "rotation" ? "rotation (degrees)" : "zoom factor";
    svg.append(xl);
    const yl = svg_("text", { x: 12, y: (m.t + H - m.b) / 2, class: "sto-axis-label", "text-anchor": "middle",
      transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` });
    yl.textContent = `${data.similarity} to the original patch`;
    svg.append(yl);
    const plot = svg_("g", { class: "sto-curves" });
    svg.append(plot);
    const legend = el_("div", { class: "sto-chart-legend" });
    chart = { svg, plot, X, Y, legend };
    root.append(el_("div", { class: "sto-chart-box" }, svg, legend));
  }

  function drawChart(perLayer) {
    chart.plot.replaceChildren();
    chart.legend.replaceChildren();
    const parts = [];
    perLayer.forEach(({ L, li, orig, n }) => {
      const color = LAYER_COLORS[li % LAYER_COLORS.length];
      const S = sens.layers[L.name];
      chart.legend.append(el_("span", { class: "sto-swatch", style: { background: color } }),
        orig < 0 ? ` ${L.name}: outside the original frame ` : ` ${L.name} `);
      if (orig < 0) return;
      let seg = [];
      const flush = () => {
        if (seg.length > 1) chart.plot.append(svg_("polyline", { points: seg.join(" "), stroke: color, class: "sto-line" }));
        seg = [];
      };
      sens.values.forEach((v, t) => {
        const y = S.curves[t][orig];
        if (y === null) { flush(); return; }
        seg.push(`${chart.X(v).toFixed(1)},${chart.Y(y).toFixed(1)}`);
        chart.plot.append(svg_("circle", { cx: chart.X(v), cy: chart.Y(y), r: t === n ? 5 : 2.5, fill: color,
          class: t === n ? "sto-point sto-current" : "sto-point" }));
      });
      flush();
      parts.push(`${L.name}:${orig}`);
    });
    chart.svg.dataset.query = parts.join(";");
  }

  // ---------------------------------------------------------------- painting
  function update() {
    const on = model.get("layers_on") || [];
    const showNmf = !!model.get("show_nmf") && loadNmf();
    const a = model.get("alpha");
    const lut = luts[model.get("cmap")] || Object.values(luts)[0];
    const perLayer = [];
    layers.forEach((L, li) => {
      const R = rows[li];
      const visible = on.includes(L.name);
      R.row.style.display = visible ? "" : "none";
      R.nmfRow.style.display = visible && showNmf ? "" : "none";
      for (const c of R.nmfCells) c.canvas.style.opacity = String(a);
      if (!visible) return;
      if (!query) {
        if (L.scaleCmap !== model.get("cmap")) paintScale(R.scale, lut, queryRange ? null : L.lo, L.hi);
        L.scaleCmap = model.get("cmap");
        return;
      }
      const [i, j] = cellAt(query.fy, query.fx, L.h, L.w);
      const P = L.h * L.w;
      const r = query.n * P + i * L.w + j;
      const vals = L.values;
      const key = `${r}|${model.get("cmap")}`;
      if (L.painted !== key) {       // moving within one cell repaints nothing
        L.painted = key;
        if (L.mode === "sprite") spriteRow(L, r, vals); else featureRow(L, r, vals);
        let lo = L.lo, hi = L.hi;
        if (queryRange) {
          lo = Infinity; hi = -Infinity;
          for (let c = 0; c < vals.length; c++) { const v = vals[c]; if (v < lo) lo = v; if (v > hi) hi = v; }
          if (!(hi > lo)) hi = lo + 1;
        }
        paintScale(R.scale, lut, lo, hi);
        const k255 = 255 / (hi - lo);
        for (let b = 0; b < N; b++) {
          const c = R.cells[b];
          const px = c.image.data;
          const off = b * P;
          for (let p = 0; p < P; p++) {
            let t = Math.round((vals[off + p] - lo) * k255);
            t = 3 * (t < 0 ? 0 : t > 255 ? 255 : t);
            px[4 * p] = lut[t];
            px[4 * p + 1] = lut[t + 1];
            px[4 * p + 2] = lut[t + 2];
            px[4 * p + 3] = 255;
          }
          c.ctx.putImageData(c.image, 0, 0);
          c.canvas.dataset.query = `${query.n},${i},${j}`;
        }
      }
      for (const c of R.cells) c.canvas.style.opacity = String(a);
      let orig = -1;
      if (sens) {
        const S = sens.layers[L.name];
        orig = S.inverse[query.n][i * L.w + j];
        perLayer.push({ L, li, orig, n: query.n });
      }
      for (const group of [R.cells, R.nmfCells]) {
        group.forEach((c, b) => {
          c.marker.classList.remove("sto-corr");
          if (b === query.n) { placeMarker(c.marker, i, j, L.h, L.w); return; }
          if (sens && orig >= 0) {
            const p = sens.layers[L.name].forward[b][orig];
            if (p >= 0) {
              placeMarker(c.marker, Math.floor(p / L.w), p % L.w, L.h, L.w);
              c.marker.classList.add("sto-corr");
              return;
            }
          }
          c.marker.style.display = "none";
          delete c.marker.dataset.i;
          delete c.marker.dataset.j;
        });
      }
      R.row.dataset.query = `${query.n},${i},${j}`;
      R.row.dataset.self = vals[r].toFixed(3);
    });
    if (chart && query) drawChart(perLayer);
    let text = defaultInfo;
    if (query) {
      root.dataset.query = `${query.n},${query.fy.toFixed(4)},${query.fx.toFixed(4)}`;
      text = `${data.model} \u00b7 ${data.similarity} similarity \u00b7 image ` +
        `"${data.images[query.n].name}" at (${query.fy.toFixed(2)}, ${query.fx.toFixed(2)})` +
        (pinned ? " \u00b7 pinned (click to release)" : "");
    }
    if (model.get("show_nmf") && !nmfData) text += " \u00b7 computing the NMF groups in Python\u2026";
    info.textContent = text;
  }

  for (const key of ["alpha", "cmap", "layers_on", "show_nmf", "nmf"]) {
    model.on("change:" + key, () => {
      if (key === "alpha") alpha.value = String(model.get("alpha"));
      if (key === "cmap") cmap.value = model.get("cmap");
      if (key === "show_nmf" && nmfBox) nmfBox.checked = !!model.get("show_nmf");
      if (key === "layers_on") {
        for (const box of layerBoxes.querySelectorAll("input")) {
          box.checked = (model.get("layers_on") || []).includes(box.dataset.layer);
        }
      }
      update();
    });
  }
  root.dataset.ready = "true";
  update();
}

export default { render };

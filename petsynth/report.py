"""One self-contained ``report.html`` per translation: MIPs, a slice viewer, tables and the model's facts.

The page opens from disk in any current browser with no server and no network: everything is inside it (the
images as PNG/GIF data, the volumes zlib-compressed and base64-encoded, decoded by the browser's own
``DecompressionStream``; script and style inline). What it shows:

- the "not for diagnosis" label and the model card's facts (name, method, task, training data);
- a coronal MIP of the synthetic PET (and of the real PET beside it where there is one) and, optionally, a
  rotating MIP (animated GIF);
- a slice viewer: a plane switch (axial / coronal / sagittal), a slider over the slices, CT window presets
  (soft tissue, lung, bone) or an MR range, an SUV scale for the PET, and the panels anatomy | synthetic PET |
  fused, plus real PET | error (synthetic - real) where a reference exists;
- tables given by the caller (metrics, organ and lesion SUV).

No patient identifier goes into it: no names, ids, dates, UIDs or input paths; callers pass facts, not headers.

Volumes are shown on one grid (the caller's ``geometry``), reordered with
:func:`petsynth.io.views.canonical`: CT stored as HU + 1024 in uint16 (-1024..64511 HU), PET and MR as
uint16 of value x 100 (0.01 SUV steps, up to 655 SUV).
"""

from __future__ import annotations

import base64
import html
import io
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from petsynth import __version__
from petsynth.data.geometry import Geometry
from petsynth.io import views
from petsynth.utils.files import atomic_write_text

NOT_FOR_DIAGNOSIS = "Synthetic PET computed by petsynth: not an acquisition, not for diagnosis."
#: Value scale of the non-CT volumes in the page (uint16 = value x this).
VALUE_SCALE = 100.0
#: CT offset in the page (uint16 = HU + this).
HU_OFFSET = 1024.0


@dataclass
class Table:
    """A table for the report: a title, column names and rows of cells (numbers are formatted with ``digits``)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    digits: int = 3
    note: str = ""


@dataclass
class ReportContent:
    """What :func:`write_report` puts on the page.

    ``anatomy``: the CT (HU) or MR the PET was synthesized from, on ``geometry``; ``anatomy_kind`` "ct" or
    "mr"; ``synthetic``: the synthetic PET (SUV); ``reference``: a real PET (SUV) on the same grid, or None.
    Without ``synthetic`` (an evaluation over slices of many studies) the page has no MIPs and no viewer.
    ``facts``: label -> value (model card facts, options); ``tables``; ``figures``: (caption, PNG bytes);
    ``notes``: lines under the title."""

    title: str
    geometry: Geometry | None = None
    anatomy: np.ndarray | None = None
    synthetic: np.ndarray | None = None
    anatomy_kind: str = "ct"
    anatomy_label: str = "CT"
    reference: np.ndarray | None = None
    reference_label: str = "real PET"
    facts: Mapping[str, Any] = field(default_factory=dict)
    tables: Sequence[Table] = ()
    figures: Sequence[tuple[str, bytes]] = ()
    notes: Sequence[str] = ()
    rotating_mip: bool = True
    pet_max: float = views.PET_DISPLAY_MAX


def training_summary(data: Mapping[str, Any]) -> str:
    """A model card's training-data facts as one line ("dataset: ..., train_slices: 1791, ..."), or "not
    recorded"."""
    return ", ".join(f"{k}: {v}" for k, v in data.items()) or "not recorded"


def _png_data(fig_writer, *args, **kwargs) -> str:
    """A PNG written by one of :mod:`petsynth.io.views`' savers, as a data URI."""
    buffer = io.BytesIO()
    fig_writer(buffer, *args, **kwargs)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _gif_data(frames: Sequence[np.ndarray], high: float, duration_ms: int = 120) -> str:
    """An animated GIF (inverted grey over 0..``high``) of ``frames``, as a data URI."""
    from PIL import Image

    images = [Image.fromarray((255 - np.clip(f / high, 0, 1) * 255).astype(np.uint8)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _volume_data(volume: np.ndarray, geometry: Geometry, kind: str) -> str:
    """The volume in display order (:func:`~petsynth.io.views.canonical`) as base64 of zlib-compressed
    little-endian uint16 (CT: HU + 1024; others: value x 100)."""
    c, _ = views.canonical(np.asarray(volume, dtype=np.float32), geometry)
    if kind == "ct":
        stored = np.clip(np.rint(c + HU_OFFSET), 0, 65535)
    else:
        stored = np.clip(np.rint(c * VALUE_SCALE), 0, 65535)
    raw = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v, table.digits)}</td>" for v in row) + "</tr>"
                   for row in table.rows)
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _volume_sections(content: ReportContent) -> tuple[str, str, dict]:
    """The MIP section, the viewer section and the viewer's data."""
    g = content.geometry
    for name, volume in (("anatomy", content.anatomy), ("synthetic", content.synthetic),
                         ("reference", content.reference)):
        if volume is not None and tuple(volume.shape) != tuple(g.shape):
            raise ValueError(f"the {name} volume has shape {tuple(volume.shape)}, the grid {tuple(g.shape)}")
    mips = [(content.synthetic, "synthetic PET")]
    if content.reference is not None:
        mips.append((content.reference, content.reference_label))
    mip_png = _png_data(views.save_mip_png, mips, g, pet_max=content.pet_max, title="coronal MIP")
    gif = ""
    if content.rotating_mip:
        frames = views.rotating_mip(content.synthetic, g, frames=24)
        if content.reference is not None:
            frames = [np.concatenate([a, b], axis=1)
                      for a, b in zip(frames, views.rotating_mip(content.reference, g, frames=24))]
        both = f" (synthetic | {html.escape(content.reference_label)})" if content.reference is not None else ""
        gif = (f"<figure><img class='gif' alt='rotating MIP' src='{_gif_data(frames, content.pet_max)}'>"
               f"<figcaption>rotating MIP{both}</figcaption></figure>")
    _, spacing = views.canonical(content.synthetic, g)
    anatomy_range = ([float(v) for v in np.percentile(content.anatomy, [1, 99.5])]
                     if content.anatomy_kind != "ct" else None)
    data = {
        "shape": [views.plane_size(g, p) for p in views.PLANES], "spacing": list(spacing),
        "anatomyKind": content.anatomy_kind, "anatomyLabel": content.anatomy_label,
        "referenceLabel": content.reference_label, "valueScale": VALUE_SCALE, "huOffset": HU_OFFSET,
        "petMax": content.pet_max, "ctWindows": {k: list(v) for k, v in views.CT_WINDOWS.items()},
        "anatomyRange": anatomy_range,
        "volumes": {"anatomy": _volume_data(content.anatomy, g, content.anatomy_kind),
                    "synthetic": _volume_data(content.synthetic, g, "pet"),
                    **({"reference": _volume_data(content.reference, g, "pet")}
                       if content.reference is not None else {})},
    }
    mip_section = _MIP_SECTION.replace("%MIP%", mip_png).replace("%GIF%", gif)
    return mip_section, _VIEWER_SECTION, data


def write_report(path: str | Path, content: ReportContent) -> Path:
    """Write ``content`` as one self-contained HTML file (atomically); returns its path."""
    if content.synthetic is not None and (content.geometry is None or content.anatomy is None):
        raise ValueError("a report with volumes needs the geometry, the anatomy and the synthetic PET")
    mip_section, viewer_section, data = ("", "", {}) if content.synthetic is None else _volume_sections(content)
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in content.facts.items())
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in content.notes)
    tables = "".join(_table_html(t) for t in content.tables)
    figures = "".join(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                      f"{base64.b64encode(png).decode('ascii')}'><figcaption>{html.escape(caption)}</figcaption>"
                      "</figure>" for caption, png in content.figures)
    page = (_TEMPLATE
            .replace("%TITLE%", html.escape(content.title))
            .replace("%LABEL%", html.escape(NOT_FOR_DIAGNOSIS))
            .replace("%VERSION%", html.escape(__version__))
            .replace("%NOTES%", notes)
            .replace("%FACTS%", facts)
            .replace("%MIPS%", mip_section)
            .replace("%VIEWER%", viewer_section)
            .replace("%FIGURES%", f"<section><h2>Figures</h2>{figures}</section>" if figures else "")
            .replace("%TABLES%", tables or "<p class='note'>No tables for this run.</p>")
            .replace("%DATA%", json.dumps(data).replace("</", "<\\/")))
    path = Path(path)
    atomic_write_text(path, page)
    return path


_MIP_SECTION = """<section><h2>Maximum-intensity projections</h2><div class="mips">
<figure><img alt="coronal MIP" src="%MIP%"><figcaption>coronal MIP (inverted grey, SUV)</figcaption></figure>
%GIF%</div></section>"""

_VIEWER_SECTION = """<section><h2>Slices</h2>
<div id="controls">
  <span>plane:
    <label><input type="radio" name="plane" value="axial" checked> axial</label>
    <label><input type="radio" name="plane" value="coronal"> coronal</label>
    <label><input type="radio" name="plane" value="sagittal"> sagittal</label></span>
  <label>slice <input id="slice" type="range" min="0" max="0" value="0"> <span id="sliceText"></span></label>
  <label id="windowBox">window <select id="window"></select></label>
  <label>PET scale 0 .. <input id="suvmax" type="number" min="0.5" max="100" step="0.5" style="width: 4em"> SUV</label>
</div>
<div id="panels"></div>
<p class="note" id="status">decoding the volumes...</p>
</section>"""


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="petsynth %VERSION%">
<title>%TITLE%</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
.label { display: inline-block; background: #b00020; color: #fff; padding: 0.3em 0.7em; border-radius: 4px;
         font-weight: 600; }
.note { color: #555; font-size: 0.9em; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
table.facts td { text-align: left; }
#controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin-bottom: 0.6em; }
#panels { display: flex; flex-wrap: wrap; gap: 0.6em; }
#panels figure { margin: 0; }
#panels figcaption { background: #fff; font-size: 0.85em; padding: 0.2em 0; }
canvas { display: block; width: 300px; }
img { max-width: 100%; }
.mips { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.mips figure { margin: 0; } .mips img { max-height: 520px; }
.mips img.gif { height: 420px; image-rendering: pixelated; }  /* scaled by the browser: a small file */
</style></head>
<body>
<h1>%TITLE%</h1>
<p><span class="label">%LABEL%</span></p>
%NOTES%
<section><h2>Model and run</h2><table class="facts">%FACTS%</table></section>
%MIPS%
%VIEWER%
%FIGURES%
<section><h2>Tables</h2>%TABLES%</section>
<p class="note">Written by petsynth %VERSION%. The page needs no network: every image and volume is inside it.</p>
<script id="petsynth-data" type="application/json">%DATA%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("petsynth-data").textContent);
const V = {};
const PLANES = ["axial", "coronal", "sagittal"];
const state = { plane: "axial", index: {}, suvmax: D.petMax, window: null };

async function decode(b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint16Array(await new Response(stream).arrayBuffer());
}

function hot(t) {  // matplotlib's "hot": black -> red -> yellow -> white
  return [Math.min(1, t / 0.365) * 255, Math.min(1, Math.max(0, (t - 0.365) / 0.381)) * 255,
          Math.min(1, Math.max(0, (t - 0.746) / 0.254)) * 255];
}

function sliceOf(vol, plane, k) {  // -> {w, h, get(x, y)} over the display-ordered volume [s][a][r]
  const [ns, na, nr] = D.shape;
  if (plane === "axial") return { w: nr, h: na, at: (x, y) => vol[(k * na + y) * nr + x] };
  if (plane === "coronal") return { w: nr, h: ns, at: (x, y) => vol[(y * na + k) * nr + x] };
  return { w: na, h: ns, at: (x, y) => vol[(y * na + x) * nr + k] };
}

function aspect(plane) {  // displayed height / width of a pixel
  const [ss, sa, sr] = D.spacing;
  return plane === "axial" ? sa / sr : plane === "coronal" ? ss / sr : ss / sa;
}

function anatomyGrey(v) {
  if (D.anatomyKind === "ct") {
    const [level, width] = D.ctWindows[state.window];
    return Math.max(0, Math.min(1, (v - D.huOffset - (level - width / 2)) / width));
  }
  const [lo, hi] = D.anatomyRange;
  return Math.max(0, Math.min(1, (v / D.valueScale - lo) / (hi - lo)));
}

function draw(canvas, plane, k, pixel) {
  const S = {};
  for (const name of Object.keys(V)) S[name] = sliceOf(V[name], plane, k);
  const w = S.synthetic.w, h = S.synthetic.h;
  canvas.width = w; canvas.height = h;
  canvas.style.height = (300 * h * aspect(plane) / w) + "px";
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const rgb = pixel(S, x, y);
    const o = 4 * (y * w + x);
    img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function petGrey(v) {
  const g = 255 * (1 - Math.min(1, v / D.valueScale / state.suvmax));
  return [g, g, g];
}

const PANELS = [
  { id: "anatomy", caption: () => D.anatomyLabel, pixel: (S, x, y) => {
      const g = 255 * anatomyGrey(S.anatomy.at(x, y)); return [g, g, g]; } },
  { id: "synthetic", caption: () => "synthetic PET (SUV)", pixel: (S, x, y) => petGrey(S.synthetic.at(x, y)) },
  { id: "fused", caption: () => "synthetic PET over " + D.anatomyLabel, pixel: (S, x, y) => {
      const g = 255 * anatomyGrey(S.anatomy.at(x, y));
      const t = Math.min(1, S.synthetic.at(x, y) / D.valueScale / state.suvmax);
      const a = 0.7 * Math.sqrt(t), c = hot(t);
      return [g * (1 - a) + c[0] * a, g * (1 - a) + c[1] * a, g * (1 - a) + c[2] * a]; } },
  { id: "reference", needs: "reference", caption: () => D.referenceLabel + " (SUV)",
    pixel: (S, x, y) => petGrey(S.reference.at(x, y)) },
  { id: "error", needs: "reference", caption: () => "synthetic - " + D.referenceLabel + " (blue < 0 < red)",
    pixel: (S, x, y) => {
      const e = (S.synthetic.at(x, y) - S.reference.at(x, y)) / D.valueScale;
      const t = Math.max(-1, Math.min(1, e / (state.suvmax / 2)));
      return t >= 0 ? [255, 255 * (1 - t), 255 * (1 - t)] : [255 * (1 + t), 255 * (1 + t), 255]; } },
];

function render() {
  const k = state.index[state.plane];
  document.getElementById("sliceText").textContent =
    `${state.plane} ${k + 1} / ${D.shape[PLANES.indexOf(state.plane)]}`;
  for (const p of PANELS) {
    const canvas = document.getElementById("c-" + p.id);
    if (canvas) draw(canvas, state.plane, k, p.pixel);
  }
  document.body.dataset.rendered = `${state.plane}:${k}`;
}

function setPlane(plane) {
  state.plane = plane;
  const slider = document.getElementById("slice");
  slider.max = D.shape[PLANES.indexOf(plane)] - 1;
  slider.value = state.index[plane];
  render();
}

async function main() {
  for (const [name, b64] of Object.entries(D.volumes)) V[name] = await decode(b64);
  PLANES.forEach((p, n) => { state.index[p] = Math.floor(D.shape[n] / 2); });
  const panels = document.getElementById("panels");
  for (const p of PANELS) {
    if (p.needs && !V[p.needs]) continue;
    const fig = document.createElement("figure");
    fig.innerHTML = `<canvas id="c-${p.id}"></canvas><figcaption>${p.caption()}</figcaption>`;
    panels.appendChild(fig);
  }
  const select = document.getElementById("window");
  if (D.anatomyKind === "ct") {
    for (const name of Object.keys(D.ctWindows)) select.add(new Option(name, name));
    state.window = Object.keys(D.ctWindows)[0];
    select.addEventListener("change", () => { state.window = select.value; render(); });
  } else {
    document.getElementById("windowBox").style.display = "none";
  }
  const suv = document.getElementById("suvmax");
  suv.value = state.suvmax;
  suv.addEventListener("input", () => { const v = parseFloat(suv.value); if (v > 0) { state.suvmax = v; render(); } });
  document.getElementById("slice").addEventListener("input", e => {
    state.index[state.plane] = parseInt(e.target.value, 10); render(); });
  document.querySelectorAll("input[name=plane]").forEach(r => r.addEventListener("change", () => setPlane(r.value)));
  setPlane("axial");
  document.getElementById("status").textContent =
    "Drag the slider to move through the slices; pixels are shown at their true aspect.";
}
if (D.volumes) main().catch(err => { document.getElementById("status").textContent = "could not show the volumes: " + err; });
</script>
</body></html>
"""

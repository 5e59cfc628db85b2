"""The interactive attention viewer: `maps` results over their pictures, layer by layer.

What it can show follows what `maps` stores: per layer, the attention of the generated tokens
averaged over those tokens and over heads (one map per view: `global`, and `detail` for tiled
families). There is no per-token map in the store, so the viewer steps through layers (slider,
arrow keys, play) and images (selector), not through generated tokens; the generated text is
shown whole. When a `fractions` result exists for the same model and image, the layer's split
of attention over prefix / image / query / generated is shown next to the map.

Data is embedded in the page as JSON: each map quantised to 8 bits against its own maximum
(which is kept, so the viewer can also draw every layer on one shared scale), base64-encoded;
the picture as a small inline JPEG. A 30-layer, one-view, 24 x 24 image costs about 23 KB of
maps plus its thumbnail. The script is plain JavaScript with no library, so the report works
from the file system without a network.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmflow.report.page import esc
from vlmflow.report.pictures import data_uri, placeholder, thumbnail

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_IMAGES = 40  # viewer entries embedded in one report (the figure and tables cover them all)
ROLE_ORDER = ("prefix", "image", "query", "generated")


def quantise(maps: np.ndarray) -> tuple[bytes, list[list[float]]]:
    """(layers, views, S, S) maps -> 8-bit values scaled per map, and each map's maximum.

    Scaling each map to its own maximum keeps the shape of low-mass layers visible; the kept
    maxima give the true values back (to 1/255 of each map's peak).
    """
    data = np.nan_to_num(maps.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    data = np.clip(data, 0.0, None)
    peaks = data.max(axis=(2, 3))  # (layers, views)
    scale = np.where(peaks > 0, peaks, 1.0)[:, :, None, None]
    levels = np.rint(data / scale * 255).astype(np.uint8)  # (layers, views, S, S)
    return levels.tobytes(), [[float(f"{p:.6g}") for p in row] for row in peaks.tolist()]


def colormap(name: str = "inferno", steps: int = 256) -> list[list[int]]:
    """The named matplotlib colormap as `steps` RGB triples for the script's lookup table."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    rgba = cmap(np.linspace(0.0, 1.0, steps))
    return [[round(255 * c) for c in row[:3]] for row in rgba]


@dataclass(frozen=True)
class ViewerImage:
    """One maps result prepared for the viewer."""

    label: str
    layers: Sequence[int]
    views: Sequence[str]
    size: int
    maps: np.ndarray  # (layers, views, size, size)
    text: str
    aspect: float  # width / height of the original image
    picture: Image | None
    image_share: Sequence[float]
    separator_share: Sequence[float]
    shares: Mapping[int, Sequence[float]] | None  # layer -> shares in ROLE_ORDER

    def to_json(self) -> dict[str, Any]:
        levels, peaks = quantise(self.maps)
        picture = thumbnail(self.picture) if self.picture is not None else placeholder(self.aspect)
        return {
            "label": self.label,
            "layers": list(self.layers),
            "views": list(self.views),
            "size": self.size,
            "maps": base64.b64encode(levels).decode("ascii"),
            "peaks": peaks,
            "text": self.text,
            "aspect": self.aspect,
            "picture": data_uri(picture),
            "hasPicture": self.picture is not None,
            "imageShare": list(self.image_share),
            "separatorShare": list(self.separator_share),
            "shares": (
                {str(layer): list(v) for layer, v in self.shares.items()} if self.shares else None
            ),
        }


def script_json(value: Any) -> str:
    """JSON that is safe inside a `<script>` element (no `</script>` or `<!--` can appear)."""
    return (
        json.dumps(value, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def viewer_html(images: Sequence[ViewerImage], left_out: int = 0) -> str:
    """The viewer's markup and embedded data; the behaviour is `SCRIPT` (added once per page)."""
    items = [image.to_json() for image in images]
    first = items[0]
    start = len(first["layers"]) // 2
    options = "".join(
        f'<option value="{i}">{esc(item["label"])}</option>' for i, item in enumerate(items)
    )
    data = {"items": items, "colormap": colormap(), "roles": list(ROLE_ORDER)}
    more = (
        f'<p class="muted">The viewer holds the first {len(items)} images; '
        f"{left_out} more are in the figures and tables only.</p>"
        if left_out
        else ""
    )
    legend = "".join(
        f'<span><i style="background:{color}"></i>{role}</span>'
        for role, color in ROLE_SWATCHES.items()
    )
    return f"""
<p class="muted">The stored maps average attention over the generated tokens, so the viewer
steps through layers (slider, arrow keys, Play) and images; the whole generated text is shown.
</p>{more}
<div class="viewer" id="viewer">
  <div class="viewer-stage" id="viewer-stage">
    <img id="viewer-picture" alt="image under the attention map" src="{first["picture"]}">
    <canvas id="viewer-canvas" width="384" height="384"></canvas>
  </div>
  <div class="viewer-panel">
    <label for="viewer-image">Image</label>
    <select id="viewer-image">{options}</select>
    <label for="viewer-layer">Layer</label>
    <input type="range" id="viewer-layer" min="0" max="{len(first["layers"]) - 1}"
           value="{start}" step="1">
    <div class="viewer-layer-label" id="viewer-layer-label">layer</div>
    <button type="button" id="viewer-play">Play</button>
    <label for="viewer-view">View</label>
    <select id="viewer-view"></select>
    <label for="viewer-scale">Colour scale</label>
    <select id="viewer-scale">
      <option value="layer">each layer to its own maximum</option>
      <option value="image">one scale for all layers of the image</option>
    </select>
    <label for="viewer-opacity">Map opacity</label>
    <input type="range" id="viewer-opacity" min="0" max="100" value="80" step="5">
    <div id="viewer-stats" class="muted"></div>
    <div id="viewer-roles" hidden>
      <label>Attention by token role at this layer (fractions)</label>
      <div class="shares" id="viewer-shares"></div>
      <div class="legend">{legend}</div>
    </div>
    <label>Generated text</label>
    <div class="viewer-text" id="viewer-text"></div>
  </div>
</div>
<script type="application/json" id="viewer-data">{script_json(data)}</script>
"""


ROLE_SWATCHES = {
    "prefix": "#8c8c8c",
    "image": "#1f77b4",
    "query": "#ff7f0e",
    "generated": "#2ca02c",
}

SCRIPT = r"""
(function () {
  "use strict";
  var node = document.getElementById("viewer-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  var items = data.items, lut = data.colormap, roles = data.roles;
  var swatch = {prefix: "#8c8c8c", image: "#1f77b4", query: "#ff7f0e", generated: "#2ca02c"};
  function el(id) { return document.getElementById(id); }
  var imageSelect = el("viewer-image"), layerInput = el("viewer-layer"),
      viewSelect = el("viewer-view"), scaleSelect = el("viewer-scale"),
      opacityInput = el("viewer-opacity"), picture = el("viewer-picture"),
      canvas = el("viewer-canvas"), label = el("viewer-layer-label"),
      stats = el("viewer-stats"), text = el("viewer-text"), play = el("viewer-play"),
      rolesBox = el("viewer-roles"), sharesBar = el("viewer-shares");
  var decoded = {}, timer = null;

  function levels(index) {
    if (!decoded[index]) {
      var raw = atob(items[index].maps), out = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
      decoded[index] = out;
    }
    return decoded[index];
  }

  // attention mass per canvas pixel of one layer, for one view or all views summed
  function values(index, layer, view) {
    var item = items[index], n = item.size * item.size, nv = item.views.length;
    var q = levels(index), out = new Float32Array(n);
    for (var v = 0; v < nv; v++) {
      if (view !== "combined" && item.views[v] !== view) { continue; }
      var peak = item.peaks[layer][v] / 255, base = (layer * nv + v) * n;
      for (var p = 0; p < n; p++) { out[p] += q[base + p] * peak; }
    }
    return out;
  }

  function maximum(arr) {
    var m = 0;
    for (var i = 0; i < arr.length; i++) { if (arr[i] > m) { m = arr[i]; } }
    return m;
  }

  function imageMaximum(index, view) {
    var m = 0;
    for (var l = 0; l < items[index].layers.length; l++) {
      m = Math.max(m, maximum(values(index, l, view)));
    }
    return m;
  }

  function fillViews(index) {
    var item = items[index], keep = viewSelect.value;
    viewSelect.innerHTML = "";
    var names = item.views.length > 1 ? ["combined"].concat(item.views) : item.views;
    names.forEach(function (name) {
      var option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      viewSelect.appendChild(option);
    });
    if (names.indexOf(keep) >= 0) { viewSelect.value = keep; }
  }

  function selectImage() {
    var index = Number(imageSelect.value), item = items[index];
    var last = item.layers.length - 1;
    layerInput.max = String(last);
    if (Number(layerInput.value) > last) { layerInput.value = String(last); }
    fillViews(index);
    picture.src = item.picture;
    canvas.width = 384;
    canvas.height = Math.max(1, Math.round(384 / item.aspect));
    picture.style.height = canvas.height + "px";
    text.textContent = item.text;
    draw();
  }

  function draw() {
    var index = Number(imageSelect.value), item = items[index];
    var layer = Number(layerInput.value), view = viewSelect.value || item.views[0];
    var vals = values(index, layer, view);
    var top = scaleSelect.value === "image" ? imageMaximum(index, view) : maximum(vals);
    var opacity = Number(opacityInput.value) / 100, size = item.size;
    var tile = document.createElement("canvas");
    tile.width = size;
    tile.height = size;
    var tctx = tile.getContext("2d"), img = tctx.createImageData(size, size);
    for (var p = 0; p < vals.length; p++) {
      var t = top > 0 ? Math.min(1, vals[p] / top) : 0, c = lut[Math.round(t * (lut.length - 1))];
      img.data[4 * p] = c[0];
      img.data[4 * p + 1] = c[1];
      img.data[4 * p + 2] = c[2];
      img.data[4 * p + 3] = Math.round(255 * opacity * t);
    }
    tctx.putImageData(img, 0, 0);
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(tile, 0, 0, canvas.width, canvas.height);
    var number = item.layers[layer];
    label.textContent = "layer " + number + "  (" + (layer + 1) + " of " + item.layers.length + ")";
    var peakAt = 0;
    for (var i = 1; i < vals.length; i++) { if (vals[i] > vals[peakAt]) { peakAt = i; } }
    stats.textContent = "attention to the image " + item.imageShare[layer].toFixed(3) +
      ", on separator tokens " + item.separatorShare[layer].toFixed(3) +
      "; peak at row " + Math.floor(peakAt / size) + ", column " + (peakAt % size) +
      " of " + size + (item.hasPicture ? "" : " (picture not found: grey background)");
    var shares = item.shares ? item.shares[String(number)] : null;
    rolesBox.hidden = !shares;
    sharesBar.innerHTML = "";
    if (shares) {
      roles.forEach(function (role, r) {
        var part = document.createElement("span");
        part.style.width = (100 * shares[r]).toFixed(2) + "%";
        part.style.background = swatch[role];
        part.title = role + " " + shares[r].toFixed(3);
        sharesBar.appendChild(part);
      });
    }
  }

  function step() {
    var last = Number(layerInput.max), next = Number(layerInput.value) + 1;
    layerInput.value = String(next > last ? 0 : next);
    draw();
  }

  play.addEventListener("click", function () {
    if (timer === null) {
      timer = window.setInterval(step, 450);
      play.textContent = "Pause";
    } else {
      window.clearInterval(timer);
      timer = null;
      play.textContent = "Play";
    }
  });
  imageSelect.addEventListener("change", selectImage);
  layerInput.addEventListener("input", draw);
  viewSelect.addEventListener("change", draw);
  scaleSelect.addEventListener("change", draw);
  opacityInput.addEventListener("input", draw);
  selectImage();
})();
"""

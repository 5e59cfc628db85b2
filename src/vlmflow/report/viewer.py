"""The interactive attention viewer: `maps` results over their pictures, by layer and token.

What it can show follows what `maps` stores: per layer, the attention of the generated tokens
over the image, heads averaged (one map per view: `global`, and `detail` for tiled families),
averaged over the generated tokens and, with `per_token` (the default), for each generated token
alone on a smaller canvas. The viewer steps through layers (slider, arrow keys, Play), generated
tokens (slider, or a click on a token of the text, which marks the one shown) and images
(selector). When a `fractions` result exists for the same model and image, the layer's split of
attention over prefix / image / query / generated is shown next to the map.

Data is embedded in the page as JSON: each map quantised to 8 bits against its own maximum
(which is kept, so the viewer can also draw every layer on one shared scale), base64-encoded;
the picture as a small inline JPEG. A 30-layer, one-view, 24 x 24 image costs about 23 KB of
maps plus its thumbnail; its per-token maps (12 x 12) about 5.8 KB per generated token, so they
are embedded for the first `MAX_TOKEN_IMAGES` images only. The script is plain JavaScript with
no library, so the report works from the file system without a network.
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
MAX_TOKEN_IMAGES = 8  # of those, the ones whose per-token maps are embedded too
ROLE_ORDER = ("prefix", "image", "query", "generated")


def quantise(maps: np.ndarray) -> tuple[bytes, list[list[float]]]:
    """(maps, views, S, S) maps -> 8-bit values scaled per map, and each map's maximum.

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
    tokens: Sequence[str] | None = None  # (Q,) text of each generated query's token
    token_maps: np.ndarray | None = None  # (Q, layers, views, T, T)

    def token_json(self) -> dict[str, Any]:
        if self.token_maps is None or not self.tokens:
            return {"tokens": None}
        q, n_layers = self.token_maps.shape[:2]
        if q != len(self.tokens) or n_layers != len(self.layers):
            raise ValueError(f"{self.label}: per-token maps do not match the tokens and layers")
        levels, peaks = quantise(self.token_maps.reshape(q * n_layers, *self.token_maps.shape[2:]))
        return {
            "tokens": list(self.tokens),
            "tokenSize": int(self.token_maps.shape[-1]),
            "tokenMaps": base64.b64encode(levels).decode("ascii"),
            "tokenPeaks": peaks,  # (Q * layers, views): token-major
        }

    def to_json(self) -> dict[str, Any]:
        levels, peaks = quantise(self.maps)
        picture = thumbnail(self.picture) if self.picture is not None else placeholder(self.aspect)
        return {
            **self.token_json(),
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
<p class="muted">Step through layers (slider, arrow keys, Play), generated tokens (slider, or
click a token of the text; "all" is their average) and images. Per-token maps use a coarser
canvas and are embedded for the first {MAX_TOKEN_IMAGES} images.</p>{more}
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
    <div id="viewer-tokens">
      <label for="viewer-token">Generated token</label>
      <input type="range" id="viewer-token" min="0" max="0" value="0" step="1">
      <div class="viewer-layer-label" id="viewer-token-label">all tokens</div>
    </div>
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
    <label>Generated text (query tokens: each attends to predict the next)</label>
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
      rolesBox = el("viewer-roles"), sharesBar = el("viewer-shares"),
      tokenBox = el("viewer-tokens"), tokenInput = el("viewer-token"),
      tokenLabel = el("viewer-token-label");
  var decoded = {}, timer = null;

  function bytes(b64) {
    var raw = atob(b64), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out;
  }

  function levels(index, perToken) {
    var key = index + (perToken ? "t" : "m");
    if (!decoded[key]) {
      decoded[key] = bytes(perToken ? items[index].tokenMaps : items[index].maps);
    }
    return decoded[key];
  }

  // 0: the average over generated tokens; t >= 1: generated query t - 1 alone
  function token() {
    return items[Number(imageSelect.value)].tokens ? Number(tokenInput.value) : 0;
  }

  function sizeOf(item, tok) { return tok > 0 ? item.tokenSize : item.size; }

  // attention mass per canvas pixel of one layer, for one view or all views summed
  function values(index, layer, view, tok) {
    var item = items[index], size = sizeOf(item, tok), n = size * size, nv = item.views.length;
    var q = levels(index, tok > 0), out = new Float32Array(n);
    var map = tok > 0 ? (tok - 1) * item.layers.length + layer : layer;
    var peaks = tok > 0 ? item.tokenPeaks : item.peaks;
    for (var v = 0; v < nv; v++) {
      if (view !== "combined" && item.views[v] !== view) { continue; }
      var peak = peaks[map][v] / 255, base = (map * nv + v) * n;
      for (var p = 0; p < n; p++) { out[p] += q[base + p] * peak; }
    }
    return out;
  }

  function showText(item, tok) {
    text.innerHTML = "";
    if (!item.tokens) { text.textContent = item.text; return; }
    item.tokens.forEach(function (piece, i) {
      var span = document.createElement("span");
      span.className = "tok" + (tok === i + 1 ? " tok-on" : "");
      span.textContent = piece;
      span.title = "token " + (i + 1) + " of " + item.tokens.length;
      span.addEventListener("click", function () {
        tokenInput.value = String(tokenInput.value === String(i + 1) ? 0 : i + 1);
        draw();
      });
      text.appendChild(span);
    });
  }

  function maximum(arr) {
    var m = 0;
    for (var i = 0; i < arr.length; i++) { if (arr[i] > m) { m = arr[i]; } }
    return m;
  }

  function imageMaximum(index, view, tok) {
    var m = 0;
    for (var l = 0; l < items[index].layers.length; l++) {
      m = Math.max(m, maximum(values(index, l, view, tok)));
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
    tokenBox.hidden = !item.tokens;
    tokenInput.max = String(item.tokens ? item.tokens.length : 0);
    if (Number(tokenInput.value) > Number(tokenInput.max)) { tokenInput.value = "0"; }
    picture.src = item.picture;
    canvas.width = 384;
    canvas.height = Math.max(1, Math.round(384 / item.aspect));
    picture.style.height = canvas.height + "px";
    draw();
  }

  function draw() {
    var index = Number(imageSelect.value), item = items[index];
    var layer = Number(layerInput.value), view = viewSelect.value || item.views[0];
    var tok = token(), vals = values(index, layer, view, tok);
    var top = scaleSelect.value === "image" ? imageMaximum(index, view, tok) : maximum(vals);
    var opacity = Number(opacityInput.value) / 100, size = sizeOf(item, tok);
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
    tokenLabel.textContent = tok > 0
      ? "token " + tok + " of " + item.tokens.length + ": " + JSON.stringify(item.tokens[tok - 1])
      : "all tokens (average)";
    showText(item, tok);
    var peakAt = 0;
    for (var i = 1; i < vals.length; i++) { if (vals[i] > vals[peakAt]) { peakAt = i; } }
    var mass = 0;
    for (var j = 0; j < vals.length; j++) { mass += vals[j]; }
    stats.textContent = (tok > 0
      ? "this token's attention on the picture " + mass.toFixed(3)
      : "attention to the image " + item.imageShare[layer].toFixed(3) +
        ", on separator tokens " + item.separatorShare[layer].toFixed(3)) +
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
  tokenInput.addEventListener("input", draw);
  viewSelect.addEventListener("change", draw);
  scaleSelect.addEventListener("change", draw);
  opacityInput.addEventListener("input", draw);
  selectImage();
})();
"""

"""Report sections for the analyses beyond the paper: answer tracing and the logit lens.

`trace` (Zhang et al. CVPR 2025): per group pair the run traced (the flows, the
control `last->last`, or any of them), the mean relative change of the answer's probability
against the window's start layer, one curve per question category.
`lens` (Neo et al. ICLR 2025): per layer, on images with object masks (scene world, COCO), the
share of on-object tokens whose top-k lens words name their object against off-object tokens
naming an object of the image, and a viewer that writes each token's top word over the picture,
layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmflow.analysis import CONTROL_PAIRS, PAIR_NAMES
from vlmflow.report.figures import Stat, pyplot
from vlmflow.report.page import Column, esc, paragraph, table
from vlmflow.report.pictures import data_uri, placeholder, thumbnail
from vlmflow.report.viewer import script_json
from vlmflow.store import ResultKey, Row, RunInfo

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vlmflow.report.sections import Context

MAX_LENS_IMAGES = 12  # images embedded in the lens viewer


def _name(run: RunInfo, kind: str) -> str:
    from vlmflow.report.sections import figure_name

    return figure_name(run, kind)


# -- trace -----------------------------------------------------------------------------------


def trace_curves(
    starts: Sequence[int], curves: dict[str, dict[str, Stat | list[Stat]]], window: int
) -> Figure:
    """One panel per pair: mean relative change (± s.e.) vs window start, per category."""
    plt = pyplot()
    pairs = list(curves)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        for category, stats in curves[pair].items():
            assert isinstance(stats, list)
            mean = np.array([s.mean for s in stats])
            sem = np.array([s.sem for s in stats])
            (line,) = ax.plot(starts, mean, marker="o", markersize=2.5, label=category)
            ax.fill_between(starts, mean - sem, mean + sem, color=line.get_color(), alpha=0.15)
        ax.axhline(0, color="#888888", linewidth=0.8)
        ax.set_title(pair)
        ax.set_xlabel(f"window start layer (window {window})")
        ax.set_ylim(-1.05, max(0.5, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("relative change of P(answer)")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def trace(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    starts = list(rows[0].payload["starts"])
    window = int(rows[0].payload["window"])
    records = [
        q for r in rows if list(r.payload["starts"]) == starts for q in r.payload["questions"]
    ]
    pairs = [p for p in PAIR_NAMES if records and p in records[0]["change"]]
    categories = sorted({q["category"] for q in records})
    curves: dict[str, dict[str, Any]] = {}
    table_rows = []
    for pair in pairs:
        curves[pair] = {}
        for category in categories:
            chosen = [q["change"][pair] for q in records if q["category"] == category]
            stats = [Stat.of([c[i] for c in chosen]) for i in range(len(starts))]
            curves[pair][category] = stats
            means = np.array([s.mean for s in stats])
            low = int(np.nanargmin(means))
            table_rows.append([pair, category, len(chosen), starts[low], float(means[low])])
    blocks = [
        ctx.figures.save(
            trace_curves(starts, curves, window),
            _name(run, "curves"),
            "Relative change of the probability of the model's own answer when attention from "
            "the second group to the first is blocked in the layers [start, start + window - 1]"
            ", mean ± s.e. over questions, per question category.",
        ),
        table(
            [
                "pair",
                "category",
                Column("questions", True),
                Column("start of the strongest window", True),
                Column("mean change there", True),
            ],
            table_rows,
        ),
    ]
    probability = Stat.of([q["probability"] for q in records])
    blocks.append(
        paragraph(
            f"{len(records)} questions over {len(rows)} (image, kind) results; the answer "
            f"(first greedy token) has mean probability {probability.mean:.3f} without "
            "knockout. Groups: image; question (the text after the image but the last "
            "position); last (the position that predicts the answer)."
            + (
                " last->last is the control: the last position's attention to itself."
                if any(p in CONTROL_PAIRS for p in pairs)
                else ""
            ),
            "muted",
        )
    )
    return blocks


# -- lens ------------------------------------------------------------------------------------


def lens_curve(layers: Sequence[int], on: np.ndarray, off: np.ndarray, k: int) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.plot(layers, on, marker="o", markersize=3, color="#2ca02c", label="on-object tokens")
    ax.plot(layers, off, marker="o", markersize=3, color="#8c8c8c", label="off-object tokens")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"share naming an object (top {k})")
    ax.set_ylim(-0.02, max(0.1, float(np.nanmax(np.r_[on, off, 0.0])) * 1.15))
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def lens(ctx: Context, run: RunInfo, rows: Sequence[Row]) -> list[str]:
    layers = list(rows[0].payload["layers"])
    k = int(rows[0].payload["top_k"])
    scored = [r for r in rows if "on" in r.payload and list(r.payload["layers"]) == layers]
    blocks: list[str] = []
    if scored:
        on_tokens = np.array([r.metrics["on_tokens"] for r in scored], dtype=np.float64)
        off_tokens = np.array([r.metrics["off_tokens"] for r in scored], dtype=np.float64)
        on = np.array([[np.nan if v is None else v for v in r.payload["on"]] for r in scored])
        off = np.array([[np.nan if v is None else v for v in r.payload["off"]] for r in scored])
        # pooled over tokens: hits / tokens, summed over images
        on_pooled = np.nansum(on * on_tokens[:, None], 0) / max(on_tokens.sum(), 1)
        off_pooled = np.nansum(off * off_tokens[:, None], 0) / max(off_tokens.sum(), 1)
        blocks.append(
            ctx.figures.save(
                lens_curve(layers, on_pooled, off_pooled, k),
                _name(run, "naming"),
                f"Per layer, the share of image tokens on an object whose top-{k} lens words "
                "name that object (green), against tokens on no object whose top words name "
                f"an object of the image (grey), pooled over {len(scored)} images.",
            )
        )
        order = np.argsort(-on_pooled)[:5]
        blocks.append(
            table(
                ["layer", Column("on-object share", True), Column("off-object share", True)],
                [[layers[i], float(on_pooled[i]), float(off_pooled[i])] for i in order],
            )
        )
        blocks.append(
            paragraph(
                f"{int(on_tokens.sum())} on-object and {int(off_tokens.sum())} off-object "
                "tokens; names, synonyms and plurals as the scene judge (scenes) or the COCO "
                "categories (COCO images) know them.",
                "muted",
            )
        )
    blocks.append(lens_viewer(ctx, run, rows[:MAX_LENS_IMAGES], len(rows)))
    return blocks


def lens_viewer(ctx: Context, run: RunInfo, rows: Sequence[Row], total: int) -> str:
    """Words over the picture: each token's top lens word in its cell, stepping through layers."""
    items = []
    for r in rows:
        key = ResultKey(r.run_id, r.experiment, r.item, r.setting)
        ids = ctx.store.blob(key, "ids")  # (L, p, k)
        named = ctx.store.blob(key, "named") if "named" in r.blobs else None  # (L, p)
        words = r.payload["words"]
        vocab = sorted({int(i) for i in np.unique(ids[:, :, 0])})
        index = {t: j for j, t in enumerate(vocab)}
        picture = ctx.pictures.get(run.source, r.item)
        shown = thumbnail(picture) if picture is not None else placeholder(1.0)
        items.append(
            {
                "label": r.item,
                "picture": data_uri(shown),
                "tiles": r.payload["tiles"],
                "layers": r.payload["layers"],
                "vocab": [words[str(t)] for t in vocab],
                "top": [[index[int(t)] for t in layer[:, 0]] for layer in ids],
                "named": named.astype(int).tolist() if named is not None else None,
            }
        )
    options = "".join(
        f'<option value="{i}">{esc(item["label"])}</option>' for i, item in enumerate(items)
    )
    layers = items[0]["layers"]
    more = f" (the first {len(items)} of {total} images)" if total > len(items) else ""
    return f"""
<p class="muted">Each image token's top lens word, written in its cell{more}; green: the word
names the object under the token (or, off the objects, an object of the image).</p>
<div class="lens-viewer" style="display:flex;gap:16px;flex-wrap:wrap">
  <canvas id="lens-canvas" width="384" height="384" style="max-width:100%"></canvas>
  <div>
    <label for="lens-image">Image</label><br>
    <select id="lens-image">{options}</select><br>
    <label for="lens-layer">Layer</label><br>
    <input type="range" id="lens-layer" min="0" max="{len(layers) - 1}"
           value="{len(layers) - 1}" step="1"><br>
    <div id="lens-layer-label">layer</div>
  </div>
</div>
<script type="application/json" id="lens-data">{script_json(items)}</script>
<script>{LENS_SCRIPT}</script>
"""


LENS_SCRIPT = r"""
(function () {
  const items = JSON.parse(document.getElementById("lens-data").textContent);
  const canvas = document.getElementById("lens-canvas");
  const ctx = canvas.getContext("2d");
  const slider = document.getElementById("lens-layer");
  const choice = document.getElementById("lens-image");
  const label = document.getElementById("lens-layer-label");
  const pictures = items.map(item => { const p = new Image(); p.src = item.picture; return p; });
  function draw() {
    const item = items[Number(choice.value)];
    const layer = Math.min(Number(slider.value), item.layers.length - 1);
    slider.max = String(item.layers.length - 1);
    const picture = pictures[Number(choice.value)];
    const size = canvas.width;
    ctx.clearRect(0, 0, size, size);
    if (picture.complete) { ctx.drawImage(picture, 0, 0, size, size); }
    const top = item.top[layer];
    const named = item.named ? item.named[layer] : null;
    let token = 0, hits = 0;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const tile of item.tiles) {
      const [x0, y0, x1, y1] = tile.box;
      const w = (x1 - x0) * size / tile.cols, h = (y1 - y0) * size / tile.rows;
      ctx.font = Math.max(7, Math.min(12, w / 3)) + "px sans-serif";
      for (let r = 0; r < tile.rows; r++) {
        for (let c = 0; c < tile.cols; c++, token++) {
          const on = named && named[token];
          if (on) { hits++; }
          const x = x0 * size + (c + 0.5) * w, y = y0 * size + (r + 0.5) * h;
          ctx.fillStyle = on ? "rgba(20,120,40,0.8)" : "rgba(0,0,0,0.45)";
          ctx.fillRect(x - w / 2 + 0.5, y - h / 2 + 0.5, w - 1, h - 1);
          ctx.fillStyle = "#ffffff";
          ctx.fillText(item.vocab[top[token]].trim().slice(0, 6), x, y, w - 1);
        }
      }
    }
    label.textContent = "layer " + item.layers[layer] + (named ? ": " + hits + " of " + token +
      " tokens name an object" : "");
  }
  slider.addEventListener("input", draw);
  choice.addEventListener("change", draw);
  pictures.forEach(p => p.addEventListener("load", draw));
  draw();
})();
"""

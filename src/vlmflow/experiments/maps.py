"""`maps`: per layer, the generated tokens' attention drawn over the picture (paper Fig. 4).

Per measured layer, the attention row over the image positions is averaged over heads and
generated queries (capture steps >= 1, see `fractions`), then laid out on a fixed size x size
canvas over the original image with the prompt layout's token grids (`Tile`s):

- Canvas pixel (y, x) covers the part [x/S, (x+1)/S] x [y/S, (y+1)/S] of the original image's
  width and height (so pixels are square only for square images: stretch the map to the image
  to draw it). The canvas size is fixed, so maps of every family and image size line up.
- A token of a rows x cols tile covers one cell of the tile's box. Its attention is spread over
  the canvas pixels in proportion to the overlap (area-weighted, mass-preserving): a map sums
  to the attention its tokens received, and parts of the image no token sees (LLaVA-1.5's
  center crop leaves the sides out) stay 0.
- Tiled families see the picture twice: a whole-image view (`image`, LLaVA-NeXT's `base`,
  InternVL / Idefics3 `thumbnail`) and detail views (`tile`s, LLaVA-NeXT's high-resolution
  `grid`). With `split_views` (default) they are drawn on separate canvases, `global` and
  `detail`; their sum is the combined map. Single-view families have one canvas, `global`.
- Separator tokens inside the image span (newlines, `<img>` markers, row/column tags) have no
  place on the picture: their attention is reported per layer as `separator_share`.
- A tile's box reaches past the picture where the processor padded it (LLaVA-1.5 `do_pad`):
  the canvas is clipped to the picture, and the attention of the part of a cell on the padding
  is reported per layer as `outside_share`. So map sum + separator_share + outside_share = the
  layer's image share.
- An empty tile (0 rows or 0 columns: LLaVA-NeXT's unpadded grid of a very thin image) has no
  tokens and draws nothing. A tile whose box the processor's settings do not fix exactly
  (`Tile.unplaced`) is refused with a VlmflowError rather than drawn in a wrong place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmflow.errors import VlmflowError
from vlmflow.experiments.fractions import (
    DescribeConfig,
    DescribeExperiment,
    rounded,
)
from vlmflow.experiments.protocol import Context, Result, WorkItem
from vlmflow.models.layout import ImageSpan, Tile

GLOBAL, DETAIL, ALL_VIEWS = "global", "detail", "all"
DETAIL_KINDS = frozenset({"tile", "grid"})  # the other kinds show the whole picture


@dataclass(frozen=True)
class MapsConfig(DescribeConfig):
    """`size`: side of the square canvas (blob bytes = layers x views x size^2 x 2, e.g. 32 x 2 x
    24^2 x 2 = 74 KB); `split_views`: draw whole-image and detail views of tiled families on
    separate canvases (else one combined canvas, `all`); `per_token`: also keep each generated
    token's own maps, on a `token_size` canvas (bytes = tokens x layers x views x token_size^2
    x 2, e.g. 64 x 30 x 1 x 12^2 x 2 = 553 KB), for the viewer's step through the tokens.
    """

    size: int = 24
    split_views: bool = True
    per_token: bool = True
    token_size: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("size", "token_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 512:
                raise ValueError(f"{name} must be an integer in 1..512, got {value!r}")
        if not isinstance(self.per_token, bool):
            raise ValueError(f"per_token must be true or false, got {self.per_token!r}")


def view_of(tile: Tile) -> str:
    return DETAIL if tile.kind in DETAIL_KINDS else GLOBAL


def views_of(span: ImageSpan, split: bool) -> tuple[str, ...]:
    """Canvas names, in blob order."""
    if not split:
        return (ALL_VIEWS,)
    present = {view_of(tile) for tile in span.grids if not tile.empty}
    return tuple(v for v in (GLOBAL, DETAIL) if v in present)


def coverage(lo: float, hi: float, cells: int, size: int) -> np.ndarray:
    """(size, cells): the share of each of `cells` equal cells of [lo, hi] that falls in each
    of `size` equal canvas pixels of [0, 1]; columns sum to 1 for cells inside [0, 1], to the
    share inside [0, 1] for cells reaching past it (padding)."""
    if hi <= lo:
        raise ValueError(f"empty tile extent [{lo}, {hi}]")
    edges = lo + (hi - lo) * np.arange(cells + 1) / cells  # (cells + 1,)
    canvas = np.arange(size + 1) / size  # (size + 1,)
    start = np.maximum(canvas[:-1, None], edges[None, :-1])
    end = np.minimum(canvas[1:, None], edges[None, 1:])
    return np.clip(end - start, 0.0, None) / ((hi - lo) / cells)


@dataclass(frozen=True)
class Rendered:
    maps: np.ndarray  # (L, V, S, S) float64 attention mass per canvas pixel
    views: tuple[str, ...]  # (V,) canvas names
    separators: np.ndarray  # (L,) attention to image positions in no tile
    outside: np.ndarray  # (L,) attention to tile cells' parts outside the picture (padding)


def render(
    rows: np.ndarray, positions: Sequence[int], span: ImageSpan, size: int, split: bool = True
) -> Rendered:
    """Lay attention rows over image positions out on canvases over the original image.

    `rows`: (L, n) attention per layer to the prompt positions `positions` (n,), which must
    include every tile position of `span` (other positions count as separators); for an image
    read through cross-attention (`ImageSpan.states`), `positions` index the vision states
    (the keys of `CaptureResult.tile_rows`), and CLS states count as separators. Raises
    VlmflowError for a span with a tile of no exact place (`Tile.unplaced`) or rows that miss
    a position of its grids.
    """
    span.check_placed("maps")
    index = {int(p): i for i, p in enumerate(positions)}
    missing = [p for tile in span.grids for p in tile.positions if p not in index]
    if missing or not span.grids:
        over = "vision states (tile rows)" if span.states else "prompt positions (image rows)"
        raise VlmflowError(
            f"maps cannot place these rows: the image's grids lie over its {over}, and the"
            f" rows miss {len(missing) or 'all'} of them: capture the rows the layout names"
        )
    views = views_of(span, split)
    maps = np.zeros((rows.shape[0], len(views), size, size))
    placed = np.zeros(rows.shape[0])
    for tile in span.grids:
        if tile.empty:
            continue
        columns = [index[p] for p in tile.positions]
        grid = rows[:, columns].reshape(-1, tile.rows, tile.cols)  # (L, rows, cols) row-major
        x0, y0, x1, y1 = tile.box
        wy = coverage(y0, y1, tile.rows, size)  # (S, rows)
        wx = coverage(x0, x1, tile.cols, size)  # (S, cols)
        v = views.index(view_of(tile) if split else ALL_VIEWS)
        maps[:, v] += np.einsum("yr,lrc,xc->lyx", wy, grid, wx)
        placed += grid.sum(axis=(1, 2))
    separators = np.clip(rows.sum(axis=1) - placed, 0.0, None)  # clip rounding noise
    outside = np.clip(placed - maps.sum(axis=(1, 2, 3)), 0.0, None)
    return Rendered(maps, views, separators, outside)


class Maps(DescribeExperiment):
    """Per layer, attention maps of the generated tokens over the picture.

    Result, for one image:
      blobs    `maps`: (layers, views, size, size) float16, attention mass per canvas pixel
               (module docstring); `maps[l].sum(0)` is layer `layers[l]`'s combined map.
      payload  `layers`; `views`: canvas names (["global"], ["global", "detail"] or ["all"]);
               `size`; `image_share`: per layer, attention to the whole image span;
               `separator_share`: per layer, the part of it on separator tokens;
               `outside_share`: per layer, the part on padding outside the picture; `peaks`: per
               layer, [y, x] canvas pixel of the combined map's maximum; `tiles`: the layout
               used ([{kind, view, rows, cols, box}], box = (x0, y0, x1, y1) fractions of the
               image); `image_size`: original (width, height); `queries`; `text`.
               With `per_token`: blob `token_maps`: (queries, layers, views, token_size,
               token_size) float16, the same maps for each generated query alone (their mean
               over queries is `maps` on the smaller canvas), and payload `tokens`: each
               query's token text (query i is generated token i, attending to predict i + 1).
      metrics  `generated_tokens`, `image_tokens`, `separator_tokens`.
    """

    name = "maps"
    config_type = MapsConfig

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        options = self.options
        described, layers = self.describe_image_rows(handle, item)
        per_query = np.stack(
            [described.generated_rows(layer).numpy() for layer in layers], axis=1
        )  # (Q, L, n_image)
        rows = per_query.mean(axis=0)  # (L, n_image)
        positions = described.positions  # (n_image,) prompt positions or vision states
        span = described.span
        out = render(rows, positions, span, options.size, options.split_views)
        blobs = {"maps": out.maps.astype(np.float16)}
        extra: dict[str, Any] = {}
        if options.per_token:
            q, n_layers, n = per_query.shape
            flat = render(
                per_query.reshape(q * n_layers, n),
                positions,
                span,
                options.token_size,
                options.split_views,
            ).maps  # (Q * L, V, T, T)
            blobs["token_maps"] = flat.reshape(q, n_layers, *flat.shape[1:]).astype(np.float16)
            extra["tokens"] = handle.token_texts(described.ids[:q])
        combined = out.maps.sum(axis=1)  # (L, S, S)
        flat_peaks = combined.reshape(len(layers), -1).argmax(axis=1)
        tiles = [
            {"kind": t.kind, "view": view_of(t), "rows": t.rows, "cols": t.cols, "box": t.box}
            for t in span.grids
        ]
        return Result(
            metrics={
                "generated_tokens": described.generated_tokens,
                "image_tokens": described.image_tokens,
                "separator_tokens": len(span.separators),
            },
            payload={
                "layers": layers,
                "views": list(out.views),
                "size": options.size,
                "image_share": rounded(rows.sum(axis=1)),
                "separator_share": rounded(out.separators),
                "outside_share": rounded(out.outside),
                "peaks": [list(divmod(int(p), options.size)) for p in flat_peaks],
                "tiles": tiles,
                "image_size": list(span.size) if span.size else None,
                "queries": described.queries,
                "text": described.text,
                **extra,
            },
            blobs=blobs,
        )

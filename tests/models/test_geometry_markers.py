"""Token grids against what the processor really feeds the model, per family and option.

A red square marker is drawn at known places on a white image of several aspect ratios; the
family's processor (with one option set) turns it into `pixel_values`; the marker is found in
those pixels and mapped to image tokens with the family's own patch and merge sizes (and, for
LLaVA-NeXT, the model's own anyres grid and unpadding functions; for LLaVA-OneVision, the
model's own packing of the crops, pooling included). Every token whose pixels hold
the marker must have a layout cell (`Tile.box` split into rows x cols) that holds the marker in
the original image's coordinates (give or take the resampling blur), and where the marker is
large enough to survive the resize, the token whose cell holds its center must read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import vlmflow
from vlmflow.models.layout import Tile

RED = (255, 0, 0)
BLUR_PX = 2.0  # resampling spreads the marker by up to this many processed pixels


@dataclass(frozen=True)
class Marker:
    """A square marker: left, top and side in original pixels."""

    x: int
    y: int
    side: int

    def box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        w, h = size
        return (self.x / w, self.y / h, (self.x + self.side) / w, (self.y + self.side) / h)


def _picture(size: tuple[int, int], marker: Marker) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(RED, (marker.x, marker.y, marker.x + marker.side, marker.y + marker.side))
    return image


def _markers(size: tuple[int, int]) -> list[Marker]:
    """Markers near the corners and the middle, a fifth of the short side wide."""
    w, h = size
    side = max(2, min(w, h) // 5)
    return [
        Marker(int(fx * (w - side)), int(fy * (h - side)), side)
        for fx, fy in ((0.05, 0.05), (0.95, 0.1), (0.5, 0.5), (0.1, 0.9), (0.9, 0.95))
    ]


def _red(pixels: np.ndarray, ip: Any) -> np.ndarray:
    """(..., H, W) bool: marker pixels of (..., 3, H, W) normalized pixel values."""
    mean = np.asarray(ip.image_mean, dtype=np.float64).reshape(3, 1, 1)
    std = np.asarray(ip.image_std, dtype=np.float64).reshape(3, 1, 1)
    rgb = pixels.astype(np.float64) * std + mean  # back to [0, 1]
    r, g, b = rgb[..., 0, :, :], rgb[..., 1, :, :], rgb[..., 2, :, :]
    return (r - np.maximum(g, b)) > 0.3


def _cells(red: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) bool: the cells of an (H, W) mask cut into rows x cols equal cells that
    hold a marker pixel (pixels past the last whole cell are dropped, as patch embeddings do)."""
    h, w = red.shape
    ph, pw = h // rows, w // cols
    return red[: rows * ph, : cols * pw].reshape(rows, ph, cols, pw).any(axis=(1, 3))


# -- where each family's tokens read the marker: per tile of the layout, (rows, cols) bool ----


def _found_llava(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    p = handle.processor.patch_size
    red = _red(inputs["pixel_values"][0].numpy(), handle.processor.image_processor)
    h, w = red.shape
    return [_cells(red, h // p, w // p)]


def _found_llava_next(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    p = handle.processor.patch_size
    ip = handle.processor.image_processor
    red = _red(inputs["pixel_values"][0].numpy(), ip)  # (crops, H, W)
    ch, cw = red.shape[-2:]
    size = inputs["image_sizes"][0].tolist()  # (height, width)
    nph, npw = get_anyres_image_grid_shape(size, ip.image_grid_pinpoints, ch)
    base = _cells(red[0], ch // p, cw // p)
    crops = [_cells(red[1 + k], ch // p, cw // p) for k in range(nph * npw)]
    full = np.block([[crops[i * npw + j] for j in range(npw)] for i in range(nph)])
    grid = unpad_image(torch.from_numpy(full)[None], size)[0].numpy()
    return [base, grid]


def _found_qwen(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    ip = handle.processor.image_processor
    t, gh, gw = inputs["image_grid_thw"][0].tolist()
    m, p, tp = ip.merge_size, ip.patch_size, ip.temporal_patch_size
    flat = inputs["pixel_values"].numpy()  # (t * gh * gw, 3 * tp * p * p)
    patches = flat.reshape(t, gh // m, gw // m, m, m, 3, tp, p, p)[:, :, :, :, :, :, 0]
    red = _red(patches, ip)  # (t, gh/m, gw/m, m, m, p, p)
    return [red[f].any(axis=(2, 3, 4, 5)) for f in range(t)]


def _found_llava_onevision(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    """The model's own packing (unpadding, pooling) of the crops' marker cells: a token reads
    the marker where its packed feature is not zero."""
    model = handle.model.model
    p = model.config.vision_config.patch_size
    red = _red(inputs["pixel_values"][0].numpy(), handle.processor.image_processor)
    ch, cw = red.shape[-2:]
    crops = np.stack([_cells(crop, ch // p, cw // p) for crop in red])  # (crops, rows, cols)
    features = torch.from_numpy(crops.reshape(len(crops), -1, 1).astype(np.float32))
    packed, _ = model.pack_image_features(
        [features], inputs["image_sizes"], None, model.config.vision_aspect_ratio
    )
    flat = packed[0][:, 0].numpy() > 0
    base, grid = tiles
    cut = base.rows * base.cols
    return [flat[:cut].reshape(base.rows, base.cols), flat[cut:].reshape(grid.rows, grid.cols)]


def _found_mistral3(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    """Merged patches of the image's own size (the batch pads bottom and right)."""
    config = handle.model.config
    merged = config.vision_config.patch_size * config.spatial_merge_size
    h, w = inputs["image_sizes"][0].tolist()
    red = _red(inputs["pixel_values"][0].numpy()[:, :h, :w], handle.processor.image_processor)
    return [_cells(red, h // merged, w // merged)]


def _found_tiles(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    """InternVL, Idefics3 / SmolVLM and Gemma 3: one square crop per tile, in the layout's order."""
    pixels = inputs["pixel_values"].numpy()
    crops = pixels.reshape(-1, *pixels.shape[-3:])[: len(tiles)]
    red = _red(crops, handle.processor.image_processor)
    return [_cells(red[k], tile.rows, tile.cols) for k, tile in enumerate(tiles)]


def _found_paligemma(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    """One SigLIP patch per token over the squashed picture."""
    p = handle.model.config.vision_config.patch_size
    red = _red(inputs["pixel_values"][0].numpy(), handle.processor.image_processor)
    h, w = red.shape
    return [_cells(red, h // p, w // p)]


def _found_mllama(inputs: Any, handle: Any, tiles: tuple[Tile, ...]) -> list[np.ndarray]:
    """Llama 3.2 Vision: one tile of `pixel_values` (b, images, max_tiles, 3, T, T) per grid
    over the vision states, in the layout's order; one patch per state."""
    assert len(tiles) == int(inputs["aspect_ratio_mask"][0, 0].sum())  # the real tiles
    pixels = inputs["pixel_values"][0, 0].numpy()[: len(tiles)]  # (tiles, 3, T, T)
    red = _red(pixels, handle.processor.image_processor)
    p = handle.model.config.vision_config.patch_size
    return [_cells(red[k], red.shape[-2] // p, red.shape[-1] // p) for k in range(len(tiles))]


FOUND: dict[str, Callable[[Any, Any, tuple[Tile, ...]], list[np.ndarray]]] = {
    "llava": _found_llava,
    "llava_next": _found_llava_next,
    "qwen2_vl": _found_qwen,
    "qwen2_5_vl": _found_qwen,
    "qwen3_vl": _found_qwen,
    "qwen3_vl_moe": _found_qwen,
    "internvl": _found_tiles,
    "idefics3": _found_tiles,
    "smolvlm": _found_tiles,
    "gemma3": _found_tiles,
    "paligemma": _found_paligemma,
    "paligemma2": _found_paligemma,
    "llava_onevision": _found_llava_onevision,
    "mistral3": _found_mistral3,
    "mllama": _found_mllama,
}


# -- options: each makes the family's image processor do something else ----------------------


def _llava_processor(**kwargs: Any) -> Callable[[Any], None]:
    def apply(handle: Any) -> None:
        from transformers import LlavaImageProcessorPil

        handle.processor.image_processor = LlavaImageProcessorPil(**kwargs)

    return apply


def _set(**attrs: Any) -> Callable[[Any], None]:
    def apply(handle: Any) -> None:
        for name, value in attrs.items():
            setattr(handle.processor.image_processor, name, value)

    return apply


def _processor_kwargs(**kwargs: Any) -> Callable[[Any], None]:
    def apply(handle: Any) -> None:  # the processor's images_kwargs, above the image processor's
        handle.processor.images_kwargs = kwargs

    return apply


def _pinpoints(points: list[list[int]]) -> Callable[[Any], None]:
    def apply(handle: Any) -> None:  # the model packs by its config: keep both the same
        handle.processor.image_processor.image_grid_pinpoints = points
        handle.model.config.image_grid_pinpoints = points

    return apply


def _aspect_ratio(value: str) -> Callable[[Any], None]:
    def apply(handle: Any) -> None:  # the processor counts tokens by it, the model pools by it
        handle.processor.vision_aspect_ratio = value
        handle.model.config.vision_aspect_ratio = value

    return apply


def _merge(size: int) -> Callable[[Any], None]:
    def apply(handle: Any) -> None:  # the processor writes tokens by it, the model merges by it
        handle.processor.spatial_merge_size = size
        handle.model.config.spatial_merge_size = size

    return apply


def _none(handle: Any) -> None:
    return None


CROP = {"height": 56, "width": 56}
# Every tiny family with a map layout (mllama: over its vision states, `ImageSpan.states`).
OPTIONS: dict[str, dict[str, Callable[[Any], None]]] = {
    "llava": {
        "center crop": _none,
        "pad to square": _llava_processor(do_pad=True, size={"shortest_edge": 56}, crop_size=CROP),
        "pad, no crop": _llava_processor(
            do_pad=True, do_center_crop=False, size={"height": 56, "width": 56}
        ),
        "squash": _llava_processor(do_center_crop=False, size={"height": 56, "width": 56}),
        "crop past the edges": _llava_processor(size={"shortest_edge": 42}, crop_size=CROP),
        "longest edge": _llava_processor(
            size={"shortest_edge": 56, "longest_edge": 84}, crop_size=CROP
        ),
        "max height and width": _llava_processor(
            size={"max_height": 70, "max_width": 70}, crop_size=CROP
        ),
    },
    "llava_next": {
        "anyres": _none,
        "wide pinpoints": _pinpoints([[56, 168], [168, 56], [112, 112], [56, 56]]),
        "no center crop": _set(do_center_crop=False),
    },
    "qwen2_vl": {
        "smart resize": _none,
        "more pixels": _set(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224}),
    },
    "qwen2_5_vl": {
        "smart resize": _none,
        "fewer pixels": _set(size={"shortest_edge": 28 * 28, "longest_edge": 84 * 84}),
    },
    "qwen3_vl": {
        "smart resize": _none,
        "more pixels": _set(size={"shortest_edge": 64 * 64, "longest_edge": 256 * 256}),
    },
    "qwen3_vl_moe": {
        "smart resize": _none,
        "fewer pixels": _set(size={"shortest_edge": 32 * 32, "longest_edge": 96 * 96}),
    },
    "internvl": {
        "crop to patches": _none,
        "six patches": _set(max_patches=6, min_patches=2),
        # InternVLProcessor's own images_kwargs force crop_to_patches=True over this
        "image processor's crop_to_patches=False": _set(crop_to_patches=False),
        "one view": _processor_kwargs(crop_to_patches=False),
    },
    "idefics3": {
        "split": _none,
        "no split": _set(do_image_splitting=False),
        "larger": _set(size={"longest_edge": 168}),
    },
    "smolvlm": {
        "split": _none,
        "no split": _set(do_image_splitting=False),
    },
    "gemma3": {
        "squash": _none,
        # the whole picture, then crops side by side (or stacked) of wide or tall images
        "pan and scan": _processor_kwargs(
            do_convert_rgb=True,
            do_pan_and_scan=True,
            pan_and_scan_min_crop_size=20,
            pan_and_scan_max_num_crops=4,
            pan_and_scan_min_ratio_to_activate=1.2,
        ),
    },
    "paligemma": {"squash": _none},
    "paligemma2": {"squash": _none},
    "llava_onevision": {
        "anyres": _none,
        # at most one crop's worth of tokens: larger grids are pooled by bilinear interpolation
        "pooled": _aspect_ratio("anyres_max_1"),
        "wide pinpoints": _pinpoints([[56, 168], [168, 56], [112, 112], [56, 56]]),
    },
    "mistral3": {
        "longest edge": _none,
        "smaller": _set(size={"longest_edge": 56}),
        "no merge": _merge(1),
    },
    "mllama": {
        "tiles": _none,
        "one tile": _set(max_image_tiles=1),
    },
}
# (width, height): wide, tall, square, and thin banners and strips
SIZES = [(200, 100), (100, 200), (90, 90), (300, 20), (20, 300), (30, 800)]
# transformers itself refuses aspect ratios over 200 for Qwen2-VL; all sizes above are in range
CASES = [(f, o) for f, options in OPTIONS.items() for o in options]


def _pixels_per_cell(tile: Tile, family: str, handle: Any) -> float:
    """Processed pixels across one cell of `tile` (tokens merge patches in most families)."""
    p = int(getattr(handle.processor, "patch_size", 14) or 14)
    if family in ("llava", "llava_next", "paligemma", "paligemma2"):
        return float(p)
    if family == "mllama":
        return float(handle.model.config.vision_config.patch_size)
    if family == "llava_onevision":
        return float(handle.model.config.vision_config.patch_size)
    if family == "mistral3":
        config = handle.model.config
        return float(config.vision_config.patch_size * config.spatial_merge_size)
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
        ip = handle.processor.image_processor
        return float(ip.patch_size * ip.merge_size)
    return 56 / tile.rows  # InternVL / Idefics3 / Gemma 3 crops are 56 px here


def _pooling_reach(tile: Tile, family: str, handle: Any, inputs: Any) -> tuple[float, float]:
    """How far past its cell a token may read, as fractions of the image (x, y).

    LLaVA-OneVision pools a large grid by bilinear interpolation, which blends the two unpooled
    cells nearest to each token's center: up to one unpooled cell (of the model's own unpadded
    grid) past its cell."""
    if family != "llava_onevision" or tile.kind != "grid" or tile.empty:
        return 0.0, 0.0
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    config = handle.model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    size = inputs["image_sizes"][0].tolist()
    nph, npw = get_anyres_image_grid_shape(
        size, config.image_grid_pinpoints, config.vision_config.image_size
    )
    rows, cols = unpad_image(torch.zeros(0, nph * side, npw * side), size).shape[1:]
    if (rows, cols) == (tile.rows, tile.cols):
        return 0.0, 0.0  # not pooled
    x0, y0, x1, y1 = tile.box
    return (x1 - x0) / cols, (y1 - y0) / rows


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_span(
    span: Any,
    found: list[np.ndarray],
    target: tuple[float, ...],
    family: str,
    handle: Any,
    inputs: Any,
) -> bool:
    """Every token that reads the marker at `target` (a box of the image) has a cell next to
    it; True when the marker is large enough that the token whose cell holds its center must
    read it (and does)."""
    assert len(found) == len(span.grids)
    visible = False
    for tile, cells in zip(span.grids, found, strict=True):
        assert cells.shape == (tile.rows, tile.cols), (target, tile.kind)
        assert not tile.unplaced
        if tile.empty:
            continue
        x0, y0, x1, y1 = tile.box
        cw, ch = (x1 - x0) / tile.cols, (y1 - y0) / tile.rows
        px = _pixels_per_cell(tile, family, handle)
        reach_x, reach_y = _pooling_reach(tile, family, handle, inputs)
        tol_x, tol_y = BLUR_PX * cw / px + reach_x, BLUR_PX * ch / px + reach_y
        grown = (target[0] - tol_x, target[1] - tol_y, target[2] + tol_x, target[3] + tol_y)
        for r, c in zip(*np.nonzero(cells), strict=True):
            cell = (x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch)
            assert _overlaps(cell, grown), (target, tile.kind, (r, c), cell)
        # a marker at least 3 processed pixels wide and tall inside the box must show
        inside = target[0] >= x0 and target[2] <= x1 and target[1] >= y0 and target[3] <= y1
        seen_w = (target[2] - target[0]) / cw * px
        seen_h = (target[3] - target[1]) / ch * px
        if inside and seen_w >= 3 and seen_h >= 3:
            visible = True  # and the token whose cell holds its center reads it
            cx, cy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
            r, c = int((cy - y0) / ch), int((cx - x0) / cw)
            assert cells[r, c], (target, tile.kind, (r, c), np.argwhere(cells))
    return visible


@pytest.mark.parametrize(("family", "option"), CASES)
def test_token_cells_hold_the_marker(family: str, option: str, tiny_path: Any) -> None:
    handle = vlmflow.load(str(tiny_path(family)))  # a fresh handle: options change its processor
    OPTIONS[family][option](handle)
    checked = 0
    for size in SIZES:
        for marker in _markers(size):
            prompt = handle.prepare(_picture(size, marker), "describe the image .")
            span = prompt.layout.images[0][0]
            found = FOUND[family](prompt.inputs, handle, span.grids)
            checked += _check_span(span, found, marker.box(size), family, handle, prompt.inputs)
    assert checked >= 3  # the check above was not vacuous


def test_each_onevision_image_among_several_gets_one_padded_view(tiny_path: Any) -> None:
    """LLaVA-OneVision gives each image of a prompt with several images one view: the picture
    padded to a centered square and resized, its grid read from that view's pixels."""
    handle = vlmflow.load(str(tiny_path("llava_onevision")))
    p = handle.model.config.vision_config.patch_size
    blank = Image.new("RGB", (60, 40), (255, 255, 255))
    checked = 0
    for size in SIZES:
        for marker in _markers(size):
            prompt = handle.prepare([blank, _picture(size, marker)], "describe the image .")
            span = prompt.layout.images[0][1]
            assert [t.kind for t in span.tiles] == ["image"] and len(span.separators) == 1
            views = prompt.inputs["pixel_values"][1].numpy()  # (1, 3, H, W): one view
            red = _red(views[0], handle.processor.image_processor)
            found = [_cells(red, red.shape[0] // p, red.shape[1] // p)]
            target = marker.box(size)
            checked += _check_span(span, found, target, "llava_onevision", handle, prompt.inputs)
    assert checked >= 3

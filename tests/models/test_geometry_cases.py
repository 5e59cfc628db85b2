"""Geometry of inputs that once went wrong: LLaVA-1.5 pad to square, LLaVA-NeXT thin images,
and how maps and localization treat padding, empty grids and settings they cannot place."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

import vlmflow
from vlmflow.errors import VlmflowError
from vlmflow.experiments.localization import TokenGrid
from vlmflow.experiments.maps import render


def _noise(w: int, h: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(h, w, 3) * 255).astype("uint8"))


def _padded_llava(tiny_path: Any) -> Any:
    from transformers import LlavaImageProcessorPil

    handle = vlmflow.load(str(tiny_path("llava")))
    handle.processor.image_processor = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    )
    return handle


def _uniform(span: Any) -> tuple[np.ndarray, list[int]]:
    positions = list(range(span.start, span.end))
    return np.full((2, len(positions)), 1.0 / len(positions)), positions  # (L, n)


def test_llava_pad_to_square_box(tiny_path: Any) -> None:
    handle = _padded_llava(tiny_path)
    for size, box in (
        ((200, 100), (0.0, -0.5, 1.0, 1.5)),  # padded above and below: the grid shows the width
        ((100, 200), (-0.5, 0.0, 1.5, 1.0)),
        ((90, 90), (0.0, 0.0, 1.0, 1.0)),
        ((201, 100), (0.0, -50 / 100, 1.0, 151 / 100)),  # 101 rows of padding: 50 above
    ):
        tile = handle.prepare(Image.new("RGB", size, "red")).layout.images[0][0].tiles[0]
        assert (tile.rows, tile.cols) == (4, 4)
        assert tile.box == pytest.approx(box)


def test_maps_clip_padding_and_report_it(tiny_path: Any) -> None:
    handle = _padded_llava(tiny_path)
    span = handle.prepare(Image.new("RGB", (200, 100), "red")).layout.images[0][0]
    rows, positions = _uniform(span)
    out = render(rows, positions, span, 8)
    # half the grid's rows lie on the padding above and below the picture
    assert out.maps.sum(axis=(1, 2, 3)) == pytest.approx([0.5, 0.5])
    assert out.outside == pytest.approx([0.5, 0.5])
    assert out.separators == pytest.approx([0.0, 0.0])
    # the picture itself is covered evenly: every canvas pixel gets the same mass
    assert np.allclose(out.maps[0, 0], out.maps[0, 0].mean())


def test_llava_next_thin_banner_prepares_like_transformers(tiny_path: Any) -> None:
    handle = vlmflow.load(str(tiny_path("llava_next")))
    image = _noise(300, 20)
    prompt = handle.prepare(image, "describe the image .")
    # transformers' own processor output: the image tokens it wrote for this image
    image_id = handle.model.config.image_token_id
    written = int((prompt.input_ids[0] == image_id).sum())
    assert written == 16
    assert prompt.layout.counts()["image"] == 16
    span = prompt.layout.images[0][0]
    base, grid = span.tiles
    assert (base.kind, base.rows, base.cols, len(base.positions)) == ("base", 4, 4, 16)
    assert (grid.kind, grid.rows, grid.positions) == ("grid", 0, ())
    assert grid.empty
    # transformers generates from these inputs, and so does vlmflow
    assert handle.generate(prompt, max_new_tokens=3).shape == (1, 3)
    rows, positions = _uniform(span)
    out = render(rows, positions, span, 8)
    assert out.views == ("global",)  # the empty detail view draws nothing
    assert out.maps.sum(axis=(1, 2, 3)) == pytest.approx([1.0, 1.0])


def test_llava_next_thin_strip_renders(tiny_path: Any) -> None:
    handle = vlmflow.load(str(tiny_path("llava_next")))
    span = handle.prepare(_noise(30, 8000)).layout.images[0][0]
    base, grid = span.tiles
    assert grid.rows > 0 and grid.cols == 0 and grid.empty  # only the newline tokens remain
    assert len(span.separators) == grid.rows
    rows, positions = _uniform(span)
    out = render(rows, positions, span, 8)
    share = len(base.positions) / len(positions)
    assert out.maps.sum(axis=(1, 2, 3)) == pytest.approx([share] * 2)
    assert out.separators == pytest.approx([1 - share] * 2)


def test_localization_skips_empty_tiles(tiny_path: Any) -> None:
    handle = vlmflow.load(str(tiny_path("llava_next")))
    layout = handle.prepare(_noise(300, 20)).layout
    grid = TokenGrid.of(layout)
    attention = np.arange(len(layout.image_positions(0)), dtype=float)  # last token highest
    cell = grid.peak(attention)
    assert (cell.tile, cell.row, cell.col) == (0, 3, 3)
    mask = np.zeros((20, 300), dtype=bool)
    mask[5:10, 200:220] = True
    covered = grid.covered(mask)
    assert covered[1].shape == (0, grid.tiles[1].cols)
    assert covered[0].any()


def test_settings_without_an_exact_place_are_refused(tiny_path: Any) -> None:
    handle = vlmflow.load(str(tiny_path("llava_next")))
    handle.processor.image_processor.crop_size = {"height": 42, "width": 42}  # crops of 56 px
    layout = handle.prepare(_noise(200, 100)).layout
    span = layout.images[0][0]
    assert span.tiles[1].unplaced
    rows, positions = _uniform(span)
    with pytest.raises(VlmflowError, match="maps cannot place"):
        render(rows, positions, span, 8)
    with pytest.raises(VlmflowError, match="localization cannot place"):
        TokenGrid.of(layout)

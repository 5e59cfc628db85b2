"""Image-grid geometry shared by the family resolvers: where a grid of image tokens lies on the
original picture after the image processor's pad, resize and center crop.

The box of every grid is a fraction of the original image (`vlmflow.models.layout.Box`);
transformers' own size helpers are read for the resize rules, so a grid follows the processor
it was made by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmflow.errors import VlmflowError
from vlmflow.models.layout import WHOLE, Box, Tile, crop_box


def _square(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise VlmflowError(f"{what}: {n} image tokens do not form a square grid")
    return side


def _grid(kind: str, positions: list[int], rows: int, cols: int, box: Box = WHOLE) -> Tile:
    return Tile(kind, rows, cols, tuple(positions), box)


@dataclass(frozen=True)
class _Grid:
    """Where one grid of image tokens lies: rows x cols cells over `box` of the image."""

    rows: int
    cols: int
    box: Box
    unplaced: str = ""

    def tile(self, kind: str, positions: list[int]) -> Tile:
        return Tile(kind, self.rows, self.cols, tuple(positions), self.box, self.unplaced)


class _Options:
    """The image processor's settings as its processor applies them: the processor's own
    `images_kwargs` and the `_defaults` of its kwargs class win over the image processor's
    attributes (transformers' `ProcessorMixin._merge_kwargs`; InternVL forces
    `crop_to_patches=True` that way)."""

    def __init__(self, processor: Any) -> None:
        self.ip = processor.image_processor
        kwargs_class = getattr(processor, "valid_processor_kwargs", None)
        defaults = getattr(kwargs_class, "_defaults", {}) or {}
        self.overrides = {
            **(getattr(processor, "images_kwargs", None) or {}),
            **(defaults.get("images_kwargs", {}) or {}),
        }

    def __getattr__(self, name: str) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        return getattr(self.ip, name)


def _shape(height: int, width: int) -> np.ndarray:
    """A (3, height, width) array of no memory: transformers' size helpers read only shapes."""
    return np.broadcast_to(np.zeros((), np.uint8), (3, height, width))


def _resized(ip: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) that the image processor's `resize` makes of a height x width picture,
    by the rules of transformers' `PilBackend.resize` / `TorchvisionBackend.resize`."""
    from transformers.image_transforms import (
        get_resize_output_image_size,
        get_size_with_aspect_ratio,
    )
    from transformers.image_utils import (
        ChannelDimension,
        SizeDict,
        get_image_size_for_max_height_width,
    )

    size = ip.size if isinstance(ip.size, SizeDict) else SizeDict(**ip.size)
    if size.shortest_edge and size.longest_edge:
        out = get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    elif size.shortest_edge:
        out = get_resize_output_image_size(
            _shape(height, width),
            size=size.shortest_edge,
            default_to_square=False,
            input_data_format=ChannelDimension.FIRST,
        )
    elif size.max_height and size.max_width:
        out = get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
    elif size.height and size.width:
        out = (size.height, size.width)
    else:
        raise VlmflowError(f"image processor size {dict(size)} has no resize rule vlmflow knows")
    return int(out[0]), int(out[1])


def _crop_origin(ip: Any, length: int, crop: int) -> int:
    """First pixel of a center crop of `crop` pixels out of `length` (negative: padded)."""
    from transformers.image_processing_backends import PilBackend

    if crop <= length or isinstance(ip, PilBackend):
        return (length - crop) // 2  # PIL pads by ceil((crop - length) / 2) before
    return -((crop - length) // 2)  # torchvision pads by floor((crop - length) / 2)


def _standard_resize(ip: Any) -> bool:
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    return type(ip).resize in (PilBackend.resize, TorchvisionBackend.resize)


def _resize_and_crop(opts: _Options, box: Box, width: int, height: int) -> tuple[Box, int, int]:
    """A CLIP-style image processor's resize then center crop of a width x height picture that
    shows `box` of the image: the box the result shows, and its width and height."""
    if opts.do_resize:
        height, width = _resized(opts, height, width)
    if opts.do_center_crop:
        ch, cw = int(opts.crop_size["height"]), int(opts.crop_size["width"])
        left, top = _crop_origin(opts.ip, width, cw), _crop_origin(opts.ip, height, ch)
        box = crop_box(box, (width, height), (left, top, left + cw, top + ch))
        width, height = cw, ch
    return box, width, height


def _cells(box: Box, height: int, width: int, patch: int) -> _Grid:
    """The patch grid of a height x width picture showing `box`: a remainder under one patch at
    the bottom or right is not seen by the vision tower."""
    rows, cols = height // patch, width // patch
    return _Grid(rows, cols, crop_box(box, (width, height), (0, 0, cols * patch, rows * patch)))

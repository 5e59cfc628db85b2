"""Where each image sits in a prompt: token roles, image spans, token grids over the picture."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmflow.errors import VlmflowError
from vlmflow.roles import ROLE_NAMES, Role

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the original image
WHOLE: Box = (0.0, 0.0, 1.0, 1.0)


def crop_box(box: Box, size: tuple[int, int], window: tuple[int, int, int, int]) -> Box:
    """The part `window` of a picture that shows `box` of the original image, as a box of the
    original image.

    `size`: the picture's (width, height) in pixels; `window`: (left, top, right, bottom) in
    the picture's pixels, which may reach past its edges (padding): the result then reaches
    past [0, 1] too.
    """
    x0, y0, x1, y1 = box
    width, height = size
    left, top, right, bottom = window
    return (
        x0 + (x1 - x0) * left / width,
        y0 + (y1 - y0) * top / height,
        x0 + (x1 - x0) * right / width,
        y0 + (y1 - y0) * bottom / height,
    )


@dataclass(frozen=True)
class Tile:
    """A rows x cols grid of image tokens covering `box` of the original image.

    `kind` is "image" (the only grid), "base" (LLaVA-NeXT's low-resolution view), "tile" (one
    crop of a tiled image), "grid" (LLaVA-NeXT's unpadded high-resolution grid) or "thumbnail".

    `box` is where the model's input shows the grid: it reaches past [0, 1] where the processor
    padded the image (LLaVA-1.5 `do_pad`), and it lies inside [0, 1] where it cropped. A grid
    may be empty (0 rows or 0 columns: LLaVA-NeXT's unpadded grid of a very thin image); it
    then has no positions and no area. `unplaced` says why the box is not exact for this
    processor's settings ("" when it is): maps and localization refuse such tiles.
    """

    kind: str
    rows: int
    cols: int
    positions: tuple[int, ...]  # prompt positions, row-major, len == rows * cols
    box: Box = WHOLE
    unplaced: str = ""

    @property
    def empty(self) -> bool:
        return self.rows * self.cols == 0


@dataclass(frozen=True)
class ImageSpan:
    """One image of one prompt: its span of positions, its token grids and its separators."""

    index: int  # image index within the prompt
    start: int  # first position of the span
    end: int  # one past the last position
    tiles: tuple[Tile, ...]
    separators: tuple[int, ...]  # newline / marker / delimiter positions inside the span
    size: tuple[int, int] | None = None  # original (width, height) when known
    # cross-attention families (Llama 3.2 Vision): the patch grids over the image's vision
    # states, the keys of the cross-attention layers; their `positions` index those keys
    # (`CaptureResult.tile_rows`), not the prompt. Empty for every other family.
    states: tuple[Tile, ...] = ()
    # the indices of those keys that belong to this image (CLS states included, padding
    # tiles not), ascending; empty for every other family
    state_keys: tuple[int, ...] = ()

    @property
    def grids(self) -> tuple[Tile, ...]:
        """The grids maps and localization lay out: `states` where the image is read through
        cross-attention, else `tiles`."""
        return self.states or self.tiles

    @property
    def patch_positions(self) -> tuple[int, ...]:
        return tuple(p for tile in self.tiles for p in tile.positions)

    def check_placed(self, what: str) -> None:
        """Raise VlmflowError when a grid's box is not exact (see `Tile.unplaced`)."""
        for tile in self.grids:
            if tile.unplaced:
                raise VlmflowError(
                    f"{what} cannot place the image tokens of this processor: {tile.unplaced}"
                )


@dataclass(frozen=True)
class PromptLayout:
    """Roles of every prompt position of a batch, and the images of each row.

    `codes` holds `Role` values; left padding is `Role.PAD`. Positions at or after `length` are
    generated tokens.
    """

    codes: torch.Tensor  # (b, n) int8
    images: tuple[tuple[ImageSpan, ...], ...]  # per row

    @property
    def length(self) -> int:
        return int(self.codes.shape[1])

    def counts(self, row: int = 0) -> dict[str, int]:
        """Number of positions per role in one row (generated is 0 before generation)."""
        values = self.codes[row].tolist()
        return {name: values.count(int(Role(i))) for i, name in enumerate(ROLE_NAMES)}

    def image_positions(self, row: int = 0) -> list[int]:
        return [p for span in self.images[row] for p in range(span.start, span.end)]

    def patch_positions(self, row: int = 0) -> list[int]:
        return [p for span in self.images[row] for p in span.patch_positions]


def label_roles(n: int, spans: list[ImageSpan], pad: int = 0) -> list[int]:
    """Codes for one row: prefix before the first image position, image spans, query after."""
    codes = [int(Role.PREFIX)] * n
    for i in range(pad):
        codes[i] = int(Role.PAD)
    if not spans:
        return codes
    first = min(span.start for span in spans)
    for i in range(first, n):
        codes[i] = int(Role.QUERY)
    for span in spans:
        for i in range(span.start, span.end):
            codes[i] = int(Role.IMAGE)
    return codes

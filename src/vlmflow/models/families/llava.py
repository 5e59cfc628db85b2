"""LLaVA-1.5 and LLaVA-NeXT: grids of `<image>` tokens over the padded, resized, cropped
picture (LLaVA-NeXT adds the high-resolution grid with a newline after each row)."""

from __future__ import annotations

import importlib

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import (
    _cells,
    _Grid,
    _Options,
    _resize_and_crop,
    _shape,
    _square,
    _standard_resize,
)
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import WHOLE, Box, ImageSpan, crop_box


@register
class LlavaRoles(TokenRoles):
    """LLaVA-1.5: one grid of `<image>` tokens per image.

    The grid lies where the image processor put the picture: `do_pad` (LLaVA's pad to square)
    widens the box past the image, the resize (shortest edge, height and width, longest edge,
    max height and width) keeps it, the center crop narrows it. Tokens the processor adds before
    the grid (CLS with `vision_feature_select_strategy="full"`) count as separators.
    """

    family = "llava"
    model_types = ("llava",)

    def _extra(self) -> int:
        n = int(self.processor.num_additional_image_tokens)
        return n - 1 if self.processor.vision_feature_select_strategy == "default" else n

    def _patch(self) -> int:
        """Pixels per side of one vision patch (one grid cell)."""
        return int(self.processor.patch_size)

    def _pads_to_square(self, ip: _Options) -> bool:
        """Whether the image processor pads the picture to a centered square first."""
        return bool(getattr(ip, "do_pad", False)) and hasattr(ip.ip, "pad_to_square")

    def _unplaced(self) -> str:
        ip = self.processor.image_processor
        if not _standard_resize(ip):
            return f"{type(ip).__name__} resizes by its own rules"
        return ""

    def _image_grid(self, image: ImageInput) -> _Grid:
        ip = _Options(self.processor)
        w, h = image.size
        box: Box = WHOLE
        if self._pads_to_square(ip):
            side = max(w, h)
            left, top = (side - w) // 2, (side - h) // 2
            box = crop_box(box, (w, h), (-left, -top, side - left, side - top))
            w = h = side
        if self._unplaced():
            return _Grid(0, 0, box, self._unplaced())
        box, w, h = _resize_and_crop(ip, box, w, h)
        ph, pw = image.processed or (h, w)
        if (ph, pw) != (h, w):  # the batch padding of `do_pad` (PilBackend): bottom and right
            box = crop_box(box, (w, h), (0, 0, pw, ph))
        return _cells(box, ph, pw, self._patch())

    def _per_image(self, image: ImageInput) -> int:
        ip = _Options(self.processor)
        p = self._patch()
        h, w = image.processed or (int(ip.crop_size["height"]), int(ip.crop_size["width"]))
        return self._extra() + (h // p) * (w // p)

    def _placed_grid(self, image: ImageInput, cells: int) -> _Grid:
        """`_image_grid` for a run of `cells` patch tokens; a square grid over the whole image,
        with the reason, where the processor's resize cannot be placed. Raises VlmflowError
        when the grid does not hold `cells` tokens."""
        grid = self._image_grid(image)
        if grid.unplaced:
            side = _square(cells, self.family)
            return _Grid(side, side, WHOLE, grid.unplaced)
        if grid.rows * grid.cols != cells:
            raise VlmflowError(
                f"{self.family}: {cells} image tokens for a {grid.rows} x {grid.cols} patch grid"
            )
        return grid

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans, cursor, extra = [], 0, self._extra()
        for k, image in enumerate(images):
            n = self._per_image(image)
            chunk = positions[cursor : cursor + n]
            cursor += n
            if len(chunk) < n:
                break
            tile = self._placed_grid(image, n - extra).tile("image", chunk[extra:])
            spans.append(
                ImageSpan(k, chunk[0], chunk[-1] + 1, (tile,), tuple(chunk[:extra]), image.size)
            )
        return spans


@register
class LlavaNextRoles(LlavaRoles):
    """LLaVA-NeXT: a base view, then the unpadded high-res grid with a newline after each row.

    The base view is the whole image squeezed to the processor's size (then resized and center
    cropped like every crop). The high-resolution grid: the image is resized into the best
    pinpoint resolution keeping its aspect ratio, padded to it (centered), cut into crops whose
    token grids join into one feature grid, and the model cuts the padded rows (or columns) off
    that grid again. A very thin image keeps 0 rows (or 0 columns): an empty grid, no tokens.
    """

    family = "llava_next"
    model_types = ("llava_next",)
    _modeling = "transformers.models.llava_next.modeling_llava_next"  # owns `unpad_image`

    def _grids(self, image: ImageInput) -> tuple[_Grid, _Grid]:
        from transformers.image_processing_utils import (
            get_patch_output_size,
            select_best_resolution,
        )
        from transformers.image_utils import ChannelDimension

        ip = _Options(self.processor)
        p = self._patch()
        w, h = image.size
        ch, cw = image.processed or (int(ip.crop_size["height"]), int(ip.crop_size["width"]))
        unplaced = self._unplaced()
        size = ip.size
        sh, sw = (
            (size["height"], size["width"])
            if size.get("height") and size.get("width")
            else (size["shortest_edge"],) * 2
        )
        base_box, bw, bh = (WHOLE, cw, ch) if unplaced else _resize_and_crop(ip, WHOLE, sw, sh)
        if (bh, bw) != (ch, cw):
            unplaced = unplaced or f"the base view is {bw} x {bh} px, the crops {cw} x {ch} px"
        base = _cells(base_box, ch, cw, p)
        base_unplaced = unplaced
        best_h, best_w = select_best_resolution((h, w), ip.image_grid_pinpoints)
        nh, nw = get_patch_output_size(_shape(h, w), (best_h, best_w), ChannelDimension.FIRST)
        (top, _), (left, _) = ip.ip._get_padding_size((nh, nw), (best_h, best_w))
        canvas = crop_box(WHOLE, (nw, nh), (-left, -top, best_w - left, best_h - top))
        tile = ip.crop_size["height"] if ip.crop_size else (size.get("height") or sh)
        tile_box, tw, th = (WHOLE, cw, ch) if unplaced else _resize_and_crop(ip, WHOLE, tile, tile)
        if tile_box != WHOLE or (th, tw) != (ch, cw) or (tile, tile) != (ch, cw):
            unplaced = unplaced or (
                f"each {tile} px crop of the grid becomes {tw} x {th} px showing {tile_box}"
            )
        if best_h % ch or best_w % cw or ch % p or cw % p:
            unplaced = unplaced or f"crops of {cw} x {ch} px do not tile {best_w} x {best_h}"
        scale_h, scale_w = best_h // ch, best_w // cw
        fh, fw = (ch // p) * scale_h, (cw // p) * scale_w  # the whole feature grid
        features = crop_box(canvas, (best_w, best_h), (0, 0, scale_w * cw, scale_h * ch))
        rows, cols = self._kept(h, w, fh, fw)
        cut_r, cut_c = (fh - rows) // 2, (fw - cols) // 2  # the padding cut off either side
        box = crop_box(features, (fw, fh), (cut_c, cut_r, fw - cut_c, fh - cut_r))
        rows, cols = self._pooled(h, w, (ch // p, cw // p), (scale_h, scale_w), (rows, cols))
        return (
            _Grid(base.rows, base.cols, base.box, base_unplaced),
            _Grid(rows, cols, box, unplaced),
        )

    def _kept(self, height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
        """(rows, cols) that the model keeps of the rows x cols feature grid of a height x
        width image: transformers' `unpad_image` of the family's modeling module, applied to
        an empty grid of that shape."""
        unpad_image = importlib.import_module(self._modeling).unpad_image
        kept = unpad_image(torch.empty(0, rows, cols), [height, width]).shape
        return int(kept[1]), int(kept[2])

    def _pooled(
        self,
        height: int,
        width: int,
        crop: tuple[int, int],
        scale: tuple[int, int],
        kept: tuple[int, int],
    ) -> tuple[int, int]:
        """(rows, cols) of tokens that the model makes of the `kept` unpadded feature grid of
        a height x width image (crops of `crop` patches, `scale` crops per side). LLaVA-NeXT:
        all of them."""
        return kept

    def _anyres(self, count: int) -> bool:
        """Whether an image among `count` in a prompt gets the base view and the
        high-resolution grid (else its one view, closed by one newline token)."""
        return True

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans, cursor, extra = [], 0, self._extra()
        anyres = self._anyres(len(images))
        for k, image in enumerate(images):
            if anyres:
                base, grid = self._grids(image)
                first = extra + base.rows * base.cols
                n = first + grid.rows * (grid.cols + 1)
            else:  # one view, then one newline
                n = self._per_image(image) + 1
                first = n - 1
            chunk = positions[cursor : cursor + n]
            cursor += n
            if len(chunk) < n:
                break
            if not anyres:
                view = self._placed_grid(image, first - extra).tile("image", chunk[extra:first])
                seps = (*chunk[:extra], chunk[first])
                spans.append(ImageSpan(k, chunk[0], chunk[-1] + 1, (view,), seps, image.size))
                continue
            cells, newlines = [], []
            for r in range(grid.rows):
                row = chunk[first + r * (grid.cols + 1) : first + (r + 1) * (grid.cols + 1)]
                cells.extend(row[: grid.cols])
                newlines.append(row[grid.cols])
            tiles = (base.tile("base", chunk[extra:first]), grid.tile("grid", cells))
            seps = (*chunk[:extra], *newlines)
            spans.append(ImageSpan(k, chunk[0], chunk[-1] + 1, tiles, seps, image.size))
        return spans

"""Mistral 3 (Pixtral vision): rows of `[IMG]` tokens, each closed by `[IMG_BREAK]`, the last
by `[IMG_END]`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import _cells, _Grid, _Options
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import WHOLE, ImageSpan


@register
class Mistral3Roles(TokenRoles):
    """Mistral 3: one grid of merged patch tokens per image, written row by row.

    The Pixtral image processor resizes the whole image (keeping its aspect ratio, at most
    `size["longest_edge"]`) to the next multiple of `patch_size x spatial_merge_size` pixels on
    each side, so the grid covers the whole picture; each token merges spatial_merge_size^2
    patches in row-major order (transformers' `Mistral3PatchMerger`). `[IMG_BREAK]` after every
    row but the last and `[IMG_END]` after the last are separators of the image span. Images of
    a batch are padded bottom and right to the largest; `image_sizes` gives each one's own
    size, which `image_inputs` reads.
    """

    family = "mistral3"
    model_types = ("mistral3",)

    def image_inputs(
        self, inputs: Mapping[str, Any], per_row: list[list[Any]]
    ) -> list[list[ImageInput]]:
        """The shared `ImageInput`s, each with `processed` = its own (height, width) in pixels
        from `image_sizes` (images, 2) (not the batch's padded `pixel_values`)."""
        items = super().image_inputs(inputs, per_row)
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return items
        each = iter(sizes.tolist())  # the batch's images in order
        return [[replace(item, processed=tuple(next(each))) for item in row] for row in items]

    def _grid(self, image: ImageInput) -> _Grid:
        """Where the token grid of one image lies: rows x cols merged patches over its box."""
        merged = int(self.config.vision_config.patch_size) * int(self.config.spatial_merge_size)
        h, w = image.processed or (image.size[1], image.size[0])
        if getattr(_Options(self.processor), "do_center_crop", False):
            return _Grid(h // merged, w // merged, WHOLE, "the image processor center crops")
        # resized: the whole picture fills h x w; not resized: a remainder is not seen
        return _cells(WHOLE, h, w, merged)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        tok = self.processor.tokenizer
        row_end = tok.convert_tokens_to_ids(self.processor.image_break_token)
        image_end = tok.convert_tokens_to_ids(self.processor.image_end_token)
        spans: list[ImageSpan] = []
        i, n = 0, len(ids)
        for k, image in enumerate(images):
            while i < n and ids[i] != self.image_token_id:
                i += 1
            if i == n:
                break
            start, cells, seps, widths = i, [], [], []
            while i < n:
                run = []
                while i < n and ids[i] == self.image_token_id:
                    run.append(i)
                    i += 1
                if i == n or ids[i] not in (row_end, image_end):
                    raise VlmflowError(
                        "mistral3: a row of image tokens is not closed by [IMG_BREAK] or "
                        "[IMG_END]: build prompts with handle.prepare()"
                    )
                cells.extend(run)
                widths.append(len(run))
                seps.append(i)
                i += 1
                if ids[i - 1] == image_end:
                    break
            grid = self._grid(image)
            if set(widths) != {grid.cols} or len(widths) != grid.rows:
                raise VlmflowError(
                    f"mistral3: image {k} has rows of {sorted(set(widths))} tokens, "
                    f"{len(widths)} rows, for a {grid.rows} x {grid.cols} grid"
                )
            tile = grid.tile("image", cells)
            spans.append(ImageSpan(k, start, i, (tile,), tuple(seps), image.size))
        return spans

"""Gemma 3: each view of an image is `<start_of_image>`, a square grid of `mm_tokens_per_image`
soft tokens over the squashed picture, `<end_of_image>`.

With pan-and-scan (`do_pan_and_scan`) a wide or tall image becomes the whole picture followed by
crops side by side, each a view of its own; the processor's text between the views ("and here
are some crops ...") stands inside the image span and counts as its separators, so the span
runs from the first `<start_of_image>` to the last `<end_of_image>` of the image.

Attention: most decoder layers are sliding-window layers (their cache keeps only the last
window - 1 keys); the attention function maps their keys to absolute positions, so knockout and
capture act on them exactly. Inside each block of soft tokens attention is bidirectional (the
mask transformers builds from `token_type_ids`); a knockout only removes keys from that mask,
and a chunked prefill whose boundary falls inside a block is refused under a session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import _Grid, _Options, _shape, _square, _standard_resize
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import WHOLE, Box, ImageSpan, Tile


@register
class Gemma3Roles(TokenRoles):
    """Gemma 3: `<start_of_image>`, soft tokens, `<end_of_image>` per view (pan-and-scan crops
    after the whole picture)."""

    family = "gemma3"
    model_types = ("gemma3",)

    def cuts_bidirectional_block(self, inputs: Mapping[str, Any], at: int) -> bool:
        """True when `at - 1` and `at` are both soft tokens (`token_type_ids` 1) of one view in
        some row: transformers' mask lets each run of soft tokens attend both ways."""
        types = inputs.get("token_type_ids")
        if not isinstance(types, torch.Tensor) or not 0 < at < types.shape[1]:
            return False
        return bool(((types[:, at - 1] == 1) & (types[:, at] == 1)).any())

    def processor_images(self, per_row: list[list[Any]]) -> list[Any]:
        """The processor takes one list of images per row (a flat list is one row's)."""
        return per_row

    def _views(self, image: ImageInput) -> list[Box]:
        """The boxes of the image the model sees, in token order: the whole picture, then the
        pan-and-scan crops (left to right or top to bottom) when the processor makes them."""
        ip = _Options(self.processor)
        if not getattr(ip, "do_pan_and_scan", False):
            return [WHOLE]
        w, h = image.size
        crops = ip.ip.pan_and_scan(
            image=_shape(h, w),
            pan_and_scan_min_crop_size=ip.pan_and_scan_min_crop_size,
            pan_and_scan_max_num_crops=ip.pan_and_scan_max_num_crops,
            pan_and_scan_min_ratio_to_activate=ip.pan_and_scan_min_ratio_to_activate,
        )
        boxes: list[Box] = [WHOLE]
        x = y = 0
        for crop in crops:  # (3, ch, cw) slices of one row or one column
            ch, cw = int(crop.shape[-2]), int(crop.shape[-1])
            boxes.append((x / w, y / h, (x + cw) / w, (y + ch) / h))
            if w >= h:
                x += cw
            else:
                y += ch
        return boxes

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        begin = int(self.config.boi_token_id)
        end = int(self.config.eoi_token_id)
        side = _square(int(self.config.mm_tokens_per_image), "gemma3")
        ip = self.processor.image_processor
        unplaced = "" if _standard_resize(ip) else f"{type(ip).__name__} resizes by its own rules"
        starts = [i for i, t in enumerate(ids) if t == begin]
        spans: list[ImageSpan] = []
        cursor = 0
        for k, image in enumerate(images):
            boxes = self._views(image)
            if cursor + len(boxes) > len(starts):
                break
            tiles: list[Tile] = []
            seps: list[int] = []
            first = starts[cursor]
            last = first
            for v, box in enumerate(boxes):
                open_at = starts[cursor + v]
                run = list(range(open_at + 1, open_at + 1 + side * side))
                close = run[-1] + 1
                if close >= len(ids) or ids[close] != end:
                    raise VlmflowError(
                        f"gemma3: expected {side * side} image tokens after <start_of_image> at"
                        f" position {open_at}: build prompts with handle.prepare()"
                    )
                if any(ids[p] != self.image_token_id for p in run):
                    raise VlmflowError(f"gemma3: a view at position {open_at} holds text tokens")
                seps.extend(range(last + 1, open_at) if v else ())  # text between the views
                seps.extend((open_at, close))
                kind = "image" if len(boxes) == 1 else ("thumbnail" if v == 0 else "tile")
                tiles.append(_Grid(side, side, box, unplaced).tile(kind, run))
                last = close
            cursor += len(boxes)
            spans.append(
                ImageSpan(k, first, last + 1, tuple(tiles), tuple(sorted(seps)), image.size)
            )
        return spans

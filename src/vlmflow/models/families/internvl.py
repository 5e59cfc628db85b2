"""InternVL (transformers-native): `<img>`, tiles of `<IMG_CONTEXT>` tokens (thumbnail last),
`</img>`."""

from __future__ import annotations

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import _grid, _Options, _square
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import ImageSpan


@register
class InternVLRoles(TokenRoles):
    """InternVL: `<img>`, tiles of `<IMG_CONTEXT>` tokens (thumbnail last), `</img>`."""

    family = "internvl"
    model_types = ("internvl",)

    def _tiles(self, image: ImageInput) -> tuple[int, int]:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
            get_optimal_tiled_canvas,
        )

        ip = _Options(self.processor)
        if not getattr(ip, "crop_to_patches", False) or ip.max_patches <= 1:
            return 1, 1
        w, h = image.size
        size = (ip.size["height"], ip.size["width"])
        cols, rows = get_optimal_tiled_canvas((h, w), size, ip.min_patches, ip.max_patches)
        return rows, cols

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        seq = int(self.processor.image_seq_length)
        side = _square(seq, "internvl tile")
        runs = self._runs(ids, {self.image_token_id})
        spans = []
        for k, (run, image) in enumerate(zip(runs, images, strict=False)):
            rows, cols = self._tiles(image)
            count = rows * cols + (1 if rows * cols > 1 else 0)
            if len(run) != count * seq:
                raise VlmflowError(
                    f"internvl: expected {count * seq} image tokens, found {len(run)}"
                )
            tiles = []
            for i in range(rows * cols):
                r, c = divmod(i, cols)
                box = (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
                kind = "tile" if count > 1 else "image"
                tiles.append(_grid(kind, run[i * seq : (i + 1) * seq], side, side, box))
            if count > 1:
                tiles.append(_grid("thumbnail", run[-seq:], side, side))
            start, end = run[0] - 1, run[-1] + 2  # <img> ... </img>
            spans.append(ImageSpan(k, start, end, tuple(tiles), (start, end - 1), image.size))
        return spans

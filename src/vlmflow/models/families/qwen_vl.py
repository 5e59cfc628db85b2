"""Qwen2-VL and Qwen2.5-VL: merged patch tokens between `<|vision_start|>` and
`<|vision_end|>`, one grid per frame."""

from __future__ import annotations

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import _grid
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import ImageSpan


@register
class QwenVLRoles(TokenRoles):
    """Qwen2-VL / Qwen2.5-VL: `<|vision_start|>`, merged patch tokens, `<|vision_end|>`."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        start_id = int(self.config.vision_start_token_id)
        end_id = int(self.config.vision_end_token_id)
        merge = int(self.config.vision_config.spatial_merge_size)
        runs = self._runs(ids, {self.image_token_id})
        spans = []
        for k, (run, image) in enumerate(zip(runs, images, strict=False)):
            if image.grid_thw is None:
                raise VlmflowError("qwen2_vl: image_grid_thw missing: build inputs with prepare()")
            t, gh, gw = image.grid_thw
            rows, cols = gh // merge, gw // merge
            seps = []
            start, end = run[0], run[-1] + 1
            if start > 0 and ids[start - 1] == start_id:
                start -= 1
                seps.append(start)
            if end < len(ids) and ids[end] == end_id:
                seps.append(end)
                end += 1
            tiles = tuple(
                _grid(
                    "image" if t == 1 else f"frame{f}",
                    run[f * rows * cols : (f + 1) * rows * cols],
                    rows,
                    cols,
                )
                for f in range(t)
            )
            spans.append(ImageSpan(k, start, end, tiles, tuple(seps), image.size))
        return spans

"""Qwen2-VL and Qwen2.5-VL: merged patch tokens between `<|vision_start|>` and
`<|vision_end|>`, one grid per frame."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import _grid
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import ImageSpan


@register
class QwenVLRoles(TokenRoles):
    """Qwen2-VL / Qwen2.5-VL: `<|vision_start|>`, merged patch tokens, `<|vision_end|>`."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def image_inputs(
        self, inputs: Mapping[str, Any], per_row: list[list[Any]]
    ) -> list[list[ImageInput]]:
        """The shared `ImageInput`s, each with its `image_grid_thw` (t, h, w) in patches."""
        items = super().image_inputs(inputs, per_row)
        thw = inputs.get("image_grid_thw")
        if thw is None:
            return items
        grids = iter(thw.tolist())  # (images, 3), the batch's images in order
        out = []
        for row in items:
            done = []
            for item in row:
                t, h, w = (int(x) for x in next(grids))
                done.append(replace(item, grid_thw=(t, h, w)))
            out.append(done)
        return out

    def rope_index(
        self, model: Any, inputs: Mapping[str, Any], length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE: three axes (time, height, width) from the model's own `get_rope_index` for
        the prompt's `input_ids` (b, n) and image grids: positions (3, b, length) and the per-row
        offset `rope_deltas` (b, 1) at which a KV cache continues after the prompt."""
        get_rope_index = getattr(model, "model", model).get_rope_index
        types = inputs.get("mm_token_type_ids")  # (b, n): 0 text, 1 image
        if types is None:
            raise VlmflowError(
                f"{self.family}: mm_token_type_ids missing: build inputs with prepare()"
            )
        positions, deltas = get_rope_index(
            inputs["input_ids"][:, :length],
            mm_token_type_ids=types[:, :length],
            image_grid_thw=inputs.get("image_grid_thw"),
        )
        return positions, deltas

    def set_rope_deltas(self, model: Any, inputs: Mapping[str, Any]) -> None:
        """The model continues a cache at `position + rope_deltas`: set it for the prompt."""
        getattr(model, "model", model).rope_deltas = self.rope_index(model, inputs)[1]  # (1, 1)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        start_id = int(self.config.vision_start_token_id)
        end_id = int(self.config.vision_end_token_id)
        merge = int(self.config.vision_config.spatial_merge_size)
        runs = self._runs(ids, {self.image_token_id})
        spans = []
        for k, (run, image) in enumerate(zip(runs, images, strict=False)):
            if image.grid_thw is None:
                raise VlmflowError(
                    f"{self.family}: image_grid_thw missing: build inputs with prepare()"
                )
            t, gh, gw = image.grid_thw
            rows, cols = gh // merge, gw // merge
            if len(run) != t * rows * cols:
                raise VlmflowError(
                    f"{self.family}: image {k} has {len(run)} image tokens, its grid "
                    f"{t}x{gh}x{gw} with merge size {merge} makes {t * rows * cols}: keep the "
                    "processor's merge_size equal to the model's spatial_merge_size"
                )
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

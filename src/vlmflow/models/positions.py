"""Position ids of a prompt: the one place that asks a model for multimodal rotary positions.

Most families number positions 0..n-1. Qwen2-VL and Qwen2.5-VL use M-RoPE: three axes
(time, height, width) from the model's own `get_rope_index`, and a per-row offset
(`rope_deltas`) at which a KV cache continues after the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def rope_index(
    model: Any, inputs: Mapping[str, Any], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """M-RoPE positions of the first `length` prompt positions (all when None), or None.

    Returns `(positions, deltas)` as the model's `get_rope_index` gives them for the prompt's
    `input_ids` (b, n) and image grids: positions (3, b, length) and deltas (b, 1), both
    integer position units. None for a model without multimodal rotary positions, whose
    position ids are plain 0..n-1.
    """
    get_rope_index = getattr(getattr(model, "model", model), "get_rope_index", None)
    if get_rope_index is None:
        return None
    extra = {"image_grid_thw": inputs.get("image_grid_thw")}
    if inputs.get("mm_token_type_ids") is not None:
        extra["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, :length]
    positions, deltas = get_rope_index(inputs["input_ids"][:, :length], **extra)
    return positions, deltas

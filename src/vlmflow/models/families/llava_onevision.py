"""LLaVA-OneVision: LLaVA-NeXT's base view and unpadded high-resolution grid (a newline token
after each row), with its own rules for crops, pooling and prompts of several images."""

from __future__ import annotations

from typing import Any

from vlmflow.models.families.geometry import _Options
from vlmflow.models.families.llava import LlavaNextRoles
from vlmflow.models.families.registry import register


@register
class LlavaOnevisionRoles(LlavaNextRoles):
    """LLaVA-OneVision: `<image>` tokens laid out as LLaVA-NeXT's, save three rules.

    - The base view is the whole image squashed to the processor's `size` (no center crop by
      default); the vision tower has no CLS token in the grid (SigLIP, or CLIP with
      `vision_feature_select_strategy="default"`): no extra tokens before it.
    - `vision_aspect_ratio="anyres_max_N"`: when the unpadded grid holds more than 1.1^2 x N
      crops' worth of tokens, the model shrinks it by bilinear interpolation to
      `int(rows / r) x int(cols / r)` (r = sqrt(tokens / (N x tokens per crop))), then adds the
      newline after each row. A pooled token is sampled at the center of its cell of the same
      box; with a ratio under 2 its interpolation also reads up to one unpooled cell past its
      cell's edge.
    - A prompt with several images gives each one view only: the image padded to a centered
      square, resized to `size`, then one newline token (`batch_num_images` tells the model).

    The processor takes one list of images per prompt row, so that it counts the images of each
    row as the model does.
    """

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    _modeling = "transformers.models.llava_onevision.modeling_llava_onevision"

    def processor_images(self, per_row: list[list[Any]]) -> list[Any]:
        """One list per row: the processor reads `batch_num_images` from it."""
        return per_row

    def _patch(self) -> int:
        return int(self.config.vision_config.patch_size)

    def _extra(self) -> int:
        return 0

    def _pads_to_square(self, ip: _Options) -> bool:
        return True  # the one view of an image among several is always padded to a square

    def _anyres(self, count: int) -> bool:
        return count == 1

    def _pooled(
        self,
        height: int,
        width: int,
        crop: tuple[int, int],
        scale: tuple[int, int],
        kept: tuple[int, int],
    ) -> tuple[int, int]:
        """The processor's count of the grid's tokens and newlines (after the pooling of
        `vision_aspect_ratio`) gives the pooled rows and columns."""
        tokens, rows = self.processor._get_unpadded_features(height, width, *crop, *scale)
        if rows == kept[0]:
            return kept
        return rows, (tokens // rows if rows else 0)

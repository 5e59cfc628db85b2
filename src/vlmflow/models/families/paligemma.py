"""PaliGemma (Gemma decoder) and PaliGemma 2 (Gemma 2 decoder): the image's `<image>` tokens
first, then BOS, the text and a newline; no chat template.

What differs from the other families, and where vlmflow handles it:

- Prompt text: the processor writes it (`PaliGemmaProcessor`: image placeholders, then BOS after
  the last one, the text, then "\\n"); `render` spells exactly that, and `processor_text` hands
  the processor the placeholders and the text so that it adds BOS and the newline itself. A
  follow-up turn of a compressed context is its text and a newline, after the cached prompt.
- Roles: the image comes first, so no position is `prefix`: BOS, the text and the newline are
  `query`.
- Prefix-LM mask: every prompt position (`token_type_ids` 0) attends to every other one, image
  and text both ways; generated tokens (and a follow-up turn after a cached context) attend
  causally. The mask transformers passes carries it; a knockout only removes keys from it, so
  under `image -> query` the image positions still read the text, while no text position reads
  the image. `bidirectional_end` tells the shared-prefill sweeps (`generate_variants`,
  tracing) that the prompt is one block: it is computed whole, never in chunks.
- Positions start at 1 (`positions`): the model numbers position p as p + 1 itself, and a
  forward pass that continues a cache (`compress`, sweeps) passes ids that do the same.
- PaliGemma 2's Gemma 2 layers soft-cap attention scores (`attn_logit_softcapping`): vlmflow's
  attention function computes them exactly as transformers' eager attention does
  (`vlmflow.attention.backend.softcapped_attention`), knockout and capture included;
  transformers' own SDPA refuses this model. Its sliding-window layers (every other layer)
  take the path of every sliding-window layer (`vlmflow.attention.backend`): past the window
  the keys the cache keeps are mapped to their absolute positions and the mask transformers
  passes (window, prefix-LM block) is kept, knocked keys removed from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.families.geometry import _Grid, _Options, _standard_resize
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import WHOLE, ImageSpan

# the token the processor's prompt ends with, which separates the prompt from the answer
_NEWLINE = "\n"


@register
class PaliGemmaRoles(TokenRoles):
    """PaliGemma / PaliGemma 2: `image_seq_length` `<image>` tokens per image (one per SigLIP
    patch, row-major over the picture squashed to the processor's size), then BOS and the text.
    """

    family = "paligemma"
    model_types = ("paligemma",)

    def _image_token(self) -> str:
        return str(self.processor.image_token)

    def _bos(self) -> str:
        return str(self.processor.tokenizer.bos_token)

    def render(self, turns: Sequence[tuple[int, str]], add_generation_prompt: bool) -> str:
        """The processor's prompt: the images' placeholders, BOS, each turn's text followed by
        "\\n" (the processor's separator before the answer; there is no other cue).

        Raises VlmflowError when a turn after the first holds images."""
        if not turns:
            return ""
        images = sum(n for n, _ in turns)
        if any(n for n, _ in turns[1:]):
            raise VlmflowError("paligemma takes images in the first turn only: put them there")
        texts = "".join(text + _NEWLINE for _, text in turns)
        return self._image_token() * images + self._bos() + texts

    def processor_text(self, images: int, text: str) -> str:
        """The placeholders and the text: the processor adds BOS after the last placeholder and
        the closing "\\n" itself (`PaliGemmaProcessor`)."""
        return self._image_token() * images + text

    def positions(
        self, model: Any, inputs: Mapping[str, Any], length: int | None = None
    ) -> torch.Tensor:
        """(b, length) position ids 1..length: PaliGemma numbers positions from 1."""
        return super().positions(model, inputs, length) + 1

    def bidirectional_end(self, inputs: Mapping[str, Any]) -> int:
        """One past the last prompt position with `token_type_ids` 0 (the processor's prefix:
        image and text, attending both ways); without token types the prompt is causal."""
        types = inputs.get("token_type_ids")
        if not isinstance(types, torch.Tensor):
            return 0
        prefix = (types[0] == 0).nonzero()
        return int(prefix[-1]) + 1 if prefix.numel() else 0

    def _grid(self, image: ImageInput) -> _Grid:
        """The patch grid over the whole picture: SigLIP's processor resizes it to a fixed
        height and width (no padding, no crop), so the grid stretches over the image."""
        ip = _Options(self.processor)
        p = int(self.config.vision_config.patch_size)
        height, width = image.processed or (int(ip.size["height"]), int(ip.size["width"]))
        unplaced = ""
        if not _standard_resize(ip.ip):
            unplaced = f"{type(ip.ip).__name__} resizes by its own rules"
        elif getattr(ip, "do_center_crop", False) or getattr(ip, "do_pad", False):
            unplaced = f"{type(ip.ip).__name__} crops or pads the picture"
        return _Grid(height // p, width // p, WHOLE, unplaced)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        seq = int(self.processor.image_seq_length)
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans = []
        for k, image in enumerate(images):
            chunk = positions[k * seq : (k + 1) * seq]
            if len(chunk) < seq:
                break
            grid = self._grid(image)
            if grid.rows * grid.cols != seq:
                raise VlmflowError(
                    f"paligemma: {seq} image tokens for a {grid.rows} x {grid.cols} patch grid"
                )
            tile = grid.tile("image", chunk)
            spans.append(ImageSpan(k, chunk[0], chunk[-1] + 1, (tile,), (), image.size))
        return spans

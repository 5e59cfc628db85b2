"""Llama 3.2 Vision (`mllama`): the image enters the text only through cross-attention layers.

The prompt holds one `<|image|>` token per image; the vision tower's states of the image's tiles
(per tile: a CLS state, then the patches row by row) are the keys and values of the decoder's
cross-attention layers (`text_config.cross_attention_layers`), whose queries are text positions.
Self-attention layers see text positions only.

Roles. The `<|image|>` position is the image's one prompt position, role `image`: positions
before it are `prefix`, after it `query`. Its embedding does not depend on the pixels, but from
the first cross-attention layer on its hidden state holds what it read from the tiles, so in
self-attention layers it is the one key that carries the image as such.

Knockout `image -> tgt` at a layer set (decoder layer indices, as for every family):
- at a cross-attention layer, queries with a role in `tgt` get no cross-attention: the layer's
  attention output for those rows is 0, so the layer adds nothing to them there (its MLP still
  runs on the residual); every other row is computed as without the knockout;
- at a self-attention layer, the `<|image|>` key is blocked for those queries, as image keys
  are in every family.
Positions before the `<|image|>` token (the prefix) have no tile in the model's own
cross-attention mask; transformers then gives their all-masked softmax the mean of every tile's
value, so prefix positions do carry image content into later self-attention layers. The paper's
`image -> query+generated` leaves that path open; `image -> prefix+query+generated` closes every
path from the tiles to the text other than through the blocked `<|image|>` key.

Capture at a cross-attention layer: the row's attention over the tiles, so the `image` fraction
is 1 (0 for every role where the row is knocked out: the layer reads nothing). Image rows over
tiles are not prompt positions: maps, localization, top-k and compress need image rows at
prompt positions and are refused on this family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import WHOLE, ImageSpan, Tile

_UNPLACED = (
    "Llama 3.2 Vision reads the image through cross-attention over its tiles; its one"
    " <|image|> prompt position has no place on the picture"
)


@register
class MllamaRoles(TokenRoles):
    """Llama 3.2 Vision: one `<|image|>` position per image, tiles read by cross-attention."""

    family = "mllama"
    model_types = ("mllama",)

    def processor_images(self, per_row: list[list[Any]]) -> list[Any]:
        """The processor takes one list of images per row."""
        return per_row

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans = []
        for k, (pos, image) in enumerate(zip(positions, images, strict=False)):
            # no grid: the position carries no patch; the empty tile says why maps refuse
            tile = Tile("image", 0, 0, (), WHOLE, _UNPLACED)
            spans.append(ImageSpan(k, pos, pos + 1, (tile,), (pos,), image.size))
        return spans

    def cross_attention_layers(self) -> frozenset[int]:
        """The decoder layers whose keys are the image's tiles (`cross_attention_layers`)."""
        text = self.config.get_text_config()
        return frozenset(int(i) for i in text.cross_attention_layers)

    def probe_inputs(self, inputs: Mapping[str, Any], stop: int) -> dict[str, Any]:
        """The first row's image inputs, with the cross-attention mask of the probe's positions
        [stop - 2, stop): without an image the model skips its cross-attention layers."""
        out: dict[str, Any] = {}
        for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
            value = inputs.get(key)
            if isinstance(value, torch.Tensor):
                out[key] = value[:1]
        mask = inputs.get("cross_attention_mask")
        if isinstance(mask, torch.Tensor):
            out["cross_attention_mask"] = mask[:1, stop - 2 : stop]
        return out

    @property
    def text_continues(self) -> bool:
        """A prompt's cache cannot be continued with text ids alone: every new position needs
        its row of the cross-attention mask."""
        return False

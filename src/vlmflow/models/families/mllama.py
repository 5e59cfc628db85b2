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
is 1 (0 for every role where the row is knocked out: the layer reads nothing).

Layout over the picture (`ImageSpan.states`). The processor resizes the image, keeping its
aspect ratio, to fit a canvas of rows x cols tiles of `image_size` px (the tiling its
`aspect_ratio_ids` name), pads it with zeros at the right and bottom to that canvas, and cuts
the canvas into tiles row by row; the batch pads every image to `max_image_tiles` tiles. The
vision states of an image are, per tile in that order (padding tiles included), a CLS state,
then one state per patch of `patch_size` px, row by row. So tile t = i * cols + j covers the
canvas window [j T, (j + 1) T] x [i T, (i + 1) T], which reaches past the resized picture where
it was padded (a box past [0, 1], as for LLaVA-1.5's padding), and its patch states are the
cells of that box. CLS states have no cell; padding tiles show nothing of the image and are no
key of it (`ImageSpan.state_keys` lists the image's real keys, CLS states included). The
`<|image|>` prompt position has no place on the picture: `tiles` is empty, maps read the
cross-attention rows over the states (`CaptureResult.tile_rows`), and localization and top-k,
which score image rows at prompt positions, are refused.

Compress (paper Sec. 5): the image's keys are the vision states in the cross-attention layers'
cache; a compressed context keeps every self-attention position of the prompt and, per
cross-attention layer, the top-k fraction of the image's states (`vlmflow.compression`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.families.registry import ImageInput, TokenRoles, register
from vlmflow.models.layout import WHOLE, ImageSpan, Tile, crop_box


@register
class MllamaRoles(TokenRoles):
    """Llama 3.2 Vision: one `<|image|>` position per image, tiles read by cross-attention."""

    family = "mllama"
    model_types = ("mllama",)

    def processor_images(self, per_row: list[list[Any]]) -> list[Any]:
        """The processor takes one list of images per row."""
        return per_row

    def image_inputs(
        self, inputs: Mapping[str, Any], per_row: list[list[Any]]
    ) -> list[list[ImageInput]]:
        """Per image: its size, the tile size (height, width) of `pixel_values`
        (b, images, max_tiles, 3, T, T), its tiling (rows, cols) from `aspect_ratio_ids`
        (b, images) and the index of its first vision state in its row. Raises VlmflowError
        when the processor returned no tiling."""
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_all_supported_aspect_ratios,
        )

        pixels, ids = inputs.get("pixel_values"), inputs.get("aspect_ratio_ids")
        if not any(per_row):
            return [[] for _ in per_row]
        if not isinstance(pixels, torch.Tensor) or not isinstance(ids, torch.Tensor):
            raise VlmflowError(
                "the processor returned no pixel_values / aspect_ratio_ids: prepare the prompt"
                " with handle.prepare()"
            )
        max_tiles = int(pixels.shape[2])
        tile_h, tile_w = int(pixels.shape[-2]), int(pixels.shape[-1])
        side = int(self.config.vision_config.image_size)
        if (tile_h, tile_w) != (side, side):
            raise VlmflowError(
                f"the processor cuts tiles of {tile_w} x {tile_h} px and the vision tower reads"
                f" {side} x {side} px: set the image processor's size to the model's image_size"
            )
        most = int(self.processor.image_processor.max_image_tiles)
        ratios = get_all_supported_aspect_ratios(most)  # as the processor numbers its tilings
        per_image = max_tiles * self._states_per_tile()
        out = []
        for r, row in enumerate(per_row):
            found = []
            for k, image in enumerate(row):
                # the processor numbers (tiles down, tiles across) in this list, 1-based
                rows, cols = ratios[int(ids[r, k]) - 1]
                found.append(
                    ImageInput(image.size, None, (tile_h, tile_w), (rows, cols), k * per_image)
                )
            out.append(found)
        return out

    def _states_per_tile(self) -> int:
        """A CLS state plus one state per patch of a tile."""
        vision = self.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return 1 + side * side

    def _states(self, image: ImageInput) -> tuple[tuple[Tile, ...], tuple[int, ...]]:
        """The image's patch grids over its vision states (module docstring) and its keys."""
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_image_size_fit_to_canvas,
        )

        if image.tiles is None or image.processed is None:
            return (), ()
        rows, cols = image.tiles
        tile = image.processed[0]  # square tiles of T px
        width, height = image.size
        new_h, new_w = get_image_size_fit_to_canvas(height, width, rows * tile, cols * tile, tile)
        vision = self.config.vision_config
        side = tile // int(vision.patch_size)
        per_tile = self._states_per_tile()
        grids: list[Tile] = []
        keys: list[int] = []
        for t in range(rows * cols):
            i, j = divmod(t, cols)
            first = image.first_state + t * per_tile  # the tile's CLS state
            window = (j * tile, i * tile, (j + 1) * tile, (i + 1) * tile)
            box = crop_box(WHOLE, (int(new_w), int(new_h)), window)
            patches = tuple(range(first + 1, first + per_tile))
            grids.append(Tile("tile", side, side, patches, box))
            keys.extend(range(first, first + per_tile))
        return tuple(grids), tuple(keys)

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        spans = []
        for k, (pos, image) in enumerate(zip(positions, images, strict=False)):
            # no prompt grid: the position carries no patch; the states hold the grids
            states, keys = self._states(image)
            spans.append(ImageSpan(k, pos, pos + 1, (), (pos,), image.size, states, keys))
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

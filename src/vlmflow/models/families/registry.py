"""The `TokenRoles` interface every family implements, and the registry `vlmflow.load` picks a
family's resolver from by `config.model_type`.

A family is one module of this package: a `TokenRoles` subclass decorated with `register`
(and a tiny builder in `vlmflow.models.tiny`); the package's `__init__` imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlmflow.errors import VlmflowError
from vlmflow.models.layout import ImageSpan, PromptLayout, label_roles


@dataclass(frozen=True)
class ImageInput:
    """What the processor did with one image: its original size and family-specific extras."""

    size: tuple[int, int]  # original (width, height)
    grid_thw: tuple[int, int, int] | None = None  # Qwen2-VL family
    processed: tuple[int, int] | None = None  # (height, width) of one processed crop
    # Llama 3.2 Vision: (rows, cols) of tiles of the aspect-ratio tiling, and the index of the
    # image's first vision state among the cross-attention keys of its row
    tiles: tuple[int, int] | None = None
    first_state: int = 0


class TokenRoles:
    """Labels prompt positions prefix / image / query and lays image tokens out on the image
    (paper Sec. 3: the roles every knockout and capture is stated in).

    One subclass per family, in its own module, registered with `register`: it names its
    `family` and `model_types` and implements `spans`; the other methods below have defaults
    that a family overrides where it differs (how its processor takes images, what it reports
    per image, multimodal rotary positions).
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, processor: Any, config: Any) -> None:
        self.processor = processor
        self.config = config
        self.image_token_id = int(config.image_token_id)

    # -- per family -------------------------------------------------------------------------
    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        """One `ImageSpan` per image of the row `ids` (n,), in order: its half-open span of
        positions, its token grids over the picture and its separators. Raises VlmflowError when
        the tokens do not match what the processor makes of `images`."""
        raise NotImplementedError

    # -- per family, with a default ----------------------------------------------------------
    def processor_images(self, per_row: list[list[Any]]) -> list[Any]:
        """The batch's images as the family's processor takes them; `per_row[r]` lists row r's
        images in order. Default: one flat list."""
        return [image for row in per_row for image in row]

    def image_inputs(
        self, inputs: Mapping[str, Any], per_row: list[list[Any]]
    ) -> list[list[ImageInput]]:
        """Per-row `ImageInput`s from what the processor returned (`inputs`) for the PIL images
        `per_row`: each image's size, and the (height, width) of one processed crop read from
        `pixel_values` (..., H, W) when it has one."""
        pixels = inputs.get("pixel_values")
        processed = None
        if isinstance(pixels, torch.Tensor) and pixels.dim() >= 4:
            processed = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        return [
            [ImageInput(size=image.size, processed=processed) for image in row] for row in per_row
        ]

    def rope_index(
        self, model: Any, inputs: Mapping[str, Any], length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Multimodal rotary positions of the first `length` prompt positions (all when None):
        `(positions, deltas)`, positions (axes, b, length) and deltas (b, 1) in integer
        position units. Default None: the family numbers positions 0..n-1."""
        return None

    def set_rope_deltas(self, model: Any, inputs: Mapping[str, Any]) -> None:
        """Before `generate()` continues a KV cache built outside it for the prompt `inputs`:
        tell the model where positions continue after the prompt (every row holds the same
        prompt). Default: nothing to do (positions continue at the cache length)."""

    def positions(
        self, model: Any, inputs: Mapping[str, Any], length: int | None = None
    ) -> torch.Tensor:
        """Position ids of the first `length` prompt positions (all when None), as the model
        numbers them when it runs the prompt itself: (b, length), or (axes, b, length) for
        multimodal rotary positions (`rope_index`). A forward pass that continues a KV cache
        outside `generate()` passes these (and counts on from the last one). Default: the
        `rope_index` positions, else 0..length-1."""
        rope = self.rope_index(model, inputs, length)
        if rope is not None:
            return rope[0]
        ids = inputs["input_ids"][:, :length]  # (b, length)
        return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)

    def bidirectional_end(self, inputs: Mapping[str, Any]) -> int:
        """Prompt positions [0, end) of the one-row prompt `inputs` attend to each other in
        both directions (a prefix-LM mask); the rest is causal. A computation that shares or
        reuses part of the prompt's KV cache may start a chunk at 0 or at end and later only.
        Default 0: causal throughout."""
        return 0

    def cuts_bidirectional_block(self, inputs: Mapping[str, Any], at: int) -> bool:
        """True when prompt positions `at - 1` and `at` of some row of `inputs` lie in one
        block of positions that attend to each other in both directions, so that a forward
        pass ending at `at` followed by one starting there (transformers' chunked prefill,
        `generate(prefill_chunk_size=...)`) computes the positions before `at` without the
        later ones of their block: another computation than the model's one pass. Default:
        `at` inside [1, `bidirectional_end`)."""
        return 0 < at < self.bidirectional_end(inputs)

    def render(self, turns: Sequence[tuple[int, str]], add_generation_prompt: bool) -> str:
        """The text the language model reads for user `turns` ((images, text) each, images
        as the processor's unexpanded placeholders), with the answer cue when
        `add_generation_prompt`: `prepare`'s prompt (one turn, cue) and a compressed
        context's follow-up turns. Default: the processor's chat template."""
        messages = []
        for images, text in turns:
            content: list[dict[str, str]] = [{"type": "image"} for _ in range(images)]
            content.append({"type": "text", "text": text})
            messages.append({"role": "user", "content": content})
        return str(
            self.processor.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        )

    def processor_text(self, images: int, text: str) -> str:
        """What `prepare` hands the processor for one user turn of `images` images and `text`,
        so that it tokenizes to `render([(images, text)], True)`. Default: that rendering."""
        return self.render([(images, text)], add_generation_prompt=True)

    def cross_attention_layers(self) -> frozenset[int]:
        """Decoder layers whose keys are the image's vision states, not prompt positions
        (queries: text positions). Default: none, the image is read at its prompt positions."""
        return frozenset()

    def probe_inputs(self, inputs: Mapping[str, Any], stop: int) -> dict[str, Any]:
        """Extra inputs for the layer probe (`vlmflow.attention.guard`), a forward over the
        prompt's first row's positions [stop - 2, stop) from the processor's `inputs`, so that
        every decoder layer runs. Default: none (every layer runs on text alone)."""
        return {}

    @property
    def text_continues(self) -> bool:
        """Whether a cache of prompt positions can be continued with text ids alone (shared
        prefills of `vlmflow.attention.batch`). Default True."""
        return True

    # -- shared -----------------------------------------------------------------------------
    def layout(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        images: list[list[ImageInput]],
    ) -> PromptLayout:
        """Roles for a (b, n) batch; `images[row]` lists the images of that row in order."""
        rows, all_spans = [], []
        for r in range(input_ids.shape[0]):
            ids = input_ids[r].tolist()
            pad = 0
            if attention_mask is not None:
                mask = attention_mask[r].tolist()
                while pad < len(mask) and mask[pad] == 0:
                    pad += 1
            spans = self.spans(ids, images[r] if r < len(images) else [], 0)
            if len(spans) != len(images[r] if r < len(images) else []):
                raise VlmflowError(
                    f"found {len(spans)} image spans for {len(images[r])} images in row {r}: "
                    "build prompts with handle.prepare() so image tokens match the images"
                )
            rows.append(label_roles(len(ids), spans, pad))
            all_spans.append(tuple(spans))
        codes = torch.tensor(rows, dtype=torch.int8)
        return PromptLayout(codes=codes, images=tuple(all_spans))

    def _runs(self, ids: list[int], member: set[int]) -> list[list[int]]:
        """Maximal runs of consecutive positions whose ids are in `member`."""
        runs: list[list[int]] = []
        for i, t in enumerate(ids):
            if t in member:
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
        return runs


_REGISTERED: list[type[TokenRoles]] = []


def register(cls: type[TokenRoles]) -> type[TokenRoles]:
    """Class decorator: make `cls` the resolver of its `model_types`.

    Raises VlmflowError when one of them already has a resolver (two families cannot claim
    one model type).
    """
    taken = set(supported_model_types()) & set(cls.model_types)
    if taken:
        raise VlmflowError(
            f"{cls.__name__}: model types {sorted(taken)} already have a resolver: "
            "register each model type once"
        )
    _REGISTERED.append(cls)
    return cls


def registered() -> tuple[type[TokenRoles], ...]:
    """Every registered resolver, in the order they were registered."""
    return tuple(_REGISTERED)


def supported_model_types() -> tuple[str, ...]:
    """The `config.model_type` values some registered resolver handles."""
    return tuple(t for r in _REGISTERED for t in r.model_types)


def resolver_for(model_type: str) -> type[TokenRoles]:
    """The registered resolver of `model_type`; raises `unsupported_family` when none is."""
    for cls in _REGISTERED:
        if model_type in cls.model_types:
            return cls
    raise unsupported_family(model_type)


def unsupported_family(model_type: str) -> VlmflowError:
    """The error for a model type that no registered resolver handles and whose image token the
    generic resolver cannot find."""
    return VlmflowError(
        f"unsupported model family {model_type!r}: vlmflow supports "
        f"{', '.join(supported_model_types())}, and other model types whose image token it "
        "finds (config image_token_id / image_token_index, or the processor's image_token)"
    )

"""The generic resolver: roles for a model type that has no family module, found from its image
token alone.

A model type no registered family claims still loads when vlmflow can find its image token:
the top-level config's `image_token_id` or `image_token_index`, else the processor's
`image_token_id` or `image_token` (read in that order). Each maximal run of that token in a row
is one image span, the images in order; tokens around a run (begin / end markers, tile tags)
count as prefix or query. Nothing is known about where the tokens lie on the picture, so every
span has one grid marked unplaced: maps, localization and the lens' image grids refuse it in one
line. Knockout and capture act through the attention function as for every family, and the
guard (`vlmflow.attention.guard`) refuses the layers it does not reach exactly, so results are
exact or refused. `compress` and the shared prefill of `generate_variants` need the model's
positions: they run where the model numbers prompt positions 0..n-1 (checked once per model: no
multimodal rotary positions, and the rotary embedding of a text forward sees 0, 1) and are
refused otherwise.

Refused outright, before weights load: configs without a findable image token, and
encoder-decoder models, whose text reads the image through cross-attention that a
self-attention knockout never touches.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch

from vlmflow.errors import VlmflowError, VlmflowWarning
from vlmflow.models.families.registry import ImageInput, TokenRoles, unsupported_family
from vlmflow.models.layout import WHOLE, ImageSpan, Tile

_CONFIG_KEYS = ("image_token_id", "image_token_index")


class GenericResolverWarning(VlmflowWarning):
    """`vlmflow.load` used the generic resolver: roles only, no map layout."""


def image_token(config: Any, processor: Any) -> int | None:
    """The image token id of `config` (top level: `image_token_id`, `image_token_index`), else
    of `processor` (`image_token_id`, or `image_token` looked up in its tokenizer); None when
    neither names one that the tokenizer knows."""
    tokenizer = getattr(processor, "tokenizer", None)
    for key in _CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= 0:
            return value
    value = getattr(processor, "image_token_id", None)
    if isinstance(value, int) and value >= 0:
        return value
    text = getattr(processor, "image_token", None)
    if isinstance(text, str) and tokenizer is not None:
        found = tokenizer.convert_tokens_to_ids(text)
        if isinstance(found, int) and found >= 0 and found != tokenizer.unk_token_id:
            return found
    return None


class GenericRoles(TokenRoles):
    """Roles of an unregistered model type: each maximal run of its image token is one image.

    Raises VlmflowError (at construction) when no image token can be found: the model type is
    unsupported.
    """

    family = "generic"

    def __init__(self, processor: Any, config: Any) -> None:
        self.processor = processor
        self.config = config
        self.model_type = str(getattr(config, "model_type", ""))
        found = image_token(config, processor)
        if found is None:
            raise unsupported_family(self.model_type)
        self.image_token_id = found
        self.unplaced = (
            f"model type {self.model_type!r} loads through the generic resolver, which knows "
            "the image tokens but not their grid (roles only)"
        )
        self._positions: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        runs = self._runs(ids, {self.image_token_id})
        if len(runs) != len(images):
            raise VlmflowError(
                f"found {len(runs)} runs of image tokens for {len(images)} images: the generic "
                f"resolver of {self.model_type!r} needs each image's tokens in one run (one "
                "image per prompt, or a family module for this model type)"
            )
        return [
            ImageSpan(
                k,
                run[0],
                run[-1] + 1,
                (Tile("image", 1, len(run), tuple(run), WHOLE, self.unplaced),),
                (),
                image.size,
            )
            for k, (run, image) in enumerate(zip(runs, images, strict=True))
        ]

    def rope_index(
        self, model: Any, inputs: Any, length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """None (positions 0..n-1) where the model numbers prompt positions so; raises
        VlmflowError otherwise (`compress` and shared-prefill variants need exact positions)."""
        reason = self._positions.get(model)
        if reason is None:
            reason = self._positions[model] = _own_positions(model)
        if reason:
            raise VlmflowError(
                f"model type {self.model_type!r} {reason}, which the generic resolver cannot "
                "reproduce: compress and generate_variants(share_prefill=True) need a family "
                "module for it (sessions and share_prefill=False still run)"
            )
        return None

    def announce(self) -> None:
        """Warn (one line, `GenericResolverWarning`) that this model loaded through the generic
        resolver."""
        token = self.processor.tokenizer.convert_ids_to_tokens(self.image_token_id)
        warnings.warn(
            f"model type {self.model_type!r} has no family module: loaded with the generic "
            f"resolver (image token {token!r}; roles only, maps and localization refused)",
            GenericResolverWarning,
            stacklevel=3,
        )


def _own_positions(model: Any) -> str:
    """Why `model` does not number prompt positions 0..n-1 ("" when it does): multimodal rotary
    positions (a `get_rope_index`), no rotary embedding to read positions from, or a two-token
    text forward whose rotary embedding receives positions other than 0, 1."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "get_rope_index") or hasattr(model, "get_rope_index"):
        return "numbers image positions by multimodal rotary axes"
    rotary = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    if not rotary:
        return "has no rotary embedding to read its positions from"
    seen: list[torch.Tensor] = []

    def note(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        found = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        if isinstance(found, torch.Tensor):
            seen.append(found.detach().cpu())

    from vlmflow.attention import backend

    device = next(model.parameters()).device
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)  # (1, 2)
    hooks = [m.register_forward_pre_hook(note, with_kwargs=True) for m in rotary]
    token = backend.ACTIVE.set(())  # plain attention: no session applies to the check
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    except Exception as err:
        return f"cannot run a two-token text forward ({type(err).__name__}) to check its positions"
    finally:
        backend.ACTIVE.reset(token)
        for hook in hooks:
            hook.remove()
    if not seen or any(not bool((p == torch.arange(2)).all()) for p in seen):
        return "numbers positions other than 0..n-1"
    return ""


def generic_for(name: str, model_type: str) -> type[GenericRoles]:
    """The generic resolver for checkpoint `name` of unregistered `model_type`, checked before
    weights load. Raises VlmflowError: "unsupported model family" when no image token can be
    found; an encoder-decoder model (the image reaches the text through cross-attention)."""
    from transformers import AutoConfig

    from vlmflow.models.processors import load_processor

    try:
        config = AutoConfig.from_pretrained(name)
    except Exception:  # no config class for this type, or a config it cannot read
        raise unsupported_family(model_type) from None
    if getattr(config, "is_encoder_decoder", False):
        raise VlmflowError(
            f"model type {model_type!r} is an encoder-decoder: its text reads the image through "
            "cross-attention, which vlmflow's knockouts do not reach (not supported)"
        )
    processor = None
    if not any(isinstance(getattr(config, k, None), int) for k in _CONFIG_KEYS):
        try:
            processor = load_processor(name)
        except Exception:  # no processor files, or a processor class this install lacks
            processor = None
    if image_token(config, processor) is None:
        raise unsupported_family(model_type)
    return GenericRoles

"""The `TokenRoles` interface every family implements, and the registry `vlmflow.load` picks a
family's resolver from by `config.model_type`.

A family is one module of this package: a `TokenRoles` subclass decorated with `register`
(and a tiny builder in `vlmflow.models.tiny`); the package's `__init__` imports it.
"""

from __future__ import annotations

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


class TokenRoles:
    """Labels prompt positions prefix / image / query and lays image tokens out on the image."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, processor: Any, config: Any) -> None:
        self.processor = processor
        self.config = config
        self.image_token_id = int(config.image_token_id)

    # -- per family -------------------------------------------------------------------------
    def spans(self, ids: list[int], images: list[ImageInput], start_index: int) -> list[ImageSpan]:
        raise NotImplementedError

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
    for cls in _REGISTERED:
        if model_type in cls.model_types:
            return cls
    raise VlmflowError(
        f"unsupported model family {model_type!r}: vlmflow supports "
        f"{', '.join(supported_model_types())}"
    )

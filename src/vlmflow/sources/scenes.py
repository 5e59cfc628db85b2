"""The scene world's shipped evaluation set as an image source (`--images scenes[:N]`).

Each image is a fixed scene (`vlmflow.scenes.fixed`) with its exact masks and its yes/no
questions, so every analysis of the paper runs on it without downloaded data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError
from vlmflow.sources.source import SCENES, ImageRef, ImageSource

if TYPE_CHECKING:
    from vlmflow.scenes.questions import Question


@dataclass(frozen=True, kw_only=True)
class SceneRef(ImageRef):
    """Scene `scene_index` of the shipped evaluation set (0-based)."""

    scene_index: int

    def questions(self) -> tuple[Question, ...]:
        from vlmflow.scenes import load_fixed_scene

        return tuple(load_fixed_scene(self.scene_index).questions)

    def open(self) -> Any:
        from vlmflow.scenes import load_fixed_scene

        return load_fixed_scene(self.scene_index).image


@dataclass(frozen=True)
class ScenesSource(ImageSource):
    """The first `count` scenes of the shipped evaluation set."""

    count: int

    def images(self) -> list[ImageRef]:
        from vlmflow.scenes.fixed import fixed_id

        return [SceneRef(fixed_id(i), scene_index=i) for i in range(self.count)]


def parse(text: str) -> ScenesSource:
    """`scenes` (all 80) or `scenes:N` (the first N, 1 <= N <= 80)."""
    from vlmflow.scenes.fixed import FIXED_COUNT

    _, _, tail = text.partition(":")
    if not tail:
        return ScenesSource(f"{SCENES}:{FIXED_COUNT}", SCENES, FIXED_COUNT)
    if not tail.isdigit() or not 1 <= int(tail) <= FIXED_COUNT:
        raise VlmflowError(f"bad image source {text!r}: use scenes or scenes:N, 1<=N<=80")
    return ScenesSource(f"{SCENES}:{int(tail)}", SCENES, int(tail))

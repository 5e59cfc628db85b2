"""Reference descriptions: one regular sentence listing every object with its position.

"There are four objects in the image: two apples in the top left and in the center, a dog in
the middle right and a small key in the bottom right." The fixed pattern (reading order,
grid position words, "small" for small objects, counts spelled out) is what a small language
model can learn to produce, and every name is the canonical vocabulary name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vlmflow.scenes.layout import POSITIONS
from vlmflow.scenes.vocabulary import VOCABULARY, number_word


class Described(Protocol):
    """What a description needs of an object (SceneObject has it)."""

    @property
    def name(self) -> str: ...
    @property
    def position(self) -> str: ...
    @property
    def size_class(self) -> str: ...


@dataclass(frozen=True)
class Placed:
    """An object as training records keep it: a `Described` without the scene around it."""

    name: str
    position: str
    size_class: str = ""


def by_type(objects: Sequence[Described]) -> dict[str, list[Described]]:
    """Objects grouped by type, types and members in reading order (top left first)."""
    groups: dict[str, list[Described]] = {}
    for obj in sorted(objects, key=lambda o: POSITIONS.index(o.position)):
        groups.setdefault(obj.name, []).append(obj)
    return groups


def join_words(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def object_phrase(name: str, count: int, small: bool) -> str:
    """'a dog', 'a small key', 'two apples', 'three small cups'."""
    kind = VOCABULARY[name]
    if not small:
        return kind.count_phrase(count)
    if count == 1:
        return f"a small {kind.name}"
    return f"{number_word(count)} small {kind.plural}"


def describe(objects: Sequence[Described]) -> str:
    """The reference description of a scene's objects, grouped by type in reading order."""
    if not objects:
        return "The image shows no objects."
    parts = []
    for name, members in by_type(objects).items():
        small = all(m.size_class == "small" for m in members)
        where = join_words([f"in the {m.position}" for m in members])
        parts.append(f"{object_phrase(name, len(members), small)} {where}")
    total = len(objects)
    head = "There is one object" if total == 1 else f"There are {number_word(total)} objects"
    return f"{head} in the image: {join_words(parts)}."

"""A scene: image, per-object masks and names, reference description, yes/no questions.

`generate(seed)` is a pure function of its arguments: the same seed gives the same layout,
text and pixels on every machine with the same Pillow. Metadata round-trips through JSON;
the image and masks are re-rendered from it (or loaded, for the shipped evaluation set).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vlmflow.errors import VlmflowError
from vlmflow.scenes.background import Background, pick_background
from vlmflow.scenes.describe import describe
from vlmflow.scenes.layout import (
    MAX_OBJECTS,
    POSITIONS,
    Box,
    Placement,
    pick_types,
    position_of,
    sample_layout,
)
from vlmflow.scenes.questions import Question, ask
from vlmflow.scenes.render import mask_box, render
from vlmflow.scenes.rng import StableRandom
from vlmflow.scenes.vocabulary import VOCABULARY, ObjectType

FORMAT_VERSION = 1
DEFAULT_SIZE = 448


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object as drawn: canonical name, visible mask and its box, grid position, size."""

    name: str
    box: Box  # tight box of the visible mask, (x0, y0, x1, y1), x1/y1 exclusive
    mask: np.ndarray = field(repr=False)  # bool, H x W: exactly the pixels showing this object
    position: str  # "top left" ... "center" ... "bottom right" (3x3 grid of the box centre)
    size_class: str  # "small", "medium" or "large"
    placement: Placement = field(repr=False)

    def __post_init__(self) -> None:
        self.mask.setflags(write=False)  # shared by cached scenes: keep it read-only

    def grid_mask(
        self, rows: int, columns: int | None = None, min_fraction: float = 0.0
    ) -> np.ndarray:
        """rows x columns bool: the cells of an even grid over the image this object covers.

        A cell counts when more than `min_fraction` of its pixels show the object, e.g. a
        16 x 16 grid for a ViT's patches, to ask whether attention falls on the object.
        """
        columns = rows if columns is None else columns
        height, width = self.mask.shape
        ys = (np.arange(height) * rows) // height
        xs = (np.arange(width) * columns) // width
        covered = np.zeros((rows, columns), dtype=np.int64)
        np.add.at(covered, (ys[:, None], xs[None, :]), self.mask)
        cells = np.zeros((rows, columns), dtype=np.int64)
        np.add.at(cells, (ys[:, None], xs[None, :]), 1)
        return covered > min_fraction * cells

    @property
    def type(self) -> ObjectType:
        return VOCABULARY[self.name]

    @property
    def synonyms(self) -> tuple[str, ...]:
        return VOCABULARY[self.name].synonyms

    @property
    def category(self) -> str:
        return VOCABULARY[self.name].category

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def to_json(self) -> dict[str, Any]:
        p = self.placement
        return {
            "name": self.name,
            "box": list(self.box),
            "position": self.position,
            "size_class": self.size_class,
            "area": self.area,
            "placement": [p.x, p.y, p.width, p.height, p.flipped],
        }


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated image with exact ground truth for localisation, captioning and yes/no QA."""

    id: str
    seed: int
    size: int
    background: Background
    objects: tuple[SceneObject, ...]
    description: str
    questions: tuple[Question, ...]
    image: Image.Image = field(repr=False)  # RGB, size x size

    @property
    def names(self) -> tuple[str, ...]:
        """Distinct canonical object names, in description order."""
        return tuple(dict.fromkeys(o.name for o in self.objects))

    def label_map(self) -> np.ndarray:
        """H x W uint8: 0 for background, i + 1 where object i is visible."""
        labels = np.zeros((self.size, self.size), dtype=np.uint8)
        for index, obj in enumerate(self.objects):
            labels[obj.mask] = index + 1
        return labels

    def questions_of(self, category: str) -> tuple[Question, ...]:
        return tuple(q for q in self.questions if q.category == category)

    def to_json(self) -> dict[str, Any]:
        """Metadata (no pixels): enough to re-render the image and masks exactly."""
        return {
            "format": FORMAT_VERSION,
            "id": self.id,
            "seed": self.seed,
            "size": self.size,
            "background": self.background.to_json(),
            "objects": [o.to_json() for o in self.objects],
            "description": self.description,
            "questions": [q.to_json() for q in self.questions],
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any] | str,
        *,
        image: Image.Image | None = None,
        labels: np.ndarray | None = None,
    ) -> Scene:
        """A scene from `to_json` output; image and label map are re-rendered unless given."""
        meta: Mapping[str, Any] = json.loads(data) if isinstance(data, str) else data
        if meta.get("format") != FORMAT_VERSION:
            raise VlmflowError(
                f"scene metadata format {meta.get('format')!r} is not {FORMAT_VERSION}: "
                "regenerate it with this version of vlmflow"
            )
        size = int(meta["size"])
        background = Background.from_json(meta["background"])
        placements = tuple(_placement(o) for o in meta["objects"])
        if image is None or labels is None:
            image, labels = render(background, placements, size)
        if labels.shape != (size, size) or image.size != (size, size):
            raise VlmflowError(f"scene {meta['id']}: image or labels are not {size} x {size}")
        objects = tuple(
            SceneObject(
                name=o["name"],
                box=tuple(o["box"]),  # type: ignore[arg-type]
                mask=labels == index + 1,
                position=o["position"],
                size_class=o["size_class"],
                placement=placement,
            )
            for index, (o, placement) in enumerate(zip(meta["objects"], placements, strict=True))
        )
        questions = tuple(
            Question(q["text"], q["answer"], q["category"]) for q in meta["questions"]
        )
        return cls(
            id=str(meta["id"]),
            seed=int(meta["seed"]),
            size=size,
            background=background,
            objects=objects,
            description=str(meta["description"]),
            questions=questions,
            image=image.convert("RGB"),
        )


def _placement(obj: Mapping[str, Any]) -> Placement:
    x, y, width, height, flipped = obj["placement"]
    return Placement(
        obj["name"], int(x), int(y), int(width), int(height), bool(flipped), str(obj["size_class"])
    )


def generate(
    seed: int,
    *,
    size: int = DEFAULT_SIZE,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    scene_id: str | None = None,
) -> Scene:
    """The scene of a seed: 1-8 objects on a textured background, with its ground truth.

    Deterministic per (seed, size, min_objects, max_objects). Training code should draw seeds
    from `training_scenes` so that it never sees the evaluation set's seeds.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise VlmflowError(
            f"objects per scene must satisfy 1 <= min ({min_objects}) <= max ({max_objects})"
            f" <= {MAX_OBJECTS}: change --min-objects/--max-objects"
        )
    from vlmflow.validate import MAX_CANVAS_SIDE

    if isinstance(size, bool) or not isinstance(size, int) or not 64 <= size <= MAX_CANVAS_SIDE:
        raise VlmflowError(
            f"scene size {size!r} px is out of range: use 64-{MAX_CANVAS_SIDE} (default 448)"
        )
    rng = StableRandom(seed)
    names = pick_types(rng, rng.integer(min_objects, max_objects))
    # drawing order = reading order, so object i is the i-th named in the description
    placements = tuple(
        sorted(
            sample_layout(rng, names, size),
            key=lambda p: POSITIONS.index(position_of(p.box, size)),
        )
    )
    background = pick_background(rng)
    image, labels = render(background, placements, size)
    objects = []
    for index, placement in enumerate(placements):
        mask = labels == index + 1
        objects.append(
            SceneObject(
                name=placement.name,
                box=mask_box(mask),
                mask=mask,
                position=position_of(placement.box, size),
                size_class=placement.size_class,
                placement=placement,
            )
        )
    if scene_id is None:
        scene_id = f"scene-{seed}"
        if (size, min_objects, max_objects) != (DEFAULT_SIZE, 1, MAX_OBJECTS):
            scene_id += f"-s{size}-n{min_objects}-{max_objects}"
    return Scene(
        id=scene_id,
        seed=seed,
        size=size,
        background=background,
        objects=tuple(objects),
        description=describe(objects),
        questions=ask(objects, rng),
        image=image,
    )

"""Seed ranges, the shipped evaluation set of 80 scenes, and the training iterator.

Seed ranges (disjoint, so no training scene is ever an evaluation scene):
- FIXED_SEEDS      0 - 79         the evaluation set that ships in the package (10 scenes per
                                  object count 1-8; 0 - 99,999 is reserved for evaluation)
- VALIDATION_SEEDS 100,000 - 199,999  held-out scenes for model selection while training
- TRAINING_SEEDS   1,000,000 - 2**31 - 1  `training_scenes` draws only from these

The evaluation set is stored as PNG images, PNG label maps (0 background, i + 1 object i) and
one JSON of metadata, so it is identical on every machine whatever the local Pillow renders;
`build_fixed` writes it and the tests check that regeneration still matches it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from vlmflow.errors import VlmflowError
from vlmflow.scenes.layout import MAX_OBJECTS
from vlmflow.scenes.scene import DEFAULT_SIZE, FORMAT_VERSION, Scene, generate

FIXED_COUNT = 80
FIXED_SEEDS = range(0, FIXED_COUNT)
VALIDATION_SEEDS = range(100_000, 200_000)
TRAINING_SEEDS = range(1_000_000, 2**31)


def fixed_id(index: int) -> str:
    return f"fixed-{index:02d}"


def fixed_scene(index: int) -> Scene:
    """Generate evaluation scene `index` (0-79) from its seed: index % 8 + 1 objects."""
    if not 0 <= index < FIXED_COUNT:
        raise VlmflowError(f"fixed scene index {index} is out of range: use 0-{FIXED_COUNT - 1}")
    count = index % 8 + 1
    return generate(
        FIXED_SEEDS[index],
        size=DEFAULT_SIZE,
        min_objects=count,
        max_objects=count,
        scene_id=fixed_id(index),
    )


def fixed_dir() -> Traversable:
    return files("vlmflow.scenes") / "data" / "fixed"


def build_fixed(out: Path | None = None) -> Path:
    """Write the evaluation set (scenes.json, images/*.png, labels/*.png) to `out`."""
    out = Path(str(fixed_dir())) if out is None else out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    metadata = []
    for index in range(FIXED_COUNT):
        scene = fixed_scene(index)
        scene.image.save(out / "images" / f"{scene.id}.png", optimize=True)
        Image.fromarray(scene.label_map(), "L").save(
            out / "labels" / f"{scene.id}.png", optimize=True
        )
        metadata.append(scene.to_json())
    # one scene per line: small, and diffs show which scenes changed
    lines = ",\n".join(json.dumps(m, ensure_ascii=False) for m in metadata)
    head = json.dumps({"format": FORMAT_VERSION, "pillow": PIL.__version__})[:-1]
    text = f'{head}, "scenes": [\n{lines}\n]}}\n'
    (out / "scenes.json").write_text(text, encoding="utf-8")
    return out


def _read_png(path: Traversable) -> Image.Image:
    with path.open("rb") as handle:
        image = Image.open(handle)
        image.load()
    return image


@lru_cache(maxsize=1)
def _fixed_file() -> dict[str, Any]:
    path = fixed_dir() / "scenes.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VlmflowError(
            "the evaluation set is missing from the package: "
            "run `python -m vlmflow.scenes.build_fixed`"
        ) from None
    return data


def _fixed_metadata() -> tuple[dict[str, Any], ...]:
    return tuple(_fixed_file()["scenes"])


def fixed_built_with() -> str:
    """The Pillow version that rendered the shipped set (regeneration is exact under it)."""
    return str(_fixed_file()["pillow"])


def fixed_metadata() -> list[dict[str, Any]]:
    """The evaluation set's metadata as stored (no pixels): fast, for listings."""
    return [dict(m) for m in _fixed_metadata()]


@lru_cache(maxsize=FIXED_COUNT)
def load_fixed_scene(index: int) -> Scene:
    """Evaluation scene `index` as shipped: stored image and masks, not re-rendered."""
    metadata = _fixed_metadata()
    if not 0 <= index < len(metadata):
        raise VlmflowError(f"fixed scene index {index} is out of range: use 0-{len(metadata) - 1}")
    meta = metadata[index]
    folder = fixed_dir()
    image = _read_png(folder / "images" / f"{meta['id']}.png").convert("RGB")
    labels = np.asarray(_read_png(folder / "labels" / f"{meta['id']}.png"), dtype=np.uint8)
    return Scene.from_json(meta, image=image, labels=labels)


def fixed_set() -> list[Scene]:
    """The 80 evaluation scenes that ship with the package, identical on every machine."""
    return [load_fixed_scene(i) for i in range(len(_fixed_metadata()))]


def _seeds(seeds: range, name: str, start: int, count: int | None) -> range:
    if start < 0 or (count is not None and count < 0):
        raise VlmflowError(f"{name} start and count must be >= 0 (got {start}, {count})")
    stop = len(seeds) if count is None else start + count
    if stop > len(seeds):
        raise VlmflowError(f"{name}: only {len(seeds)} seeds exist; lower start or count")
    return seeds[start:stop]


def training_scenes(
    start: int = 0,
    count: int | None = None,
    *,
    size: int = DEFAULT_SIZE,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
) -> Iterator[Scene]:
    """Training scenes `start`, `start + 1`, ... (until the seeds run out when count is None).

    Scene i has seed TRAINING_SEEDS[i], so a run resumes by passing the number it has seen.
    """
    for seed in _seeds(TRAINING_SEEDS, "training_scenes", start, count):
        yield generate(seed, size=size, min_objects=min_objects, max_objects=max_objects)


def validation_scenes(
    start: int = 0,
    count: int | None = 200,
    *,
    size: int = DEFAULT_SIZE,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
) -> Iterator[Scene]:
    """Held-out scenes for model selection, disjoint from training and evaluation seeds."""
    for seed in _seeds(VALIDATION_SEEDS, "validation_scenes", start, count):
        yield generate(seed, size=size, min_objects=min_objects, max_objects=max_objects)

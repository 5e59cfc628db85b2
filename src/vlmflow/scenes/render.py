"""Drawing a scene: background, then each object's sprite in order, with exact visible masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlmflow.scenes.background import Background, render_background
from vlmflow.scenes.layout import Placement
from vlmflow.scenes.sprites import scaled_sprite


def render(
    background: Background, placements: Sequence[Placement], size: int
) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and its label map (H x W uint8: 0 background, i + 1 object i).

    Later objects cover earlier ones; sprite alpha is binary, so a pixel's label says exactly
    whose colour it shows.
    """
    if len(placements) > 254:
        raise ValueError("at most 254 objects fit a uint8 label map")
    image = render_background(background, size)
    labels = np.zeros((size, size), dtype=np.uint8)
    for index, placement in enumerate(placements):
        picture = scaled_sprite(
            placement.name, placement.width, placement.height, placement.flipped
        )
        image.paste(picture, (placement.x, placement.y), picture)
        alpha = np.asarray(picture.getchannel("A")) > 0
        x0, y0 = max(placement.x, 0), max(placement.y, 0)
        x1, y1 = min(placement.x + placement.width, size), min(placement.y + placement.height, size)
        if x1 <= x0 or y1 <= y0:
            continue
        inside = alpha[y0 - placement.y : y1 - placement.y, x0 - placement.x : x1 - placement.x]
        labels[y0:y1, x0:x1][inside] = index + 1
    return image, labels


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a boolean mask, x1/y1 exclusive; zeros if empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def overlay(image: Image.Image, labels: np.ndarray, strength: float = 0.55) -> Image.Image:
    """The image with each object's mask tinted in its own colour (for looking at masks)."""
    palette = np.array(
        [
            (230, 25, 75),
            (60, 180, 75),
            (0, 130, 200),
            (245, 130, 48),
            (145, 30, 180),
            (70, 240, 240),
            (240, 50, 230),
            (128, 128, 0),
        ],
        dtype=np.float32,
    )
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for label in np.unique(labels):
        if label == 0:
            continue
        where = labels == label
        color = palette[(int(label) - 1) % len(palette)]
        pixels[where] = pixels[where] * (1 - strength) + color * strength
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")

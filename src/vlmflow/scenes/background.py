"""Backgrounds: pale fills, gradients, blotchy textures and patterns, with faint clutter.

Kept light and low in contrast so the black-outlined emoji stand out, yet varied enough that a
model cannot read objects off the background. Clutter (thin lines, rings, specks) belongs to the
background: it is never an object and never in a mask. Only IEEE-exact arithmetic (no trig) and
Pillow drawing are used, so a background is the same on every machine.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlmflow.scenes.rng import StableRandom

KINDS = ("plain", "gradient", "blotches", "stripes", "checker", "dots")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Background:
    """A background by kind and seed: everything else is drawn from the seed."""

    kind: str
    seed: int
    clutter: int  # number of clutter marks

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "seed": self.seed, "clutter": self.clutter}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Background:
        return cls(str(data["kind"]), int(str(data["seed"])), int(str(data["clutter"])))


def pick_background(rng: StableRandom) -> Background:
    kind = rng.weighted(KINDS, (1.0, 1.5, 1.5, 1.0, 0.7, 0.7))
    return Background(kind, rng.seed(), rng.integer(0, 12))


def _pale(rng: StableRandom, lightness: tuple[float, float] = (0.82, 0.97)) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(*lightness))
    return round(r * 255), round(g * 255), round(b * 255)


def _near(rng: StableRandom, color: RGB, spread: int) -> RGB:
    r, g, b = (min(255, max(0, c + rng.integer(-spread, spread))) for c in color)
    return r, g, b


def _mix(a: RGB, b: RGB, t: np.ndarray) -> Image.Image:
    """Per-pixel blend of two colours by t in [0, 1] (H x W)."""
    ca = np.array(a, dtype=np.float32)
    cb = np.array(b, dtype=np.float32)
    out = ca + (cb - ca) * t[..., None].astype(np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def _direction(rng: StableRandom) -> tuple[float, float]:
    while True:
        dx, dy = rng.uniform(-1, 1), rng.uniform(-1, 1)
        norm = float(np.sqrt(dx * dx + dy * dy))
        if norm > 0.2:
            return dx / norm, dy / norm


def render_background(background: Background, size: int) -> Image.Image:
    """The RGB background, size x size, clutter included."""
    rng = StableRandom(background.seed)
    first = _pale(rng)
    second = _near(rng, first, 40) if rng.chance(0.5) else _pale(rng)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    kind = background.kind
    if kind == "plain":
        image = Image.new("RGB", (size, size), first)
    elif kind == "gradient":
        dx, dy = _direction(rng)
        t = xs * np.float32(dx) + ys * np.float32(dy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = _mix(first, second, t)
    elif kind == "blotches":
        cells = rng.integer(3, 9)
        grid = bytes(rng.integer(0, 255) for _ in range(cells * cells))
        small = Image.frombytes("L", (cells, cells), grid)
        smooth = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
        image = _mix(first, second, smooth.astype(np.float32) / np.float32(255))
    elif kind == "stripes":
        dx, dy = _direction(rng)
        period = np.float32(rng.uniform(0.04, 0.15))
        t = (xs * np.float32(dx) + ys * np.float32(dy)) / period
        image = _mix(first, _near(rng, first, 30), (np.floor(t) % 2).astype(np.float32))
    elif kind == "checker":
        cells = rng.integer(4, 12)
        t = (np.floor(xs * cells) + np.floor(ys * cells)) % 2
        image = _mix(first, _near(rng, first, 25), t.astype(np.float32))
    elif kind == "dots":
        image = Image.new("RGB", (size, size), first)
        draw = ImageDraw.Draw(image)
        step = rng.integer(size // 16, size // 6)
        radius = max(2, round(step * rng.uniform(0.12, 0.3)))
        dot = _near(rng, first, 35)
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=dot)
    else:
        raise ValueError(f"unknown background kind {kind!r}; one of {KINDS}")
    return _add_clutter(image, rng, background.clutter)


def _add_clutter(image: Image.Image, rng: StableRandom, count: int) -> Image.Image:
    """Faint lines, rings and specks: texture a model must learn to ignore."""
    size = image.width
    draw = ImageDraw.Draw(image)
    base: RGB = image.getpixel((size // 2, size // 2))  # type: ignore[assignment]
    for _ in range(count):
        color = _near(rng, base, 60)
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        extent = rng.uniform(0.03, 0.2) * size
        width = rng.integer(1, 3)
        shape = rng.choice(("line", "ring", "speck"))
        if shape == "line":
            x2, y2 = x + rng.uniform(-extent, extent), y + rng.uniform(-extent, extent)
            draw.line((x, y, x2, y2), fill=color, width=width)
        elif shape == "ring":
            r = extent / 2
            draw.ellipse((x - r, y - r, x + r, y + r), outline=color, width=width)
        else:
            r = rng.uniform(1.5, 4.0)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    return image

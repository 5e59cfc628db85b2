"""Where objects go: a 3x3 grid of named positions, size classes, and non-overlapping boxes.

Every object sits in its own grid cell with its centre in the cell's inner half, so the
position word a description uses ("in the top left") is never a borderline call. Boxes never
overlap, so every object stays whole and recognisable (masks still honour drawing order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from vlmflow.scenes.rng import StableRandom
from vlmflow.scenes.sprites import sprite
from vlmflow.scenes.vocabulary import VOCABULARY

ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
GRID = 3
MAX_OBJECTS = 8  # one per cell, one cell always left free

# size class -> longest side as a fraction of the canvas (0.10-0.15 is 45-67 px at 448)
SIZE_CLASSES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"small": (0.10, 0.15), "medium": (0.19, 0.29), "large": (0.32, 0.44)}
)
SIZE_WEIGHTS = (0.20, 0.50, 0.30)  # small, medium, large
REPEAT_CHANCE = 0.2  # chance that the next object repeats a type already in the scene
MAX_REPEATS = 3

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive


def position_name(row: int, column: int) -> str:
    """'top left', ..., 'center' (the middle cell), ..., 'bottom right'."""
    if (row, column) == (1, 1):
        return "center"
    return f"{ROWS[row]} {COLUMNS[column]}"


POSITIONS = tuple(position_name(r, c) for r in range(GRID) for c in range(GRID))


def cell_of(x: float, y: float, size: int) -> tuple[int, int]:
    """(row, column) of the grid cell holding pixel (x, y)."""
    column = min(GRID - 1, max(0, int(x * GRID / size)))
    row = min(GRID - 1, max(0, int(y * GRID / size)))
    return row, column


def position_of(box: Box, size: int) -> str:
    """Position word of a box: the grid cell of its centre."""
    row, column = cell_of((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, size)
    return position_name(row, column)


@dataclass(frozen=True)
class Placement:
    """Where and how big one object is drawn: its sprite is resized to width x height at x, y."""

    name: str
    x: int
    y: int
    width: int
    height: int
    flipped: bool
    size_class: str

    @property
    def box(self) -> Box:
        return self.x, self.y, self.x + self.width, self.y + self.height


def pick_types(rng: StableRandom, count: int) -> list[str]:
    """Object names for a scene: mostly distinct, sometimes a type repeated (for counting)."""
    names = list(VOCABULARY)
    chosen: list[str] = []
    while len(chosen) < count:
        repeatable = [n for n in dict.fromkeys(chosen) if chosen.count(n) < MAX_REPEATS]
        if repeatable and rng.chance(REPEAT_CHANCE):
            chosen.append(rng.choice(repeatable))
        else:
            chosen.append(rng.choice([n for n in names if n not in chosen]))
    return chosen


def _overlaps(a: Box, b: Box, gap: int) -> bool:
    return not (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def _try_place(
    rng: StableRandom, name: str, cell: tuple[int, int], size: int, taken: Sequence[Box]
) -> Placement | None:
    """Up to 36 draws of size and centre for one object; smaller sizes after repeated misses."""
    classes = tuple(SIZE_CLASSES)
    wanted = rng.weighted(classes, SIZE_WEIGHTS)
    sprite_w, sprite_h = sprite(name).size
    margin, gap = max(1, round(0.01 * size)), max(2, round(0.015 * size))
    cell_size = size / GRID
    for attempt in range(36):
        size_class = classes[min(classes.index(wanted), 2 - attempt // 12)]
        longest = rng.uniform(*SIZE_CLASSES[size_class]) * size
        scale = longest / max(sprite_w, sprite_h)
        width, height = max(4, round(sprite_w * scale)), max(4, round(sprite_h * scale))
        bounds = []
        for index, extent in ((cell[1], width), (cell[0], height)):
            low = max(cell_size * (index + 0.25), extent / 2 + margin)
            high = min(cell_size * (index + 0.75), size - extent / 2 - margin)
            bounds.append((low, high))
        if any(low > high for low, high in bounds):
            continue
        cx, cy = rng.uniform(*bounds[0]), rng.uniform(*bounds[1])
        x, y = round(cx - width / 2), round(cy - height / 2)
        box = (x, y, x + width, y + height)
        if any(_overlaps(box, other, gap) for other in taken):
            continue
        return Placement(name, x, y, width, height, rng.chance(0.5), size_class)
    return None


def sample_layout(rng: StableRandom, names: Sequence[str], size: int) -> tuple[Placement, ...]:
    """Placements for the given objects, one grid cell each, no two boxes overlapping."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    for _ in range(100):
        chosen_cells = rng.sample(cells, len(names))
        placements: list[Placement] = []
        for name, cell in zip(names, chosen_cells, strict=True):
            placed = _try_place(rng, name, cell, size, [p.box for p in placements])
            if placed is None:
                break
            placements.append(placed)
        else:
            return tuple(placements)
    raise RuntimeError(f"could not place {len(names)} objects on a {size} px canvas")

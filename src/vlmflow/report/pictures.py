"""The pictures results were computed on, found again from the run's recorded image source.

A result stores only its item id (a scene id such as `fixed-07`, or a file name relative to
the source); the run records the canonical source (`scenes:N`, `folder:/abs`, `list:/abs.txt`,
`file:/abs`), which is enough to open the same image again. A picture that has since moved or
cannot be decoded is reported as missing, never as an error: the numbers do not depend on it.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

THUMBNAIL = 384  # px, longest side: the viewer's display width, sharp on ordinary screens
_SCENE_ID = re.compile(r"^fixed-(\d+)$")


def source_path(source: str, item: str) -> Path | None:
    """Where the file of `item` lives for a file-based `source` key; None for scenes."""
    kind, _, rest = source.partition(":")
    if kind == "folder":
        return Path(rest) / item
    if kind == "list":
        return (Path(rest).parent / item).resolve()
    if kind == "file":
        return Path(rest)
    return None


def open_picture(source: str, item: str) -> Image | None:
    """The RGB image of `item` in `source`, or None when it cannot be found or decoded."""
    from PIL import Image as PILImage

    kind = source.partition(":")[0]
    try:
        if kind == "scenes":
            match = _SCENE_ID.match(item)
            if match is None:
                return None
            from vlmflow.scenes import load_fixed_scene

            return load_fixed_scene(int(match.group(1))).image.convert("RGB")
        path = source_path(source, item)
        if path is None or not path.is_file():
            return None
        with PILImage.open(path) as image:
            return image.convert("RGB")
    except Exception:  # a moved, truncated or unreadable picture only loses the thumbnail
        return None


class Pictures:
    """Opens each (source, item) picture once per report build."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Image | None] = {}

    def get(self, source: str, item: str) -> Image | None:
        key = (source, item)
        if key not in self._cache:
            self._cache[key] = open_picture(source, item)
        return self._cache[key]


def thumbnail(image: Image, side: int = THUMBNAIL) -> Image:
    """A copy no larger than `side` px on its longest side (aspect kept)."""
    copy = image.copy()
    copy.thumbnail((side, side))
    return copy


def placeholder(aspect: float, side: int = 96) -> Image:
    """A plain grey picture of the original's aspect, drawn when the picture is missing."""
    from PIL import Image as PILImage

    width, height = (
        (side, max(1, round(side / aspect)))
        if aspect >= 1
        else (
            max(1, round(side * aspect)),
            side,
        )
    )
    return PILImage.new("RGB", (width, height), (96, 96, 96))


def data_uri(image: Image, quality: int = 82) -> str:
    """`image` as an inline JPEG `data:` URI (small, and needs no file next to the report)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

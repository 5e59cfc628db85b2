"""Opening user images with errors that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError


def open_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image, a path or a string path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise VlmflowError(f"image not found: {path}: give the path of a PNG or JPEG file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise VlmflowError(
            f"cannot read image {path} ({type(err).__name__}): give an intact PNG or JPEG file"
        ) from None

"""Your own text-prompted segmenter as the mask source of `localization`.

The paper masks each fine detail with a text-prompted Segment Anything (Grounded-SAM, App. C),
prompted with the detail's name. vlmflow ships no such model (they are large); instead
`masks = "module:callable"` (or `"path/to/file.py:callable"`) in the localization options plugs
one in. The callable is `segment(image, name) -> mask | None`: `image` is the PIL RGB image as
given to the model, `name` the detail's object name as the judge wrote it, and the mask an
(H, W) array of that image (bool, 0/1 or a PIL "1"/"L" image), or None when nothing is found.
It is imported once per process, so a module can load its model lazily on the first call.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlmflow.errors import VlmflowError
from vlmflow.experiments.protocol import WorkItem
from vlmflow.sources import ImageRef, ImageSource

Segment = Callable[[Any, str], Any]


def is_segmenter(spec: str) -> bool:
    """True for `module:callable` specs (registered mask source names have no colon)."""
    module, _, attr = spec.rpartition(":")
    return bool(module) and bool(attr)


def load_segmenter(spec: str) -> Segment:
    """The callable named by `module:callable` or `file.py:callable` (dotted attributes ok)."""
    module_name, _, attr = spec.rpartition(":")
    fix = "put its module on PYTHONPATH or give path/to/file.py:callable"
    try:
        module = _import(module_name)
    except Exception as err:  # anything the user's module raises while importing
        first = (str(err).strip().splitlines() or [""])[0]
        raise VlmflowError(
            f"cannot import segmenter {spec!r} ({type(err).__name__}: {first}): {fix}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise VlmflowError(
                f"segmenter {spec!r}: {module_name} has no {attr}: "
                "name a callable segment(image, name) in it"
            )
        target = getattr(target, part)
    if not callable(target):
        raise VlmflowError(f"segmenter {spec!r} is not callable: name a function (image, name)")
    segment: Segment = target
    return segment


def _import(module_name: str) -> Any:
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(f"vlmflow_segmenter_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SegmenterMasks:
    """`masks="module:callable"`: the segmenter prompted with each detail's name."""

    name = "segmenter"

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.segment = load_segmenter(spec)
        self._image: tuple[str, Any] | None = None  # (item id, PIL image): the current item

    def check(self, source: ImageSource) -> None:
        """Any image source: the segmenter sees the pixels."""

    def forms(self, name: str) -> tuple[str, ...]:
        from vlmflow.judge.scene import plurals

        word = " ".join(name.lower().split())
        return (word, *plurals(word))

    def mask(self, item: WorkItem, name: str) -> np.ndarray | None:
        if self._image is None or self._image[0] != item.item_id:
            ref: ImageRef = item.payload["image"]
            self._image = (item.item_id, ref.open())
        image = self._image[1]
        found = self.segment(image, name)
        if found is None:
            return None
        mask = np.asarray(found)  # (H, W)
        if mask.shape != (image.height, image.width):
            raise VlmflowError(
                f"segmenter {self.spec!r} gave a mask of shape {mask.shape} for {name!r} on a "
                f"{image.height}x{image.width} image: return (H, W) booleans of the image"
            )
        mask = mask.astype(bool)
        return mask if mask.any() else None

"""`check`: open every image of a source and record its size and a pixel checksum.

No model: it exercises the source, the store, resuming and sharding on a new machine or
cluster in seconds, and lists the images that would fail every real experiment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vlmflow.experiments.protocol import Context, Result, WorkItem, parse_config
from vlmflow.sources import ImageRef, ImageSource


@dataclass(frozen=True)
class CheckConfig:
    """`thumbnail`: also store an 8x8 grey thumbnail per image as a blob."""

    thumbnail: bool = False


class ImageCheck:
    name = "check"
    needs_model = False

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_config(CheckConfig, options, self.name)
        self.config = asdict(self.options)

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        return [WorkItem(ref.id, {"image": ref}) for ref in source.images()]

    def settings(self, item: WorkItem) -> Sequence[str]:
        return ["decode"]

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        import numpy as np

        ref: ImageRef = item.payload["image"]
        image = ref.open()
        pixels = np.asarray(image, dtype=np.uint8)
        blobs = {}
        if self.options.thumbnail:
            blobs["thumbnail"] = np.asarray(image.convert("L").resize((8, 8)), dtype=np.uint8)
        return Result(
            metrics={
                "width": image.width,
                "height": image.height,
                "mean": round(float(pixels.mean()), 4),
            },
            payload={"sha256": hashlib.sha256(pixels.tobytes()).hexdigest()},
            blobs=blobs,
        )

"""Image sources (`--images SOURCE`): one interface, one registry of forms.

    from vlmflow.sources import parse

    source = parse("scenes:8")  # or a folder, a .txt list, an image, coco:..., mme:...
    for ref in source.images():  # ImageRef: stable id, open() -> PIL RGB, questions()
        ...

`ImageSource` (key, kind, images()) and `ImageRef` are the interface (`source.py`); each form
is a module holding its source: `scenes` (the scene world's evaluation set), `folder` (a
folder, a .txt list or one image), `coco` (COCO instances with masks), `mme` (the MME
benchmark with its questions). `SOURCES` maps names to them by import path.
"""

from vlmflow.sources.source import (
    IMAGE_SUFFIXES,
    SOURCES,
    ImageRef,
    ImageSource,
    SourceSpec,
    parse,
    register,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "SOURCES",
    "ImageRef",
    "ImageSource",
    "SourceSpec",
    "parse",
    "register",
]

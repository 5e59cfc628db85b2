"""What an image source is (`ImageSource`, `ImageRef`) and the registry of `--images` forms.

A source lists images without decoding them, in a deterministic order, each with a stable id:
that id is the key results are stored under, so resuming and sharding stay correct on any
machine that sees the same images. A corrupt file is found only when an experiment opens it,
and then becomes a recorded failure of that one item.

`--images NAME:ARGS` goes to the source registered as NAME (`SOURCES`, resolved by import path
when used, so this module imports none of them); anything else is a path (`vlmflow.sources.
folder`). Adding a source: a module with an `ImageSource` subclass and a `parse(text)`
function, and one `SourceSpec` line in `SOURCES` (or `register(spec)` from outside vlmflow).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError
from vlmflow.targets import check, resolve

if TYPE_CHECKING:
    from vlmflow.scenes.questions import Question

# the registered names of the forms vlmflow ships (`--images NAME[:ARGS]`, `ImageSource.kind`)
SCENES, COCO, COCO_PAPER, MME = "scenes", "coco", "coco-paper", "mme"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class ImageRef:
    """One image of a source, by `id` (its key in the store); a file at `path` by default.

    Sources whose images carry more (a scene's masks, MME's questions, COCO's annotations)
    subclass it next to their source.
    """

    id: str
    path: Path | None = None

    @property
    def has_questions(self) -> bool:
        """Whether `questions()` gives the image's yes/no questions (paper Table 1): true for
        the kinds of reference that define `questions`."""
        return type(self).questions is not ImageRef.questions

    def questions(self) -> tuple[Question, ...]:
        """Its yes/no questions with answers; () for a plain file. Raises VlmflowError for a
        bad question file (recorded as a failure of this image)."""
        return ()

    def open(self) -> Any:
        """The image as PIL RGB; an unreadable file raises VlmflowError (recorded per item)."""
        from vlmflow.images import open_image

        if self.path is None:
            raise VlmflowError(f"image {self.id} has no file: its source must open it")
        return open_image(self.path)


@dataclass(frozen=True)
class ImageSource(ABC):
    """A parsed `--images` value. `key` is canonical (absolute paths) and goes into the run id;
    `kind` is the registered name of the form (`scenes`, `folder`, `coco`, `mme`, ...)."""

    key: str
    kind: str

    @abstractmethod
    def images(self) -> list[ImageRef]:
        """Every image, in a deterministic order, without decoding any."""

    @classmethod
    def parse(cls, text: str) -> ImageSource:
        """The source `text` names (see `parse`)."""
        return parse(text)


@dataclass(frozen=True)
class SourceSpec:
    """One `--images` form: `NAME` or `NAME:ARGS` -> `factory` ("module:function", taking the
    whole text and returning an `ImageSource`). `bare`: NAME alone is accepted too."""

    name: str
    factory: str
    usage: str
    bare: bool = False

    def __post_init__(self) -> None:
        check(self.factory)


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(SCENES, "vlmflow.sources.scenes:parse", "scenes, scenes:N", bare=True),
        SourceSpec(COCO, "vlmflow.sources.coco:parse", "coco:ANN.json[:IMAGES]"),
        SourceSpec(COCO_PAPER, "vlmflow.sources.coco:parse", "coco-paper:ANN.json[:IMAGES]"),
        SourceSpec(MME, "vlmflow.sources.mme:parse", "mme:FOLDER[:CAT,...]"),
    )
}
PATHS = "vlmflow.sources.folder:parse"  # any other text: a folder, a .txt list or an image


def register(spec: SourceSpec) -> None:
    """Add (or replace) an `--images` form for this process."""
    SOURCES[spec.name] = spec


def parse(text: str) -> ImageSource:
    """The source of an `--images` value.

    Forms: `scenes` (the 80 shipped evaluation scenes), `scenes:N` (the first N of them), a
    folder (every image below it, by relative path), a `.txt` file (one image path per line,
    relative to the file; `#` starts a comment), or a single image file. `mme:FOLDER` (or
    `mme:FOLDER:cat1,cat2`): the MME benchmark with its questions (`vlmflow.sources.mme`).
    `coco:ANNOTATIONS.json[:IMAGES_DIR]` and `coco-paper:...` (the paper's 81 images): COCO
    images with their instance masks (`vlmflow.sources.coco`). Raises VlmflowError naming the
    forms when `text` is none of them.
    """
    name, colon, _ = text.partition(":")
    spec = SOURCES.get(name)
    target = spec.factory if spec is not None and (colon or spec.bare) else PATHS
    source: ImageSource = resolve(target)(text)
    return source

"""Image sources (`--images SOURCE`) and the assignment of work items to ranks.

A source lists images without decoding them, in a deterministic order, each with a stable id:
that id is the key results are stored under, so resuming and sharding stay correct on any
machine that sees the same images. A corrupt file is found only when an experiment opens it,
and then becomes a recorded failure of that one item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmflow.errors import VlmflowError

if TYPE_CHECKING:
    from vlmflow.scenes.questions import Question

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SCENES = "scenes"
MME = "mme"


@dataclass(frozen=True)
class ImageRef:
    """One image of a source: a file, or a scene of the shipped evaluation set.

    `questions_file`: an MME image's yes/no questions, parsed only when asked for.
    `coco_id`: a COCO image's id, the key of its annotations (`vlmflow.experiments.coco`).
    """

    id: str
    path: Path | None = None
    scene_index: int | None = None
    questions_file: Path | None = None
    coco_id: int | None = None

    @property
    def has_questions(self) -> bool:
        return self.scene_index is not None or self.questions_file is not None

    def questions(self) -> tuple[Question, ...]:
        """Its yes/no questions with answers (scenes, MME); a bad file raises VlmflowError."""
        if self.scene_index is not None:
            from vlmflow.scenes import load_fixed_scene

            return tuple(load_fixed_scene(self.scene_index).questions)
        if self.questions_file is not None:
            from vlmflow.experiments.mme import read_questions

            return read_questions(self.questions_file, self.id.split("/", 1)[0])
        return ()

    def open(self) -> Any:
        """The image as PIL RGB; an unreadable file raises VlmflowError (recorded per item)."""
        if self.scene_index is not None:
            from vlmflow.scenes import load_fixed_scene

            return load_fixed_scene(self.scene_index).image
        from vlmflow.images import open_image

        return open_image(self.path)


@dataclass(frozen=True)
class ImageSource:
    """Parsed `--images` value. `key` is canonical (absolute paths) and goes into the run id.

    Forms: `scenes` (the 80 shipped evaluation scenes), `scenes:N` (the first N of them), a
    folder (every image below it, by relative path), a `.txt` file (one image path per line,
    relative to the file; `#` starts a comment), or a single image file. `mme:FOLDER` (or
    `mme:FOLDER:cat1,cat2`): the MME benchmark with its questions (`vlmflow.experiments.mme`).
    `coco:ANNOTATIONS.json[:IMAGES_DIR]` and `coco-paper:...` (the paper's 81 images): COCO
    images with their instance masks (`vlmflow.experiments.coco`).
    """

    key: str
    kind: str
    path: Path | None = None
    count: int | None = None
    categories: tuple[str, ...] = ()  # mme: the chosen categories (empty: all)

    @classmethod
    def parse(cls, text: str) -> ImageSource:
        if text == SCENES or text.startswith(SCENES + ":"):
            return cls._scenes(text)
        if text.startswith(MME + ":"):
            from vlmflow.experiments.mme import parse_source

            return parse_source(text)
        if text.startswith(("coco:", "coco-paper:")):
            from vlmflow.experiments.coco import CocoSource

            return CocoSource.of(text)
        path = Path(text).expanduser()
        if path.is_dir():
            return cls(f"folder:{path.resolve()}", "folder", path.resolve())
        if path.is_file() and path.suffix.lower() == ".txt":
            return cls(f"list:{path.resolve()}", "list", path.resolve())
        if path.is_file():
            return cls(f"file:{path.resolve()}", "file", path.resolve())
        raise VlmflowError(
            f"image source {text!r} not found: give a folder, a .txt list, an image, 'scenes',"
            " coco:ANNOTATIONS.json or mme:FOLDER"
        )

    @classmethod
    def _scenes(cls, text: str) -> ImageSource:
        from vlmflow.scenes.fixed import FIXED_COUNT

        _, _, tail = text.partition(":")
        if not tail:
            return cls(f"{SCENES}:{FIXED_COUNT}", SCENES, count=FIXED_COUNT)
        if not tail.isdigit() or not 1 <= int(tail) <= FIXED_COUNT:
            raise VlmflowError(f"bad image source {text!r}: use scenes or scenes:N, 1<=N<=80")
        return cls(f"{SCENES}:{int(tail)}", SCENES, count=int(tail))

    def images(self) -> list[ImageRef]:
        """Every image, in a deterministic order, without decoding any."""
        if self.kind == SCENES:
            from vlmflow.scenes.fixed import fixed_id

            return [ImageRef(fixed_id(i), scene_index=i) for i in range(self.count or 0)]
        if self.kind == MME:
            from vlmflow.experiments.mme import list_images

            return list_images(self)
        assert self.path is not None
        if self.kind == "file":
            return [ImageRef(self.path.name, self.path)]
        if self.kind == "folder":
            files = sorted(
                p.relative_to(self.path).as_posix()
                for p in self.path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            return [ImageRef(name, self.path / name) for name in files]
        refs, seen = [], set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            name = line.split("#", 1)[0].strip()
            if name and name not in seen:
                seen.add(name)
                refs.append(ImageRef(name, (self.path.parent / name).resolve()))
        return refs


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: item i belongs to rank i % world_size.

    Round-robin over the experiment's item order keeps ranks within one item of each other and
    keeps every setting of an item on one rank (so per-item caches stay local). It needs no
    communication: every rank lists the same items and picks its own.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise VlmflowError(
                f"rank {self.rank} is outside world size {self.world_size}: "
                "use 0 <= rank < world size"
            )

    def owns(self, item_index: int) -> bool:
        return item_index % self.world_size == self.rank

"""COCO as an image source (`--images coco:...`) and as masks for `localization`.

`coco:ANNOTATIONS.json[:IMAGES_DIR]` lists the images of a COCO instances file whose files are in
the images folder; `coco-paper:...` only those of the 81 images the paper evaluates on (App. E).
Without IMAGES_DIR the folder named after the split (`instances_val2014.json` -> `val2014`) is
looked for beside the annotations folder (`coco/annotations/` -> `coco/val2014/`), then beside
the file. An image's id is its `file_name`, stable across machines.

The masks of a detail are the union of the instances of the COCO category that names it, read
from the same file: polygons are drawn with PIL and RLE (compressed or not) decoded with numpy,
so pycocotools is not needed. Names map to categories through the category names, a small
synonym table (`data/coco.json`: "man" -> person) and plurals. The logit lens (`lens`) reads
every category's mask of an image the same way (`CocoMasks.objects`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmflow.errors import VlmflowError
from vlmflow.sources.source import COCO, COCO_PAPER, ImageRef, ImageSource

if TYPE_CHECKING:
    from vlmflow.experiments.protocol import WorkItem
    from vlmflow.judge.scene import SceneVocabulary

KINDS = (COCO, COCO_PAPER)
USAGE = "coco:ANNOTATIONS.json[:IMAGES_DIR]"


@lru_cache(maxsize=1)
def _data() -> Mapping[str, Any]:
    data: Mapping[str, Any] = json.loads(
        (files("vlmflow.sources") / "data" / "coco.json").read_text(encoding="utf-8")
    )
    return data


def paper_image_ids() -> tuple[int, ...]:
    """The COCO ids of the paper's 81 evaluation images, in the order of its Fig. A12."""
    return tuple(int(i) for i in _data()["paper_image_ids"])


def category_synonyms() -> Mapping[str, Sequence[str]]:
    """COCO category name -> other words for it (plurals come from `plurals`)."""
    synonyms: Mapping[str, Sequence[str]] = _data()["synonyms"]
    return synonyms


# -- the annotations file -------------------------------------------------------------------


@dataclass(frozen=True)
class CocoImage:
    """One `images` entry: the id annotations refer to, the file, the size masks are drawn at."""

    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class CocoIndex:
    """What vlmflow reads of an instances file: images, category names, annotations per image."""

    images: tuple[CocoImage, ...]  # sorted by file_name
    by_id: Mapping[int, CocoImage]
    categories: Mapping[int, str]  # category id -> name
    annotations: Mapping[int, tuple[tuple[int, Any], ...]]  # image id -> (category id, segm.)


def load_index(path: Path) -> CocoIndex:
    """The index of an instances file, parsed once per process while the file is unchanged."""
    stat = path.stat()
    return _load_index(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _load_index(path: Path, mtime_ns: int, size: int) -> CocoIndex:
    fix = "give an intact COCO instances_*.json file"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise VlmflowError(f"cannot read COCO annotations {path} ({_line(err)}): {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise VlmflowError(f"{path} is not a COCO instances file (no 'images' list): {fix}")
    try:
        images = sorted(
            (
                CocoImage(int(i["id"]), str(i["file_name"]), int(i["height"]), int(i["width"]))
                for i in data["images"]
            ),
            key=lambda i: i.file_name,
        )
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        annotations: dict[int, list[tuple[int, Any]]] = {}
        for a in data.get("annotations", []):
            if "segmentation" in a:
                annotations.setdefault(int(a["image_id"]), []).append(
                    (int(a["category_id"]), a["segmentation"])
                )
    except (KeyError, TypeError, ValueError) as err:
        raise VlmflowError(f"{path} has a malformed entry ({_line(err)}): {fix}") from None
    by_id = {i.id: i for i in images}
    return CocoIndex(
        tuple(images), by_id, categories, {k: tuple(v) for k, v in annotations.items()}
    )


def _line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# -- the image source -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CocoRef(ImageRef):
    """A COCO image; `coco_id` is the key of its annotations."""

    coco_id: int


@dataclass(frozen=True)
class CocoSource(ImageSource):
    """`coco:` / `coco-paper:` images; `path` is the annotations file, `images_dir` the folder."""

    path: Path
    images_dir: Path

    @classmethod
    def of(cls, text: str) -> CocoSource:
        """Parse `coco:ANNOTATIONS.json[:IMAGES_DIR]` or `coco-paper:...` (paths may use `~`)."""
        kind, _, tail = text.partition(":")
        if kind not in KINDS or not tail:
            raise VlmflowError(f"bad image source {text!r}: use {USAGE} or coco-paper:...")
        annotations, images_dir = Path(tail).expanduser(), None
        if not annotations.is_file() and ":" in tail:
            head, _, folder = tail.rpartition(":")
            annotations, images_dir = Path(head).expanduser(), Path(folder).expanduser()
        if not annotations.is_file():
            raise VlmflowError(
                f"COCO annotations not found: {annotations}: give {kind}:path/to/instances_*.json"
            )
        if images_dir is None:
            images_dir = _split_folder(annotations, kind)
        elif not images_dir.is_dir():
            raise VlmflowError(
                f"COCO images folder not found: {images_dir}: "
                f"give {kind}:ANNOTATIONS.json:IMAGES_DIR with an existing folder"
            )
        annotations, images_dir = annotations.resolve(), images_dir.resolve()
        return cls(f"{kind}:{annotations}:{images_dir}", kind, annotations, images_dir=images_dir)

    def index(self) -> CocoIndex:
        return load_index(self.path)

    def images(self) -> list[ImageRef]:
        """The annotated images whose file is in the folder, by file name."""
        index = self.index()
        listed = index.images
        if self.kind == COCO_PAPER:
            wanted = set(paper_image_ids())
            listed = tuple(i for i in listed if i.id in wanted)
            if not listed:
                raise VlmflowError(
                    f"none of the paper's {len(wanted)} COCO image ids is in {self.path}: "
                    "give the instances file of the split that holds them"
                )
        present = set(os.listdir(self.images_dir))
        refs: list[ImageRef] = [
            CocoRef(i.file_name, self.images_dir / i.file_name, coco_id=i.id)
            for i in listed
            if i.file_name in present
            or ("/" in i.file_name and (self.images_dir / i.file_name).is_file())
        ]
        if listed and not refs:
            raise VlmflowError(
                f"none of the {len(listed)} images of {self.path} is in {self.images_dir}: "
                f"give the folder holding them as {self.kind}:ANNOTATIONS.json:IMAGES_DIR"
            )
        return refs


def parse(text: str) -> CocoSource:
    """`coco:ANNOTATIONS.json[:IMAGES_DIR]` or `coco-paper:...` (see `CocoSource.of`)."""
    return CocoSource.of(text)


def _split_folder(annotations: Path, kind: str) -> Path:
    """`.../annotations/instances_val2014.json` -> `.../val2014`, else a `val2014` beside it."""
    split = annotations.stem.rpartition("_")[2]
    candidates = [annotations.parent.parent / split, annotations.parent / split]
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = " or ".join(str(c) for c in candidates)
    raise VlmflowError(
        f"no COCO images folder for {annotations.name} (looked for {looked}): "
        f"give it as {kind}:ANNOTATIONS.json:IMAGES_DIR"
    )


# -- segmentations --------------------------------------------------------------------------


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool of one annotation: a list of polygons, or an RLE dict (compressed or not)."""
    if isinstance(segmentation, dict):
        return decode_rle(segmentation)
    if isinstance(segmentation, list):
        return draw_polygons(segmentation, height, width)
    raise VlmflowError(
        f"unknown COCO segmentation {type(segmentation).__name__}: use polygons or RLE"
    )


def draw_polygons(polygons: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """(H, W) bool: the polygons `[x0, y0, x1, y1, ...]` filled, edges included.

    COCO coordinates put pixel (x, y)'s centre at (x + 0.5, y + 0.5); PIL at (x, y).
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = zip(polygon[::2], polygon[1::2], strict=False)
        xy = [(float(x) - 0.5, float(y) - 0.5) for x, y in points]
        if len(xy) >= 3:
            draw.polygon(xy, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """(H, W) bool from COCO RLE: run lengths of 0s then 1s, alternating, column-major."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = rle_counts(counts) if isinstance(counts, str | bytes) else [int(c) for c in counts]
    if sum(runs) != height * width or min(runs, default=0) < 0:
        raise VlmflowError(
            f"COCO RLE runs sum to {sum(runs)}, not {height}x{width}: give an intact annotation"
        )
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)  # (H * W,) column-major
    return flat.reshape(width, height).T


def rle_counts(text: str | bytes) -> list[int]:
    """Run lengths of a compressed RLE string (pycocotools' `rleFrString`).

    Each run is a signed LEB128-like number in 5-bit groups offset by 48 ('0'); from the third
    run on it is stored as the difference to the run two places before.
    """
    data = text.encode("ascii") if isinstance(text, str) else text
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


# -- masks for localization ------------------------------------------------------------------


def coco_vocabulary(categories: Iterable[str]) -> SceneVocabulary:
    """Category names with their synonyms and plurals, for matching the judge's object names."""
    from vlmflow.judge.scene import SceneVocabulary

    synonyms = category_synonyms()
    return SceneVocabulary.from_mapping({c: synonyms.get(c, ()) for c in categories})


def category_masks(
    index: CocoIndex, coco_id: int, category: str | None = None
) -> dict[str, np.ndarray]:
    """Category name -> (H, W) bool union of its instances in image `coco_id`, in the order the
    categories first appear in the annotations (only `category` when given; {} if absent)."""
    image = index.by_id[coco_id]
    found: dict[str, list[Any]] = {}
    for c, segmentation in index.annotations.get(coco_id, ()):
        name = index.categories.get(c)
        if name is not None and category in (None, name):
            found.setdefault(name, []).append(segmentation)
    return {
        name: np.logical_or.reduce(
            [decode_segmentation(s, image.height, image.width) for s in parts]
        )
        for name, parts in found.items()
    }


def _coco_ref(item: WorkItem) -> CocoRef:
    ref: ImageRef = item.payload["image"]
    if not isinstance(ref, CocoRef):
        raise VlmflowError(f"{item.item_id} is not a COCO image: masks=coco needs --images {USAGE}")
    return ref


class CocoMasks:
    """`masks=coco`: a detail's mask is the union of its category's instances in the image;
    `objects` lists every category's (for the logit lens's on/off-object shares)."""

    name = COCO

    def __init__(self) -> None:
        self._source: CocoSource | None = None
        self._vocabulary: SceneVocabulary | None = None

    def check(self, source: ImageSource) -> None:
        if not isinstance(source, CocoSource):
            raise VlmflowError(
                f"localization with masks=coco needs COCO images: use --images {USAGE} "
                f"or coco-paper:... (got {source.key})"
            )
        self._source = source
        self._vocabulary = None

    def category(self, name: str) -> str | None:
        """The category a name means: itself, a synonym or plural, else its longest known tail
        ("red car" -> car)."""
        words = name.lower().split()
        vocabulary = self._vocab()
        for start in range(len(words)):
            found = vocabulary.canonical(" ".join(words[start:]))
            if found is not None:
                return found
        return None

    def forms(self, name: str) -> tuple[str, ...]:
        from vlmflow.judge.scene import plurals

        category = self.category(name)
        if category is None:
            word = " ".join(name.lower().split())
            return (word, *plurals(word))
        return tuple(s for s, c in self._vocab().surface.items() if c == category)

    def mask(self, item: WorkItem, name: str) -> np.ndarray | None:
        category = self.category(name)
        if category is None:
            return None
        return category_masks(self._index(), _coco_ref(item).coco_id, category).get(category)

    def objects(self, item: WorkItem) -> list[tuple[str, np.ndarray]]:
        """(category, (H, W) bool union of its instances) of every category in the image."""
        return list(category_masks(self._index(), _coco_ref(item).coco_id).items())

    def canonical(self, word: str) -> str | None:
        """The category a word or phrase names (itself, a synonym, a plural), else None."""
        return self._vocab().canonical(word)

    def _index(self) -> CocoIndex:
        if self._source is None:
            raise VlmflowError("masks=coco has no COCO source yet: list the items first")
        return self._source.index()

    def _vocab(self) -> SceneVocabulary:
        if self._vocabulary is None:
            self._vocabulary = coco_vocabulary(sorted(set(self._index().categories.values())))
        return self._vocabulary

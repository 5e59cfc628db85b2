"""Image files as a source: a folder (every image below it), a `.txt` list, or one image.

Ids are paths relative to the folder (or as written in the list, or the file's name), so the
same images give the same ids on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmflow.errors import VlmflowError
from vlmflow.sources.source import IMAGE_SUFFIXES, ImageRef, ImageSource

FOLDER, LIST, FILE = "folder", "list", "file"


@dataclass(frozen=True)
class FolderSource(ImageSource):
    """`kind` folder: every image file below `path`, by relative path; list: the files a
    `.txt` names, one per line (relative to the list; `#` starts a comment); file: one image."""

    path: Path

    def images(self) -> list[ImageRef]:
        if self.kind == FILE:
            return [ImageRef(self.path.name, self.path)]
        if self.kind == FOLDER:
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


def parse(text: str) -> FolderSource:
    """A folder, a `.txt` list or an image file (`~` expanded); VlmflowError naming every
    `--images` form when `text` is none of them."""
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(f"{FOLDER}:{path.resolve()}", FOLDER, path.resolve())
    if path.is_file() and path.suffix.lower() == ".txt":
        return FolderSource(f"{LIST}:{path.resolve()}", LIST, path.resolve())
    if path.is_file():
        return FolderSource(f"{FILE}:{path.resolve()}", FILE, path.resolve())
    raise VlmflowError(
        f"image source {text!r} not found: give a folder, a .txt list, an image, 'scenes',"
        " coco:ANNOTATIONS.json or mme:FOLDER"
    )

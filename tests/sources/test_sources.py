"""The image-source registry: every `--images` form resolves through one interface, a new form
is one `SourceSpec` (that listing them imports no torch is tested with the experiment registry,
tests/experiments/test_registry.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from vlmflow import sources
from vlmflow.errors import VlmflowError
from vlmflow.sources import ImageRef, ImageSource, SourceSpec
from vlmflow.sources.folder import FolderSource
from vlmflow.sources.scenes import SceneRef, ScenesSource
from vlmflow.targets import resolve


@dataclass(frozen=True)
class Blank(ImageSource):
    """`blank:N`: N grey images (a form registered from outside the package)."""

    count: int

    def images(self) -> list[ImageRef]:
        return [ImageRef(f"blank-{i}") for i in range(self.count)]


def parse_blank(text: str) -> Blank:
    count = int(text.partition(":")[2])
    return Blank(f"blank:{count}", "blank", count)


def test_every_registered_form_resolves_to_a_parser() -> None:
    for spec in sources.SOURCES.values():
        assert callable(resolve(spec.factory))
    assert {"scenes", "coco", "coco-paper", "mme"} <= set(sources.SOURCES)


def test_scenes_and_files_through_the_one_interface(tmp_path: Path) -> None:
    scenes = ImageSource.parse("scenes:2")
    assert isinstance(scenes, ScenesSource) and (scenes.key, scenes.kind) == ("scenes:2", "scenes")
    refs = scenes.images()
    assert [type(r) for r in refs] == [SceneRef, SceneRef]
    assert refs[1].has_questions and len(refs[1].questions()) == 8
    assert refs[0].open().size == (448, 448)

    Image.new("RGB", (8, 6)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.md").write_text("not an image")
    folder = sources.parse(str(tmp_path))
    assert isinstance(folder, FolderSource) and folder.key == f"folder:{tmp_path.resolve()}"
    files = folder.images()
    assert [r.id for r in files] == ["a.jpg", "b.png"]
    assert not files[0].has_questions and files[0].questions() == ()
    assert files[1].open().size == (8, 6)


def test_a_new_form_is_one_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sources.SOURCES, "blank", SourceSpec("blank", f"{__name__}:parse_blank", "blank:N")
    )
    source = sources.parse("blank:3")
    assert isinstance(source, Blank) and [r.id for r in source.images()] == [
        "blank-0",
        "blank-1",
        "blank-2",
    ]
    with pytest.raises(VlmflowError, match="image source 'blank' not found"):
        sources.parse("blank")  # without ':' only a `bare` form takes its name alone
    with pytest.raises(ValueError, match="must look like"):
        SourceSpec("bad", "no_colon", "bad")

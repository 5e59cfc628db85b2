"""The MME benchmark as an image source (`--images mme:FOLDER[:CAT,CAT]`) with its questions.

MME's public release has one folder per category (`existence/`, `count/`, `artwork/`, ...).
Images sit next to a same-named `.txt` (most categories), or in `images/` with the `.txt` files
in `questions_answers_YES_or_NO/` (artwork, celebrity, landmark, posters, scene). Each `.txt`
line is `question<TAB>Yes|No`, usually one yes and one no per image, so ACC (per question) and
ACC+ (both questions of an image right) come out as for the scene world. A subfolder with no
images or no question files (e.g. `eval_tool/`) is not a category.

Listing reads folder names only; an image's question file is parsed when the image is used, so a
missing file or a malformed line is a recorded failure of that one image (the line is named in
the message), like a corrupt image, and the rest of the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlmflow.errors import VlmflowError
from vlmflow.sources.source import IMAGE_SUFFIXES, MME, ImageRef, ImageSource

if TYPE_CHECKING:
    from vlmflow.scenes.questions import Question

IMAGES = "images"
QUESTIONS = "questions_answers_YES_or_NO"


@dataclass(frozen=True, kw_only=True)
class MmeRef(ImageRef):
    """An MME image with its question file (`question<TAB>Yes|No` lines), read when asked."""

    questions_file: Path

    def questions(self) -> tuple[Question, ...]:
        return read_questions(self.questions_file, self.id.split("/", 1)[0])


@dataclass(frozen=True)
class MmeSource(ImageSource):
    """The MME folder `path`; `categories`: the chosen ones (empty: all)."""

    path: Path
    categories: tuple[str, ...] = ()

    def images(self) -> list[ImageRef]:
        """Every image of the chosen categories (all by default), id `category/filename`,
        sorted."""
        names = self.categories or tuple(categories(self.path))
        return [ref for name in names for ref in _refs(self.path / name)]


def parse(text: str) -> MmeSource:
    """`mme:FOLDER` or `mme:FOLDER:cat1,cat2` -> a source; the folder and categories are checked."""
    rest = text[len(MME) + 1 :]
    folder_text, chosen = rest, ""
    if not Path(rest).expanduser().is_dir() and ":" in rest:
        folder_text, _, chosen = rest.rpartition(":")
    folder = Path(folder_text).expanduser()
    if not folder_text or not folder.is_dir():
        raise VlmflowError(
            f"MME folder {folder_text!r} not found: give mme:FOLDER, FOLDER the unpacked MME "
            "benchmark (one subfolder per category)"
        )
    folder = folder.resolve()
    found = categories(folder)
    if not found:
        raise VlmflowError(
            f"{folder} holds no MME category (a subfolder of images with same-named .txt "
            f"question files, or with {IMAGES}/ and {QUESTIONS}/): point mme: at the folder "
            "that holds existence/, count/, ..."
        )
    names = sorted({n.strip() for n in chosen.split(",") if n.strip()})
    unknown = [n for n in names if n not in found]
    if unknown:
        raise VlmflowError(
            f"no MME category {', '.join(unknown)} in {folder}: choose from {', '.join(found)}"
        )
    key = f"{MME}:{folder}" + (f":{','.join(names)}" if names else "")
    return MmeSource(key, MME, folder, categories=tuple(names))


def categories(folder: Path) -> list[str]:
    """The category folders below `folder`, sorted by name."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and _pairs(d))


def read_questions(path: Path, category: str) -> tuple[Question, ...]:
    """The `question<TAB>Yes|No` lines of one image's file (blank lines skipped)."""
    from vlmflow.scenes.questions import Question

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VlmflowError(
            f"no question file {path}: MME pairs each image with a same-named .txt"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise VlmflowError(f"cannot read question file {path}: {err}") from None
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        question, tab, answer = line.rpartition("\t")
        answer = answer.strip().lower()
        if not tab or not question.strip() or answer not in ("yes", "no"):
            raise VlmflowError(
                f"{path}:{number}: expected 'question<TAB>Yes' or 'question<TAB>No', got "
                f"{line[:80]!r}: fix the line"
            )
        questions.append(Question(question.strip(), answer, category))
    if not questions:
        raise VlmflowError(f"question file {path} holds no question: add question<TAB>Yes|No")
    return tuple(questions)


def _refs(category: Path) -> list[ImageRef]:
    return [
        MmeRef(f"{category.name}/{image.name}", image, questions_file=questions)
        for image, questions in _pairs(category)
    ]


def _pairs(category: Path) -> list[tuple[Path, Path]]:
    """(image, question file) of one category, by image name; [] when it is not a category."""
    images = category / IMAGES if (category / IMAGES).is_dir() else category
    texts = category / QUESTIONS if (category / QUESTIONS).is_dir() else category
    if not any(p.suffix.lower() == ".txt" for p in texts.iterdir()):
        return []
    return sorted(
        (p, texts / f"{p.stem}.txt")
        for p in images.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


__all__ = ["MmeRef", "MmeSource", "categories", "parse", "read_questions"]

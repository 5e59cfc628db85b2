"""The MME folder source (`--images mme:FOLDER`): listing, questions, errors, and a Table-1 run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, Runner, create
from vlmflow.experiments.reprompt import table
from vlmflow.store import ResultStore

QUESTIONS = "questions_answers_YES_or_NO"


def write_image(path: Path, scene: int) -> None:
    from vlmflow.scenes import load_fixed_scene

    path.parent.mkdir(parents=True, exist_ok=True)
    load_fixed_scene(scene).image.resize((64, 64)).save(path)


def write_questions(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def mme(tmp_path: Path) -> Path:
    """Both MME layouts: images next to their .txt, and images/ + questions_answers_YES_or_NO/."""
    root = tmp_path / "MME"
    write_image(root / "existence" / "000000.jpg", 0)
    write_questions(
        root / "existence" / "000000.txt",
        "Is there a dog in this image? Please answer yes or no.\tYes",
        "Is there a bus in this image? Please answer yes or no.\tNo",
    )
    write_image(root / "existence" / "000001.png", 1)
    write_questions(root / "existence" / "000001.txt", "Is there a cat?\tno", "", "Is it red?\tYES")
    write_image(root / "artwork" / "images" / "10002.jpg", 2)
    write_questions(
        root / "artwork" / QUESTIONS / "10002.txt",
        "Is this artwork created by Monet?\tYes",
        "Is this artwork created by Turner?\tNo",
    )
    write_questions(root / "eval_tool" / "Your_Results" / "existence.txt", "x\ty\tYes")
    (root / "readme.txt").write_text("MME\n")
    return root


def test_lists_every_image_with_its_questions(mme: Path) -> None:
    source = ImageSource.parse(f"mme:{mme}")
    assert source.key == f"mme:{mme.resolve()}" and source.kind == "mme"
    refs = source.images()
    ids = ["artwork/10002.jpg", "existence/000000.jpg", "existence/000001.png"]
    assert [r.id for r in refs] == ids
    assert refs[0].path == mme / "artwork" / "images" / "10002.jpg"
    assert all(r.has_questions for r in refs)
    art = refs[0].questions()
    assert [(q.text, q.answer, q.category) for q in art] == [
        ("Is this artwork created by Monet?", "yes", "artwork"),
        ("Is this artwork created by Turner?", "no", "artwork"),
    ]
    assert [(q.answer, q.category) for q in refs[2].questions()] == [
        ("no", "existence"),
        ("yes", "existence"),
    ]  # blank line skipped, answers normalized
    assert refs[1].open().size == (64, 64)
    assert ImageSource.parse(f"mme:{mme}").images() == refs  # deterministic


def test_category_filter(mme: Path) -> None:
    source = ImageSource.parse(f"mme:{mme}:existence")
    assert source.key == f"mme:{mme.resolve()}:existence"
    assert [r.id for r in source.images()] == ["existence/000000.jpg", "existence/000001.png"]
    both = ImageSource.parse(f"mme:{mme}:existence, artwork")
    assert both.key == f"mme:{mme.resolve()}:artwork,existence"
    assert len(both.images()) == 3
    with pytest.raises(VlmflowError, match=r"no MME category count in .*: choose from artwork"):
        ImageSource.parse(f"mme:{mme}:count")


def test_errors_are_one_line_and_name_the_fix(mme: Path, tmp_path: Path) -> None:
    def message(text: str) -> str:
        with pytest.raises(VlmflowError) as err:
            ImageSource.parse(text)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "not found: give mme:FOLDER" in message(f"mme:{tmp_path / 'nowhere'}")
    assert "holds no MME category" in message(f"mme:{mme / 'eval_tool'}")

    write_questions(mme / "existence" / "000001.txt", "Is there a cat? no")
    ref = ImageSource.parse(f"mme:{mme}").images()[2]
    with pytest.raises(VlmflowError, match=r"000001.txt:1: expected 'question<TAB>Yes'"):
        ref.questions()
    (mme / "existence" / "000001.txt").unlink()
    with pytest.raises(VlmflowError, match="no question file"):
        ref.questions()


def test_reprompt_on_mme_scores_per_category(mme: Path, tiny_path, tmp_path: Path) -> None:
    import vlmflow

    write_questions(mme / "existence" / "000001.txt", "Is there a cat?\tmaybe")  # malformed
    handle = vlmflow.load(str(tiny_path("llava")))
    options = {"ks": [0.25], "k_only": None, "query_only": False, "max_new_tokens": 4}
    experiment = create("reprompt", options)
    settings = ["naive", "describe-to-llm", "k=0.25"]
    with ResultStore.open(tmp_path / "out") as store:
        summary = Runner(
            [experiment],
            ImageSource.parse(f"mme:{mme}"),
            store,
            model="tiny",
            handle_factory=lambda: handle,
            progress=False,
        ).run()
        assert (summary.done, summary.failed) == (2 * len(settings), len(settings))
        rows = store.rows(experiment="reprompt")
        failures = store.failures(experiment="reprompt")
    assert {f.item for f in failures} == {"existence/000001.png"}
    assert all("000001.txt:1" in f.message for f in failures)
    by_item = {(r.item, r.setting): r.payload for r in rows}
    art = by_item["artwork/10002.jpg", "naive"]["questions"]
    assert [(q["category"], q["answer"]) for q in art] == [("artwork", "yes"), ("artwork", "no")]
    assert art[0]["text"] == "Is this artwork created by Monet?"
    result = table((r.setting, r.payload) for r in rows)
    assert set(result) == set(settings)
    for cells in result.values():
        assert {k for k in cells if "." in k} == {
            "acc.artwork",
            "acc+.artwork",
            "acc.existence",
            "acc+.existence",
        }
        assert cells["acc+.artwork"] in (0.0, 100.0)  # one image: both right or not

"""knockout, topk and localization send a prompt or each image's own question; the run id
follows it."""

from __future__ import annotations

import pytest

from vlmflow.errors import VlmflowError
from vlmflow.experiments import ImageSource, create
from vlmflow.experiments.prompts import item_prompt
from vlmflow.scenes import load_fixed_scene


def test_each_image_gets_its_own_question() -> None:
    refs = ImageSource.parse("scenes:2").images()
    texts = [item_prompt("Describe the image.", "count", ref) for ref in refs]
    expected = [load_fixed_scene(i).questions_of("count")[0].text for i in range(2)]
    assert texts == expected and texts[0] != texts[1]
    assert item_prompt("Describe the image.", "1", refs[0]) == load_fixed_scene(0).questions[1].text
    assert item_prompt("What is here?", None, refs[0]) == "What is here?"
    with pytest.raises(VlmflowError, match="has no 'weather' question"):
        item_prompt("Describe the image.", "weather", refs[0])


@pytest.mark.parametrize("name", ["knockout", "topk", "localization"])
def test_prompt_and_question_are_part_of_the_run_id(name: str) -> None:
    extra = {"num_layers": 4} if name == "knockout" else {}
    plain = create(name, extra).config
    assert "question" not in plain  # unset: run ids from before the option stay valid
    asked = create(name, {**extra, "question": "existence"}).config
    prompted = create(name, {**extra, "prompt": "What is in the picture?"}).config
    assert asked["question"] == "existence"
    assert len({repr(sorted(c.items())) for c in (plain, asked, prompted)}) == 3
    with pytest.raises(VlmflowError, match="question must name"):
        create(name, {**extra, "question": " "})

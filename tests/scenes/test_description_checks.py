"""`scripts/description_checks.py` reads placements back out of descriptions exactly: on the
reference descriptions of the fixed scenes it finds every object in its own cell, and answers
every position question right."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import ModuleType

from vlmflow.scenes.fixed import FIXED_COUNT, load_fixed_scene

Scripts = Callable[[str], ModuleType]


def test_reference_descriptions_place_every_object(repo_script: Scripts) -> None:
    placements = repo_script("description_checks").placements
    for index in range(FIXED_COUNT):
        scene = load_fixed_scene(index)
        for name in {o.name for o in scene.objects}:
            expected = Counter(o.position for o in scene.objects if o.name == name)
            assert Counter(placements(scene.description, name)) == expected, scene.description


def test_a_wrong_cell_is_read_as_written(repo_script: Scripts) -> None:
    text = "There are two objects in the image: a cat in the top left and two dogs in the center."
    placements = repo_script("description_checks").placements
    assert placements(text, "cat") == ["top left"]
    assert placements(text, "dog") == ["center"]
    assert placements(text, "bird") == []


def test_reference_descriptions_answer_every_position_question(repo_script: Scripts) -> None:
    script = repo_script("description_checks")
    seen = 0
    for index in range(FIXED_COUNT):
        scene = load_fixed_scene(index)
        for question in scene.questions:
            where = script.position_asked(question.text)
            assert (where is None) == (question.category != "position")
            if where is not None:
                said = "yes" if where[1] in script.placements(scene.description, where[0]) else "no"
                assert said == question.answer, (question.text, scene.description)
                seen += 1
    assert seen == 2 * FIXED_COUNT

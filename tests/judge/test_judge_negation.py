"""Absence as people write it: every phrasing of `negation.PHRASINGS`, in both texts, and the
sentences that only look negative, through both judges that read the table (offline, scene)."""

from __future__ import annotations

from typing import Any

import pytest

from vlmflow.judge import negation

OBJECTS = ("cat", "bicycle", "umbrella", "traffic light")
REFERENCE = "A dog and a {obj} on the grass."


def absent_sentence(words: tuple[str, ...], side: str, obj: str) -> str:
    """A dog is there and `obj` is said to be absent with the phrasing `words`."""
    cue = " ".join(words)
    if side == "after":
        return f"A dog on the grass. Here {cue} a {obj}."
    return f"A dog on the grass. The {obj} {cue}."


# The scene judge's closed vocabulary: every object word of the sentences below, each its own
# entry (so "bike" is not "bicycle"); "grass" is none, as the offline judge reads it as setting.
SCENE_VOCABULARY = {
    name: []
    for name in (
        "dog cat bicycle umbrella traffic light bird hat man car scarf bench table chair sofa "
        "bike tree truck bus bowl spoon cup wheel"
    ).split()
    if name not in ("traffic", "light")
}
SCENE_VOCABULARY["traffic light"] = []


def names(judge: Any, text: str) -> list[str]:
    from vlmflow.judge.scene import SceneJudge

    if isinstance(judge, SceneJudge):
        return judge.vocabulary.find(text)
    return [n.name for n in judge.extract(text)]


@pytest.fixture(scope="module")
def wordnet_judge() -> Any:
    from vlmflow.judge.offline import OfflineJudge

    return OfflineJudge(use_embeddings=False)


@pytest.fixture(scope="module")
def scene_judge() -> Any:
    from vlmflow.judge.scene import SceneJudge

    return SceneJudge(SCENE_VOCABULARY)


@pytest.fixture(params=["offline", "scene"])
def extracting_judge(request: pytest.FixtureRequest) -> Any:
    """Each judge whose object lists read `negation`: the offline one without embeddings."""
    return request.getfixturevalue("wordnet_judge" if request.param == "offline" else "scene_judge")


@pytest.fixture(params=["offline", "scene"])
def comparing_judge(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("offline_judge" if request.param == "offline" else "scene_judge")


def test_the_table_expands_to_word_sequences() -> None:
    assert negation.expand("{is|are} {absent|not to be seen}") == [
        ("is", "absent"),
        ("is", "not", "to", "be", "seen"),
        ("are", "absent"),
        ("are", "not", "to", "be", "seen"),
    ]
    with pytest.raises(ValueError, match="unbalanced"):
        negation.expand("{is|are absent")
    assert set(negation.CUES.values()) == set(negation.SIDES)
    for phrasing in ("cannot see", "can't see", "don't see", "there isn't", "is not present"):
        assert tuple(phrasing.split()) in negation.CUES, phrasing
    for word in ("no", "without", "nor", "neither", "lacks", "missing"):
        assert negation.CUES[(word,)] == "after"
    for not_a_phrasing in ("not", "not only", "no-one", "nothing", "none", "none of"):
        assert tuple(not_a_phrasing.split()) not in negation.CUES


@pytest.mark.parametrize("obj", OBJECTS)
def test_every_phrasing_makes_the_object_absent(extracting_judge: Any, obj: str) -> None:
    """Each word sequence of the table, with each object: the object is dropped, the dog kept."""
    wrong = []
    for words, side in negation.CUES.items():
        text = absent_sentence(words, side, obj)
        if names(extracting_judge, text) != ["dog"]:
            wrong.append((text, names(extracting_judge, text)))
    assert not wrong, wrong[:10]


@pytest.mark.parametrize(("phrasing", "side"), negation.PHRASINGS)
@pytest.mark.parametrize("obj", ["cat", "bicycle"])
def test_absent_objects_count_in_verdicts(
    comparing_judge: Any, phrasing: str, side: str, obj: str
) -> None:
    """In the candidate the absent object is a false negative; in the reference it is not an
    object of the reference, so the candidate's mention of it is a false positive."""
    said_absent = absent_sentence(negation.expand(phrasing)[0], side, obj)
    v = comparing_judge.compare(REFERENCE.format(obj=obj), said_absent)
    assert (v.tp, v.fn, v.fp) == (1, 1, 0), (said_absent, v)
    v = comparing_judge.compare(said_absent, REFERENCE.format(obj=obj))
    assert (v.tp, v.fn, v.fp) == (1, 0, 1), (said_absent, v)


@pytest.mark.parametrize(
    "candidate",
    [
        "A dog on the grass. There is no cat.",
        "A dog on the grass. I cannot see a cat.",
        "A dog on the grass. I cannot really see a cat.",
        "A dog on the grass. I don't actually see any cat.",
        "A dog on the grass, not a cat.",
        "A dog on the grass. I can't see a cat.",
        "A dog on the grass. I don't see any cat.",
        "A dog on the grass. I do not see any cats.",
        "A dog on the grass. There isn't a cat.",
        "A dog on the grass. There aren't any cats.",
        "A dog on the grass. The cat is not present.",
        "A dog on the grass. A cat is absent.",
        "A dog on the grass, without a cat.",
        "A dog on the grass. There is no sign of a cat.",
        "A dog on the grass; the scene lacks a cat.",
        "A dog on the grass. The cat is missing.",
        "A dog on the grass. Neither a cat nor a bird is visible.",
        "A dog on the grass, and no bird nor cat.",
        "A dog on the grass. The cat isn't visible in the picture.",
        "A dog on the grass. A cat cannot be seen.",
        "A dog on the grass. The cat is nowhere to be seen.",
        "A dog on the grass. It does not show a cat.",
        "A dog on the grass. The dog is not wearing a cat costume, and no cat is there.",
    ],
)
def test_phrasings_as_people_write_them(comparing_judge: Any, candidate: str) -> None:
    v = comparing_judge.compare("A dog and a cat on the grass.", candidate)
    assert v.tp == 1 and v.fn == 1 and "cat" in v.missing, (candidate, v)
    assert "cat" not in v.candidate_objects


@pytest.mark.parametrize(
    ("text", "present", "absent"),
    [
        ("A man without a hat stands next to a car.", {"man", "car"}, {"hat"}),
        ("A man without a hat and a dog.", {"man", "dog"}, {"hat"}),
        ("A man without a hat and scarf.", {"man"}, {"hat", "scarf"}),
        ("No-one sits on the bench.", {"bench"}, set()),
        ("No one sits on the bench.", {"bench"}, set()),
        ("There is nothing on the table.", {"table"}, set()),
        ("Not only a dog but also a cat.", {"dog", "cat"}, set()),
        ("None of the chairs is empty.", {"chair"}, set()),
        ("There is no cat on the sofa.", {"sofa"}, {"cat"}),
        ("A dog sits on a bench and a cat is absent.", {"dog", "bench"}, {"cat"}),
        ("The dog and the cat are not visible.", set(), {"dog", "cat"}),
        ("No cars, trucks or buses; a bike leans on a tree.", {"bike", "tree"}, {"car", "bus"}),
        ("A bowl with no spoon next to a cup.", {"bowl", "cup"}, {"spoon"}),
        ("A dog, but no cat.", {"dog"}, {"cat"}),
        ("A dog, not a cat, sits on a bench.", {"dog", "bench"}, {"cat"}),
        ("I cannot clearly see the cat on the sofa.", {"sofa"}, {"cat"}),
        ("The dog is not sleeping on the sofa.", {"dog", "sofa"}, set()),
        ("A bike missing its front wheel.", {"bike"}, {"wheel", "front wheel"}),
    ],
)
def test_counter_cases_keep_present_objects(
    extracting_judge: Any, text: str, present: set[str], absent: set[str]
) -> None:
    found = set(names(extracting_judge, text))
    assert present <= found and not absent & found, (text, found)


def test_absent_positions_checks_its_input() -> None:
    with pytest.raises(ValueError, match="tags"):
        negation.absent_positions(["no", "cat"], ["F"])
    words = ["no", "cat", "or", "dog", "on", "a", "sofa"]
    assert negation.absent_positions(words, ["F", "N", "F", "N", "F", "F", "N"]) == {0, 1, 2, 3}

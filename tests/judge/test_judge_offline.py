"""The offline judge: WordNet objects, synonyms, hypernyms, embeddings; the paper's non-objects."""

from __future__ import annotations

from typing import Any

import pytest

PAPER_REFERENCE = (
    "The image depicts a cyclist riding a road bike on a paved road. The cyclist is wearing a red "
    "helmet, black and white cycling jersey, black shorts, and white cycling shoes. They are also "
    "carrying a black backpack. The road is marked with a double yellow line down the center and "
    "a white line along the edges. On the left side of the road, there are two horses walking in "
    "the same direction as the cyclist. The surrounding area is green with trees and bushes on "
    "both sides of the road. The sky is clear and blue, indicating good weather conditions."
)
PAPER_CANDIDATE = (
    "The image depicts a person riding a bicycle on a road. The cyclist is wearing a helmet and a "
    "backpack, and is facing away from the camera, looking ahead. The road is surrounded by trees "
    "and vegetation on both sides, creating a natural and scenic environment. The sky is clear "
    "and blue, indicating good weather conditions. The road appears to be relatively empty, with "
    "no other vehicles or cyclists visible."
)


def names(judge: Any, text: str) -> list[str]:
    return [n.name for n in judge.extract(text)]


def test_paper_example(offline_judge: Any) -> None:
    v = offline_judge.compare(PAPER_REFERENCE, PAPER_CANDIDATE)
    assert set(v.reference_objects) >= {"cyclist", "bike", "helmet", "backpack", "horse", "tree"}
    for not_object in ("road", "sky", "line", "weather", "green", "blue", "area"):
        assert not_object not in v.reference_objects + v.candidate_objects
    pairs = {(m.reference, m.candidate) for m in v.matches}
    assert ("bike", "bicycle") in pairs
    assert set(v.missing) >= {"jersey", "shorts", "shoe", "horse"}
    assert v.recall == pytest.approx(0.5, abs=0.11)  # the paper's GPT-4: 0.555


@pytest.mark.parametrize(
    ("reference", "candidate"),
    [
        ("A cyclist waits at the corner.", "A person waits at the corner."),
        ("A man rides a bike.", "A man rides a bicycle."),
        ("A fridge stands in the kitchen.", "A refrigerator stands in the kitchen."),
        ("A puppy sleeps on the rug.", "A dog sleeps on the rug."),
        ("Two zebras graze.", "An animal grazes."),
        ("A couch in a living room.", "A sofa in a living room."),
    ],
)
def test_synonyms_and_hypernyms_match(offline_judge: Any, reference: str, candidate: str) -> None:
    v = offline_judge.compare(reference, candidate)
    assert v.tp >= 1 and v.fp == 0 and v.fn == 0, v


def test_different_objects_do_not_match(offline_judge: Any) -> None:
    v = offline_judge.compare("A cat on a chair.", "A dog on a table.")
    assert v.tp == 0 and v.fp == 2 and v.fn == 2


def test_non_objects_are_ignored(offline_judge: Any) -> None:
    text = (
        "A road under a cloudy blue sky, with water and grass on the ground. The weather is "
        "sunny and the kitchen walls are white."
    )
    assert names(offline_judge, text) == []


def test_plurals_are_lemmatised(offline_judge: Any) -> None:
    assert names(offline_judge, "Three knives, two geese and several benches.") == [
        "knife",
        "goose",
        "bench",
    ]


def test_negated_objects_are_absent(offline_judge: Any) -> None:
    found = names(offline_judge, "A stop sign. No cars or people are visible, and a bus waits.")
    assert "car" not in found and "person" not in found
    assert "bus" in found


def test_verbs_and_modifiers_are_not_objects(offline_judge: Any) -> None:
    found = names(offline_judge, "Workers in orange vests stand near a coffee mug. Sheep graze.")
    assert "vest" in found and "sheep" in found
    assert "orange" not in found and "stand" not in found and "coffee" not in found


def test_compounds_are_kept_whole(offline_judge: Any) -> None:
    found = names(offline_judge, "A man eats hot dogs next to a traffic light.")
    assert "hot dog" in found and "dog" not in found


def test_mentions_is_asymmetric(offline_judge: Any) -> None:
    # A more specific word answers a general question, not the other way round.
    assert offline_judge.mentions("A puppy on the grass.", ["dog", "animal"]) == (True, True)
    assert offline_judge.mentions("An animal on the grass.", ["dog"]) == (False,)
    assert offline_judge.mentions("Oranges in a bowl.", ["orange"]) == (True,)
    assert offline_judge.mentions("A man in an orange vest.", ["orange"]) == (False,)


def test_words_unknown_to_wordnet_still_count(offline_judge: Any) -> None:
    assert "smartphone" in names(offline_judge, "She holds a smartphone.")
    assert offline_judge.mentions("She holds a smartphone.", ["smartphone"]) == (True,)


def test_without_embeddings_wordnet_still_matches() -> None:
    from vlmflow.judge.offline import OfflineJudge

    plain = OfflineJudge(use_embeddings=False)
    assert plain.model == "wordnet-3.0"
    v = plain.compare("A cyclist and a puppy.", "A person and a dog.")
    assert v.tp == 2

"""The scene judge: closed vocabulary, synonyms, plurals, negation."""

from __future__ import annotations

from dataclasses import dataclass

from vlmflow import judge
from vlmflow.judge.scene import SceneJudge, SceneVocabulary, plurals

VOCAB = {"dog": ["puppy"], "car": ["automobile"], "teddy bear": [], "bus": [], "knife": []}


def test_plurals() -> None:
    assert plurals("dog") == ("dogs",)
    assert plurals("bus") == ("buses",)
    assert plurals("teddy bear") == ("teddy bears",)
    assert "knives" in plurals("knife")
    assert plurals("strawberry") == ("strawberries",)


def test_exact_matching_with_synonyms_and_plurals() -> None:
    j = SceneJudge(VOCAB)
    v = j.compare("Two puppies next to a car and a teddy bear.", "A dog beside two automobiles.")
    assert v.reference_objects == ("dog", "car", "teddy bear")
    assert v.candidate_objects == ("dog", "car")
    assert (v.tp, v.fn, v.fp) == (2, 1, 0)


def test_out_of_vocabulary_words_are_not_objects() -> None:
    v = SceneJudge(VOCAB).compare("A cat and a bear.", "A dog.")
    assert v.reference_objects == ()  # "bear" alone is not "teddy bear"
    assert v.candidate_objects == ("dog",)


def test_negation_and_mentions() -> None:
    j = SceneJudge(VOCAB)
    assert j.vocabulary.find("No dogs here, but a bus.") == ["bus"]
    assert j.mentions("A puppy and buses.", ["dog", "bus", "car", "zebra"]) == (
        True,
        True,
        False,
        False,
    )


def test_from_types_and_public_constructor() -> None:
    @dataclass
    class Type:
        name: str
        synonyms: tuple[str, ...]
        plural: str

    vocab = SceneVocabulary.from_types([Type("mouse", ("computer mouse",), "mice")])
    assert vocab.find("Two mice.") == ["mouse"]
    j = judge.SceneJudge(vocab)
    assert j.compare("a mouse", "mice").tp == 1
    # A different vocabulary is a different cache identity.
    assert judge.SceneJudge({"dog": []}).model != judge.SceneJudge({"dog": ["puppy"]}).model


def test_absent_phrases_end_at_their_noun_phrase() -> None:
    """Without a tagger, words before a vocabulary noun are its modifiers and a word right after
    one starts something else: the absent phrase takes the first, never the second."""
    find = SceneVocabulary.from_mapping(VOCAB).find
    assert find("I cannot see a fluffy dog, only a car.") == ["car"]
    assert find("There are no big red buses next to the car.") == ["car"]
    assert find("No dog chases a bus.") == ["bus"]
    assert find("There is no sign of a knife near the teddy bear.") == ["teddy bear"]
    assert find("The small brown puppy is not visible; a car is.") == ["car"]
    assert find("The bus and the car are absent.") == []
    assert find("A bus passes and the car is missing.") == ["bus"]
    assert find("A teddy bear without a dog and a knife.") == ["teddy bear", "knife"]
    assert find("No-one drives the bus.") == ["bus"]

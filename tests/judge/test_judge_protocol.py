"""Verdict arithmetic: counts and scores follow from the lists and matches, edge cases included."""

from __future__ import annotations

import pytest

from vlmflow.judge.protocol import Match, Verdict, greedy_matches


def verdict(refs: list[str], cands: list[str], pairs: list[tuple[str, str]]) -> Verdict:
    matches = tuple(Match(r, c) for r, c in pairs)
    return Verdict(tuple(refs), tuple(cands), matches, "test", "m", "v1")


def test_paper_counts() -> None:
    # The paper's Fig. A2 example, matched correctly: 5 TP, 5 FN (jersey, shorts, shoes,
    # horses, bushes), 0 FP.
    refs = ["cyclist", "bike", "helmet", "jersey", "shorts", "shoe", "backpack", "horse", "tree"]
    cands = ["person", "bicycle", "helmet", "backpack", "tree"]
    pairs = [("cyclist", "person"), ("bike", "bicycle"), ("helmet", "helmet")]
    pairs += [("backpack", "backpack"), ("tree", "tree")]
    v = verdict([*refs, "bush"], cands, pairs)
    assert (v.tp, v.fn, v.fp) == (5, 5, 0)
    assert v.precision == 1.0
    assert v.recall == pytest.approx(0.5)
    assert v.f1 == pytest.approx(2 / 3)
    assert v.missing == ("jersey", "shorts", "shoe", "horse", "bush")
    assert v.hallucinated == ()


def test_hallucinations_lower_precision() -> None:
    v = verdict(["dog"], ["dog", "cat", "car"], [("dog", "dog")])
    assert (v.tp, v.fp, v.fn) == (1, 2, 0)
    assert v.precision == pytest.approx(1 / 3)
    assert v.recall == 1.0
    assert v.hallucinated == ("cat", "car")


@pytest.mark.parametrize(
    ("refs", "cands", "expected"),
    [
        ([], [], (1.0, 1.0, 1.0)),  # nothing to find, nothing invented
        (["dog"], [], (0.0, 0.0, 0.0)),  # the image -> query knockout case: F1 = 0
        ([], ["dog"], (0.0, 0.0, 0.0)),
    ],
)
def test_empty_lists(refs: list[str], cands: list[str], expected: tuple[float, ...]) -> None:
    v = verdict(refs, cands, [])
    assert (v.precision, v.recall, v.f1) == expected


def test_invalid_matches_are_refused() -> None:
    with pytest.raises(ValueError):
        verdict(["dog"], ["dog"], [("cat", "dog")])
    with pytest.raises(ValueError):
        verdict(["dog", "puppy"], ["dog"], [("dog", "dog"), ("puppy", "dog")])


def test_dict_round_trip_keeps_everything() -> None:
    v = verdict(["dog", "cat"], ["dog"], [("dog", "dog")])
    data = v.to_dict()
    for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
        assert key in data
    assert data["reference_objects"] == ["dog", "cat"]
    back = Verdict.from_dict(data, cached=True)
    assert back == v and back.cached


def test_greedy_matching_is_one_to_one_and_best_first() -> None:
    scores = {("cyclist", "person"): 0.9, ("cyclist", "cyclist"): 1.0, ("man", "person"): 0.9}
    matches = greedy_matches(scores, threshold=0.5)
    assert {(m.reference, m.candidate) for m in matches} == {
        ("cyclist", "cyclist"),
        ("man", "person"),
    }
    assert greedy_matches({("a", "b"): 0.4}, threshold=0.5) == []

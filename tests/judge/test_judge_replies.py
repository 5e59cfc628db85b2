"""LLM replies as real chat models write them: prose, code fences, several objects, reasoning
sections. The final answer is scored; a reply without one is a recorded failure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vlmflow import judge
from vlmflow.judge.llm import LlmJudge, extract_json, parse_mentions, parse_verdict
from vlmflow.judge.protocol import JudgeReplyError

FINAL = {
    "reasoning": "The person is the cyclist; the horses are missing.",
    "reference_objects": ["cyclist", "bike", "horse"],
    "candidate_objects": ["person", "bicycle", "camera"],
    "matches": [
        {"reference": "cyclist", "candidate": "person"},
        {"reference": "bike", "candidate": "bicycle"},
    ],
}  # TP 2, FN 1 (horse), FP 1 (camera)
DRAFT = {
    "reference_objects": ["cyclist", "bike", "horse"],
    "candidate_objects": ["person", "bicycle", "camera"],
    "matches": [],
}  # TP 0: scoring it instead of the final answer would be a silent wrong result
F, D = json.dumps(FINAL), json.dumps(DRAFT)
F_PRETTY = json.dumps(FINAL, indent=2)

ANSWERED = {
    "bare": F,
    "prose around": f"Here is my analysis of the two descriptions.\n{F}\nLet me know if...",
    "json fence": f"Sure! Here it is:\n```json\n{F_PRETTY}\n```\nDone.",
    "plain fence": f"```\n{F_PRETTY}\n```",
    "think then answer": f"<think>\nThe cyclist may be the person. Draft: {D}\n</think>\n{F}",
    "think upper case": f"<THINK>first try {D}</THINK>\n\n```json\n{F}\n```",
    "thinking tag": f"<thinking>{D}</thinking>Answer: {F}",
    "reasoning tag": f"<reasoning>Listing objects {{cyclist}}.</reasoning>{F_PRETTY}",
    "opening tag in the prompt": f"Let me compare {{them}}. {D}\n</think>\n\n{F}",
    "reasoning label": (
        "Reasoning: the reference lists a cyclist {a person}, a bike and horses; the candidate "
        f"says person and bicycle.\n\nFinal answer:\n```json\n{F_PRETTY}\n```"
    ),
    "draft then final": f"First pass:\n{D}\nOn reflection the person is the cyclist:\n{F}",
    "other objects around": f'{{"step": 1}} {{"objects": ["dog"]}} {F} {{"confidence": 0.9}}',
    "braces in strings": f'Note: {{"note": "use }} and {{ freely"}}\n{F}',
}

UNANSWERED = {
    "no json": "I think the precision is 0.5 and the recall is 1.0.",
    "only inside think": f"<think>{F}</think>",
    "think never closed": f"<think>Let me see. {F}",
    "only drafts of another shape": '{"objects": ["bike"]} {"count": 3}',
    "final answer cut off": f"Draft: {F}\nFinal: {F[:-40]}",
    "final answer not json": f"{F}\nCorrected: {{'reference_objects': ['bike'], 'matches': []}}",
    "reasoning only": "Reasoning: both mention a bike. The answer would list it.",
}


def make(server: Any) -> LlmJudge:
    return LlmJudge(base_url=server.url, model="stub-model", timeout=2.0, backoff=0.01)


@pytest.mark.parametrize("reply", ANSWERED.values(), ids=list(ANSWERED))
def test_final_answer_is_scored_at_parser_level(reply: str) -> None:
    v = parse_verdict(reply, LlmJudge(base_url="http://127.0.0.1:9/v1"))
    assert (v.tp, v.fn, v.fp) == (2, 1, 1)
    assert v.missing == ("horse",) and v.hallucinated == ("camera",)


@pytest.mark.parametrize("reply", ANSWERED.values(), ids=list(ANSWERED))
def test_final_answer_is_scored_through_the_server(chat_server: Any, reply: str) -> None:
    chat_server.answer(reply)
    v = make(chat_server).compare("ref", "cand")
    assert (v.tp, v.fn, v.fp) == (2, 1, 1)


@pytest.mark.parametrize("reply", UNANSWERED.values(), ids=list(UNANSWERED))
def test_reply_without_a_final_answer_is_an_error(reply: str) -> None:
    with pytest.raises(JudgeReplyError):
        parse_verdict(reply, LlmJudge(base_url="http://127.0.0.1:9/v1"))


def test_replies_without_a_final_answer_are_recorded_failures(chat_server: Any, cache: Any) -> None:
    for reply in UNANSWERED.values():
        chat_server.answer(reply)
    pairs = [(f"ref {i}", f"cand {i}") for i in range(len(UNANSWERED))]
    results = judge.compare_many(pairs, make(chat_server), cache=cache)
    assert all(isinstance(r, judge.Failure) for r in results), results
    assert [r.raw for r in results] == list(UNANSWERED.values())
    assert len(cache) == 0 and len(cache.failures()) == len(UNANSWERED)


MENTIONS_FINAL = {
    "caption_objects": ["puppy"],
    "answers": [{"object": "dog", "mentioned": True}, {"object": "orange", "mentioned": False}],
}
MENTIONS_DRAFT = {
    "answers": [{"object": "dog", "mentioned": False}, {"object": "orange", "mentioned": False}]
}
MF, MD = json.dumps(MENTIONS_FINAL), json.dumps(MENTIONS_DRAFT)


@pytest.mark.parametrize(
    "reply",
    [
        MF,
        f"```json\n{json.dumps(MENTIONS_FINAL, indent=2)}\n```",
        f"<think>A puppy is a dog. {MD}</think>{MF}",
        f"Reasoning: a puppy is a young dog.\nAnswer: {MD} no wait, {MF}",
        f'{MF}\n{{"confidence": "high"}}',
    ],
)
def test_mentions_final_answer(chat_server: Any, reply: str) -> None:
    assert parse_mentions(reply, ["dog", "orange"]) == (True, False)
    chat_server.answer(reply)
    assert make(chat_server).mentions("A puppy.", ["dog", "orange"]) == (True, False)


@pytest.mark.parametrize(
    "reply", [f"<think>{MF}</think>", f"{MF}\nFixed: {MF[:40]}", '{"caption_objects": []}']
)
def test_mentions_without_a_final_answer_is_an_error(chat_server: Any, reply: str) -> None:
    with pytest.raises(JudgeReplyError):
        parse_mentions(reply, ["dog", "orange"])
    chat_server.answer(reply)
    with pytest.raises(JudgeReplyError):
        make(chat_server).mentions("A puppy.", ["dog", "orange"])


def test_extract_json_without_fields_takes_the_last_object() -> None:
    assert extract_json('{"a": 1} then {"b": {"c": 2}}') == {"b": {"c": 2}}
    assert extract_json('<think>{"a": 1}</think> {"a": 2} {"b": 3}', ("a",)) == {"a": 2}
    with pytest.raises(JudgeReplyError, match="fields a"):
        extract_json('{"b": 1}', ("a",))

"""The llm backend against a loopback OpenAI-compatible stub started by the tests."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from vlmflow import judge
from vlmflow.errors import VlmflowError
from vlmflow.judge.llm import LlmJudge, LlmSettings, extract_json
from vlmflow.judge.protocol import JudgeReplyError

GOOD = {
    "reasoning": "The person is the cyclist; the horses are missing.",
    "reference_objects": ["cyclist", "bike", "horse"],
    "reference_ignored": ["road"],
    "candidate_objects": ["person", "bicycle", "camera"],
    "candidate_ignored": ["sky"],
    "matches": [
        {"reference": "cyclist", "candidate": "person"},
        {"reference": "bike", "candidate": "bicycle"},
    ],
}


def make(server: Any, **overrides: Any) -> LlmJudge:
    settings = {"base_url": server.url, "model": "stub-model", "timeout": 2.0, "backoff": 0.01}
    settings.update(overrides)
    return LlmJudge(**settings)


def test_happy_path_counts_in_code(chat_server: Any) -> None:
    chat_server.answer(GOOD)
    v = make(chat_server, api_key="sk-test").compare("ref text", "cand text")
    assert (v.tp, v.fn, v.fp) == (2, 1, 1)
    assert v.precision == pytest.approx(2 / 3) and v.recall == pytest.approx(2 / 3)
    assert v.missing == ("horse",) and v.hallucinated == ("camera",)
    assert "cyclist" in v.rationale
    assert v.backend == "llm" and v.model == "stub-model"

    body = chat_server.requests[0]
    assert body["model"] == "stub-model" and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system"] + ["user", "assistant"] * 3 + ["user"]  # three examples
    assert "tangible objects that can be interacted with" in body["messages"][0]["content"]
    assert "ref text" in body["messages"][-1]["content"]
    assert chat_server.headers[0]["Authorization"] == "Bearer sk-test"


def test_reply_in_code_fences_with_prose_is_parsed(chat_server: Any) -> None:
    import json

    chat_server.answer("Sure! Here it is:\n```json\n" + json.dumps(GOOD) + "\n```\nDone.")
    assert make(chat_server).compare("a", "b").tp == 2


def test_http_500_then_success_is_retried(chat_server: Any) -> None:
    chat_server.fail(500)
    chat_server.fail(503)
    chat_server.answer(GOOD)
    v = make(chat_server, retries=3).compare("a", "b")
    assert v.tp == 2
    assert len(chat_server.requests) == 3


def test_timeout_is_retried_then_reported(chat_server: Any) -> None:
    chat_server.answer(GOOD, delay=1.0)
    chat_server.answer(GOOD)
    v = make(chat_server, timeout=0.3, retries=1).compare("a", "b")
    assert v.tp == 2  # the slow reply timed out, the retry succeeded

    for _ in range(2):
        chat_server.answer(GOOD, delay=1.0)
    with pytest.raises(VlmflowError) as err:
        make(chat_server, timeout=0.3, retries=1).compare("a", "b")
    message = str(err.value)
    assert "\n" not in message and "VLMFLOW_JUDGE_BASE_URL" in message


@pytest.mark.parametrize(
    "content",
    [
        "I think the precision is 0.5 and the recall is 1.0.",  # prose, no JSON
        '{"reference_objects": ["dog"], "candidate_objects": ["dog"]',  # truncated
        {"reference_objects": ["dog"], "matches": []},  # candidate list missing
        {"reference_objects": ["dog"], "candidate_objects": ["dog"]},  # matches missing
        {"reference_objects": "dog", "candidate_objects": [], "matches": []},  # wrong type
        {
            "reference_objects": ["dog"],
            "candidate_objects": ["cat"],
            "matches": [{"reference": "dog", "candidate": "horse"}],  # unlisted name
        },
    ],
)
def test_malformed_replies_are_errors_not_zeros(chat_server: Any, content: Any) -> None:
    chat_server.answer(content)
    with pytest.raises(JudgeReplyError):
        make(chat_server).compare("a", "b")


def test_malformed_reply_becomes_a_failure_in_a_sweep(chat_server: Any, cache: Any) -> None:
    chat_server.answer(GOOD)
    chat_server.answer("no json at all")
    results = judge.compare_many([("a", "b"), ("c", "d")], make(chat_server), cache=cache)
    assert isinstance(results[0], judge.Verdict)
    assert isinstance(results[1], judge.Failure) and results[1].raw == "no json at all"
    assert len(cache) == 1 and len(cache.failures()) == 1


def test_server_without_json_mode(chat_server: Any) -> None:
    chat_server.fail(400, {"error": {"message": "response_format is not supported"}})
    chat_server.answer(GOOD)
    assert make(chat_server).compare("a", "b").tp == 2
    assert "response_format" not in chat_server.requests[1]


def test_client_errors_are_not_retried(chat_server: Any) -> None:
    chat_server.fail(401, {"error": "bad key"})
    with pytest.raises(VlmflowError, match="VLMFLOW_JUDGE_API_KEY"):
        make(chat_server, api_key="wrong").compare("a", "b")
    assert len(chat_server.requests) == 1


def test_unreachable_endpoint_names_the_setting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    j = LlmJudge(base_url=f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01, timeout=1)
    with pytest.raises(VlmflowError) as err:
        j.compare("a", "b")
    assert "VLMFLOW_JUDGE_BASE_URL" in str(err.value) and "\n" not in str(err.value)


def test_missing_api_key_for_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VlmflowError, match="VLMFLOW_JUDGE_API_KEY"):
        LlmJudge()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert LlmJudge().settings.api_key == "sk-env"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMFLOW_JUDGE_BASE_URL", "http://localhost:8000/v1/")
    monkeypatch.setenv("VLMFLOW_JUDGE_MODEL", "qwen")
    s = LlmSettings.from_env()
    assert s.base_url == "http://localhost:8000/v1" and s.model == "qwen" and not s.needs_key
    assert LlmSettings.from_env(model="llama").model == "llama"


def test_mentions_protocol(chat_server: Any) -> None:
    answers = [
        {"object": "dog", "mentioned": True},
        {"object": "orange", "mentioned": False},
    ]
    chat_server.answer({"caption_objects": ["puppy"], "answers": answers})
    assert make(chat_server).mentions("A puppy.", ["dog", "orange"]) == (True, False)
    chat_server.answer({"caption_objects": [], "answers": answers[:1]})
    with pytest.raises(JudgeReplyError):
        make(chat_server).mentions("A puppy.", ["dog", "orange"])


def test_extract_json_skips_braces_in_prose() -> None:
    assert extract_json('Step {1}: think. {"a": "}"} trailing') == {"a": "}"}


def test_parallel_sweep_keeps_order(chat_server: Any, cache: Any) -> None:
    for _ in range(4):
        chat_server.answer(GOOD)
    pairs = [(f"ref {i}", f"cand {i}") for i in range(4)]
    results = judge.compare_many(pairs, make(chat_server), cache=cache, workers=4)
    assert all(isinstance(r, judge.Verdict) and r.tp == 2 for r in results)
    assert len(cache) == 4


def test_in_context_examples_are_valid_replies() -> None:
    import json

    from vlmflow.judge import prompts
    from vlmflow.judge.llm import parse_mentions, parse_verdict

    j = LlmJudge(base_url="http://127.0.0.1:9/v1")
    counts = []
    for _, _, answer in prompts.EXAMPLES:
        v = parse_verdict(json.dumps(answer), j)
        counts.append((v.tp, v.fn, v.fp))
    assert counts == [(5, 5, 0), (2, 6, 5), (4, 4, 0)]
    _caption, names, answer = prompts.MENTIONS_EXAMPLE
    assert len(parse_mentions(json.dumps(answer), names)) == len(names)

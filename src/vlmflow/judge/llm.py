"""The paper's LLM judge over any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp).

Settings come from arguments, else the environment: `VLMFLOW_JUDGE_BASE_URL` (or
`OPENAI_BASE_URL`, default the OpenAI API), `VLMFLOW_JUDGE_MODEL` (default `gpt-4o`) and
`VLMFLOW_JUDGE_API_KEY` (or `OPENAI_API_KEY`; required only for the OpenAI API itself, local
servers take none). The transport is `vlmflow.chat`, shared with re-prompting: transient failures
(timeouts, refused connections, HTTP 429 / 5xx) are retried with exponential backoff; a reply
that is not the JSON asked for raises `JudgeReplyError`, so a sweep records it as a failure
instead of counting zeros. Replies are read as chat models write them: reasoning sections
(`<think>...</think>`) are skipped, and the answer is the last complete JSON object of the asked
shape, wherever prose, code fences or drafts stand around it (`extract_json`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from vlmflow.chat import (
    OPENAI_BASE_URL,
    RAW_LIMIT,
    ChatClient,
    ChatReplyError,
    ChatSettings,
    Fixes,
    scrub,
)
from vlmflow.errors import VlmflowError
from vlmflow.judge import prompts
from vlmflow.judge.protocol import Backend, JudgeReplyError, Match, Verdict

DEFAULT_BASE_URL = OPENAI_BASE_URL
DEFAULT_MODEL = "gpt-4o"


@dataclass(frozen=True)
class LlmSettings(ChatSettings):
    """The judge's endpoint settings; `from_env` fills them from the judge's environment."""

    model: str = DEFAULT_MODEL

    @classmethod
    def from_env(cls, **overrides: Any) -> LlmSettings:
        """Arguments win over `VLMFLOW_JUDGE_*`, which win over `OPENAI_*`, then defaults."""
        env = os.environ
        values: dict[str, Any] = {
            "base_url": env.get("VLMFLOW_JUDGE_BASE_URL")
            or env.get("OPENAI_BASE_URL")
            or DEFAULT_BASE_URL,
            "model": env.get("VLMFLOW_JUDGE_MODEL") or DEFAULT_MODEL,
            "api_key": env.get("VLMFLOW_JUDGE_API_KEY") or env.get("OPENAI_API_KEY"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        return replace(settings, base_url=settings.base_url.rstrip("/"))


JUDGE_FIXES = Fixes(
    endpoint="judge endpoint",
    url="VLMFLOW_JUDGE_BASE_URL (or --base-url)",
    key="VLMFLOW_JUDGE_API_KEY",
    model="VLMFLOW_JUDGE_MODEL",
)


class LlmJudge(Backend):
    """Object lists and matches from a chat model; counting in code."""

    name = "llm"
    prompt_version = prompts.PROMPT_VERSION

    def __init__(self, settings: LlmSettings | None = None, **overrides: Any) -> None:
        self.settings = settings or LlmSettings.from_env(**overrides)
        if self.settings.needs_key and not self.settings.api_key:
            raise VlmflowError(
                f"no API key for {self.settings.base_url}: set VLMFLOW_JUDGE_API_KEY "
                "(or OPENAI_API_KEY), pass --api-key, or point VLMFLOW_JUDGE_BASE_URL at a "
                "local server"
            )
        self.model = self.settings.model
        self._client = ChatClient(self.settings, JUDGE_FIXES)
        self.last_raw = ""

    # ------------------------------------------------------------------ protocol

    def compare(self, reference: str, candidate: str) -> Verdict:
        raw = self.chat(prompts.compare_messages(reference, candidate))
        try:
            return parse_verdict(raw, self)
        except JudgeReplyError as err:
            raise self._scrubbed(err) from None

    def mentions(self, text: str, objects: Sequence[str]) -> tuple[bool, ...]:
        if not objects:
            return ()
        raw = self.chat(prompts.mentions_messages(text, objects))
        try:
            return parse_mentions(raw, objects)
        except JudgeReplyError as err:
            raise self._scrubbed(err) from None

    def _scrubbed(self, err: JudgeReplyError) -> JudgeReplyError:
        """The error as it may be stored (failures table, report): no credentials in it."""
        key = self.settings.api_key
        return JudgeReplyError(scrub(str(err), key), scrub(err.raw, key, RAW_LIMIT))

    # ------------------------------------------------------------------ transport

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text (`vlmflow.chat`: retries, JSON-mode fallback, errors)."""
        try:
            self.last_raw = self._client.chat(messages)
        except ChatReplyError as err:
            raise JudgeReplyError(str(err), err.raw) from None  # already scrubbed
        return self.last_raw


# Reasoning sections some chat models write before their answer: `<think>...</think>` and the
# like. Their text is never the answer, even when it holds a draft of it.
_REASONING = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|$)", re.DOTALL | re.IGNORECASE)
_REASONING_END = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)
VERDICT_FIELDS = ("reference_objects", "candidate_objects", "matches")
MENTIONS_FIELDS = ("answers",)


def answer_text(raw: str) -> str:
    """The reply without its reasoning sections: `<think>...</think>` blocks are removed, an
    unclosed one runs to the end, and a reply that starts mid-reasoning (its `<think>` was in
    the prompt) keeps only what follows the last closing tag."""
    text = _REASONING.sub("", raw)
    ends = list(_REASONING_END.finditer(text))
    return text[ends[-1].end() :] if ends else text


def json_objects(text: str) -> list[tuple[int, dict[str, Any]]]:
    """Every complete top-level JSON object in `text` as (index of its closing brace, object),
    in order; prose, code fences and unbalanced braces around them are skipped, and objects
    nested in another are not listed apart."""
    found: list[tuple[int, dict[str, Any]]] = []
    start = text.find("{")
    while start != -1:
        end = _object_end(text, start)
        value = None
        if end is not None:
            try:
                value = json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                value = None
        if isinstance(value, dict) and end is not None:
            found.append((end, value))
            start = text.find("{", end + 1)
        else:
            start = text.find("{", start + 1)
    return found


def _object_end(text: str, start: int) -> int | None:
    """Index of the brace closing the one at `start` (strings skipped), None if unclosed."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def extract_json(raw: str, fields: Sequence[str] = ()) -> dict[str, Any]:
    """The reply's final answer: the last complete JSON object outside reasoning sections that
    has every key of `fields` (any object when `fields` is empty), wherever prose, code fences,
    drafts or other objects stand around it. Raises JudgeReplyError when there is none, or when
    a later answer naming those fields is cut off or malformed (the object found is a draft)."""
    text = answer_text(raw)
    objects = [(end, o) for end, o in json_objects(text) if all(f in o for f in fields)]
    if not objects:
        shape = f" with fields {', '.join(fields)}" if fields else ""
        raise JudgeReplyError(f"reply holds no JSON object{shape} after its reasoning", raw[:2000])
    end, answer = objects[-1]
    later = text[end + 1 :]
    later = later[later.find("{") :] if "{" in later else ""
    if any(f in later for f in fields):
        # a later answer was started but is cut off or not JSON: the one found is a draft
        raise JudgeReplyError("the reply's last answer is incomplete or not JSON", raw[:2000])
    return answer


def _names(data: dict[str, Any], key: str, raw: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JudgeReplyError(f"reply field {key!r} missing or not a list of strings", raw[:2000])
    names: list[str] = []
    for v in value:
        v = " ".join(v.strip().split())
        if v and v.lower() not in (n.lower() for n in names):
            names.append(v)
    return names


def parse_verdict(raw: str, judge: Backend) -> Verdict:
    """Validate a compare reply (its final answer: `extract_json`); every match must pair names
    from the two lists, once each. Raises JudgeReplyError otherwise."""
    data = extract_json(raw, VERDICT_FIELDS)
    refs = _names(data, "reference_objects", raw)
    cands = _names(data, "candidate_objects", raw)
    matches_raw = data.get("matches")
    if not isinstance(matches_raw, list):
        raise JudgeReplyError("reply field 'matches' missing or not a list", raw[:2000])
    by_lower_ref = {n.lower(): n for n in refs}
    by_lower_cand = {n.lower(): n for n in cands}
    matches: list[Match] = []
    used_ref: set[str] = set()
    used_cand: set[str] = set()
    for item in matches_raw:
        if isinstance(item, dict):
            ref, cand = item.get("reference"), item.get("candidate")
        elif isinstance(item, list | tuple) and len(item) == 2:
            ref, cand = item
        else:
            raise JudgeReplyError(f"malformed match {item!r}", raw[:2000])
        if not isinstance(ref, str) or not isinstance(cand, str):
            raise JudgeReplyError(f"malformed match {item!r}", raw[:2000])
        r = by_lower_ref.get(" ".join(ref.lower().split()))
        c = by_lower_cand.get(" ".join(cand.lower().split()))
        if r is None or c is None:
            raise JudgeReplyError(f"match {ref!r} / {cand!r} names an unlisted object", raw[:2000])
        if r in used_ref or c in used_cand:
            raise JudgeReplyError(f"match {ref!r} / {cand!r} reuses an object", raw[:2000])
        used_ref.add(r)
        used_cand.add(c)
        matches.append(Match(r, c, 1.0, "judged the same object"))
    reasoning = data.get("reasoning", "")
    return judge.verdict(refs, cands, matches, reasoning if isinstance(reasoning, str) else "")


def parse_mentions(raw: str, objects: Sequence[str]) -> tuple[bool, ...]:
    """Validate a mentions reply (its final answer: `extract_json`): one boolean per asked
    object (matched by name, else order). Raises JudgeReplyError otherwise."""
    data = extract_json(raw, MENTIONS_FIELDS)
    answers = data.get("answers")
    if not isinstance(answers, list) or len(answers) != len(objects):
        raise JudgeReplyError(
            f"reply field 'answers' missing or not {len(objects)} items", raw[:2000]
        )
    by_name: dict[str, bool] = {}
    ordered: list[bool] = []
    for item in answers:
        if not isinstance(item, dict) or not isinstance(item.get("mentioned"), bool):
            raise JudgeReplyError(f"malformed answer {item!r}", raw[:2000])
        ordered.append(item["mentioned"])
        if isinstance(item.get("object"), str):
            by_name[item["object"].strip().lower()] = item["mentioned"]
    return tuple(by_name.get(o.strip().lower(), ordered[i]) for i, o in enumerate(objects))

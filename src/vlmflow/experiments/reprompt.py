"""`reprompt`: the paper's Table 1 on yes/no questions: the scene world's (`--images scenes`)
or MME's (`--images mme:FOLDER`, `vlmflow.sources.mme`).

Rows (settings), each answering every question of an image:
- `naive`: the full image prompt per question (image + question).
- `describe-to-llm`: the model's own description plus the question, text only, to its language
  model (the paper's "Describe-to-LLM"). With `llm_model` set the row is
  `describe-to-llm@<llm_model>` instead: the same text to an OpenAI-compatible chat endpoint
  (`llm_url`, default the OpenAI API; key from the environment variable `llm_api_key_env`).
- `k=<k>`: the compressed context (prefix + query + top-k image tokens per layer, ranked by
  `rank`: `sum` or `max` of the attention from the generated tokens, `vlmflow.compress`).
- `query-only`: the compressed context with no image token (k = 0).
- `k-only=<k>`: the top-k image tokens and the prefix, without the query tokens.
Per question the answer's first word is parsed as yes / no (`vlmflow.scenes.evaluate`); ACC and
ACC+ per category come from summing the stored per-question records over images.

The llm_* options stay out of the run id (the row's name carries the model), so a run can hold
both describe-to-llm rows: run once without `llm_model` and once with it, into the same --out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vlmflow.chat import OPENAI_BASE_URL, ChatClient, ChatSettings, Fixes
from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.errors import VlmflowError
from vlmflow.experiments.protocol import Context, ItemMemo, Result, WorkItem, parse_config
from vlmflow.sources import ImageRef, ImageSource


@dataclass(frozen=True)
class RepromptConfig:
    """`ks`: compressed-context sizes; `k_only`: the size of the query-free row (None: skip).

    `llm_model`: answer the describe-to-llm row with this chat model at `llm_url` instead of the
    VLM's own language model; `llm_api_key_env` names the environment variable with its key
    (never the key itself: the config is stored with the results).
    """

    ks: tuple[float, ...] = (0.05, 0.02)
    rank: str = "sum"
    k_only: float | None = 0.05
    query_only: bool = True
    naive: bool = True
    describe_to_llm: bool = True
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = 64  # of the description
    answer_tokens: int = 4
    llm_model: str | None = None
    llm_url: str | None = None  # an OpenAI-compatible base URL (None: the OpenAI API)
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_timeout: float = 120.0
    llm_retries: int = 3


DESCRIBE = "describe-to-llm"


class Reprompt:
    name = "reprompt"
    needs_model = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        opts = dict(options or {})
        if isinstance(opts.get("ks"), list):
            opts["ks"] = tuple(opts["ks"])
        self.options = parse_config(RepromptConfig, opts, self.name)
        if any(not 0 < k <= 1 for k in self.options.ks):
            raise VlmflowError("reprompt: every k must be in (0, 1], e.g. ks = [0.05, 0.02]")
        from vlmflow.compression.context import RANKINGS

        if self.options.rank not in RANKINGS:
            raise VlmflowError(
                f"reprompt: rank must be one of {', '.join(RANKINGS)}, not {self.options.rank!r}"
            )
        self.config = {k: v for k, v in asdict(self.options).items() if not k.startswith("llm_")}
        self._memo = ItemMemo()
        self._llm = _llm_client(self.options)

    def items(self, source: ImageSource) -> Iterable[WorkItem]:
        refs = source.images()
        if not all(ref.has_questions for ref in refs):
            raise VlmflowError(
                "reprompt needs questions with answers: use --images scenes (or scenes:N) "
                "or mme:FOLDER"
            )
        return [WorkItem(ref.id, {"image": ref}) for ref in refs]

    def settings(self, item: WorkItem) -> Sequence[str]:
        o = self.options
        rows = ["naive"] if o.naive else []
        if o.describe_to_llm:
            rows += [f"{DESCRIBE}@{o.llm_model}" if o.llm_model else DESCRIBE]
        rows += [f"k={k!r}" for k in o.ks]
        rows += ["query-only"] if o.query_only else []
        rows += [f"k-only={o.k_only!r}"] if o.k_only is not None else []
        return rows

    def run(self, handle: Any, item: WorkItem, setting: str, context: Context) -> Result:
        from vlmflow.compression import compress

        ref: ImageRef = item.payload["image"]
        questions = self._memo.get(handle, item, "questions", ref.questions)
        if not questions:
            raise VlmflowError(f"{ref.id} has no questions: give it a question file")
        image = self._memo.get(handle, item, "image", ref.open)
        full = self._memo.get(
            handle,
            item,
            "full",
            lambda: compress(
                handle,
                image,
                k=1.0,
                prompt=self.options.prompt,
                max_new_tokens=self.options.max_new_tokens,
                rank=self.options.rank,
            ),
        )
        records = []
        for question in questions:
            reply, tokens = self._answer(handle, image, full, setting, question.text)
            records.append(_record(question, reply, tokens))
        correct = [r["correct"] for r in records]
        return Result(
            metrics={
                "acc": sum(correct) / len(correct),
                "tokens": sum(r["tokens"] for r in records) / len(records),
                "questions": len(records),
            },
            payload={"questions": records, "description": full.description},
        )

    def _answer(
        self, handle: Any, image: Any, full: Any, setting: str, question: str
    ) -> tuple[str, int]:
        """The reply text and the number of positions the question was answered from."""
        n = self.options.answer_tokens
        if setting == "naive":
            prompt = handle.prepare(image, question)
            ids = handle.generate(prompt, max_new_tokens=n)
            return handle.decode(ids)[0], prompt.layout.length
        if setting == DESCRIBE or setting.startswith(DESCRIBE + "@"):
            text = f"Image description: {full.description}\n{question}"
            prompt = handle.prepare([], text)
            if setting != DESCRIBE:  # counted in the VLM's tokens, like every other row
                assert self._llm is not None
                return self._llm.chat([{"role": "user", "content": text}]), prompt.layout.length
            ids = handle.generate(prompt, max_new_tokens=n)
            return handle.decode(ids)[0], prompt.layout.length
        if setting == "query-only":
            ctx = full.pruned(0.0)
        elif setting.startswith("k-only="):
            ctx = full.pruned(float(setting.split("=", 1)[1]), keep_query=False)
        elif setting.startswith("k="):
            ctx = full.pruned(float(setting.split("=", 1)[1]))
        else:
            raise VlmflowError(f"unknown reprompt setting {setting!r}")
        answer = ctx.ask(question, max_new_tokens=n)
        asked = int(ctx.question_ids(question).shape[1])
        return answer.text, ctx.context_tokens + asked


def _llm_client(o: RepromptConfig) -> ChatClient | None:
    """The external describe-to-llm endpoint, or None when the VLM's own LLM answers."""
    if o.llm_model is None:
        if o.llm_url is not None:
            raise VlmflowError(
                "reprompt: llm_url needs llm_model, the model the endpoint serves "
                '(e.g. llm_model = "gpt-4o-mini")'
            )
        return None
    if not o.describe_to_llm:
        raise VlmflowError(
            "reprompt: llm_model answers the describe-to-llm row: set describe_to_llm = true"
        )
    settings = ChatSettings(
        base_url=(o.llm_url or OPENAI_BASE_URL).rstrip("/"),
        model=o.llm_model,
        api_key=os.environ.get(o.llm_api_key_env) or None,
        timeout=o.llm_timeout,
        retries=o.llm_retries,
        json_mode=False,
        max_tokens=o.answer_tokens,
    )
    if settings.needs_key and not settings.api_key:
        raise VlmflowError(
            f"reprompt: no API key for {settings.base_url}: set {o.llm_api_key_env} (or name "
            "another variable in llm_api_key_env), or point llm_url at a local server"
        )
    fixes = Fixes(
        endpoint="describe-to-llm endpoint",
        url="llm_url in the reprompt config",
        key=f"{o.llm_api_key_env} (llm_api_key_env)",
        model="llm_model in the reprompt config",
    )
    return ChatClient(settings, fixes)


def _record(question: Any, reply: str, tokens: int) -> dict[str, Any]:
    from vlmflow.scenes.evaluate import parse_yes_no

    parsed = parse_yes_no(reply)
    return {
        "text": question.text,
        "category": question.category,
        "answer": question.answer,
        "reply": reply,
        "parsed": parsed,
        "correct": parsed == question.answer,
        "tokens": tokens,
    }


def table(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per setting: ACC and ACC+ per category and on average, and tokens per re-prompt.

    `rows` are (setting, payload) pairs of stored results, one per image and setting.
    """
    acc: dict[str, dict[str, list[bool]]] = {}
    plus: dict[str, dict[str, list[bool]]] = {}
    tokens: dict[str, list[int]] = {}
    for setting, payload in rows:
        by_category: dict[str, list[bool]] = {}
        for q in payload["questions"]:
            by_category.setdefault(q["category"], []).append(bool(q["correct"]))
            tokens.setdefault(setting, []).append(int(q["tokens"]))
        for category, marks in by_category.items():
            acc.setdefault(setting, {}).setdefault(category, []).extend(marks)
            plus.setdefault(setting, {}).setdefault(category, []).append(all(marks))
    out: dict[str, dict[str, float]] = {}
    for setting in acc:
        cells: dict[str, float] = {}
        for category, marks in acc[setting].items():
            cells[f"acc.{category}"] = 100 * sum(marks) / len(marks)
            pairs = plus[setting][category]
            cells[f"acc+.{category}"] = 100 * sum(pairs) / len(pairs)
        categories = list(acc[setting])
        cells["acc"] = sum(cells[f"acc.{c}"] for c in categories) / len(categories)
        cells["acc+"] = sum(cells[f"acc+.{c}"] for c in categories) / len(categories)
        cells["tokens"] = sum(tokens[setting]) / len(tokens[setting])
        out[setting] = cells
    return out


__all__ = ["Reprompt", "RepromptConfig", "table"]

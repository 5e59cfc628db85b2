"""One client for OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, llama.cpp).

The LLM judge and the re-prompting table's external describe-to-LLM row share it, so both
retry, fall back and fail the same way: transient failures (timeouts, refused connections, HTTP
429 / 5xx) are retried with exponential backoff; other HTTP errors and an endpoint still
unreachable after the retries raise a one-line `VlmflowError` naming the setting to fix (each
caller names its own); a reply without a message raises `ChatReplyError`. Plain urllib: no
HTTP dependency.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from vlmflow.errors import VlmflowError

OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ChatSettings:
    """Where and how to ask: endpoint, model, key, and the patience for a slow or flaky server."""

    base_url: str = OPENAI_BASE_URL
    model: str = ""
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    json_mode: bool = True  # ask for response_format=json_object (dropped if the server refuses)
    max_tokens: int = 1024

    @property
    def needs_key(self) -> bool:
        return urlparse(self.base_url).hostname == "api.openai.com"


@dataclass(frozen=True)
class Fixes:
    """How errors name what to fix, in the caller's own words (env variable, flag, option)."""

    endpoint: str  # what the endpoint is, e.g. "judge endpoint"
    url: str  # the setting that picks the endpoint
    key: str  # the setting that gives the API key
    model: str  # the setting that names the model


class ChatReplyError(VlmflowError):
    """The endpoint answered, but with no usable message; `raw` keeps what it sent."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class ChatClient:
    """POSTs chat completions; one instance per endpoint (it remembers a refused JSON mode)."""

    def __init__(self, settings: ChatSettings, fixes: Fixes) -> None:
        self.settings = settings
        self.fixes = fixes
        self.json_mode = settings.json_mode

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text; retries transient failures with exponential backoff."""
        s, fixes = self.settings, self.fixes
        url = f"{s.base_url}/chat/completions"
        last_error = ""
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(s.backoff * 2 ** (attempt - 1))
            body: dict[str, Any] = {
                "model": s.model,
                "messages": messages,
                "temperature": 0,
                "max_tokens": s.max_tokens,
            }
            if self.json_mode:
                body["response_format"] = {"type": "json_object"}
            try:
                reply = self._post(url, body)
            except urllib.error.HTTPError as err:
                detail = _read_error(err)
                if err.code == 400 and self.json_mode and "response_format" in detail:
                    self.json_mode = False  # the server has no JSON mode: ask in words only
                    continue
                if err.code == 429 or err.code >= 500:
                    last_error = f"HTTP {err.code} {detail[:200]}"
                    continue
                hint = f" (check {fixes.key})" if err.code in (401, 403) else ""
                hint = hint or (f" (check {fixes.model})" if err.code == 404 else "")
                raise VlmflowError(
                    f"{fixes.endpoint} {url} answered HTTP {err.code}: {detail[:200]}{hint}"
                ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                reason = getattr(err, "reason", err)
                last_error = f"{type(reason).__name__}: {reason}"
                continue
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raw = json.dumps(reply)[:2000]
                raise ChatReplyError("reply has no choices[0].message.content", raw) from None
            return content if isinstance(content, str) else json.dumps(content)
        raise VlmflowError(
            f"cannot reach {fixes.endpoint} {url} after {s.retries + 1} attempts ({last_error}); "
            f"check {fixes.url} and that the server is running"
        )

    def _post(self, url: str, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
            data = response.read()
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raw = data[:2000].decode("utf-8", "replace")
            raise ChatReplyError("endpoint answered non-JSON", raw) from None


def _read_error(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", "replace").strip().replace("\n", " ")
    except Exception:
        return str(err.reason)


__all__ = ["OPENAI_BASE_URL", "ChatClient", "ChatReplyError", "ChatSettings", "Fixes"]

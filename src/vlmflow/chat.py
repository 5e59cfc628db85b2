"""One client for OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, llama.cpp).

The LLM judge and the re-prompting table's external describe-to-LLM row share it, so both
retry, fall back and fail the same way: transient failures (timeouts, refused connections, HTTP
429 / 5xx) are retried with exponential backoff; other HTTP errors and an endpoint still
unreachable after the retries raise a one-line `VlmflowError` naming the setting to fix (each
caller names its own); a reply without a message raises `ChatReplyError`. Plain urllib: no
HTTP dependency.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
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
    """POSTs chat completions; one instance per endpoint (it remembers a refused JSON mode).

    Raises VlmflowError at construction for a URL that is not http(s), a timeout that is not a
    positive number of seconds, or negative retries.
    """

    def __init__(self, settings: ChatSettings, fixes: Fixes) -> None:
        from vlmflow.validate import positive_seconds, whole_number

        parsed = urlparse(settings.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise VlmflowError(
                f"{fixes.endpoint} URL {scrub(settings.base_url, settings.api_key)!r} is not an "
                f"http(s) URL: set {fixes.url} to e.g. http://localhost:8000/v1"
            )
        positive_seconds(settings.timeout, f"{fixes.endpoint} timeout")
        whole_number(settings.retries, f"{fixes.endpoint} retries", minimum=0, maximum=100)
        if not 0 <= settings.backoff < 3600:
            raise VlmflowError(f"{fixes.endpoint} backoff {settings.backoff}: give 0-3600 s")
        self.settings = settings
        self.fixes = fixes
        self.json_mode = settings.json_mode

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text; retries transient failures with exponential backoff.

        Each attempt has a wall-clock deadline of `settings.timeout` seconds for the whole
        exchange (connect, headers, body), so a server that trickles bytes cannot hold it
        longer. Every transport failure (refused, reset, timed out, not HTTP, a truncated body)
        and HTTP 429 / 5xx are retried alike. Server text in errors is cut to 200 characters
        and scrubbed of credentials (`scrub`).
        """
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
            except _HttpStatus as err:
                detail = scrub(err.detail, s.api_key)
                if err.code == 400 and self.json_mode and "response_format" in err.detail:
                    self.json_mode = False  # the server has no JSON mode: ask in words only
                    continue
                if err.code == 429 or err.code >= 500:
                    last_error = f"HTTP {err.code} {detail}"
                    continue
                hint = f" (check {fixes.key})" if err.code in (401, 403) else ""
                hint = hint or (f" (check {fixes.model})" if err.code == 404 else "")
                raise VlmflowError(
                    f"{fixes.endpoint} {url} answered HTTP {err.code}: {detail}{hint}"
                ) from None
            except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets
                reason = getattr(err, "reason", err)
                last_error = scrub(f"{type(reason).__name__}: {reason}", s.api_key)
                continue
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raw = scrub(json.dumps(reply), s.api_key, RAW_LIMIT)
                raise ChatReplyError("reply has no choices[0].message.content", raw) from None
            return content if isinstance(content, str) else json.dumps(content)
        raise VlmflowError(
            f"cannot reach {fixes.endpoint} {url} after {s.retries + 1} attempts ({last_error}); "
            f"check {fixes.url} and that the server is running"
        )

    def _post(self, url: str, body: dict[str, Any]) -> Any:
        """One exchange within the deadline: the reply's JSON. Raises _HttpStatus for an HTTP
        error status, TimeoutError past the deadline, OSError / HTTPException for transport
        failures, ChatReplyError for a body that is not JSON."""
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        timeout = self.settings.timeout
        connections: list[http.client.HTTPConnection] = []
        outcome: dict[str, Any] = {}

        def exchange() -> None:
            opener = urllib.request.build_opener(_Http(connections), _Https(connections))
            try:
                with opener.open(request, timeout=timeout) as response:
                    outcome["data"] = response.read()
            except urllib.error.HTTPError as err:
                outcome["error"] = _HttpStatus(err.code, _read_error(err))
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        worker = threading.Thread(target=exchange, name="vlmflow-chat", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            for conn in connections:  # unblock the worker: its socket reads fail at once
                with contextlib.suppress(OSError):
                    if conn.sock is not None:
                        conn.sock.shutdown(socket.SHUT_RDWR)
                conn.close()
            worker.join(1.0)
            raise TimeoutError(f"no complete reply within {timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]
        data = outcome["data"]
        if not data.strip():  # the connection ended before any body: a transport failure
            raise ConnectionError("the server closed the connection without a reply body")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raw = scrub(data[:RAW_LIMIT].decode("utf-8", "replace"), self.settings.api_key)
            raise ChatReplyError("endpoint answered non-JSON", raw) from None


class _HttpStatus(Exception):
    """An HTTP error status with the body's text (read in the worker, within the deadline)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def _tracked(factory: Any, connections: list[Any]) -> Any:
    def connect(host: str, **kwargs: Any) -> Any:
        conn = factory(host, **kwargs)
        connections.append(conn)
        return conn

    return connect


class _Http(urllib.request.HTTPHandler):
    """urllib's handler, recording its connection so a passed deadline can close it."""

    def __init__(self, connections: list[Any]) -> None:
        super().__init__()
        self.connections = connections

    def http_open(self, req: Any) -> Any:
        return self.do_open(_tracked(http.client.HTTPConnection, self.connections), req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, connections: list[Any]) -> None:
        super().__init__()
        self.connections = connections

    def https_open(self, req: Any) -> Any:
        factory = _tracked(http.client.HTTPSConnection, self.connections)
        return self.do_open(factory, req, context=self._context)  # type: ignore[attr-defined]


def _read_error(err: urllib.error.HTTPError) -> str:
    try:
        return err.read(4096).decode("utf-8", "replace").strip().replace("\n", " ")
    except Exception:
        return str(err.reason)


# Credentials as servers echo them: an Authorization header, a bearer token, an OpenAI-style
# key, a key=value pair.
_SECRETS = re.compile(
    r"(authorization[\"']?\s*[:=]\s*[\"']?)[^\"',}\s]+(\s+[^\"',}\s]+)?"
    r"|bearer\s+[^\s\"',}]+"
    r"|\bsk-[A-Za-z0-9_\-]{6,}"
    r"|((?:api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?)[^\"',}\s&]+",
    re.IGNORECASE,
)
DETAIL_LIMIT = 200  # characters of server text kept in a message
RAW_LIMIT = 2000  # characters of a malformed reply kept for inspection


def scrub(text: str, api_key: str | None = None, limit: int = DETAIL_LIMIT) -> str:
    """`text` as it may be shown or stored: the API key and anything that looks like a
    credential replaced by `***`, at most `limit` characters (cut with `...`). Text for a
    message (`limit` <= DETAIL_LIMIT) becomes one line: control characters and newlines as
    spaces."""
    if api_key:
        text = text.replace(api_key, "***")
    text = _SECRETS.sub(_mask, text)
    if limit <= DETAIL_LIMIT:
        text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(3)
    return f"{prefix}***" if prefix else "***"


__all__ = ["OPENAI_BASE_URL", "ChatClient", "ChatReplyError", "ChatSettings", "Fixes", "scrub"]

"""The chat transport against misbehaving loopback servers: a wall-clock deadline per call,
every transport failure retried alike, settings validated, server text scrubbed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vlmflow import judge
from vlmflow.errors import VlmflowError
from vlmflow.judge.llm import LlmJudge

KEY = "sk-secret-abcdef123456"


class RawServer:
    """A TCP server answering each connection with `behave(conn, request_bytes)`."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.behave = behave
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            _read_request(conn)
            self.behave(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(4096)
    return head


GOOD = json.dumps(
    {
        "choices": [
            {
                "message": {
                    "content": json.dumps(
                        {
                            "reference_objects": ["dog"],
                            "candidate_objects": ["dog"],
                            "matches": [["dog", "dog"]],
                        }
                    )
                }
            }
        ]
    }
).encode()


def _http(status: str, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    return head.encode() + body


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(behave: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(behave))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _judge(url: str, **overrides: Any) -> LlmJudge:
    settings: dict[str, Any] = {"base_url": url, "model": "m", "timeout": 3.0, "retries": 0}
    settings.update({"backoff": 0.01, **overrides})
    return LlmJudge(**settings)


def test_a_trickling_server_ends_at_the_deadline(raw_server: Any) -> None:
    def trickle(conn: socket.socket) -> None:
        for byte in _http("200 OK", GOOD):
            conn.sendall(bytes([byte]))
            time.sleep(1.0)

    server = raw_server(trickle)
    start = time.monotonic()
    with pytest.raises(VlmflowError) as err:
        _judge(server.url, timeout=3, retries=0).compare("a", "b")
    elapsed = time.monotonic() - start
    assert 2.5 < elapsed < 5.0  # about the 3 s asked for, not one second per byte forever
    message = str(err.value)
    assert "\n" not in message and "TimeoutError" in message and "VLMFLOW_JUDGE_BASE_URL" in message


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP at all
        b"",  # closes without a word
        _http("200 OK", GOOD[:40], length=len(GOOD)),  # body cut short
        b"HTTP/1.1 200 OK\r\nContent-Len",  # headers cut short
    ],
    ids=["non-http", "empty", "truncated-body", "truncated-headers"],
)
def test_transport_failures_are_retried_then_one_line(raw_server: Any, reply: bytes) -> None:
    answers = [reply, _http("200 OK", GOOD)]

    def behave(conn: socket.socket) -> None:
        conn.sendall(answers.pop(0) if answers else reply)

    server = raw_server(behave)
    verdict = _judge(server.url, retries=1).compare("a", "b")  # the retry gets the good reply
    assert verdict.tp == 1 and server.connections == 2

    failing = raw_server(lambda conn: conn.sendall(reply))
    with pytest.raises(VlmflowError) as err:
        _judge(failing.url, retries=2).compare("a", "b")
    assert failing.connections == 3 and "\n" not in str(err.value)
    assert "after 3 attempts" in str(err.value)


def test_server_error_text_is_truncated_and_scrubbed(raw_server: Any, cache: Any) -> None:
    echo = (
        '{"error": "bad request", "headers": {"Authorization": "Bearer ' + KEY + '"}, '
        '"api_key": "' + KEY + '", "detail": "' + "x" * 5000 + '"}'
    ).encode()
    server = raw_server(lambda conn: conn.sendall(_http("400 Bad Request", echo)))
    with pytest.raises(VlmflowError) as err:
        _judge(server.url, api_key=KEY, json_mode=False).compare("a", "b")
    message = str(err.value)
    assert KEY not in message and "sk-secret" not in message and "***" in message
    assert len(message) < 400 and "\n" not in message

    reply = {"choices": [{"message": {"content": f"no json, but here is your key {KEY}"}}]}
    body = json.dumps(reply).encode()
    stored = raw_server(lambda conn: conn.sendall(_http("200 OK", body)))
    [failure] = judge.compare_many([("a", "b")], _judge(stored.url, api_key=KEY), cache=cache)
    assert isinstance(failure, judge.Failure)
    assert KEY not in failure.raw and KEY not in failure.error
    assert all(KEY not in f["raw"] and KEY not in f["error"] for f in cache.failures())


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"base_url": "localhost:8000/v1"}, "http(s) URL"),
        ({"base_url": "ftp://example.org/v1"}, "http(s) URL"),
        ({"base_url": "http:///v1"}, "http(s) URL"),
        ({"timeout": -1}, "seconds > 0"),
        ({"timeout": 0}, "seconds > 0"),
        ({"timeout": float("nan")}, "seconds > 0"),
        ({"timeout": float("inf")}, "seconds > 0"),
        ({"retries": -1}, "whole number"),
        ({"retries": 1.5}, "whole number"),
        ({"retries": True}, "whole number"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_settings_are_validated(overrides: dict[str, Any], needle: str) -> None:
    settings: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **overrides}
    with pytest.raises(VlmflowError) as err:
        LlmJudge(**settings)
    assert needle in str(err.value) and "\n" not in str(err.value)

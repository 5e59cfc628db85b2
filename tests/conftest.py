"""Shared fixtures: tiny random checkpoints of every family (built once per test run), test
images, and a loopback OpenAI-compatible chat server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_script() -> Callable[[str], ModuleType]:
    """Imports `scripts/<name>.py` of the repository as a module (scripts are not a package)."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family -> folder of a tiny random checkpoint (built on first use)."""
    from vlmflow.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def photo() -> object:
    """A deterministic non-square RGB test image (wider than tall, so tiling kicks in)."""
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(90, 130, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def photo2() -> object:
    from PIL import Image

    rng = np.random.RandomState(1)
    return Image.fromarray((rng.rand(120, 70, 3) * 255).astype("uint8"))


@dataclass
class Reply:
    """One canned answer: HTTP status, body (dict -> JSON, str -> as is) and a delay."""

    status: int = 200
    body: Any = None
    delay: float = 0.0


@dataclass
class ChatServer:
    """A loopback OpenAI-compatible stub: answers requests from a queue, records them."""

    url: str
    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def answer(self, content: Any, delay: float = 0.0) -> None:
        """Queue a chat completion whose message content is `content` (dicts become JSON)."""
        text = content if isinstance(content, str) else json.dumps(content)
        message = {"role": "assistant", "content": text}
        body = {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
        self.replies.append(Reply(200, body, delay))

    def fail(self, status: int, body: Any = None, delay: float = 0.0) -> None:
        """Queue an HTTP error (or any raw body with a status)."""
        self.replies.append(Reply(status, body if body is not None else {"error": "boom"}, delay))


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    state = ChatServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            state.requests.append(json.loads(self.rfile.read(length)))
            state.headers.append(dict(self.headers))
            reply = state.replies.pop(0) if state.replies else Reply(500, {"error": "no reply"})
            if reply.delay:
                time.sleep(reply.delay)
            body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            data = body.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()

"""A session's refusal of a generate() call, checked the same way under every session kind."""

from __future__ import annotations

from typing import Any

import pytest

import vlmflow


def refused_in_one_line(
    handle: vlmflow.Handle,
    prompt: vlmflow.Prompt,
    sessions: list[dict[str, Any]],
    match: str,
    **generate: Any,
) -> list[str]:
    """For each session's keywords (knockout=, capture=, or none), `s.generate(**generate)`
    raises a VlmflowError matching `match` whose message is one line; returns the messages."""
    messages = []
    for kwargs in sessions:
        with (
            vlmflow.session(handle, prompt, **kwargs) as s,
            pytest.raises(vlmflow.VlmflowError, match=match) as err,
        ):
            s.generate(**generate)
        assert "\n" not in str(err.value)
        messages.append(str(err.value))
    return messages

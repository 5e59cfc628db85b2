"""generate() runs the attention tests share: ids with logits, and a session's refusal."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmflow


def generated_with_logits(
    model: Any, prompt: vlmflow.Prompt, new: int, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.generate` of exactly `new` tokens on `prompt` (seed 0; `kwargs` pass through):
    the new ids (rows, new) and the per-step logits (new, rows, vocab)."""
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(
            **prompt.inputs,
            max_new_tokens=new,
            min_new_tokens=new,
            return_dict_in_generate=True,
            output_logits=True,
            **kwargs,
        )
    return out.sequences[:, prompt.layout.length :], torch.stack(out.logits)


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

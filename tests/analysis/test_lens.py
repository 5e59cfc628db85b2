"""The logit lens over image tokens, on every tiny family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import vlmflow
from vlmflow.analysis.lens import hidden_states, lens_prompt, read_out
from vlmflow.models.tiny import TINY_FAMILIES


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lens_at_the_last_layer_is_the_models_own_logits(
    tiny_path: Callable[[str], Path], photo: Any, family: str
) -> None:
    handle = vlmflow.load(str(tiny_path(family)))
    prompt = handle.prepare(photo, "Describe the image.")
    # mllama's image has no patch tokens in the prompt: read its <|image|> position
    positions = prompt.layout.patch_positions(0) or prompt.layout.image_positions(0)
    last = handle.num_layers - 1
    mine = read_out(handle, hidden_states(handle, prompt, [last], positions)[0])  # (p, V)
    with torch.inference_mode():
        own = handle.model(**prompt.inputs).logits[0, positions].float()  # (p, V)
    # the same norm and unembedding on the same states; the product over p rows instead of all
    # n may be blocked differently by the matrix library: equal up to float32 rounding
    torch.testing.assert_close(mine, own, atol=1e-5, rtol=1e-5)
    seen = lens_prompt(handle, prompt, top_k=3, positions=positions)
    assert seen.layers == tuple(range(handle.num_layers))
    assert seen.ids.shape == (handle.num_layers, len(positions), 3)
    assert torch.equal(seen.ids[-1, :, 0], own.argmax(dim=-1))
    # earlier layers read differently: the lens is not the last layer repeated
    assert not torch.equal(seen.ids[0], seen.ids[-1])
    tokenizer = handle.processor.tokenizer
    assert seen.words[-1][0][0] == tokenizer.decode([int(seen.ids[-1, 0, 0])])

"""`scripts/position_margins.py`: its batched, left-padded margins are the ones each question
gets alone, so a flat row means the model, not the padding, ignores the asked cell."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch

from vlmflow.scenes.fixed import fixed_set
from vlmflow.scenes.layout import POSITIONS
from vlmflow.scenes.questions import position_text


def test_batched_margins_equal_single_questions(
    loaded: tuple[Any, Any], repo_script: Callable[[str], ModuleType]
) -> None:
    processor, model = loaded
    scene = next(s for s in fixed_set() if len(s.objects) == 1)
    name = scene.objects[0].name
    script = repo_script("position_margins")
    row = script.margins(processor, model, scene, name)
    assert len(row) == len(POSITIONS)
    tokenizer = processor.tokenizer
    yes, no = (tokenizer.convert_tokens_to_ids(w) for w in ("Yes", "No"))
    for index in (0, 4, 8):  # the longest and shortest cell names among them
        text = script.prompt(processor, position_text(name, POSITIONS[index]))
        inputs = processor(images=[scene.image], text=[text], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        alone = float(logits[yes] - logits[no])
        assert row[index] == pytest.approx(alone, abs=2e-3)

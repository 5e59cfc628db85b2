"""Answer tracing on tiny models: blocked windows, empty windows, batched vs one by one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import vlmflow
from vlmflow.analysis import CONTROL_PAIRS, DEFAULT_PAIRS
from vlmflow.analysis.trace import PAIRS, default_window, mark_last, trace
from vlmflow.attention.layers import Layers
from vlmflow.errors import VlmflowError
from vlmflow.roles import Role

QUESTION = "Is there a cat in the image?"


@pytest.fixture(scope="module")
def llava(tiny_path: Callable[[str], Path]) -> Any:
    return vlmflow.load(str(tiny_path("llava")))


def test_default_window_is_nine_percent_of_the_layers() -> None:
    assert [default_window(n) for n in (4, 30, 32, 80)] == [1, 3, 3, 7]


def test_window_over_layers_where_the_image_gets_no_attention_changes_nothing(
    llava: Any, photo: Any
) -> None:
    # a standing knockout already cuts the image off from the question and the last position
    # at layers 0-1, so windows inside those layers block nothing more
    standing = vlmflow.Knockout.parse("image->query+generated", "only:0-1")
    t = trace(llava, photo, QUESTION, window=2, knockout=standing)
    assert t.starts == (0, 1, 2)
    for pair in ("image->last", "image->question"):
        assert t.change[pair][0] == pytest.approx(0.0, abs=1e-5)
    # the same window over layers 2-3, where the image is still read, does change it
    assert abs(t.change["image->last"][2]) > 1e-3


def test_empty_window_equals_the_plain_answer_probability(llava: Any, photo: Any) -> None:
    t = trace(llava, photo, QUESTION, window=0, pairs=tuple(PAIRS))
    assert set(t.probabilities) == set(PAIRS)
    prompt = llava.prepare(photo, QUESTION)
    with torch.inference_mode():
        plain = llava.model(**prompt.inputs).logits[0, -1].float().softmax(-1)  # (V,)
    assert t.answer[0] == int(plain.argmax())
    assert t.probability == pytest.approx(float(plain[t.answer[0]]), rel=1e-5)
    for pair in PAIRS:
        assert len(t.probabilities[pair]) == llava.num_layers
        assert max(abs(c) for c in t.change[pair]) < 1e-5


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_batched_equals_one_by_one(
    tiny_path: Callable[[str], Path], photo: Any, family: str
) -> None:
    handle = vlmflow.load(str(tiny_path(family)))
    pairs = tuple(PAIRS)  # the control too
    batched = trace(handle, photo, QUESTION, window=1, pairs=pairs, answer_tokens=2, batch=16)
    single = trace(handle, photo, QUESTION, window=1, pairs=pairs, answer_tokens=2, batch=1)
    assert batched.answer == single.answer and len(batched.answer) == 2
    assert batched.probability == pytest.approx(single.probability, rel=1e-5)
    for pair in PAIRS:
        assert batched.probabilities[pair] == pytest.approx(single.probabilities[pair], rel=1e-4)
    # every pair moves the answer somewhere: the curves measure something
    assert all(max(abs(c) for c in batched.change[p]) > 1e-3 for p in PAIRS)


def test_default_pairs_are_the_flows_and_the_control_is_asked_for(llava: Any, photo: Any) -> None:
    assert DEFAULT_PAIRS == ("image->last", "image->question", "question->last")
    assert set(DEFAULT_PAIRS) | set(CONTROL_PAIRS) == set(PAIRS)
    assert PAIRS["last->last"] == (Role.GENERATED, Role.GENERATED)
    t = trace(llava, photo, QUESTION, window=1)
    assert tuple(t.probabilities) == DEFAULT_PAIRS


def test_control_equals_a_one_by_one_knockout(llava: Any, photo: Any) -> None:
    # last->last at window [s, s + 1]: the last prompt position gets no attention to itself
    t = trace(llava, photo, QUESTION, window=2, pairs=["last->last"])
    assert tuple(t.probabilities) == ("last->last",) and t.starts == (0, 1, 2)
    marked = mark_last(llava.prepare(photo, QUESTION))
    last = frozenset({Role.GENERATED})
    for s, p in zip(t.starts, t.probabilities["last->last"], strict=True):
        knockout = vlmflow.Knockout(last, last, Layers(f"only:{s}-{s + 1}"))
        with vlmflow.session(llava, marked, knockout=[knockout]), torch.inference_mode():
            logits = llava.model(**marked.inputs).logits[0, -1].float()  # (V,)
        assert p == pytest.approx(float(logits.softmax(-1)[t.answer[0]]), rel=1e-4)
    # the control moves the answer: the one-by-one check compares something
    assert max(abs(c) for c in t.change["last->last"]) > 1e-3


def test_bad_options_are_refused(llava: Any, photo: Any) -> None:
    with pytest.raises(VlmflowError, match="unknown trace pair"):
        trace(llava, photo, QUESTION, pairs=["image->prefix"])
    with pytest.raises(VlmflowError, match="repeat a pair"):
        trace(llava, photo, QUESTION, pairs=["last->last", "last->last"])
    with pytest.raises(VlmflowError, match="trace window 9"):
        trace(llava, photo, QUESTION, window=9)
    with pytest.raises(VlmflowError, match="answer_tokens=0"):
        trace(llava, photo, QUESTION, answer_tokens=0)

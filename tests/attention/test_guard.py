"""The guard: a session refuses layers that vlmflow's attention function does not reach exactly,
before anything runs, naming the layers and the reason (never a silent partial knockout)."""

from __future__ import annotations

import re

import pytest
import torch

import vlmflow
from vlmflow.attention import guard
from vlmflow.attention.layers import spans
from vlmflow.errors import VlmflowError
from vlmflow.models.tiny import TINY_FAMILIES

NEW = 4


class OwnMixer(torch.nn.Module):
    """A token mixer that never calls transformers' attention interface (as linear attention,
    state-space or convolution layers do): here it adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.get_decoder().layers)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_layer_of_the_supported_families_is_reached(family, tiny_path, photo):
    handle = vlmflow.load(str(tiny_path(family)))
    found = guard.coverage(handle, handle.prepare(photo))
    assert found.calls == dict.fromkeys(range(handle.num_layers), "")
    assert found.problems(range(handle.num_layers)) == {}


@pytest.fixture
def mixed(tiny_path, photo):
    """A tiny LLaVA whose decoder layer 1 mixes tokens without the attention function."""
    handle = vlmflow.load(str(tiny_path("llava")))
    _decoder_layers(handle.model)[1].self_attn = OwnMixer()
    return handle, handle.prepare(photo)


def test_a_layer_that_skips_the_attention_function_is_refused(mixed):
    handle, prompt = mixed
    last = handle.num_layers - 1
    calls: list[int] = []
    hook = handle.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(1), with_kwargs=True
    )
    try:
        for knock in ("all", "from:1", "only:1"):
            ko = vlmflow.Knockout.parse("image->query", knock)
            with pytest.raises(VlmflowError) as err, vlmflow.session(handle, prompt, ko):
                pass
            message = str(err.value)
            assert "\n" not in message
            assert "layers 1: never calls the attention function" in message
            assert f"choose among layers 0, 2-{last}" in message
        refused = pytest.raises(VlmflowError, match="capture cannot act exactly on layers 1")
        with refused, vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()):
            pass
    finally:
        hook.remove()
    assert len(calls) == 1  # the probe ran once for the model, and no generation ran


def test_layers_the_function_reaches_still_run(mixed):
    handle, prompt = mixed
    knock = vlmflow.Knockout.parse("image->generated", "except:1-1")
    capture = vlmflow.Capture.of(layers="except:1-1", image_layers="only:0")
    with vlmflow.session(handle, prompt, knock, capture=capture) as s:
        ids = s.generate(max_new_tokens=NEW)
    assert ids.shape == (1, NEW)
    assert s.capture.fractions.shape[:2] == (NEW, handle.num_layers)


def test_sliding_window_layers_are_refused_before_generation(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("qwen2_vl")))
    prompt = handle.prepare(photo)
    _decoder_layers(handle.model)[0].self_attn.sliding_window = 4
    everywhere = vlmflow.Knockout.parse("image->query", "all")
    refused = pytest.raises(VlmflowError, match="layers 0: sliding-window attention")
    with refused, vlmflow.session(handle, prompt, everywhere):
        pass
    with vlmflow.session(handle, prompt, vlmflow.Knockout.parse("image->query", "from:1")) as s:
        assert s.generate(max_new_tokens=NEW).shape == (1, NEW)


def test_spans():
    assert spans([5, 0, 1, 2]) == "0-2, 5"
    assert spans([]) == "none"
    assert spans([3]) == "3"


def test_soft_capped_and_wide_window_layers_are_accepted(tiny_path, photo):
    """PaliGemma 2: every layer soft-caps its scores (computed exactly) and every other layer
    has a sliding window wider than the sequence (it drops nothing): all layers allowed."""
    handle = vlmflow.load(str(tiny_path("paligemma2")))
    prompt = handle.prepare(photo)
    found = guard.coverage(handle, prompt)
    sliding = sorted(found.windows)
    assert sliding and len(sliding) < handle.num_layers  # every other layer
    assert found.problems(range(handle.num_layers), prompt.layout.length) == {}
    assert found.problems(sliding, max(found.windows.values()) + 1) == dict.fromkeys(
        sliding, "sliding-window attention (window 1024 < 1025 keys: its cache drops key positions)"
    )
    ko = vlmflow.Knockout.parse("image->query+generated", "all")
    with vlmflow.session(handle, prompt, ko, capture=vlmflow.Capture.of()) as s:
        assert s.generate(max_new_tokens=NEW).shape == (1, NEW)
    assert bool((s.capture.role_fraction("image") == 0).all())


def test_a_window_the_generation_outgrows_is_refused_at_that_step(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("paligemma2")))
    prompt = handle.prepare(photo)
    n = prompt.layout.length
    layers = _decoder_layers(handle.model)
    sliding = [i for i, m in enumerate(layers) if m.self_attn.sliding_window]
    for layer in sliding:
        layers[layer].self_attn.sliding_window = n + 1
    ko = vlmflow.Knockout.parse("image->generated", "all")
    # the prompt fits: accepted before generation; the third key past it does not
    with vlmflow.session(handle, prompt, ko) as s:
        with pytest.raises(VlmflowError, match=f"layer {sliding[0]} uses sliding-window"):
            s.generate(max_new_tokens=NEW)
        assert s.generate(max_new_tokens=1).shape == (1, 1)  # n + 1 keys at most: exact
    # a window the prompt itself outgrows: refused before generation, naming the layers
    fresh = vlmflow.load(str(tiny_path("paligemma2")))
    for layer in sliding:
        _decoder_layers(fresh.model)[layer].self_attn.sliding_window = n - 1
    told = f"layers {spans(sliding)}: sliding-window attention (window {n - 1} < {n} keys"
    with pytest.raises(VlmflowError, match=re.escape(told)), vlmflow.session(fresh, prompt, ko):
        pass

"""The guard: a session refuses layers that vlmflow's attention function does not reach exactly,
before anything runs, naming the layers and the reason (never a silent partial knockout)."""

from __future__ import annotations

import copy

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


def test_chunked_layers_are_refused_and_sliding_ones_run(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("gemma3")))
    prompt = handle.prepare(photo)
    types = handle.model.config.get_text_config().layer_types
    assert types[0] == "sliding_attention"  # sliding-window layers pass the probe
    assert guard.coverage(handle, prompt).problems(range(handle.num_layers)) == {}
    with vlmflow.session(handle, prompt, vlmflow.Knockout.parse("image->query", "all")) as s:
        assert s.generate(max_new_tokens=NEW).shape == (1, NEW)
    # a chunked layer (Llama 4): its cache keeps a window, but its keys restart at each chunk
    fresh = vlmflow.load(str(tiny_path("gemma3")))
    attention = _decoder_layers(fresh.model)[1].self_attn
    attention.config = copy.deepcopy(attention.config)  # this layer's own view of the config
    attention.config.layer_types[1] = "chunked_attention"
    refused = pytest.raises(VlmflowError, match="layers 1: chunked attention")
    with refused, vlmflow.session(fresh, prompt, vlmflow.Knockout.parse("image->query", "all")):
        pass
    with vlmflow.session(fresh, prompt, vlmflow.Knockout.parse("image->query", "from:2")) as s:
        assert s.generate(max_new_tokens=NEW).shape == (1, NEW)


def test_spans():
    assert spans([5, 0, 1, 2]) == "0-2, 5"
    assert spans([]) == "none"
    assert spans([3]) == "3"

"""The guard: a session refuses layers that vlmflow's attention function does not reach exactly,
before anything runs, naming the layers and the reason (never a silent partial knockout)."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch

import vlmflow
from vlmflow.attention import backend, guard
from vlmflow.attention.layers import spans
from vlmflow.errors import VlmflowError
from vlmflow.models.families import GenericResolverWarning
from vlmflow.models.tiny import GENERIC_FAMILIES, REFUSED_FAMILIES, TINY_FAMILIES

NEW = 4
# the layers the tiny checkpoints of REFUSED_FAMILIES refuse, and why
REFUSED = {
    "llama4": ([0, 1, 2], "chunked attention (chunks of 8 tokens"),
    "qwen3_5": ([0, 1, 2], "never calls the attention function (linear_attention layers)"),
}


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenericResolverWarning)
        return vlmflow.load(str(path))


def _prompt(handle, family, photo):
    """The photo's prompt; for Llama 4, whose image processor needs torchvision, a text prompt
    (longer than its tiny checkpoint's chunk)."""
    return handle.prepare([] if family == "llama4" else photo)


class MemoryAttention(torch.nn.Module):
    """Calls the attention function over keys that are not the sequence's positions (as a
    cross-attention layer over image states does): three extra memory keys."""

    def __init__(self, layer_idx: int, heads: int = 4, dim: int = 16) -> None:
        super().__init__()
        self.layer_idx, self.heads, self.dim = layer_idx, heads, dim
        self.memory = torch.nn.Parameter(torch.zeros(1, heads, 3, dim))

    def forward(self, hidden_states: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, None]:
        b, n, _ = hidden_states.shape
        query = hidden_states.view(b, n, self.heads, self.dim).transpose(1, 2)  # (b, h, n, d)
        memory = self.memory.expand(b, -1, -1, -1)  # (b, h, 3, d)
        out, _ = backend.attention(self, query, memory, memory, None)
        return out.reshape(b, n, -1), None


class OwnMixer(torch.nn.Module):
    """A token mixer that never calls transformers' attention interface (as linear attention,
    state-space or convolution layers do): here it adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    decoder = model.get_decoder()
    return list(getattr(decoder, "model", decoder).layers)  # Llama 4: a causal LM inside


@pytest.mark.parametrize("family", TINY_FAMILIES + GENERIC_FAMILIES + REFUSED_FAMILIES)
def test_the_probe_sees_every_decoder_layer_or_refuses_it(family, tiny_path, photo):
    handle = _load(tiny_path(family))
    found = guard.coverage(handle, _prompt(handle, family, photo))
    layers = range(handle.num_layers)
    assert len(_decoder_layers(handle.model)) == handle.num_layers
    refused, reason = REFUSED.get(family, ([], ""))
    problems = found.problems(layers)
    assert sorted(problems) == refused
    assert all(reason in text for text in problems.values())
    # the layers the guard lets through are exactly those that called the function cleanly
    assert {layer for layer, why in found.calls.items() if not why} == set(layers) - set(refused)


@pytest.fixture(params=["llava", "aya_vision"])
def mixed(request, tiny_path, photo):
    """A tiny model (a registered family, a generic one) whose decoder layer 1 mixes tokens
    without the attention function."""
    handle = _load(tiny_path(request.param))
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


@pytest.mark.parametrize("family", REFUSED_FAMILIES)
def test_knockout_and_capture_on_refused_layers_end_before_generation(family, tiny_path, photo):
    handle = _load(tiny_path(family))
    prompt = _prompt(handle, family, photo)
    refused, reason = REFUSED[family]
    if family == "llama4":
        assert prompt.layout.length > handle.model.config.text_config.attention_chunk_size
    calls: list[int] = []
    hook = handle.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(1), with_kwargs=True
    )
    try:
        for what, kwargs in (
            ("knockout image->query+generated@all", {"knockout": "image->query+generated"}),
            ("capture", {"capture": vlmflow.Capture.of()}),
        ):
            if "knockout" in kwargs:
                kwargs = {"knockout": vlmflow.Knockout.parse(kwargs["knockout"], "all")}
            with pytest.raises(VlmflowError) as err, vlmflow.session(handle, prompt, **kwargs) as s:
                s.generate(max_new_tokens=NEW)
            message = str(err.value)
            assert "\n" not in message
            assert message.startswith(f"{what} cannot act exactly on layers {spans(refused)}: ")
            assert reason in message and message.endswith("choose among layers 3")
    finally:
        hook.remove()
    assert len(calls) == 1  # the probe's forward, and no generation


def test_layer_types_other_than_softmax_attention_are_refused():
    module = torch.nn.Module()
    kinds = ["full_attention", "indexed_attention", "chunked_attention", "sliding_attention"]
    module.config = SimpleNamespace(layer_types=kinds, attention_chunk_size=8)
    expected = [
        "",
        "indexed_attention layers (knockout and capture act on softmax attention over all keys)",
        "chunked attention (chunks of 8 tokens: its mask and cache drop the keys of earlier "
        "chunks)",
        "",  # sliding windows are computed exactly (keys mapped to absolute positions)
    ]
    for layer, reason in enumerate(expected):
        module.layer_idx = layer
        assert guard.unsupported(module, {}) == reason
    assert guard.unsupported(module, {"sliding_window": 4}) == ""


def test_keys_that_are_not_sequence_positions_are_refused(tiny_path, photo):
    handle = vlmflow.load(str(tiny_path("llava")))
    _decoder_layers(handle.model)[2].self_attn = MemoryAttention(2)
    prompt = handle.prepare(photo)
    capture = vlmflow.Capture.of()
    with pytest.raises(VlmflowError) as err, vlmflow.session(handle, prompt, capture=capture):
        pass
    message = str(err.value)
    assert message.startswith("capture cannot act exactly on layers 2: keys that are not")
    assert "(3 keys for 2 queries: cross-attention or memory tokens)" in message


def test_soft_capped_layers_are_accepted(tiny_path, photo):
    """PaliGemma 2: every layer soft-caps its scores (computed exactly, as eager attention
    does) and every other layer has a sliding window: all layers allowed."""
    handle = vlmflow.load(str(tiny_path("paligemma2")))
    prompt = handle.prepare(photo)
    assert guard.coverage(handle, prompt).problems(range(handle.num_layers)) == {}
    ko = vlmflow.Knockout.parse("image->query+generated", "all")
    with vlmflow.session(handle, prompt, ko, capture=vlmflow.Capture.of()) as s:
        assert s.generate(max_new_tokens=NEW).shape == (1, NEW)
    assert bool((s.capture.role_fraction("image") == 0).all())

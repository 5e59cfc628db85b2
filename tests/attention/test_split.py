"""Knockout without a prompt-wide mask (`Session.split`) equals the dense masked pass."""

from __future__ import annotations

import pytest
import torch

import vlmflow
from vlmflow.attention import backend

NEW = 5
K = vlmflow.Knockout
# the paper's three settings at every layer and from a layer on, two knockouts with different
# targets at once, and a top-k-like key set (scattered image positions) for query and generated
SETTINGS = [
    ("image->generated", "all"),
    ("image->query", "all"),
    ("image->query+generated", "all"),
    ("image->query+generated", "from:1"),
    ("image->query", "only:0"),
]


def _knockouts(setting: str, spec: str, prompt: vlmflow.Prompt) -> list[vlmflow.Knockout]:
    if setting == "pair":
        return [K.parse("image->query", "from:1"), K.parse("prefix->generated", "all")]
    if setting == "keys":
        image = prompt.layout.image_positions(0)
        return [K.key_set({0: image[::3], 1: image[1::2]}, tgt="query+generated")]
    return [K.parse(setting, spec)]


def _run(handle, prompt, knockouts, monkeypatch, split: bool):
    """(ids (1, n + new), logits (new, 1, vocab), capture fractions) of one greedy run."""
    monkeypatch.setattr(backend, "SPLIT", split)
    with vlmflow.session(handle, prompt, knockouts, vlmflow.Capture.of()) as s:
        out = s.generate(
            max_new_tokens=NEW, min_new_tokens=NEW, return_dict_in_generate=True, output_logits=True
        )
        fractions = s.capture.fractions
    return out.sequences, torch.stack(out.logits), fractions


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize(
    ("setting", "spec"), [*SETTINGS, ("pair", ""), ("keys", "")], ids=lambda v: v or "-"
)
def test_split_equals_dense(family, setting, spec, tiny_path, photo, photo2, monkeypatch):
    handle = vlmflow.load(str(tiny_path(family)))
    # two images: the query position between them is knocked, the image after it is not
    prompt = handle.prepare([photo, photo2] if family == "llava" else photo, "Describe it.")
    knockouts = _knockouts(setting, spec, prompt)
    masks: list[tuple[int, int]] = []  # (q, kv) of each causal mask built
    causal = backend._causal

    def counted(q: int, kv: int, device: torch.device) -> torch.Tensor:
        masks.append((q, kv))
        return causal(q, kv, device)

    monkeypatch.setattr(backend, "_causal", counted)
    ids, logits, fractions = _run(handle, prompt, knockouts, monkeypatch, split=True)
    assert masks == []  # the split path builds no mask, neither in the prefill nor decoding
    dense_ids, dense_logits, dense_fractions = _run(
        handle, prompt, knockouts, monkeypatch, split=False
    )
    # the dense run built masks, prompt-wide ones where the prefill holds knocked rows
    assert masks and (setting == "image->generated") != any(q > 1 for q, _ in masks)
    assert torch.equal(ids, dense_ids)
    torch.testing.assert_close(logits, dense_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fractions, dense_fractions, rtol=1e-4, atol=1e-5, equal_nan=True)
    # the knockout changes the logits: the equalities above are not those of two plain runs
    _, plain, _ = _run(handle, prompt, [], monkeypatch, split=True)
    assert not torch.allclose(logits, plain, rtol=1e-4, atol=1e-4)


def test_layers_blocking_the_same_keys_share_one_plan(tiny_path, photo, monkeypatch):
    """A key set repeated over layers (top-k with one kept set) is planned once per step, not
    once per layer; layers with different positions still get plans of their own."""
    from vlmflow.attention.knockout import ResolvedKnockout
    from vlmflow.attention.session import Session

    handle = vlmflow.load(str(tiny_path("llava")))
    prompt = handle.prepare(photo, "Describe it.")
    image = prompt.layout.image_positions(0)
    layers = range(handle.num_layers)
    planned: list[int] = []
    plan = Session._plan

    def counted(self, layer, q_len, kv_len, device):
        planned.append(layer)
        return plan(self, layer, q_len, kv_len, device)

    monkeypatch.setattr(Session, "_plan", counted)
    for blocked, distinct in (
        (dict.fromkeys(layers, image[::3]), 1),
        ({layer: image[layer % 2 :: 2] for layer in layers}, 2),
    ):
        planned.clear()
        knockouts = [K.key_set(blocked, tgt="query+generated")]
        resolved = ResolvedKnockout.of(knockouts[0], handle.num_layers)
        assert len({id(t) for t in resolved.keys.values()}) == distinct  # one tensor per set
        ids, logits, _ = _run(handle, prompt, knockouts, monkeypatch, split=True)
        assert len(planned) == distinct * NEW  # the prefill and NEW - 1 decode steps
        dense_ids, dense_logits, _ = _run(handle, prompt, knockouts, monkeypatch, split=False)
        assert torch.equal(ids, dense_ids)
        torch.testing.assert_close(logits, dense_logits, rtol=1e-4, atol=1e-4)

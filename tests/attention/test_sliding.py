"""Sliding-window layers (Gemma 3) with prompt + generation longer than the window: knockout and
capture equal the independent reference, whose mask is written out from the token strings (the
window, the bidirectional image blocks), token for token."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText

import vlmflow
from compression.test_context import _full_prompt_answer
from vlmflow.attention.batch import generate_variants
from vlmflow.compression import compress
from vlmflow.roles import ROLE_NAMES

from . import reference

WINDOW = 12  # positions a sliding-window query sees, its own included
NEW = 12
CASES = [
    ([], "all"),
    (["image->generated"], "from:1"),
    (["image->query"], "all"),
    (["image->query+generated"], "only:0-2"),
    (["image->query+generated"], "except:3-3"),
    (["image->query", "prefix->generated"], "from:2"),
]


@pytest.fixture(scope="module")
def narrow(tiny_path, tmp_path_factory):
    """The tiny Gemma 3 with a window of WINDOW positions (same weights), its handle and the
    reference model on it."""
    path = tmp_path_factory.mktemp("gemma3") / "narrow"
    shutil.copytree(tiny_path("gemma3"), path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["sliding_window"] = WINDOW
    (path / "config.json").write_text(json.dumps(config))
    handle = vlmflow.load(str(path))
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"}
    ).eval()
    return handle, model


def _fractions(row: torch.Tensor, roles: list[str]) -> torch.Tensor:
    """(4,) attention mass of a (positions,) row per role, in ROLE_NAMES order."""
    return torch.stack(
        [
            sum((row[i] for i, r in enumerate(roles) if r == name), torch.tensor(0.0))
            for name in ROLE_NAMES
        ]
    )


@pytest.mark.parametrize(("settings", "spec"), CASES, ids=lambda v: "+".join(v) or str(v))
def test_sliding_window_matches_reference(settings, spec, narrow, photo):
    handle, model = narrow
    prompt = handle.prepare(photo)
    n = prompt.layout.length
    layers = handle.model.config.text_config.layer_types
    assert n > WINDOW and "sliding_attention" in layers and "full_attention" in layers
    knockouts = [vlmflow.Knockout.parse(s, spec) for s in settings]
    capture = vlmflow.Capture.of(image_layers="all", dtype="float32")
    # a generated image placeholder would be an image slot when the reference reruns the image
    suppress = handle.processor.tokenizer.convert_tokens_to_ids(sorted(reference.BLOCK_TOKENS))
    with vlmflow.session(handle, prompt, knockouts, capture) as s:
        ids = s.generate(max_new_tokens=NEW, min_new_tokens=NEW, suppress_tokens=suppress)
    ids = ids[0].tolist()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(prompt.input_ids[0])
    pairs = [tuple(part.split("+") for part in setting.split("->")) for setting in settings]
    chosen = vlmflow.Layers.parse(spec).resolve(handle.num_layers) if settings else set()
    want_ids = reference.greedy_without_cache(
        model, prompt.inputs, tokens, NEW, [], [], chosen, pairs=pairs, suppress=suppress
    )
    assert ids == want_ids
    result = s.capture
    roles = reference.roles_of(tokens, n, n + NEW)
    image = [i for i, r in enumerate(roles) if r == "image"]
    for step, rows in enumerate(reference.STATE["rows"]):
        for layer, row in rows.items():
            want = _fractions(row, roles[: row.shape[0]])
            got = result.fractions[step, layer, 0]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                result.image_rows[layer][step, 0], row[image], atol=1e-5, rtol=1e-4
            )
    # the window really cuts the image off from late generated tokens at sliding layers only
    late = result.role_fraction("image")[-1, :, 0]  # (layers,)
    for layer, kind in enumerate(layers):
        if kind == "sliding_attention":
            assert float(late[layer]) == 0.0
        elif layer not in chosen or "image->generated" not in " ".join(settings):
            assert float(late[layer]) > 0.0


def test_variants_past_the_window_equal_one_by_one(narrow, photo):
    """generate_variants shares a prefill cache that keeps every position (`whole_cache`):
    each row still equals its own session, whose cache keeps only the window."""
    handle, _ = narrow
    prompt = handle.prepare(photo)
    variants = [
        [],
        [vlmflow.Knockout.parse("image->generated", "from:1")],
        [vlmflow.Knockout.parse("image->query", "all")],
    ]
    capture = vlmflow.Capture.of(image_layers="all")
    alone = []
    for variant in variants:
        with vlmflow.session(handle, prompt, variant, capture) as s:
            ids = s.generate(max_new_tokens=NEW)[0].tolist()
        alone.append((ids, s.capture.fractions[:, :, 0]))
    run = generate_variants(handle, prompt, variants, max_new_tokens=NEW, capture=capture)
    assert run.shared > WINDOW  # the shared positions reach past the window
    assert len({tuple(ids) for ids, _ in alone}) == len(variants)
    for row, (ids, fractions) in enumerate(alone):
        assert run.ids[row].tolist() == ids
        steps = fractions.shape[0]
        got = run.capture.fractions[:steps, :, row]
        torch.testing.assert_close(got, fractions, atol=1e-4, rtol=1e-4, equal_nan=True)


def test_compressed_context_past_the_window_answers_like_the_full_prompt(narrow, photo):
    """At k = 1 the compressed context holds every context position at every layer (also on
    sliding-window layers, whose own cache would keep only the window)."""
    handle, _ = narrow
    context = compress(handle, photo, k=1.0, max_new_tokens=NEW)
    assert context.full_tokens > WINDOW
    assert all(len(kept) == context.full_tokens for kept in context.kept)
    for question in ("Is there a dog in the image?", "How many objects are there?"):
        answer = context.ask(question, max_new_tokens=6)
        expected = _full_prompt_answer(handle, photo, context, question, 6)
        assert list(answer.ids) == expected[: len(answer.ids)]


def test_a_window_of_blocked_keys_only_is_refused(narrow, photo):
    """generated -> generated leaves a late generated token, whose window holds generated
    keys only, nothing to attend to: refused when it happens, never a NaN row."""
    handle, _ = narrow
    prompt = handle.prepare(photo)
    ko = vlmflow.Knockout.parse("generated->generated", "only:0-2")
    short = WINDOW - 2  # every window still holds prompt keys
    with vlmflow.session(handle, prompt, ko) as s:
        assert s.generate(max_new_tokens=short, min_new_tokens=short).shape[1] == short
    refused = pytest.raises(vlmflow.VlmflowError, match="layer 0 no key to attend to")
    with refused, vlmflow.session(handle, prompt, ko) as s:
        s.generate(max_new_tokens=WINDOW + 2, min_new_tokens=WINDOW + 2)

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
        [sum((row[i] for i, r in enumerate(roles) if r == name), torch.tensor(0.0)) for name in ROLE_NAMES]
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


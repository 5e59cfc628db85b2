"""`vlmflow describe` under knockout equals an independent eager, cache-free implementation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForImageTextToText

import vlmflow
from vlmflow.cli import main

from . import reference

CASES = [
    ("llava", "image-generated", "from:1"),
    ("llava", "image-query", "all"),
    ("llava", "image-query+generated", "except:1-2"),
    ("qwen2_vl", "image-query+generated", "only:1-2"),
    ("qwen3_vl", "image-query+generated", "all"),
    ("qwen3_vl_moe", "image-query", "from:1"),
    ("idefics3", "image-generated", "all"),
    ("internvl", "image-query+generated", "from:1"),
    ("llava_next", "image-query", "only:0-1"),
    ("gemma3", "image-query+generated", "from:1"),
    ("gemma3", "image-generated", "all"),
    ("aya_vision", "image-query+generated", "from:1"),  # the generic resolver
    ("paligemma", "image-query", "all"),
    # soft-capped attention, prefix-LM mask: the paper's three settings
    ("paligemma2", "image-generated", "all"),
    ("paligemma2", "image-query", "from:1"),
    ("paligemma2", "image-query+generated", "except:1-2"),
    ("llava_onevision", "image-query+generated", "from:1"),
    ("mistral3", "image-query+generated", "only:1-2"),
    # mllama: layers 1 and 3 are cross-attention layers, the others self-attention
    ("mllama", "image-generated", "from:1"),
    ("mllama", "image-query", "all"),
    ("mllama", "image-query+generated", "except:2-2"),
]
ROLES = {
    "image-generated": ("image", "generated"),
    "image-query": ("image", "query"),
    "image-query+generated": ("image", "query+generated"),
}


@pytest.mark.parametrize(("family", "setting", "spec"), CASES)
def test_describe_matches_reference(family, setting, spec, tiny_path, photo, tmp_path, capsys):
    path = str(tiny_path(family))
    image = tmp_path / "photo.png"
    photo.save(image)
    code = main(
        [
            "describe",
            str(image),
            "--model",
            path,
            "--max-new-tokens",
            "10",
            "--knockout",
            setting,
            "--layers",
            spec,
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)

    handle = vlmflow.load(path)
    prompt = handle.prepare(str(image))
    assert out["input_ids"] == prompt.input_ids[0].tolist()
    model = AutoModelForImageTextToText.from_pretrained(
        path, attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"}
    ).eval()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(out["input_ids"])
    src, tgt = ROLES[setting]
    layers = vlmflow.Layers.parse(spec).resolve(out["num_layers"])
    expected = reference.greedy_without_cache(
        model, prompt.inputs, tokens, 10, src.split("+"), tgt.split("+"), layers
    )
    assert out["generated_ids"] == expected
    plain = reference.greedy_without_cache(model, prompt.inputs, tokens, 10, [], [], [])
    assert out["roles"]["generated"] == 10
    # the knockout changes the text, so equality above is not a coincidence
    if setting != "image-generated":
        assert plain != expected


@pytest.mark.parametrize("setting", sorted(ROLES))
def test_soft_capped_capture_matches_reference(setting, tiny_path, photo):
    """PaliGemma 2: the captured prefill row (last prompt position, heads averaged) over the
    image equals the reference's soft-capped, prefix-LM softmax at every layer."""
    import torch

    path = str(tiny_path("paligemma2"))
    handle = vlmflow.load(path)
    prompt = handle.prepare(photo)
    ko = vlmflow.Knockout.parse(setting, "from:1")
    capture = vlmflow.Capture.of(image_layers="all", dtype="float32")
    with vlmflow.session(handle, prompt, knockout=ko, capture=capture) as s:
        s.generate(max_new_tokens=1)
    model = AutoModelForImageTextToText.from_pretrained(
        path, attn_implementation={"text_config": reference.NAME, "vision_config": "sdpa"}
    ).eval()
    tokens = handle.processor.tokenizer.convert_ids_to_tokens(prompt.input_ids[0].tolist())
    src, tgt = ROLES[setting]
    layers = ko.layers.resolve(handle.num_layers)
    reference.greedy_without_cache(
        model, prompt.inputs, tokens, 1, src.split("+"), tgt.split("+"), layers
    )
    image = s.capture.image_positions[0]  # (n_image,)
    for layer in range(handle.num_layers):
        theirs = reference.STATE["weights"][layer][0, :, -1, image].mean(0)  # (n_image,)
        ours = s.capture.image_rows[layer][0, 0]  # (n_image,)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
        # the last prompt position is query: cut off from the image only where tgt has query
        cut = layer in layers and "query" in tgt
        assert bool((ours == 0).all()) if cut else bool((ours > 0).all())

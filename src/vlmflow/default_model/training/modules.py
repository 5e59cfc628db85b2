"""The trained modules: projector, LoRA wrappers and the training-only heads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vlmflow.default_model.training.config import TEXT_DIM, VISION_DIM


class Projector(nn.Module):
    """llava's projector (linear-GELU-linear) on standardised features.

    Standardising DINOv2's pre-norm features (a few channels are 10-50x larger than the rest)
    makes optimisation well-conditioned; `export()` folds it into `linear_1`, so the shipped
    projector reads raw features exactly like transformers' `LlavaMultiModalProjector`.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())  # (384,)
        self.register_buffer("std", std.clone())  # (384,)
        self.linear_1 = nn.Linear(VISION_DIM, TEXT_DIM)
        self.linear_2 = nn.Linear(TEXT_DIM, TEXT_DIM)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (b, n, 384) -> (b, n, 576)
        z = (features - self.mean) / self.std
        return self.linear_2(F.gelu(self.linear_1(z)))

    def export(self) -> dict[str, torch.Tensor]:
        w = self.linear_1.weight / self.std[None, :]  # (576, 384)
        b = self.linear_1.bias - w @ self.mean
        return {
            "multi_modal_projector.linear_1.weight": w.detach().clone(),
            "multi_modal_projector.linear_1.bias": b.detach().clone(),
            "multi_modal_projector.linear_2.weight": self.linear_2.weight.detach().clone(),
            "multi_modal_projector.linear_2.bias": self.linear_2.bias.detach().clone(),
        }


class LoraLinear(nn.Module):
    """`base(x) + scale * B(A(x))` with a frozen base; B starts at zero (no change at step 0)."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        bound = 1.0 / math.sqrt(base.in_features)
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a)  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + self.scale * delta


class Heads(nn.Module):
    """Training-only parts: background prototype for grounding, 3x3 position head."""

    def __init__(self) -> None:
        super().__init__()
        self.background = nn.Parameter(torch.zeros(TEXT_DIM))
        self.position = nn.Linear(TEXT_DIM, 6)  # 3 rows + 3 columns


def lora_modules(lm: Any) -> dict[str, LoraLinear]:
    """LoRA wrappers by module name relative to `LlamaModel` (`layers.3.self_attn.q_proj`)."""
    return {
        name.removeprefix("model."): module
        for name, module in lm.named_modules()
        if isinstance(module, LoraLinear)
    }


def add_lora(
    lm: Any, rank: int, alpha: float, seed: int, more: Sequence[str] = ()
) -> dict[str, LoraLinear]:
    """LoRA on every layer's q_proj and v_proj, then on the `more` projections (attention or
    MLP), drawn after them so q/v start the same whatever `more` holds."""
    generator = torch.Generator().manual_seed(seed + 1)
    for layer in lm.model.layers:
        attn = layer.self_attn
        attn.q_proj = LoraLinear(attn.q_proj, rank, alpha, generator)
        attn.v_proj = LoraLinear(attn.v_proj, rank, alpha, generator)
    for layer in lm.model.layers:
        for name in more:
            owner = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            setattr(owner, name, LoraLinear(getattr(owner, name), rank, alpha, generator))
    return lora_modules(lm)

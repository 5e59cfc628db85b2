"""Attention capture reduced on the fly: per-role fractions and the attention row over the image.

Full `(heads, query, key)` matrices are never kept: each captured row is reduced as soon as it is
computed, so memory grows with layers x steps x image tokens, not with the square of the prompt.

Steps: step t is the forward pass that produced generated token t. Step 0 is the prefill and its
captured row is the last prompt position (a `query` position); steps t >= 1 are decode steps whose
query is generated token t-1 (a `generated` position).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from vlmflow.attention.layers import ALL, Layers
from vlmflow.roles import ROLE_NAMES, Role

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Capture:
    """What to record. `fractions`: attention mass per role (heads averaged) at `layers`.
    `image_layers`: layers whose attention row over the image positions is kept (heads averaged).
    `steps`: the steps to record (None: all), e.g. only the steps of an object's tokens.

    Step t is the forward pass that produced generated token t (step 0: the prefill's last
    prompt position). The result (`CaptureResult`, on CPU): `fractions` (steps, layers, b, 4)
    float32, per role prefix / image / query / generated, summing to 1 (NaN where not
    captured; at a cross-attention layer, whose keys are the image's tiles, image is 1, and all
    four are 0 where a knockout leaves the row nothing to read); `image_rows[layer]`
    (steps, b, n_image) in `dtype`, at self-attention layers only. These are the measurements
    of the paper's Sec. 4.3-4.5 (attention to the image across layers, localization).
    Build with `Capture.of(layers="all", image_layers="only:10-20")`; a bad layer spec raises
    VlmflowError.
    """

    fractions: bool = True
    layers: Layers = ALL
    image_layers: Layers | None = None
    dtype: str = "float16"
    steps: frozenset[int] | None = None

    @classmethod
    def of(
        cls,
        fractions: bool = True,
        layers: str = "all",
        image_layers: str | None = None,
        dtype: str = "float16",
        steps: Iterable[int] | None = None,
    ) -> Capture:
        image = Layers.parse(image_layers) if image_layers is not None else None
        chosen = frozenset(int(s) for s in steps) if steps is not None else None
        return cls(fractions, Layers.parse(layers), image, dtype, chosen)


@dataclass(frozen=True)
class CaptureResult:
    """Captured attention of one session, on CPU."""

    fractions: (
        torch.Tensor
    )  # (steps, layers, b, 4) float32, roles in ROLE_NAMES order, NaN if not captured
    image_rows: dict[int, torch.Tensor]  # layer -> (steps, b, n_image) compact dtype
    image_positions: torch.Tensor  # (b, n_image) long prompt positions, -1 for padding

    @property
    def num_steps(self) -> int:
        return int(self.fractions.shape[0])

    def role_fraction(self, role: str) -> torch.Tensor:
        """(steps, layers, b) fraction of attention to one role."""
        return self.fractions[..., ROLE_NAMES.index(role)]


@dataclass
class Recorder:
    """Mutable per-session store the attention function writes into (on the model's device)."""

    capture: Capture
    num_layers: int
    fraction_layers: frozenset[int]
    image_layers: frozenset[int]
    image_index: torch.Tensor  # (b, n_image) long, -1 for padding
    _fractions: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> (layers, b, 4)
    _rows: dict[tuple[int, int], torch.Tensor] = field(
        default_factory=dict
    )  # (layer, step) -> (b, n)

    @classmethod
    def of(cls, capture: Capture, num_layers: int, image_index: torch.Tensor) -> Recorder:
        fl = capture.layers.resolve(num_layers) if capture.fractions else frozenset()
        il = capture.image_layers.resolve(num_layers) if capture.image_layers else frozenset()
        return cls(capture, num_layers, fl, il, image_index)

    def clear(self) -> None:
        """Forget what was recorded (a new run over the prompt begins)."""
        self._fractions.clear()
        self._rows.clear()

    def wants(self, layer: int, step: int) -> bool:
        if self.capture.steps is not None and step not in self.capture.steps:
            return False
        return layer in self.fraction_layers or layer in self.image_layers

    def record(self, layer: int, step: int, weights: torch.Tensor, key_roles: torch.Tensor) -> None:
        """weights (b, h, kv) float32 softmax rows; key_roles (b, kv) int role codes."""
        mean = weights.mean(dim=1)  # (b, kv)
        if layer in self.fraction_layers:
            per_role = torch.zeros(mean.shape[0], len(Role), dtype=mean.dtype, device=mean.device)
            per_role.scatter_add_(1, key_roles.long(), mean)
            if step not in self._fractions:
                self._fractions[step] = torch.full(
                    (self.num_layers, mean.shape[0], len(ROLE_NAMES)),
                    float("nan"),
                    device=mean.device,
                )
            self._fractions[step][layer] = per_role[:, : len(ROLE_NAMES)]
        if layer in self.image_layers:
            index = self.image_index.to(mean.device)
            rows = mean.gather(1, index.clamp(min=0))  # (b, n_image)
            rows = rows.masked_fill(index < 0, 0.0)
            self._rows[(layer, step)] = rows.to(_DTYPES[self.capture.dtype])

    def result(self) -> CaptureResult:
        steps = max([*self._fractions, *(s for _, s in self._rows)], default=-1) + 1
        b, n = self.image_index.shape
        fractions = torch.full((steps, self.num_layers, b, len(ROLE_NAMES)), float("nan"))
        for step, value in self._fractions.items():
            fractions[step] = value.float().cpu()
        rows: dict[int, torch.Tensor] = {}
        for layer in sorted(self.image_layers):
            out = torch.zeros((steps, b, n), dtype=_DTYPES[self.capture.dtype])
            for step in range(steps):
                if (layer, step) in self._rows:
                    out[step] = self._rows[(layer, step)].cpu()
            rows[layer] = out
        return CaptureResult(fractions, rows, self.image_index.cpu())

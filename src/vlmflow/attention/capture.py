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
    `tile_layers`: a layer set whose cross-attention layers (Llama 3.2 Vision) keep their
    attention row over the image's vision states (heads averaged); a set holding no
    cross-attention layer is refused when a session opens.

    Step t is the forward pass that produced generated token t (step 0: the prefill's last
    prompt position). The result (`CaptureResult`, on CPU): `fractions` (steps, layers, b, 4)
    float32, per role prefix / image / query / generated, summing to 1 (NaN where not
    captured; at a cross-attention layer, whose keys are the image's tiles, image is 1, and all
    four are 0 where a knockout leaves the row nothing to read); `image_rows[layer]`
    (steps, b, n_image) in `dtype`, at self-attention layers only; `tile_rows[layer]`
    (steps, b, v) in `dtype` over the v vision states of a cross-attention layer, in the
    model's order (per image, per tile: its CLS state, then its patches row by row). These
    are the measurements of the paper's Sec. 4.3-4.5 (attention to the image across layers,
    localization).
    Build with `Capture.of(layers="all", image_layers="only:10-20")`; a bad layer spec raises
    VlmflowError.
    """

    fractions: bool = True
    layers: Layers = ALL
    image_layers: Layers | None = None
    dtype: str = "float16"
    steps: frozenset[int] | None = None
    tile_layers: Layers | None = None

    @classmethod
    def of(
        cls,
        fractions: bool = True,
        layers: str = "all",
        image_layers: str | None = None,
        dtype: str = "float16",
        steps: Iterable[int] | None = None,
        tile_layers: str | None = None,
    ) -> Capture:
        image = Layers.parse(image_layers) if image_layers is not None else None
        chosen = frozenset(int(s) for s in steps) if steps is not None else None
        tiles = Layers.parse(tile_layers) if tile_layers is not None else None
        return cls(fractions, Layers.parse(layers), image, dtype, chosen, tiles)


@dataclass(frozen=True)
class CaptureResult:
    """Captured attention of one session, on CPU."""

    fractions: (
        torch.Tensor
    )  # (steps, layers, b, 4) float32, roles in ROLE_NAMES order, NaN if not captured
    image_rows: dict[int, torch.Tensor]  # layer -> (steps, b, n_image) compact dtype
    image_positions: torch.Tensor  # (b, n_image) long prompt positions, -1 for padding
    # layer -> (steps, b, v) over the vision states of a cross-attention layer
    tile_rows: dict[int, torch.Tensor] = field(default_factory=dict)

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
    tile_layers: frozenset[int] = frozenset()
    _fractions: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> (layers, b, 4)
    _rows: dict[tuple[int, int], torch.Tensor] = field(
        default_factory=dict
    )  # (layer, step) -> (b, n)
    _tiles: dict[tuple[int, int], torch.Tensor] = field(
        default_factory=dict
    )  # (layer, step) -> (b, v)

    @classmethod
    def of(cls, capture: Capture, num_layers: int, image_index: torch.Tensor) -> Recorder:
        fl = capture.layers.resolve(num_layers) if capture.fractions else frozenset()
        il = capture.image_layers.resolve(num_layers) if capture.image_layers else frozenset()
        tl = capture.tile_layers.resolve(num_layers) if capture.tile_layers else frozenset()
        return cls(capture, num_layers, fl, il, image_index, tl)

    def clear(self) -> None:
        """Forget what was recorded (a new run over the prompt begins)."""
        self._fractions.clear()
        self._rows.clear()
        self._tiles.clear()

    def wants(self, layer: int, step: int) -> bool:
        if self.capture.steps is not None and step not in self.capture.steps:
            return False
        return layer in self.fraction_layers | self.image_layers | self.tile_layers

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
        if layer in self.tile_layers:
            self._tiles[(layer, step)] = mean.to(_DTYPES[self.capture.dtype])

    def result(self) -> CaptureResult:
        recorded = [*self._fractions, *(s for _, s in self._rows), *(s for _, s in self._tiles)]
        steps = max(recorded, default=-1) + 1
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
        tiles: dict[int, torch.Tensor] = {}
        for layer in sorted(self.tile_layers):
            width = next((t.shape[1] for (li, _), t in self._tiles.items() if li == layer), 0)
            out = torch.zeros((steps, b, width), dtype=_DTYPES[self.capture.dtype])
            for step in range(steps):
                if (layer, step) in self._tiles:
                    out[step] = self._tiles[(layer, step)].cpu()
            tiles[layer] = out
        return CaptureResult(fractions, rows, self.image_index.cpu(), tiles)

"""Loss pieces shared by the trainer: per-step loss record and the 3x3 cell loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vlmflow.default_model.processor import GRID, NUM_IMAGE_TOKENS


@dataclass(frozen=True)
class StepLosses:
    total: float
    text: float
    grounding: float
    position: float
    where: float = 0.0  # the where phase's position-word loss


def cell_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `(n, 256, 6)` per-token logits, 3 rows then 3 columns, against each
    image token's cell of the 3x3 grid."""
    grid = torch.arange(NUM_IMAGE_TOKENS)
    row, col = (grid // GRID) * 3 // GRID, (grid % GRID) * 3 // GRID  # (256,)
    rows = F.cross_entropy(logits[..., :3].flatten(0, 1), row.repeat(len(logits)))
    return rows + F.cross_entropy(logits[..., 3:].flatten(0, 1), col.repeat(len(logits)))

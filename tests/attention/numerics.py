"""Equality of model outputs that are equal in arithmetic, per family."""

from __future__ import annotations

import torch

from vlmflow.models.tiny import MOE_FAMILIES


def same(family: str, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit; for a mixture of experts (`MOE_FAMILIES`) equal to 1e-5, the rounding
    of expert rows grouped by the image's routing."""
    if family in MOE_FAMILIES:
        return torch.allclose(a, b, rtol=0, atol=1e-5)
    return torch.equal(a, b)

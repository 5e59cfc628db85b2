"""The window of middle layers the `except:A-B` knockouts leave open (paper Sec. 4.1, App. D).

Layers are 0-indexed and windows inclusive, as in `vlmflow.attention.layers`.
"""

from __future__ import annotations

import re

_WINDOW = re.compile(r"^(?:except:)?(\d+)-(\d+)$")


def middle_window(num_layers: int) -> tuple[int, int]:
    """The middle quarter of the layers (at least one), 0-indexed and inclusive.

    32 layers give 12-19, the mid-layers the paper finds sufficient for LLaVA-1.5 (App. D).
    """
    width = max(1, round(num_layers / 4))
    start = (num_layers - width) // 2
    return start, start + width - 1


def parse_window(text: str) -> tuple[int, int]:
    """`"A-B"` (or `"except:A-B"`) -> (A, B), 0-indexed, inclusive."""
    m = _WINDOW.match(text.strip().lower().replace(" ", ""))
    if m is None:
        raise ValueError(f"window {text!r} must look like A-B (0-indexed, inclusive)")
    a, b = int(m.group(1)), int(m.group(2))
    if a > b:
        raise ValueError(f"window {text!r} starts after it ends")
    return a, b

"""Layer sets, parsed from the CLI strings: `all`, `from:L`, `only:A-B`, `except:A-B`.

Layers are 0-indexed and ranges inclusive, as in the paper's "l not in [20, 40]".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vlmflow.errors import VlmflowError

_SPEC = re.compile(r"^(all|from:(\d+)|only:(\d+)(?:-(\d+))?|except:(\d+)-(\d+))$")
_HELP = "use all, from:L, only:A-B (or only:L) or except:A-B, 0-indexed and inclusive"


@dataclass(frozen=True)
class Layers:
    """A layer set; `resolve(num_layers)` checks it against a model and gives the indices."""

    spec: str = "all"

    @classmethod
    def parse(cls, spec: str | Layers) -> Layers:
        if isinstance(spec, Layers):
            return spec
        text = spec.strip().lower().replace(" ", "")
        if not _SPEC.match(text):
            raise VlmflowError(f"bad layer spec {spec!r}: {_HELP}")
        return cls(text)

    def resolve(self, num_layers: int) -> frozenset[int]:
        m = _SPEC.match(self.spec)
        if m is None:
            raise VlmflowError(f"bad layer spec {self.spec!r}: {_HELP}")
        last = num_layers - 1
        if self.spec == "all":
            return frozenset(range(num_layers))
        if m.group(2) is not None:
            start = int(m.group(2))
            self._check(start, start, last)
            return frozenset(range(start, num_layers))
        if m.group(3) is not None:
            a = int(m.group(3))
            b = int(m.group(4)) if m.group(4) is not None else a
            self._check(a, b, last)
            return frozenset(range(a, b + 1))
        a, b = int(m.group(5)), int(m.group(6))
        self._check(a, b, last)
        chosen = frozenset(range(num_layers)) - frozenset(range(a, b + 1))
        if not chosen:
            raise VlmflowError(
                f"layer spec {self.spec!r} selects zero of this model's {num_layers} layers: "
                "choose a window that leaves at least one layer outside it"
            )
        return chosen

    def _check(self, a: int, b: int, last: int) -> None:
        if a > b:
            raise VlmflowError(f"bad layer spec {self.spec!r}: start {a} is after end {b}")
        if b > last:
            raise VlmflowError(
                f"layer spec {self.spec!r} is out of range: this model has layers 0-{last}"
            )

    def __str__(self) -> str:
        return self.spec


def spans(layers: Iterable[int]) -> str:
    """Layer indices as inclusive ranges: [0, 1, 2, 5] -> '0-2, 5'; [] -> 'none'."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


ALL = Layers("all")

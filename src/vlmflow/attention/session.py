"""`with vlmflow.session(handle, prompt, knockout=..., capture=...)`: scoped attention state.

The state lives in a ContextVar read by the registered attention function, so it works inside
`generate()` (which rejects unknown kwargs), with batches and padding, and never leaks out of
the `with` block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from vlmflow.attention import backend
from vlmflow.attention.capture import Capture, CaptureResult, Recorder
from vlmflow.attention.knockout import Knockout, ResolvedKnockout
from vlmflow.errors import VlmflowError
from vlmflow.models.layout import PromptLayout
from vlmflow.roles import Role

if TYPE_CHECKING:
    from vlmflow.models.loading import Handle, Prompt


_GENERATED = frozenset({int(Role.GENERATED)})


class Session:
    """Knockouts and capture for one prompt batch; read by the attention function."""

    def __init__(
        self,
        handle: Handle,
        prompt: Prompt,
        knockouts: Sequence[Knockout] = (),
        capture: Capture | None = None,
    ) -> None:
        if (knockouts or capture) and handle.attn_implementation != backend.NAME:
            raise VlmflowError(
                f"knockout and capture need per-position masks, which {handle.attn_implementation}"
                " kernels cannot take: load the model with vlmflow.load(..., attn='sdpa')"
            )
        self.handle = handle
        self.prompt = prompt
        self.layout = layout = prompt.layout
        self.num_layers = handle.num_layers
        self.knockouts = [ResolvedKnockout.of(k, self.num_layers) for k in knockouts]
        batch = int(layout.codes.shape[0])
        for ko, spec in zip(self.knockouts, knockouts, strict=True):
            if bool((ko.tgt & ko.src).any()):
                raise VlmflowError(
                    f"knockout {spec} blocks a role from itself, leaving queries nothing to attend"
                    " to: choose src and tgt roles that differ"
                )
            if spec.rows is not None and max(spec.rows, default=0) >= batch:
                raise VlmflowError(
                    f"knockout {spec} names rows the prompt does not have: it has {batch} row(s)"
                )
        self._touched = frozenset().union(*(k.layers for k in self.knockouts))
        self.recorder: Recorder | None = None
        if capture is not None:
            self.recorder = Recorder.of(capture, self.num_layers, _image_index(layout))
            self._touched |= self.recorder.fraction_layers | self.recorder.image_layers
        self._codes = layout.codes.to(handle.device)
        self._by_device: dict[torch.device, torch.Tensor] = {}
        self._present: tuple[tuple[int, int], frozenset[int]] = ((-1, -1), frozenset())
        self._checked: set[int] = set()

    @property
    def prompt_length(self) -> int:
        return self.layout.length

    def touches(self, layer: int) -> bool:
        return layer in self._touched

    def key_roles(self, kv_len: int, device: torch.device | None = None) -> torch.Tensor:
        """(b, kv) role codes on `device`; positions past the prompt are generated tokens.

        One copy per device, so layers spread over several GPUs (`device_map="auto"`) each read
        their own without a transfer per call.
        """
        device = device or self._codes.device
        codes = self._by_device.get(device)
        if codes is None or kv_len > codes.shape[1]:
            base = self._codes
            if kv_len > base.shape[1]:
                extra = torch.full(
                    (base.shape[0], 2 * kv_len - base.shape[1]),
                    int(Role.GENERATED),
                    dtype=base.dtype,
                    device=base.device,
                )
                self._codes = base = torch.cat([base, extra], dim=1)
            codes = self._by_device[device] = base.to(device)
        return codes[:, :kv_len]

    def query_role_codes(self, start: int, end: int) -> frozenset[int]:
        """Role codes held by positions [start, end) of any row, from the host-side layout."""
        n = self.prompt_length
        if start >= n:
            return _GENERATED
        if self._present[0] != (start, end):
            codes = frozenset(int(c) for c in self.layout.codes[:, start : min(end, n)].unique())
            self._present = ((start, end), codes | (_GENERATED if end > n else frozenset()))
        return self._present[1]

    def check_layer(self, module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
        """Refuse attention variants whose key positions or weights this backend cannot map."""
        layer = int(getattr(module, "layer_idx", -1))
        if layer in self._checked:
            return
        if getattr(module, "sliding_window", None) or kwargs.get("sliding_window"):
            raise VlmflowError(
                f"layer {layer} uses sliding-window attention, whose cache drops key positions:"
                " knockout and capture support full-attention layers only"
            )
        if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            raise VlmflowError(
                f"layer {layer} uses soft-capped or sink attention, which capture cannot reproduce"
            )
        self._checked.add(layer)

    @property
    def capture(self) -> CaptureResult:
        if self.recorder is None:
            raise VlmflowError("this session captures nothing: pass capture=Capture(...)")
        return self.recorder.result()

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """Greedy `model.generate` on the session's prompt; returns (b, new) generated ids."""
        return self.handle.generate(self.prompt, **kwargs)


def _image_index(layout: PromptLayout) -> torch.Tensor:
    """(b, n_image) image positions per row, -1 padded."""
    rows = [layout.image_positions(r) for r in range(layout.codes.shape[0])]
    width = max((len(r) for r in rows), default=0)
    index = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, positions in enumerate(rows):
        index[r, : len(positions)] = torch.tensor(positions, dtype=torch.long)
    return index


@contextmanager
def session(
    handle: Handle,
    prompt: Prompt,
    knockout: Knockout | Sequence[Knockout] = (),
    capture: Capture | None = None,
) -> Iterator[Session]:
    """Scope knockouts and capture to the `with` block; they apply to `prompt`'s batch."""
    knockouts = [knockout] if isinstance(knockout, Knockout) else list(knockout)
    state = Session(handle, prompt, knockouts, capture)
    token = backend.ACTIVE.set(state)
    try:
        yield state
    finally:
        backend.ACTIVE.reset(token)

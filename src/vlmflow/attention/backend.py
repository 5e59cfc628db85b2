"""The one attention function vlmflow registers with transformers, for every model family.

Models load with `attn_implementation={"text_config": "vlmflow", ...}`; every decoder layer of the
language model then calls `attention()` below. Outside a session, or at layers and steps a session
does not touch, it calls transformers' own SDPA function untouched, so results stay bit-identical.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from vlmflow.attention.knockout import blocked

if TYPE_CHECKING:
    from vlmflow.attention.session import Session

NAME = "vlmflow"

ACTIVE: ContextVar[Session | None] = ContextVar("vlmflow_session", default=None)


def _causal(q: int, kv: int, device: torch.device) -> torch.Tensor:
    """(1, 1, q, kv) bool: query i (absolute position kv - q + i) sees keys up to itself."""
    rows = torch.arange(kv - q, kv, device=device)[:, None]
    return (torch.arange(kv, device=device)[None, :] <= rows)[None, None]


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (b, h, q, d)
    key: torch.Tensor,  # (b, h_kv, kv, d)
    value: torch.Tensor,  # (b, h_kv, kv, d)
    attention_mask: torch.Tensor | None,  # (b, 1, q, kv) bool, or None for plain causal
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # (b, q, h, d), None
    session = ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    if session is None or layer is None or not session.touches(layer):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    session.check_layer(module, kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    roles = session.key_roles(kv_len, query.device)  # (b, kv)
    present = session.query_role_codes(kv_len - q_len, kv_len)
    cut = blocked(session.knockouts, layer, roles[:, kv_len - q_len :], roles, present)
    step = kv_len - session.prompt_length
    recorder = session.recorder
    record = recorder is not None and step >= 0 and recorder.wants(layer, step)
    if cut is None:
        # capture only: the output is SDPA's own; the captured row is the last query, which
        # sees every key that the given mask lets it see (all of them when the mask is None)
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        row = attention_mask[:, :, -1:, :] if attention_mask is not None else None
    else:
        mask = (
            attention_mask if attention_mask is not None else _causal(q_len, kv_len, query.device)
        )
        mask = mask & ~cut[:, None]  # (b, 1, q, kv)
        out, _ = sdpa_attention_forward(
            module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs
        )
        row = mask[:, :, -1:, :]
    if record and recorder is not None:
        weights = _last_row_weights(query, key, row, scaling)  # (b, h, kv)
        recorder.record(layer, step, weights, roles)
    return out, None


def _last_row_weights(
    query: torch.Tensor,  # (b, h, q, d)
    key: torch.Tensor,  # (b, h_kv, kv, d)
    row_mask: torch.Tensor | None,  # (b or 1, 1, 1, kv) bool for the last query, None: all keys
    scaling: float | None,
) -> torch.Tensor:  # (b, h, kv) float32
    """Softmax attention of the last query row, computed per key-value head group (no repeat)."""
    b, h, _, d = query.shape
    h_kv, kv = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    q = query[:, :, -1, :].float().reshape(b, h_kv, h // h_kv, d)  # (b, h_kv, g, d)
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scale  # (b, h_kv, g, kv)
    scores = scores.reshape(b, h, kv)
    if row_mask is not None:
        scores = scores.masked_fill(~row_mask[:, :, -1, :], float("-inf"))  # (b, 1, kv)
    return scores.softmax(dim=-1)


def register() -> None:
    """Make "vlmflow" a name transformers accepts for `attn_implementation` (idempotent)."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()

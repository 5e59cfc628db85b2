"""An independent eager implementation of attention knockout (paper Eq. 3-4), for tests only.

It shares nothing with vlmflow's backend: roles come from token strings, the mask is an additive
float mask built per layer, attention is plain softmax(QK^T)V, and generation recomputes the
whole sequence at every step (no KV cache).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "vlmflow_test_reference"
STATE: dict = {}

IMAGE_TOKENS = {
    "<image>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<fake_token_around_image>",
    "<global-img>",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
} | {f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)}


def roles_of(tokens: list[str], prompt_len: int, total: int) -> list[str]:
    first = min(i for i, t in enumerate(tokens) if t in IMAGE_TOKENS)
    out = []
    for i in range(total):
        if i >= prompt_len:
            out.append("generated")
        elif tokens[i] in IMAGE_TOKENS:
            out.append("image")
        elif i < first:
            out.append("prefix")
        else:
            out.append("query")
    return out


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    n = key.shape[2]
    bias = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)[-query.shape[2] :]
    layer = getattr(module, "layer_idx", None)
    if layer is not None and layer in STATE.get("layers", ()):
        roles = STATE["roles"][:n]
        for p in range(n - query.shape[2], n):
            if roles[p] in STATE["tgt"]:
                for k in range(n):
                    if roles[k] in STATE["src"]:
                        bias[p - (n - query.shape[2]), k] = float("-inf")
    weights = torch.softmax(scores.float() + bias, dim=-1).to(query.dtype)
    STATE.setdefault("weights", {})[layer] = weights
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, eager_mask)


def greedy_without_cache(model, inputs, tokens, max_new_tokens, src, tgt, layers):
    """Greedy decoding recomputing the full sequence each step, knockout applied per layer."""
    ids = inputs["input_ids"]
    n = ids.shape[1]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    STATE.clear()
    STATE.update(
        src=set(src),
        tgt=set(tgt),
        layers=set(layers),
        roles=roles_of(tokens, n, n + max_new_tokens),
    )
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            grown = {
                k: torch.cat([v, v.new_zeros(1, ids.shape[1] - v.shape[1])], dim=1)
                if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == n
                else v
                for k, v in extra.items()
            }
            logits = model(input_ids=ids, use_cache=False, **grown).logits
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out

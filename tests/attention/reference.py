"""An independent eager implementation of attention knockout (paper Eq. 3-4), for tests only.

It shares nothing with vlmflow's backend: roles come from token strings, the mask is an additive
float mask built per layer, attention is plain softmax(QK^T)V, and generation recomputes the
whole sequence at every step (no KV cache).

Cross-attention layers (the config's `cross_attention_layers`; keys: the image's vision states,
queries: every text position) take the model's own additive mask, no causal bias; a knockout
whose sources include `image` sets the attention output of its target rows to 0 there.
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
    "<|image|>",
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


def _cross(module, query, key, value, attention_mask, scaling):
    """Softmax over the vision states under the model's mask; knocked target rows read 0."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    out = torch.matmul(weights, value)  # (b, h, q, d)
    layer = module.layer_idx
    if layer in STATE.get("layers", ()) and "image" in STATE["src"]:
        n = query.shape[2]
        for p in range(n):
            if STATE["roles"][p] in STATE["tgt"]:
                out[:, :, p] = 0.0
                weights[:, :, p] = 0.0
    STATE.setdefault("weights", {})[layer] = weights
    return out.transpose(1, 2).contiguous(), weights


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    if getattr(module, "layer_idx", None) in STATE.get("cross", ()):
        return _cross(module, query, key, value, attention_mask, scaling)
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
    text = model.config.get_text_config()
    STATE.update(
        cross=set(getattr(text, "cross_attention_layers", None) or ()),
        src=set(src),
        tgt=set(tgt),
        layers=set(layers),
        roles=roles_of(tokens, n, n + max_new_tokens),
    )
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            grown = {k: _grow(k, v, n, ids.shape[1]) for k, v in extra.items()}
            logits = model(input_ids=ids, use_cache=False, **grown).logits
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def _grow(name, value, n, length):
    """A per-position input of the n prompt positions, extended to `length` positions: 2-D
    ones with zeros, the cross-attention mask (b, n, images, tiles) with its last row (every
    generated token reads the last image, as transformers' generation extends it)."""
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[1] != n:
        return value
    if name == "cross_attention_mask":
        extra = value[:, -1:].expand(-1, length - n, *value.shape[2:])
        return torch.cat([value, extra], dim=1)
    if value.dim() == 2:
        return torch.cat([value, value.new_zeros(1, length - n)], dim=1)
    return value

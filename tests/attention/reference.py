"""An independent eager implementation of attention knockout (paper Eq. 3-4), for tests only.

It shares nothing with vlmflow's backend: roles come from token strings, the mask is an additive
float mask built per layer, attention is plain softmax(QK^T)V, and generation recomputes the
whole sequence at every step (no KV cache).

The mask is the models' own rule, written out from the token strings and the layer's arguments:
causal; a run of Gemma 3's image soft tokens sees itself bidirectionally (BLOCK_TOKENS); a
sliding-window layer (`sliding_window` W) lets query p see key k only when p - k < W, also
inside such a run; then the knockout.

Two model features are rebuilt here from their definitions: soft-capped scores (Gemma 2,
`softcap`: tanh(s / cap) * cap before the mask) and the prefix-LM mask (PaliGemma: prompt
positions whose `token_type_ids` is 0 see each other both ways; the rest is causal).

Cross-attention layers (the config's `cross_attention_layers`; keys: the image's vision states,
queries: every text position) take the model's own additive mask, no causal bias; a knockout
whose sources include `image` sets the attention output of its target rows to 0 there.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "vlmflow_test_reference"
FILL = "token_type_ids"  # the per-position input whose generated positions hold 1, not 0
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
    "<|IMG_PATCH|>",  # Aya Vision (generic resolver: its begin / end markers are text)
    "<start_of_image>",
    "<image_soft_token>",
    "<end_of_image>",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
    "<|image|>",
} | {f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)}
# tokens whose consecutive runs attend to each other bidirectionally (Gemma 3's image blocks)
BLOCK_TOKENS = {"<image_soft_token>"}


def blocks_of(tokens: list[str], total: int) -> list[int]:
    """Per position the index of its run of BLOCK_TOKENS, -1 outside every run."""
    out, run = [], -1
    for i in range(total):
        inside = i < len(tokens) and tokens[i] in BLOCK_TOKENS
        if inside and (i == 0 or out[-1] < 0):
            run += 1
        out.append(run if inside else -1)
    return out


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
    if layer in STATE.get("layers", ()):
        cut = set().union(*(tgt for src, tgt in STATE["pairs"] if "image" in src))
        for p in range(query.shape[2]):
            if STATE["roles"][p] in cut:
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
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    n = key.shape[2]
    bias = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    block = [p for p in STATE.get("bidirectional", ()) if p < n]
    if block:
        bias[torch.tensor(block)[:, None], torch.tensor(block)[None, :]] = 0.0
    blocks = STATE.get("blocks", [-1] * n)[:n]
    window = kwargs.get("sliding_window")
    for p in range(n):
        for k in range(n):
            if blocks[p] >= 0 and blocks[p] == blocks[k]:
                bias[p, k] = 0.0
            if window and p - k >= window:
                bias[p, k] = float("-inf")
    bias = bias[-query.shape[2] :]
    layer = getattr(module, "layer_idx", None)
    if layer is not None and layer in STATE.get("layers", ()):
        roles = STATE["roles"][:n]
        for src, tgt in STATE["pairs"]:
            for p in range(n - query.shape[2], n):
                if roles[p] in tgt:
                    for k in range(n):
                        if roles[k] in src:
                            bias[p - (n - query.shape[2]), k] = float("-inf")
    weights = torch.softmax(scores.float() + bias, dim=-1).to(query.dtype)
    STATE.setdefault("weights", {})[layer] = weights
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, eager_mask)


def greedy_without_cache(
    model, inputs, tokens, max_new_tokens, src, tgt, layers, pairs=(), suppress=()
):
    """Greedy decoding recomputing the full sequence each step, knockout applied per layer:
    keys of roles `src` blocked for queries of roles `tgt`, and likewise for each further
    (src, tgt) pair of `pairs`, at `layers`. Token ids in `suppress` are never chosen (as
    `generate(suppress_tokens=...)`: an image placeholder generated would be read as an image
    slot when the whole sequence runs again with the image).

    Returns the new ids; STATE["rows"][t] then holds, per layer, the attention row of the
    position that predicted token t (heads averaged, over every position before it)."""
    ids = inputs["input_ids"]
    n = ids.shape[1]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    STATE.clear()
    types = inputs.get("token_type_ids")
    text = model.config.get_text_config()
    STATE.update(
        cross=set(getattr(text, "cross_attention_layers", None) or ()),
        pairs=[(set(src), set(tgt))] + [(set(a), set(b)) for a, b in pairs],
        layers=set(layers),
        roles=roles_of(tokens, n, n + max_new_tokens),
        blocks=blocks_of(tokens, n + max_new_tokens),
        rows=[],
        # prefix-LM (PaliGemma): the prompt positions of token type 0; generated tokens are 1
        bidirectional=[]
        if types is None or model.config.model_type != "paligemma"
        else (types[0] == 0).nonzero().flatten().tolist(),
    )
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            grown = {k: _grow(k, v, n, ids.shape[1]) for k, v in extra.items()}
            logits = model(input_ids=ids, use_cache=False, **grown).logits
            # the last position's attention row per layer, heads averaged: (n + step,)
            rows = {layer: w[0, :, -1].float().mean(0) for layer, w in STATE["weights"].items()}
            STATE["rows"].append(rows)
            last = logits[0, -1].clone()
            last[list(suppress)] = float("-inf")
            nxt = int(last.argmax())
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
    if value.dim() == 2:  # generated positions: 0, or 1 for FILL
        return torch.cat([value, value.new_full((1, length - n), int(name == FILL))], dim=1)
    return value

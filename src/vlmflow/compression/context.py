"""Image re-prompting (paper Sec. 5): answer follow-up questions from a compressed visual context.

After the model has described the image once, the context keeps, as a pruned KV cache, the
prompt's prefix (attention sinks, BOS), its query tokens, and per layer the top-k fraction of
image tokens by the attention they received from the generated description. Cached keys already
carry their rotary positions, so follow-up tokens continue at the original sequence length (for
M-RoPE at the original next position of all three axes), and the image is never read again.

Ranking (`rank`): an image token's score in a layer is the attention it got from the generated
tokens (heads averaged), aggregated over those tokens by `sum` (total attention received) or
`max` (the most any one generated token gave it). Summing favours image tokens that every
generated token visits a little, which in early layers are background "sink" tokens; the
maximum keeps the tokens some word actually looked at. On vlmflow-tiny's fixed scenes, 13 of
256 tokens per layer, the share of kept tokens that lie on an object is 0.65 by sum and 0.76
by max (chance 0.24); README's Table 1 gives both rankings' answers.

A description of one token (the model ends at once, or `max_new_tokens=1`) has no generated
query: its token was predicted at the last prompt position and never read back. Then that
position's attention (in each layer, heads averaged) ranks the image tokens: it is the attention
that produced the whole description, the one-token case of the paper's "attention from generated
tokens" (Sec. 5). Equal scores keep the earlier image token (`top_indices`).

Cross-attention models (Llama 3.2 Vision: `TokenRoles.cross_attention_layers`): the image's
keys are its vision states, held in the cross-attention layers' cache, not prompt positions.
There the image tokens ranked and kept are the image's vision states (`ImageSpan.state_keys`:
CLS and patch states of its real tiles), scored by the same rule over the cross-attention rows
(`CaptureResult.tile_rows`); `kept[layer]` of a cross-attention layer lists state indices. The
self-attention layers keep every prompt position of the context (the `<|image|>` position
included). A follow-up token's cross-attention mask row is the one every prompt token after the
image has, all of the image's real tiles: over the kept states that is no mask at all, so the
follow-up runs without one (padding tiles, masked for every token, are never kept), one token
per forward call (without a mask, SDPA would take a call of several tokens as causal over the
states). At k = 1 this is the full prompt's computation; a cross-attention layer that keeps no
state is skipped, as transformers skips it for a prompt without an image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from vlmflow.defaults import DEFAULT_PROMPT
from vlmflow.errors import VlmflowError
from vlmflow.models.loading import Handle, ImageLike
from vlmflow.roles import Role

RANKINGS = ("sum", "max")


@dataclass(frozen=True)
class Answer:
    text: str
    ids: tuple[int, ...]
    context_tokens: int  # cached positions the question attended to (per layer)
    full_tokens: int  # positions of the uncompressed context
    seconds: float


@dataclass
class CompressedContext:
    """A pruned KV cache of one image's description prompt, ready for follow-up questions."""

    handle: Handle
    keys: list[torch.Tensor]  # per layer (1, h_kv, c, d)
    values: list[torch.Tensor]  # per layer (1, h_kv, c, d)
    kept: list[list[int]]  # per layer: kept prompt positions, ascending (len c)
    next_position: torch.Tensor  # (axes, 1): position id of the first follow-up token
    full_tokens: int
    k: float
    context_text: str
    description: str
    # per layer: (n_image,) attention each image position got from the generated tokens;
    # kept so that smaller contexts can be cut from a larger one without describing again
    scores: list[torch.Tensor] | None = None
    image_positions: list[int] | None = None
    rank: str = "sum"  # how `scores` aggregate the generated tokens' attention (RANKINGS)
    # cross-attention models: the image's vision states (`ImageSpan.state_keys`), which the
    # cross-attention layers' `kept` and `scores` are over
    state_keys: list[int] | None = None

    @property
    def cross(self) -> frozenset[int]:
        """The layers whose `kept` are vision states (`TokenRoles.cross_attention_layers`)."""
        return self.handle.roles.cross_attention_layers()

    @property
    def context_tokens(self) -> int:
        return len(self.kept[0]) if self.kept else 0

    def pruned(self, k: float, keep_query: bool = True) -> CompressedContext:
        """A smaller context cut from this one: top `k` image tokens per layer, with the prefix
        (attention sinks) and, unless `keep_query` is False, the query tokens."""
        if self.scores is None or self.image_positions is None:
            raise VlmflowError("this context has no ranking (a loaded file): compress again")
        if not 0.0 <= k <= self.k:
            raise VlmflowError(f"k={k} must be between 0 and this context's k={self.k}")
        image = set(self.image_positions)
        n_keep = round(k * len(self.image_positions))
        states = self.state_keys or []
        keys, values, kept = [], [], []
        for layer, score in enumerate(self.scores):
            if layer in self.cross:  # the top vision states
                top = top_indices(score, round(k * len(states))).tolist()
                chosen = {states[i] for i in top}
                positions = [p for p in self.kept[layer] if p in chosen]
            else:
                chosen = {self.image_positions[i] for i in top_indices(score, n_keep).tolist()}
                if self.cross:  # the image's one prompt position is kept whole there
                    chosen = image
                positions = [
                    p
                    for p in self.kept[layer]
                    if p in chosen or (p not in image and (keep_query or p < self.first_image))
                ]
            index = torch.tensor([self.kept[layer].index(p) for p in positions], dtype=torch.long)
            keys.append(self.keys[layer][:, :, index.to(self.keys[layer].device)])
            values.append(self.values[layer][:, :, index.to(self.values[layer].device)])
            kept.append(positions)
        return replace(self, keys=keys, values=values, kept=kept, k=k)

    @property
    def first_image(self) -> int:
        return min(self.image_positions) if self.image_positions else self.full_tokens

    def kv_bytes(self) -> int:
        """Bytes held by the kept keys and values over all layers."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def question_ids(self, question: str) -> torch.Tensor:
        """(1, q) token ids that continue the context with a new user turn and the answer cue."""
        return continuation_ids(self.handle, question)

    def ask(self, question: str, max_new_tokens: int = 16, stop_at_eos: bool = True) -> Answer:
        """Greedy answer from the compressed context, without the image (paper Sec. 5).

        Args:
            question: a new user turn after the describe prompt.
            max_new_tokens: at most this many tokens (>= 1).
            stop_at_eos: stop at the model's or the tokenizer's end-of-sequence token.

        Returns:
            An `Answer`: `text` (decoded, stripped), token `ids`, `context_tokens` (cached
            positions per layer it attended to) of `full_tokens`, and `seconds` taken.

        Raises:
            VlmflowError: `max_new_tokens` < 1, or a question that spells a special token
                (`<image>`, ...).
        """
        from transformers import DynamicCache

        if max_new_tokens < 1:
            raise VlmflowError(f"max_new_tokens={max_new_tokens}: answer with at least 1 token")
        start = time.perf_counter()
        model = self.handle.model
        ids = self.question_ids(question).to(self.handle.device)
        cache = DynamicCache(ddp_cache_data=list(zip(self.keys, self.values, strict=True)))
        eos = self.handle.eos_ids(tokenizer=True)
        out: list[int] = []
        position = self.next_position.to(self.handle.device)  # (axes, 1)
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                q = ids.shape[1]
                # a cross-attention layer called without a mask would take a call of several
                # tokens as causal over the vision states (SDPA's default): one token per call
                width = 1 if self.cross else q
                for first in range(0, q, width):
                    steps = torch.arange(first, min(first + width, q), device=ids.device)
                    pos = position + steps[None, :]  # (axes, w)
                    position_ids = pos if pos.shape[0] == 1 else pos[:, None, :]  # (1|3, [1,] w)
                    logits = model(
                        input_ids=ids[:, first : first + width],
                        position_ids=position_ids,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    ).logits
                token = int(logits[0, -1].argmax())
                out.append(token)
                if stop_at_eos and token in eos:
                    break
                position = position + q
                ids = torch.tensor([[token]], device=ids.device)
        text = self.handle.decode(torch.tensor([out]))[0]
        seconds = time.perf_counter() - start
        return Answer(text, tuple(out), self.context_tokens, self.full_tokens, seconds)

    def save(self, path: Any) -> None:
        """Write the context to `path` atomically (`vlmflow.compression.storage`: safetensors
        with a checksum that `load_context` verifies); OSError when it cannot be written."""
        from vlmflow.compression.storage import save_context

        save_context(self, path)


def image_scores(rows: torch.Tensor, rank: str) -> torch.Tensor:
    """(n_image,) float32 score of each image token in one layer, from `rows` (steps, n_image):
    the image attention row of each step, heads averaged (step 0: the last prompt position,
    steps t >= 1: generated token t-1), aggregated by `rank` ("sum" or "max").

    The generated tokens' rows (steps >= 1) rank the image tokens. A description of one token
    has none (its only token was predicted at the last prompt position, and generation stopped
    before that token was read back): then the last prompt position's row ranks them, the
    attention that predicted the description's first (and only) token; with one row "sum" and
    "max" agree. Raises VlmflowError when `rows` has no step at all.
    """
    if rows.shape[0] == 0:
        raise VlmflowError("no attention row was captured: describe with max_new_tokens >= 1")
    ranked = rows[1:] if rows.shape[0] > 1 else rows[:1]  # (generated or 1, n_image)
    ranked = ranked.float()
    return ranked.sum(0) if rank == "sum" else ranked.max(0).values


def top_indices(score: torch.Tensor, n_keep: int) -> torch.Tensor:
    """(n_keep,) indices of the highest scores, highest first; ties keep the earlier index, so
    the kept set never depends on the sorting kernel."""
    return torch.sort(score, descending=True, stable=True).indices[:n_keep]


def continuation_ids(handle: Handle, question: str) -> torch.Tensor:
    """Token ids of a second user turn (`question`) plus the generation cue, after any first
    turn: the difference between the prompt rendered with and without that turn
    (`TokenRoles.render`: the chat template; PaliGemma: the question and its newline).

    Raises VlmflowError when `question` spells a special token (`Handle.check_text`) or the
    rendering rewrites earlier turns."""
    handle.check_text(question)
    first = (1, DEFAULT_PROMPT)
    one = handle.roles.render([first], add_generation_prompt=False)
    two = handle.roles.render([first, (0, question)], add_generation_prompt=True)
    if not two.startswith(one):
        raise VlmflowError(
            "this chat template rewrites earlier turns: re-prompting needs a plain one"
        )
    ids = handle.processor.tokenizer(two[len(one) :], add_special_tokens=False, return_tensors="pt")
    return ids["input_ids"]  # (1, q)


def _context_text(handle: Handle, prompt: str) -> str:
    return handle.roles.render([(1, prompt)], add_generation_prompt=False)


def next_positions(handle: Handle, inputs: Any, length: int) -> torch.Tensor:
    """(axes, 1) position id of the token after the first `length` prompt positions
    (`TokenRoles.positions`: M-RoPE axes, PaliGemma's count from 1)."""
    positions = handle.roles.positions(handle.model, inputs, length)  # (b, n) | (3, b, n)
    if positions.dim() == 2:
        positions = positions[None]
    return positions[:, 0, -1:].cpu() + 1  # (axes, 1)


def compress(
    handle: Handle,
    image: ImageLike,
    k: float = 0.05,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 64,
    rank: str = "sum",
) -> CompressedContext:
    """Describe `image` once (greedy, at most `max_new_tokens` >= 1 tokens), rank image tokens
    per layer by the description's attention (`rank`, and a one-token description: module
    docstring, `image_scores`), keep the top `k` fraction of them (rounded to whole tokens).

    Paper Sec. 5 (efficient visual processing): the kept context is the prompt's prefix
    (attention sinks), its query tokens and per layer the top-k image tokens.

    Sliding-window layers (Gemma 3) keep their kept positions like every layer; a follow-up
    token there sees the last window - 1 slots of the compressed context (its window counts
    cached slots, as transformers counts them), which are the original positions only at k = 1.

    Args:
        handle: the loaded model.
        image: one image (path, URL, PIL image or array, as `Handle.prepare` takes).
        k: the fraction of image tokens kept per layer, 0 <= k <= 1 (0.05 keeps 5%).
        prompt: the describe prompt whose KV cache is compressed.
        max_new_tokens: length limit of the description that ranks the image tokens.
        rank: "sum" (attention summed over the generated tokens) or "max".

    Returns:
        A `CompressedContext`: per layer keys and values (1, h_kv, c, d) of the c kept prompt
        positions (`kept`; vision states at the cross-attention layers of a cross-attention
        model, module docstring), the position id the follow-up continues at, the description;
        `.ask(question)` answers without the image, `.save(path)` writes it.

    Raises:
        VlmflowError: k outside [0, 1], an unknown `rank`, `max_new_tokens` < 1, or not
            exactly one image.
    """
    import vlmflow
    from vlmflow.attention.batch import whole_cache

    if max_new_tokens < 1:
        raise VlmflowError(
            f"max_new_tokens={max_new_tokens}: compressing ranks image tokens by the attention "
            "of a description, give max_new_tokens >= 1"
        )
    if not 0.0 <= k <= 1.0:
        raise VlmflowError(f"k={k} is not a fraction: give 0 <= k <= 1 (0.05 keeps 5%)")
    if rank not in RANKINGS:
        raise VlmflowError(f"rank={rank!r} is unknown: use one of {', '.join(RANKINGS)}")
    context_text = _context_text(handle, prompt)
    batch = handle.prepare(image, prompt)
    layout = batch.layout
    if len(layout.images[0]) != 1:
        raise VlmflowError("re-prompting compresses one image: give exactly one")
    cross = handle.roles.cross_attention_layers()
    if cross:  # the image's keys are vision states in the cross-attention layers' cache
        capture = vlmflow.Capture.of(fractions=False, tile_layers="all", dtype="float32")
    else:
        capture = vlmflow.Capture.of(fractions=False, image_layers="all", dtype="float32")
    with vlmflow.session(handle, batch, capture=capture) as s, torch.inference_mode():
        out = handle.model.generate(
            **batch.inputs,
            past_key_values=whole_cache(),  # kept positions are sliced by absolute index
            do_sample=False,
            max_new_tokens=max_new_tokens,
            return_dict_in_generate=True,
        )
    generated = out.sequences[:, layout.length :]
    result = s.capture
    # the context ends where the generation cue begins: it is a prefix of the prompt
    context_len = _context_length(handle, batch, context_text)
    codes = layout.codes[0, :context_len]
    image_pos = result.image_positions[0]  # (n_image,)
    n_keep = round(k * int(image_pos.numel()))
    always = [p for p in range(context_len) if codes[p] != Role.IMAGE]
    states = list(layout.images[0][0].state_keys)  # (v_image,) cross-attention models only
    keys, values, kept, scores = [], [], [], []
    for layer, (lk, lv, *_) in enumerate(out.past_key_values):
        if layer in cross:  # the top vision states of the image (its real tiles)
            rows = result.tile_rows[layer][:, 0, states]  # (steps, v_image)
            score = image_scores(rows, rank)
            positions = sorted(states[i] for i in top_indices(score, round(k * len(states))))
        elif cross:  # self-attention layers: the prompt's positions kept whole
            score = torch.ones(int(image_pos.numel()))
            positions = list(range(context_len))
        else:
            score = image_scores(result.image_rows[layer][:, 0], rank)  # (n_image,)
            positions = sorted(always + image_pos[top_indices(score, n_keep)].tolist())
        index = torch.tensor(positions, dtype=torch.long, device=lk.device)
        keys.append(lk[:, :, index].clone())  # (1, h_kv, c, d)
        values.append(lv[:, :, index].clone())
        kept.append(positions)
        scores.append(score)
    return CompressedContext(
        handle=handle,
        keys=keys,
        values=values,
        kept=kept,
        next_position=next_positions(handle, batch.inputs, context_len),
        full_tokens=context_len,
        k=k,
        context_text=context_text,
        description=handle.decode(generated)[0],
        scores=scores,
        image_positions=image_pos.tolist(),
        rank=rank,
        state_keys=states if cross else None,
    )


def _context_length(handle: Handle, batch: Any, context_text: str) -> int:
    """Positions of the prompt that belong to the closed first turn (no generation cue)."""
    full_text = batch.texts[0]
    if not full_text.startswith(context_text):
        raise VlmflowError("this chat template rewrites the turn: re-prompting needs a plain one")
    cue = full_text[len(context_text) :]
    cue_ids = handle.processor.tokenizer(cue, add_special_tokens=False)["input_ids"] if cue else []
    length = batch.layout.length - len(cue_ids)
    if batch.input_ids[0, length:].tolist() != cue_ids:
        raise VlmflowError("cannot find where this chat template's answer cue starts")
    return length

"""Token sequences of prompts and answers (the checkpoint's chat template), collated into
batches with answer-only labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmflow.default_model.processor import IMAGE_TOKEN, NUM_IMAGE_TOKENS
from vlmflow.default_model.training.batches import Example
from vlmflow.default_model.training.config import CAPTION_PROMPT
from vlmflow.errors import VlmflowError


class Prompts:
    """Token ids of prompts and answers, built with the checkpoint's own chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.end_id: int = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._prompts: dict[tuple[str, bool], list[int]] = {}
        self._turns: dict[str, list[int]] = {}

    def prompt(self, question: str, followup: bool = False) -> list[int]:
        """The image prompt asking `question`; with `followup`, the image goes with the describe
        prompt and `question` is a second user turn (how `vlmflow.compress` continues)."""
        key = (question, followup)
        if key not in self._prompts:
            image: list[dict[str, str]] = [{"type": "image"}]
            turns = (
                [(image, question)] if not followup else [(image, CAPTION_PROMPT), ([], question)]
            )
            messages = [
                {"role": "user", "content": [*extra, {"type": "text", "text": words}]}
                for extra, words in turns
            ]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * NUM_IMAGE_TOKENS)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompts[key] = list(ids)
        return self._prompts[key]

    def turn(self, question: str) -> list[int]:
        """Ids between one answer's `<|im_end|>` and the next answer: `question` as a new user
        turn, as the chat template writes it after an assistant reply."""
        if question not in self._turns:
            said = [
                {"role": "user", "content": [{"type": "text", "text": "?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
            ]
            asked = [*said, {"role": "user", "content": [{"type": "text", "text": question}]}]
            render = self.tokenizer.apply_chat_template
            before = render(said[:1], add_generation_prompt=True, tokenize=False) + "A<|im_end|>"
            after = render(asked, add_generation_prompt=True, tokenize=False)
            if not after.startswith(before):
                raise VlmflowError("the chat template does not extend a conversation by appending")
            text = after[len(before) :]
            self._turns[question] = list(
                self.tokenizer(text, add_special_tokens=False)["input_ids"]
            )
        return self._turns[question]

    def answer(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [*ids, self.end_id]


def collate(
    prompts: Prompts, examples: Sequence[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, labels)`, each `(b, t)`; -100 off answers."""
    rows = []
    for ex in examples:
        p, a = prompts.prompt(ex.question, ex.followup), prompts.answer(ex.answer)
        seq, lab = p + a, [-100] * len(p) + a
        for question, answer in ex.more:
            p, a = prompts.turn(question), prompts.answer(answer)
            seq, lab = seq + p + a, lab + [-100] * len(p) + a
        rows.append((seq, lab))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (seq, lab) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def collate_alone(
    prompts: Prompts, examples: Sequence[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, position_ids, labels)` with a block mask:
    ids, positions and labels `(b, t)`, mask `(b, 1, t, t)` bool (True: may attend). The turns
    of an `alone` example share its prompt up to the last image token and each continue from
    there: they see that prefix and themselves, at the positions they would have if alone.
    Other examples are plain causal rows, as `collate` lays them out."""
    rows = []
    for ex in examples:
        if not ex.alone:
            ids, _, labels = collate(prompts, [ex], pad_id)
            n = ids.shape[1]
            rows.append((ids[0].tolist(), labels[0].tolist(), list(range(n)), [0] * n))
            continue
        full = prompts.prompt(ex.question)
        cut = max(i for i, t in enumerate(full) if t == prompts.image_token_id) + 1
        seq, lab, pos, owner = full[:cut], [-100] * cut, list(range(cut)), [0] * cut
        for k, (question, answer) in enumerate([(ex.question, ex.answer), *ex.more]):
            asked = prompts.prompt(question)
            if asked[:cut] != full[:cut]:
                raise VlmflowError("the chat template puts question text before the image")
            p, a = asked[cut:], prompts.answer(answer)
            seq, lab = seq + p + a, lab + [-100] * len(p) + a
            pos += range(cut, cut + len(p) + len(a))
            owner += [k + 1] * (len(p) + len(a))
        rows.append((seq, lab, pos, owner))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    mask[:, 0, :, 0] = True  # padding rows see the first token, so no row is all -inf
    for i, (seq, lab, pos, owner) in enumerate(rows):
        n = len(seq)
        ids[i, :n], labels[i, :n] = torch.tensor(seq), torch.tensor(lab)
        positions[i, :n] = torch.tensor(pos)
        who = torch.tensor(owner)  # (n,): 0 shared prefix, k the k-th turn
        visible = (who[:, None] == who[None, :]) | (who[None, :] == 0)
        mask[i, 0, :n, :n] = torch.tril(visible)
    return ids, mask, positions, labels

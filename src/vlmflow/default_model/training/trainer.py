"""The trainer: frozen SmolLM2 with the trainable parts, its schedule, state and generation."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from vlmflow.default_model.smollm2 import LanguageModelParts
from vlmflow.default_model.training.batches import (
    Example,
    examples_for_step,
    grounding_scenes_for_step,
)
from vlmflow.default_model.training.config import CAPTION_PROMPT, VISION_DIM, TrainConfig
from vlmflow.default_model.training.features import FeatureCache, vocabulary_names
from vlmflow.default_model.training.losses import StepLosses, cell_loss
from vlmflow.default_model.training.modules import Heads, LoraLinear, Projector, add_lora
from vlmflow.default_model.training.sequences import Prompts, collate, collate_alone
from vlmflow.errors import VlmflowError


class Trainer:
    """Frozen SmolLM2 (bf16) + trainable projector, LoRA and training-only heads."""

    def __init__(
        self,
        config: TrainConfig,
        cache: FeatureCache,
        parts: LanguageModelParts | None = None,
        lm_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        from transformers import LlamaForCausalLM

        from vlmflow.default_model.processor import add_image_token, build_processor
        from vlmflow.default_model.smollm2 import load_smollm2
        from vlmflow.scenes.layout import COLUMNS, ROWS

        self.config = config
        self.cache = cache
        parts = parts or load_smollm2()
        add_image_token(parts.tokenizer)
        build_processor(parts.tokenizer)  # sets the chat template
        self.prompts = Prompts(parts.tokenizer)
        self.pad_id = int(parts.config.pad_token_id)
        lm: Any = LlamaForCausalLM(parts.config)  # on CPU: rotary buffers are not in the state dict
        lm.load_state_dict(parts.state_dict, strict=False)
        lm.tie_weights()
        self.vocab = int(parts.config.vocab_size)
        lm.requires_grad_(False)
        self.lm = lm.to(lm_dtype).eval()
        self.lm_dtype = lm_dtype
        torch.manual_seed(config.seed)
        sample = torch.from_numpy(np.asarray(cache.features[: min(len(cache), 256)], np.float32))
        flat = sample.reshape(-1, VISION_DIM)
        self.projector = Projector(flat.mean(0), flat.std(0).clamp_min(1e-3))
        self.heads = Heads()
        self.lora: dict[str, LoraLinear] = {}
        more = config.quiz_lora
        if config.lora_rank > 0:
            self.lora = add_lora(self.lm, config.lora_rank, config.lora_alpha, config.seed, more)
        # LoRA from the start, and LoRA that joins in the quiz phase: no gradient (so no
        # optimizer state) before it
        joins: dict[bool, list[LoraLinear]] = {False: [], True: []}
        for name, module in self.lora.items():
            joins[name.rsplit(".", 1)[-1] in more].append(module)
        self.quiz_lora = joins[True]
        self.name_ids = self._name_prototype_ids()
        self.where_ids = self._word_ids([*ROWS, *COLUMNS])  # rows, then columns
        groups: list[dict[str, Any]] = [
            {
                "params": [*self.projector.parameters(), *self.heads.parameters()],
                "lr": config.lr_projector,
            },
        ]
        for modules in (joins[False], joins[True]):
            if modules:
                params = [p for m in modules for p in (m.lora_A, m.lora_B)]
                groups.append({"params": params, "lr": config.lr_lora})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.base_lrs = [float(g["lr"]) for g in groups]
        self.step = 0
        self.elapsed = 0.0

    def autocast(self) -> torch.autocast:
        """bfloat16 compute for a bfloat16 language model; plain float32 otherwise."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.lm_dtype == torch.bfloat16)

    def _name_prototype_ids(self) -> list[list[int]]:
        return self._word_ids(vocabulary_names())

    def _word_ids(self, words: Iterable[str]) -> list[list[int]]:
        """Token ids of each word as it appears mid-sentence (with its leading space)."""
        tok = self.prompts.tokenizer
        return [tok(" " + word, add_special_tokens=False)["input_ids"] for word in words]

    def _mean_embeddings(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """(len(ids), 576): mean input embedding of each word's tokens."""
        table = self.lm.model.embed_tokens.weight.float()
        return torch.stack([table[list(i)].mean(0) for i in ids])

    def prototypes(self) -> torch.Tensor:
        """(1 + types, 576): background prototype, then mean input embedding of each name."""
        return torch.cat([self.heads.background[None], self._mean_embeddings(self.name_ids)])

    # -- state

    def trainable_state(self) -> dict[str, Any]:
        return {
            "projector": self.projector.state_dict(),
            "heads": self.heads.state_dict(),
            "lora": {n: {"A": m.lora_A.data, "B": m.lora_B.data} for n, m in self.lora.items()},
        }

    def save(self, path: Path, history: list[dict[str, float]]) -> None:
        state = {
            "config": self.config.to_json(),
            "step": self.step,
            "elapsed": self.elapsed,
            "trainable": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "history": history,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> list[dict[str, float]]:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not self.config.extends(TrainConfig.from_json(state["config"])):
            raise VlmflowError(
                f"{path} was written with other settings: use the same flags (a finished run "
                "may add --focus-steps) or a new --state"
            )
        trainable = state["trainable"]
        self.projector.load_state_dict(trainable["projector"])
        self.heads.load_state_dict(trainable["heads"])
        saved_lora = trainable["lora"]
        for name, module in self.lora.items():
            if name not in saved_lora and module in self.quiz_lora:
                continue  # saved before the quiz phase: starts from its initial value
            module.lora_A.data.copy_(saved_lora[name]["A"])
            module.lora_B.data.copy_(saved_lora[name]["B"])
        optimizer = state["optimizer"]
        missing = len(self.optimizer.param_groups) - len(optimizer["param_groups"])
        if missing:  # the quiz-phase LoRA group, which the saved state never had
            groups = [dict(g) for g in optimizer["param_groups"]]
            start = sum(len(g["params"]) for g in groups)
            for group in self.optimizer.param_groups[-missing:]:
                count = len(group["params"])
                fresh = {k: v for k, v in group.items() if k != "params"}
                groups.append({**fresh, "params": list(range(start, start + count))})
                start += count
            optimizer = {"state": optimizer["state"], "param_groups": groups}
        self.optimizer.load_state_dict(optimizer)
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        history: list[dict[str, float]] = state["history"]
        return history

    # -- one step

    def learning_rate_factor(self, step: int) -> float:
        """Per phase: linear warm-up; then constant (alignment) or cosine decay to 10%."""
        cfg = self.config
        if step < cfg.align_steps:
            return min(1.0, (step + 1) / cfg.warmup)
        step -= cfg.align_steps
        length = cfg.steps
        later_phases = (cfg.focus_steps, cfg.quiz_steps, cfg.where_steps, cfg.check_steps)
        for later in later_phases:  # each its own schedule
            if step < length:
                break
            step, length = step - length, later
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, length - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def image_embeddings(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected image tokens `(b, 256, 576)` and their cell labels `(b, 256)`."""
        feats = torch.from_numpy(np.asarray(self.cache.features[list(indices)], np.float32))
        cells = torch.from_numpy(np.asarray(self.cache.cells[list(indices)], np.int64))
        return self.projector(feats), cells

    def embed(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the image tokens' rows replaced by projected features."""
        table = self.lm.model.embed_tokens
        is_image = ids == self.prompts.image_token_id  # (b, t)
        embeds = table(ids.clamp(max=self.vocab - 1)).to(image.dtype)  # (b, t, 576)
        return embeds.masked_scatter(is_image[..., None], image.reshape(-1, image.shape[-1]))

    def losses(
        self, examples: Sequence[Example], extra: Sequence[int] = ()
    ) -> tuple[torch.Tensor, StepLosses]:
        """Text loss on `examples`; grounding and position losses on them plus `extra` scenes."""
        cfg = self.config
        scenes = [e.scene for e in examples]
        every, cells = self.image_embeddings([*scenes, *extra])  # (b + e, 256, 576)
        text = self._text_loss(examples, every[: len(scenes)]) if examples else torch.zeros(())
        # grounding: cosine of each image token with the name prototypes
        protos = F.normalize(self.prototypes(), dim=-1)  # (1 + k, 576)
        sims = F.normalize(every, dim=-1) @ protos.T / cfg.temperature  # (b + e, 256, 1 + k)
        per_cell = F.cross_entropy(sims.flatten(0, 1), cells.flatten(), reduction="none")
        weight = torch.where(cells.flatten() > 0, 1.0, cfg.background_weight)
        grounding = (per_cell * weight).sum() / weight.sum()
        # position: each token's 3x3 cell, so positions stay linearly readable
        position = cell_loss(self.heads.position(every))
        total = text + cfg.grounding_weight * grounding + cfg.position_weight * position
        where = torch.zeros(())
        if cfg.where_steps and self.step >= cfg.where_start:
            # the same cells, read against the position words' embeddings (see TrainConfig)
            words = F.normalize(self._mean_embeddings(self.where_ids), dim=-1)  # (6, 576)
            where = cell_loss(F.normalize(every, dim=-1) @ words.T / cfg.temperature)
            total = total + cfg.where_weight * where
        losses = (total, text, grounding, position, where)
        return total, StepLosses(*(float(x.item()) for x in losses))

    def _text_loss(self, examples: Sequence[Example], image: torch.Tensor) -> torch.Tensor:
        """Answer cross-entropy for `(b, 256, 576)` image tokens, through the language model."""
        positions = None
        if any(e.alone for e in examples):
            ids, mask, positions, labels = collate_alone(self.prompts, examples, self.pad_id)
        else:
            ids, mask, labels = collate(self.prompts, examples, self.pad_id)
        with self.autocast():
            hidden = self.lm.model(
                inputs_embeds=self.embed(ids, image), attention_mask=mask, position_ids=positions
            ).last_hidden_state  # (b, t, 576)
            targets = labels[:, 1:]
            keep = targets != -100
            logits = self.lm.lm_head(hidden[:, :-1][keep])  # (answer tokens, vocab)
        # mean per answer, then over answers: a 3-token "Yes." weighs as much as a description
        per_token = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        owner = torch.arange(len(examples))[:, None].expand_as(targets)[keep]  # (answer tokens,)
        sums = torch.zeros(len(examples)).index_add(0, owner, per_token)
        counts = torch.zeros(len(examples)).index_add(0, owner, torch.ones_like(per_token))
        return (sums / counts.clamp_min(1)).mean()

    @property
    def in_language_phase(self) -> bool:
        return self.step >= self.config.align_steps

    def train_step(self) -> StepLosses:
        factor = self.learning_rate_factor(self.step)
        bases = self.base_lrs
        if self.config.check_steps and self.step >= self.config.check_start:
            bases = [bases[0], *[self.config.check_lr_lora] * (len(bases) - 1)]  # LoRA groups
        for group, base in zip(self.optimizer.param_groups, bases, strict=True):
            group["lr"] = base * factor
        examples: list[Example] = []
        if self.in_language_phase:
            examples = examples_for_step(
                self.cache, self.config, self.step - self.config.align_steps
            )
        extra = grounding_scenes_for_step(self.cache, self.config, self.step)
        for module in self.quiz_lora:  # not the frozen base layer inside it
            module.lora_A.requires_grad_(self.step >= self.config.quiz_start)
            module.lora_B.requires_grad_(self.step >= self.config.quiz_start)
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = self.losses(examples, extra)
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.step += 1
        return parts

    # -- export and evaluation

    def export(
        self, path: Path, metadata: dict[str, str], lora_dtype: torch.dtype = torch.float32
    ) -> str:
        from vlmflow.default_model.weights import save_weights

        lora = {name: (m.lora_A.data, m.lora_B.data) for name, m in self.lora.items()}
        scale = next(iter(self.lora.values())).scale if self.lora else 1.0
        return save_weights(path, self.projector.export(), lora, scale, metadata, lora_dtype)

    @torch.no_grad()
    def describe(self, features: np.ndarray, max_new_tokens: int = 128) -> list[str]:
        """Greedy answers to "Describe the image." for `(b, 256, 384)` features."""
        return self.generate(features, [CAPTION_PROMPT] * len(features), max_new_tokens)

    @torch.no_grad()
    def next_token_logits(self, features: np.ndarray, questions: Sequence[str]) -> torch.Tensor:
        """`(b, vocab)` logits of the first answer token for `(b, 256, 384)` features."""
        image = self.projector(torch.from_numpy(np.asarray(features, np.float32)))
        examples = [Example(0, q, "") for q in questions]
        ids, mask, _ = collate(self.prompts, examples, self.pad_id)  # right-padded
        last = mask.sum(1) - 2  # the answer "" still adds <|im_end|>: drop it
        with self.autocast():
            hidden = self.lm.model(inputs_embeds=self.embed(ids, image), attention_mask=mask)
            rows = hidden.last_hidden_state[torch.arange(len(ids)), last]  # (b, 576)
            logits: torch.Tensor = self.lm.lm_head(rows).float()
        return logits

    def first_tokens(self, features: np.ndarray, questions: Sequence[str]) -> list[str]:
        """The greedy first answer token per question (enough to read a yes/no answer)."""
        best = self.next_token_logits(features, questions).argmax(-1)  # (b,)
        return [self.prompts.tokenizer.decode([int(t)]) for t in best]

    @torch.no_grad()
    def generate(
        self, features: np.ndarray, questions: Sequence[str], max_new_tokens: int
    ) -> list[str]:
        image = self.projector(torch.from_numpy(np.asarray(features, np.float32)))
        prompts = [self.prompts.prompt(q) for q in questions]
        width = max(len(p) for p in prompts)
        # left padding, so every row's next token comes right after its prompt
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with self.autocast():
            out = self.lm.generate(
                inputs_embeds=self.embed(ids, image),
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.prompts.end_id,
                pad_token_id=self.pad_id,
            )
        return [self.prompts.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]

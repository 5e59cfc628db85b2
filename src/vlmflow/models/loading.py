"""`vlmflow.load()`: a model, its processor and its family's `TokenRoles`, ready for sessions."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT
from vlmflow.errors import VlmflowError
from vlmflow.models.families import (
    SUPPORTED_MODEL_TYPES,
    GenericRoles,
    TokenRoles,
    generic_for,
    resolver_for,
)
from vlmflow.models.layout import PromptLayout

_FLASH = ("flash_attention_2", "flash_attention_3", "flash_attention_4")

ImageLike = Any  # PIL.Image.Image | str | Path | http(s) URL | numpy array (see vlmflow.images)


@dataclass(frozen=True)
class Prompt:
    """Model inputs for a batch of (images, text) prompts, with the role of every position."""

    inputs: Any  # transformers BatchFeature on the model's device
    layout: PromptLayout
    texts: tuple[str, ...]

    @property
    def input_ids(self) -> torch.Tensor:  # (b, n)
        return self.inputs["input_ids"]


@dataclass
class Handle:
    """A loaded VLM: model, processor, family resolver and the attention backend in use."""

    name: str
    model: Any
    processor: Any
    roles: TokenRoles
    family: str
    attn_implementation: str

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def max_positions(self) -> int | None:
        """The language model's position limit: `max_position_embeddings`, times the factor of
        a scaled rotary embedding (linear, dynamic, YaRN, ...); None if unstated."""
        text = self.model.config.get_text_config()
        value = getattr(text, "max_position_embeddings", None)
        if not isinstance(value, int) or value <= 0:
            return None
        rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None)
        if isinstance(rope, dict):
            kind = rope.get("rope_type") or rope.get("type")
            factor = rope.get("factor")
            if kind not in (None, "default", "mrope") and isinstance(factor, int | float):
                return int(value * max(1.0, float(factor)))
        return value

    def check_length(self, tokens: int, new_tokens: int = 0) -> None:
        """Refuse a sequence of `tokens` prompt tokens plus `new_tokens` past the model's
        positions (positions beyond it give empty or garbled text): raises VlmflowError."""
        limit = self.max_positions
        if limit is None or tokens + new_tokens <= limit:
            return
        if tokens >= limit:
            raise VlmflowError(
                f"the prompt is {tokens} tokens, past this model's {limit} positions: shorten "
                "the text or use smaller / fewer images"
            )
        raise VlmflowError(
            f"{tokens} prompt tokens + {new_tokens} new tokens exceed this model's {limit} "
            f"positions: set max_new_tokens to at most {limit - tokens}"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(
        self, images: ImageLike | Sequence[ImageLike], prompt: str = DEFAULT_PROMPT
    ) -> Prompt:
        """One user turn: the image(s), then the text, as the family writes a prompt (the
        model's chat template; PaliGemma: as its processor writes it, `TokenRoles.render`).

        Args:
            images: one image or a list of them: a file path, an http(s) URL, a PIL image or a
                numpy array (H, W[, C]), read by `vlmflow.images.read_image`.
            prompt: the text after the images (default "Describe the image.").

        Returns:
            A `Prompt` of batch 1: `inputs` (the processor's tensors on the model's device,
            `input_ids` (1, n)) and `layout` with the role of every position (prefix, image,
            query; paper Sec. 3) and each image's span and token grids.

        Raises:
            VlmflowError: an image that cannot be read exactly, a text that spells one of the
                tokenizer's special tokens (e.g. "<image>"), or an input the family's processor
                refuses.
        """
        seq = list(images) if isinstance(images, list | tuple) else [images]
        return self.prepare_batch([(seq, prompt)])

    def prepare_batch(self, items: Sequence[tuple[Sequence[ImageLike], str]]) -> Prompt:
        """A left-padded batch of prompts, each with its own images and text.

        Images are read by `vlmflow.images.read_image` (upright, stored mode kept). Raises
        VlmflowError for an image that cannot be read exactly, a text that spells one of the
        tokenizer's special tokens, and an input the family's processor refuses.
        """
        from vlmflow.images import read_image

        texts, sent, per_row = [], [], []
        for images, text in items:
            self.check_text(text)
            pil = [read_image(i) for i in images]
            texts.append(self.roles.render([(len(pil), text)], add_generation_prompt=True))
            sent.append(self.roles.processor_text(len(pil), text))
            per_row.append(pil)
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        kwargs: dict[str, Any] = {"text": sent, "return_tensors": "pt", "padding": True}
        if any(per_row):
            kwargs["images"] = self.roles.processor_images(per_row)
        try:
            inputs = self.processor(**kwargs)
        except ValueError as err:  # the model's own limits (aspect ratio, size, ...)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise VlmflowError(
                f"the {self.family} processor refuses this input ({first}): crop, pad or resize "
                "the image to a shape this model accepts"
            ) from None
        inputs.pop("labels", None)  # training targets (PaliGemma's processor), never an input
        self.check_length(int(inputs["input_ids"].shape[1]))
        image_inputs = self.roles.image_inputs(inputs, per_row)
        layout = self.roles.layout(inputs["input_ids"], inputs.get("attention_mask"), image_inputs)
        dtype = self.model.dtype
        moved = {
            k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }
        inputs.update(moved)
        return Prompt(inputs, layout, tuple(texts))

    @functools.cached_property
    def _special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens as text, longest first (read once per handle)."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        decoder = getattr(tokenizer, "added_tokens_decoder", {})
        specials = {str(t) for t in decoder.values() if getattr(t, "special", False)}
        specials.update(str(t) for t in getattr(tokenizer, "all_special_tokens", ()))
        return tuple(sorted((t for t in specials if t), key=len, reverse=True))

    def check_text(self, text: str) -> None:
        """Refuse user text that spells a special token (`<image>`, `<|vision_start|>`, ...):
        raises VlmflowError naming the token. Every user text (prompt or follow-up question)
        goes through it.

        Processors expand image placeholders by string replacement over the whole prompt and
        tokenizers read special tokens anywhere, so such text would not reach the model as the
        text typed: it would become image slots or control tokens (or end in a count mismatch).
        """
        for token in self._special_tokens:
            if token in text:
                raise VlmflowError(
                    f"the prompt contains {token!r}, a special token of this model's tokenizer "
                    "that would not reach the model as text: reword it (e.g. spell it with "
                    "spaces)"
                )

    def generate(self, prompt: Prompt, **kwargs: Any) -> Any:
        """`model.generate` on `prompt` (inside a session or not): greedy (`do_sample=False`)
        and `max_new_tokens=32` unless given; every other `generate()` keyword passes through.

        Returns (b * k, new) generated ids, k = `num_return_sequences` (row r answers prompt row
        r // k); with `return_dict_in_generate=True` the output object, its `sequences` cut to
        the generated ids the same way. Raises VlmflowError for a keyword that is one of the
        prompt's own inputs (`input_ids`, `pixel_values`, ...) and for `max_new_tokens` < 1.
        """
        clash = sorted(set(kwargs) & set(prompt.inputs))
        if clash:
            raise VlmflowError(
                f"generate() runs the prepared prompt: drop {', '.join(clash)} (prepare another"
                " prompt to run other inputs)"
            )
        settings = {"do_sample": False, "max_new_tokens": 32, **kwargs}
        new = settings["max_new_tokens"]
        if new is not None and int(new) < 1:
            raise VlmflowError(f"max_new_tokens={new}: generate at least 1 new token")
        n = prompt.layout.length
        if new is not None:
            self.check_length(n, int(new))
        with torch.inference_mode():
            out = self.model.generate(**prompt.inputs, **settings)
        if isinstance(out, torch.Tensor):
            return out[:, n:]
        out.sequences = out.sequences[:, n:]
        return out

    def eos_ids(
        self, generate_kwargs: Mapping[str, Any] | None = None, *, tokenizer: bool = False
    ) -> set[int]:
        """Token ids that end a generation: those `generate()` stops at (`eos_token_id` of
        `generate_kwargs` when given there, else the generation config's), and with
        `tokenizer` also the tokenizer's own end-of-sequence token."""
        eos = (generate_kwargs or {}).get("eos_token_id", self.model.generation_config.eos_token_id)
        ids = set(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
        tok = getattr(self.processor, "tokenizer", self.processor)
        if tokenizer and tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        return ids

    def decode(self, ids: torch.Tensor) -> list[str]:
        """(b, n) token ids -> b texts, special tokens skipped, outer whitespace stripped."""
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text (leading spaces kept, special tokens as written), so that
        joined they read as the decoded sequence: labels for per-token views."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        pieces, before = [], ""
        for n in range(1, len(ids) + 1):
            # decoding alone drops a SentencePiece token's leading space: take the difference
            text = str(tokenizer.decode([int(i) for i in ids[:n]], skip_special_tokens=False))
            pieces.append(
                text[len(before) :]
                if text.startswith(before)
                else str(tokenizer.decode([int(ids[n - 1])], skip_special_tokens=False))
            )
            before = text
        return pieces


def _model_type(path: str) -> str:
    folder = Path(path)
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise VlmflowError(f"{path} has no config.json: point --model at a checkpoint folder")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise VlmflowError(
                f"{config} is not valid JSON ({type(err).__name__}): restore the checkpoint's "
                "config.json"
            ) from None
        if not isinstance(data, dict):
            raise VlmflowError(f"{config} must hold a JSON object: restore the checkpoint's file")
        return str(data.get("model_type", ""))
    try:
        from transformers import AutoConfig

        return str(AutoConfig.from_pretrained(path).model_type)
    except Exception as err:  # network, missing repo, bad id: all end the same way for users
        raise VlmflowError(
            f"cannot load model {path!r} ({type(err).__name__}): give a local checkpoint folder "
            "or a hub id reachable from this machine"
        ) from None


def load(
    path_or_id: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    attn: str = "sdpa",
    device_map: str | dict[str, Any] | None = None,
) -> Handle:
    """Load a supported VLM with vlmflow's attention backend on its language model.

    Args:
        path_or_id: a checkpoint folder or hub id of a supported family, or "vlmflow-tiny"
            (the embedded default model, assembled on first use). A model type without a
            family module loads through the generic resolver (roles only, no map layout) when
            its image token is found, with a one-line `GenericResolverWarning` naming the type.
        device: where the model goes ("cpu", "cuda", "cuda:1", ...); ignored with `device_map`.
        dtype: "auto" (the checkpoint's; float32 on CPU), or a torch dtype or its name
            ("bfloat16", "float16", "float32").
        attn: "sdpa" (default) routes the language model through the registered "vlmflow"
            attention function (plain SDPA outside sessions); "eager" or a flash-attention
            name load the model as transformers would, and sessions with knockout or capture
            are then refused.
        device_map: e.g. "auto" spreads a model larger than one device over several
            (accelerate); sessions stay exact because each layer reads the role codes on its
            own device.

    Returns:
        A `Handle` (model in eval mode, processor, the family's token-role resolver).

    Raises:
        VlmflowError: an unknown `attn`, a family vlmflow does not support (no family module
            and no findable image token, or an encoder-decoder model), a checkpoint that
            cannot be read, a missing attention kernel, or "vlmflow-tiny" in an install
            without the default model's pieces.

    Paper: the setting of Sec. 3 (a VLM whose language model reads image tokens through
    attention); the backend is what Sec. 4.1's knockout and the captures act through.
    """
    from transformers import AutoModelForImageTextToText

    from vlmflow import validate
    from vlmflow.attention import backend
    from vlmflow.models.processors import load_processor

    if device_map is None:
        validate.torch_device(device)  # a device this machine lacks fails before weights load
    dtype = validate.torch_dtype(dtype)
    name = str(path_or_id)
    if name == DEFAULT_MODEL:
        name = str(_default_checkpoint())
    model_type = _model_type(name)
    resolver = (
        resolver_for(model_type)
        if model_type in SUPPORTED_MODEL_TYPES
        else generic_for(name, model_type)
    )
    text_attn = backend.NAME if attn == "sdpa" else attn
    if attn not in ("sdpa", "eager", *_FLASH):
        raise VlmflowError(f"unknown attention {attn!r}: use sdpa (default), eager or flash")
    impl = {"text_config": text_attn, "vision_config": "sdpa" if attn != "eager" else "eager"}
    torch_dtype: Any = (
        dtype if not isinstance(dtype, str) or dtype == "auto" else getattr(torch, dtype)
    )
    if torch_dtype == "auto" and str(device) == "cpu":
        torch_dtype = torch.float32
    try:
        extra: dict[str, Any] = {"device_map": device_map} if device_map is not None else {}
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype=torch_dtype, attn_implementation=impl, **extra
        )
        processor = load_processor(name)
    except ImportError as err:
        raise VlmflowError(
            f"cannot load {name!r} with attn={attn!r} ({str(err).splitlines()[0][:120]}):"
            " install that kernel or use attn='sdpa'"
        ) from None
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise VlmflowError(f"cannot load model {name!r}: {first}") from None
    except Exception as err:  # a truncated or garbled weights file (safetensors' own errors)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise VlmflowError(
            f"cannot read the weights of {name!r} ({type(err).__name__}: {first}): the "
            "checkpoint is damaged; save or copy it again"
        ) from None
    if device_map is None:
        model = model.to(torch.device(device))  # type: ignore[arg-type]
    model = model.eval()
    roles = resolver(processor, model.config)
    if isinstance(roles, GenericRoles):
        roles.announce()
    return Handle(
        name=str(path_or_id),
        model=model,
        processor=processor,
        roles=roles,
        family=resolver.family,
        attn_implementation=text_attn,
    )


def _default_checkpoint() -> Path:
    try:
        from vlmflow.default_model import ensure_checkpoint  # type: ignore[attr-defined]
    except ImportError:
        raise VlmflowError(
            f"the default model {DEFAULT_MODEL} is not available in this install: pass --model PATH"
        ) from None
    return Path(ensure_checkpoint())

"""Tiny random VLMs of every supported family, built from configs, saved as standard checkpoints.

They load through `AutoProcessor` / `AutoModelForImageTextToText` exactly like hub checkpoints,
so tests, benchmarks and the CLI exercise the same code paths users run, with no download.
Weights are random (seeded): generations are meaningless but deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmflow.models.processors import has_torchvision, image_only, save_processor

WORDS = """
describe the image what is in this picture a an of and with on at to it there are
left right top bottom center middle small large red green blue yellow dog cat car
bus person tree house apple ball cup chair table yes no how many one two three is
color object objects near behind front under above beside photo scene shows some
many few big little white black brown sky road water grass
""".split()
# Without torchvision the video-capable processors get no video processor (see processors.py).
_NO_VIDEO: dict[str, Any] = {} if has_torchvision() else {"video_processor": None}

TINY_FAMILIES = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "internvl",
    "idefics3",
    "smolvlm",
    "mllama",
)
# The families among them whose image enters the text only through cross-attention layers: the
# prompt holds no image tokens with a place on the picture, so maps, localization, top-k and
# compress (which read attention rows over prompt image positions) refuse them.
CROSS_ATTENTION_FAMILIES = ("mllama",)

# A plain user turn: the images, then the text. Each family's template differs only in how
# it spells the image placeholder and the turn markers.
_TEMPLATE = (
    "{{ bos }}{% for message in messages %}{{ message['role'] | upper }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %} {{ image }}{% elif item['type'] == 'text' %}"
    " {{ item['text'] }}{% endif %}{% endfor %}{% endif %} {{ eos_turn }} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _chat_template(image: str, bos: str = "<s>", eos_turn: str = "</s>") -> str:
    return (
        _TEMPLATE.replace("{{ image }}", image)
        .replace("{{ bos }}", bos)
        .replace("{{ eos_turn }}", eos_turn)
    )


def _tokenizer(specials: list[str], extra: dict[str, str] | None = None) -> Any:
    """A word-level tokenizer with the family's special tokens, wrapped as a fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", "<pad>", "<s>", "</s>"]
    words = [*WORDS, "USER", "ASSISTANT", ":", ".", "?", ",", "Frame1"]
    vocab = {tok: i for i, tok in enumerate([*base, *specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in base + specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=extra or {},
    )
    fast.padding_side = "left"
    return fast


def _video_capable(cls: type) -> type:
    """The processor class itself, or its image-only variant where torchvision is missing."""
    return cls if has_torchvision() else image_only(cls)


def _text_config(model_type: str, vocab_size: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 1,
        "tie_word_embeddings": False,
        "initializer_range": 0.2,  # larger random weights: varied, input-sensitive generations
        **extra,
    }


def _clip_vision(image_size: int = 56) -> dict[str, Any]:
    return {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 14,
        "projection_dim": 32,
    }


def _llava(out: Path, anyres: bool) -> tuple[Any, Any]:
    """LLaVA-1.5, or LLaVA-NeXT (`anyres`) with a 2x2 grid of 56 px crops."""
    import transformers

    prefix = "LlavaNext" if anyres else "Llava"
    image_processor_class = "LlavaNextImageProcessorPil" if anyres else "CLIPImageProcessorPil"
    tok = _tokenizer(["<image>"])
    extra: dict[str, Any] = {"projector_hidden_act": "gelu"}
    image_extra: dict[str, Any] = {}
    if anyres:
        pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112]]
        extra = {"image_grid_pinpoints": pinpoints}
        image_extra = {"image_grid_pinpoints": pinpoints}
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=_clip_vision(),
        text_config=_text_config("llama", len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        **extra,
    )
    image_processor = getattr(transformers, image_processor_class)(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, **image_extra
    )
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_chat_template("<image>"),
    )
    return config, processor


def _qwen_vl(out: Path, version: str) -> tuple[Any, Any]:
    from transformers import Qwen2VLImageProcessorPil

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(specials)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    vision: dict[str, Any] = {
        "depth": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    if version == "2":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLProcessor as Processor

        vision |= {"embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}
        text_type = "qwen2_vl_text"
    else:
        from transformers import Qwen2_5_VLConfig as Config  # type: ignore[assignment]
        from transformers import Qwen2_5_VLProcessor as Processor  # type: ignore[assignment]

        vision |= {
            "hidden_size": 32,
            "out_hidden_size": 64,
            "intermediate_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
        text_type = "qwen2_5_vl_text"
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    config = Config(
        vision_config=vision,
        text_config=_text_config(text_type, len(tok), rope_parameters=rope),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2
    )
    processor = _video_capable(Processor)(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=_chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
        **_NO_VIDEO,
    )
    return config, processor


def _internvl(out: Path) -> tuple[Any, Any]:
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor

    specials = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    extra = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tok = _tokenizer(specials, extra)
    config = InternVLConfig(
        vision_config={
            "model_type": "internvl_vision",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": [56, 56],
            "patch_size": [14, 14],
        },
        text_config=_text_config("qwen2", len(tok)),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = _video_capable(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=4,
        chat_template=_chat_template("<IMG_CONTEXT>"),
        **_NO_VIDEO,
    )
    return config, processor


def _idefics(out: Path, family: str) -> tuple[Any, Any]:
    grid_tags = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tok = _tokenizer(specials + grid_tags)
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
    }
    image_size = {"longest_edge": 112}
    if family == "idefics3":
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
        from transformers import Idefics3Processor as Processor

        vision["model_type"] = "idefics3_vision"
    else:
        from transformers import SmolVLMConfig as Config  # type: ignore[assignment]
        from transformers import SmolVLMImageProcessorPil as ImageProcessor  # type: ignore[assignment]
        from transformers import SmolVLMProcessor as Processor  # type: ignore[assignment]

        vision["model_type"] = "smolvlm_vision"
    config = Config(
        vision_config=vision,
        text_config=_text_config("llama", len(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    image_processor = ImageProcessor(
        size=image_size, max_image_size={"longest_edge": 56}, do_image_splitting=True
    )
    kwargs: dict[str, Any] = _NO_VIDEO if family == "smolvlm" else {}
    processor = _video_capable(Processor)(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=4,
        chat_template=_chat_template("<image>", eos_turn="<end_of_utterance>"),
        **kwargs,
    )
    return config, processor


def _mllama(out: Path) -> tuple[Any, Any]:
    """Llama 3.2 Vision: 5 decoder layers, cross-attention at 1 and 3; up to 2 tiles of 28 px
    (4 patches + CLS each)."""
    from transformers import MllamaConfig, MllamaImageProcessorPil, MllamaProcessor

    tok = _tokenizer(["<|image|>"])
    config = MllamaConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "max_num_tiles": 2,
            "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
            "intermediate_layers_indices": [0],
            "vision_output_dim": 64,
        },
        text_config=_text_config(
            "mllama_text_model",
            len(tok),
            num_hidden_layers=5,
            cross_attention_layers=[1, 3],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        image_token_index=tok.convert_tokens_to_ids("<|image|>"),
    )
    image_processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2)
    processor = MllamaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=_chat_template("<|image|>"),
    )
    return config, processor


def _open_gates(model: Any) -> None:
    """Llama 3.2 Vision's tanh gates start at zero, which would cut the image off: random."""
    import torch

    for name, param in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            with torch.no_grad():
                param.uniform_(0.5, 1.5)


# random values for parameters a random build leaves at a constant that hides the image
_AFTER_BUILD: dict[str, Callable[[Any], None]] = {"mllama": _open_gates}

_BUILDERS: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "llava": lambda out: _llava(out, anyres=False),
    "llava_next": lambda out: _llava(out, anyres=True),
    "qwen2_vl": lambda out: _qwen_vl(out, "2"),
    "qwen2_5_vl": lambda out: _qwen_vl(out, "2.5"),
    "internvl": _internvl,
    "idefics3": lambda out: _idefics(out, "idefics3"),
    "smolvlm": lambda out: _idefics(out, "smolvlm"),
    "mllama": _mllama,
}


# Processor init arguments that the image-only save must keep.
_PROCESSOR_FIELDS = ("image_seq_length", "image_seq_len")


def build_tiny(family: str, out: Path | str, seed: int = 0) -> Path:
    """Write a random tiny checkpoint of `family` to `out` and return the folder."""
    import torch
    from transformers import AutoModelForImageTextToText

    if family not in _BUILDERS:
        from vlmflow.errors import VlmflowError

        raise VlmflowError(
            f"no tiny model for family {family!r}: choose one of {', '.join(TINY_FAMILIES)}"
        )
    out = Path(out)
    config, processor = _BUILDERS[family](out)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    if family in _AFTER_BUILD:
        _AFTER_BUILD[family](model)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extra = {k: getattr(processor, k) for k in _PROCESSOR_FIELDS if hasattr(processor, k)}
    save_processor(processor, out, **extra)
    return out

"""Tiny random VLMs of every supported family (and of the model types the generic resolver and
the guard are tested on), built from configs, saved as standard checkpoints.

They load through `AutoProcessor` / `AutoModelForImageTextToText` exactly like hub checkpoints,
so tests, benchmarks and the CLI exercise the same code paths users run, with no download.
Weights are random (seeded): generations are meaningless but deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmflow.models.processors import (
    has_torchvision,
    image_only,
    processor_class,
    save_processor,
)

WORDS = """
describe the image what is in this picture a an of and with on at to it there are
left right top bottom center middle small large red green blue yellow dog cat car
bus person tree house apple ball cup chair table yes no how many one two three is
color object objects near behind front under above beside photo scene shows some
many few big little white black brown sky road water grass
""".split()
# Gemma 3's sliding window in the tiny model: wider than the tests' prompts plus generations, so
# that every layer sees the image (tests of windows smaller than the sequence set their own)
GEMMA3_WINDOW = 128
# Without torchvision the video-capable processors get no video processor (see processors.py).
_NO_VIDEO: dict[str, Any] = {} if has_torchvision() else {"video_processor": None}

TINY_FAMILIES = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "internvl",
    "idefics3",
    "smolvlm",
    "gemma3",
    "paligemma",
    "paligemma2",
    "llava_onevision",
    "mistral3",
    "mllama",
)
# Model types with no family module that load through the generic resolver (roles only).
GENERIC_FAMILIES = ("aya_vision",)
# Model types whose decoder layers vlmflow refuses (the guard): chunked attention (Llama 4),
# linear attention that never calls the attention function (Qwen3.5).
REFUSED_FAMILIES = ("llama4", "qwen3_5")
# The families among them whose image enters the text only through cross-attention layers: the
# prompt holds no image tokens with a place on the picture, so localization and top-k (which
# read attention rows over prompt image positions) refuse them.
CROSS_ATTENTION_FAMILIES = ("mllama",)
# The families among them with a mixture of experts: an expert multiplies the rows routed to it
# together, and which rows those are depends on the image, so values that are equal in
# arithmetic may differ in their last bits (the kernel's rounding follows the row count).
MOE_FAMILIES = ("qwen3_vl_moe",)
# The families whose prompt holds blocks of positions attending both ways (PaliGemma's prefix,
# Gemma 3's image soft tokens): chunked prefill may not cut such a block under a session.
BIDIRECTIONAL_FAMILIES = ("gemma3", "paligemma", "paligemma2")

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


def _tokenizer(
    specials: list[str], extra: dict[str, str] | None = None, plain: tuple[str, ...] = ()
) -> Any:
    """A word-level tokenizer with the family's special tokens, wrapped as a fast tokenizer;
    `plain` adds ordinary tokens matched before the whitespace split (e.g. "\\n")."""
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
    tok.add_tokens([AddedToken(t, normalized=False) for t in plain])
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


def _vision(**extra: Any) -> dict[str, Any]:
    """A tiny ViT: 56 px pictures in 14 px patches (a 4 x 4 grid), two layers."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
        **extra,
    }


def _clip_vision(image_size: int = 56) -> dict[str, Any]:
    return _vision(model_type="clip_vision_model", image_size=image_size, projection_dim=32)


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


_QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_QWEN_TEMPLATE = _chat_template("<|vision_start|><|image_pad|><|vision_end|>")


def _qwen_token_ids(tok: Any) -> dict[str, Any]:
    """The config's special token ids of the Qwen-VL families."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _qwen_processor(cls: type, tok: Any, patch_size: int) -> Any:
    """A Qwen-VL family's processor `cls` with 2x2-merged patches of `patch_size` px, pictures
    resized to between 2 x 2 and 4 x 4 merged tokens' worth of pixels."""
    from transformers import Qwen2VLImageProcessorPil

    side = 2 * patch_size  # pixels across one merged token
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=(2 * side) ** 2,
        max_pixels=(4 * side) ** 2,
        patch_size=patch_size,
        merge_size=2,
    )
    return _video_capable(cls)(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=_QWEN_TEMPLATE,
        **_NO_VIDEO,
    )


def _qwen_vl(out: Path, version: str) -> tuple[Any, Any]:
    tok = _tokenizer(_QWEN_SPECIALS)
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
        **_qwen_token_ids(tok),
    )
    return config, _qwen_processor(Processor, tok, patch_size=14)


def _qwen3_vl(out: Path, moe: bool) -> tuple[Any, Any]:
    """Qwen3-VL (or its MoE variant: 4 experts of width 64, 2 per token): 16 px patches merged
    2x2, deepstack features from both vision blocks added after decoder layers 0 and 1,
    interleaved M-RoPE."""
    from transformers import Qwen3VLProcessor

    tok = _tokenizer(_QWEN_SPECIALS)
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,  # an 8 x 8 grid of learned positions, resampled
        "deepstack_visual_indexes": [0, 1],
        "initializer_range": 0.2,  # deepstack features as large as the image embeddings
    }
    rope = {
        "rope_type": "default",
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
        "rope_theta": 10000.0,
    }
    text: dict[str, Any] = {"head_dim": 16, "rope_parameters": rope}
    if moe:
        from transformers import Qwen3VLMoeConfig as Config

        text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}
        text_type = "qwen3_vl_moe_text"
    else:
        from transformers import Qwen3VLConfig as Config  # type: ignore[assignment]

        text_type = "qwen3_vl_text"
    config = Config(
        vision_config=vision,
        text_config=_text_config(text_type, len(tok), **text),
        **_qwen_token_ids(tok),
    )
    return config, _qwen_processor(Qwen3VLProcessor, tok, patch_size=16)


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
    image_size = {"longest_edge": 112}
    if family == "idefics3":
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
        from transformers import Idefics3Processor as Processor
    else:
        from transformers import SmolVLMConfig as Config  # type: ignore[assignment]
        from transformers import SmolVLMImageProcessorPil as ImageProcessor  # type: ignore[assignment]
        from transformers import SmolVLMProcessor as Processor  # type: ignore[assignment]

    config = Config(
        vision_config=_vision(model_type=f"{family}_vision"),
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


def _gemma3(out: Path) -> tuple[Any, Any]:
    """Gemma 3: 16 image soft tokens (a 4 x 4 grid over the squashed 56 px picture) between
    `<start_of_image>` and `<end_of_image>`; three sliding-window layers and one full one."""
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    extra = {"boi_token": specials[0], "eoi_token": specials[1], "image_token": specials[2]}
    tok = _tokenizer(specials, extra)
    layers = ["sliding_attention"] * 3 + ["full_attention"]
    text = _text_config(
        "gemma3_text",
        len(tok),
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=GEMMA3_WINDOW,
        layer_types=layers,
    )
    config = Gemma3Config(
        vision_config=_vision(model_type="siglip_vision_model"),
        text_config=text,
        mm_tokens_per_image=16,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
        tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": 56, "width": 56})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=16,
        chat_template=_chat_template(specials[0]),
    )
    return config, processor


def _paligemma(out: Path, version: int) -> tuple[Any, Any]:
    """PaliGemma (Gemma decoder) or PaliGemma 2 (Gemma 2: soft-capped attention, every other
    layer a sliding window, here wider than any test sequence). No chat template: the processor
    writes the prompt itself."""
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessorPil

    tok = _tokenizer(["<image>"], {"image_token": "<image>"}, plain=("\n",))
    image_processor = SiglipImageProcessorPil(size={"height": 56, "width": 56})
    image_processor.image_seq_length = 16  # type: ignore[attr-defined]  # (56 / 14) ** 2 patches
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    vocab = len(processor.tokenizer)  # the processor adds its <loc....> and <seg...> tokens
    text: dict[str, Any] = {"head_dim": 16, "hidden_activation": "gelu_pytorch_tanh"}
    if version == 2:
        text |= {
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 2.0,  # small: the cap changes the weights visibly
            "final_logit_softcapping": 30.0,
            "sliding_window": 1024,
        }
    config = PaliGemmaConfig(
        vision_config=_vision(model_type="siglip_vision_model"),
        text_config=_text_config("gemma" if version == 1 else "gemma2", vocab, **text),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=vocab,
        projection_dim=64,
        hidden_size=64,
    )
    return config, processor


def _llava_onevision(out: Path) -> tuple[Any, Any]:
    """LLaVA-OneVision: a SigLIP tower of 4 x 4 patches per 56 px view, crops up to 2 x 2."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    tok = _tokenizer(["<image>", "<video>"])
    pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112]]
    config = LlavaOnevisionConfig(
        vision_config=_vision(model_type="siglip_vision_model"),
        text_config=_text_config("qwen2", len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints
    )
    processor = _video_capable(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=_chat_template("<image>"),
        **_NO_VIDEO,
    )
    return config, processor


def _mistral3(out: Path) -> tuple[Any, Any]:
    """Mistral 3: a Pixtral tower of 14 px patches, merged 2 x 2, images up to 112 px."""
    from transformers import Mistral3Config, PixtralImageProcessorPil

    specials = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tok = _tokenizer(specials)
    config = Mistral3Config(
        vision_config=_vision(model_type="pixtral", image_size=112, head_dim=16),
        text_config=_text_config("mistral", len(tok), sliding_window=None, head_dim=16),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": 112}, patch_size={"height": 14, "width": 14}
    )
    pixtral = processor_class("PixtralProcessor")
    assert pixtral is not None  # transformers defines it
    processor = pixtral(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        spatial_merge_size=2,
        chat_template=_chat_template("[IMG]"),
    )
    return config, processor


def _aya_vision(out: Path) -> tuple[Any, Any]:
    """Aya Vision: `<|START_OF_IMG|>`, `TILE_GLOBAL`, 4 `<|IMG_PATCH|>` (one 56 px tile, no
    crops), `<|END_OF_IMG|>`, on a Cohere 2 decoder whose layers are all full attention."""
    from transformers import AyaVisionConfig, AyaVisionProcessor, GotOcr2ImageProcessorPil

    specials = [
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    ]
    tok = _tokenizer(specials)
    config = AyaVisionConfig(
        vision_config=_vision(model_type="siglip_vision_model", vision_use_head=False),
        text_config=_text_config("cohere2", len(tok), layer_types=["full_attention"] * 4),
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        vision_feature_select_strategy="full",
    )
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, max_patches=1)
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        img_size=56,
        downsample_factor=2,
        chat_template=_chat_template("<image>"),
    )
    return config, processor


def _qwen3_5(out: Path) -> tuple[Any, Any]:
    """Qwen3.5: hybrid decoder, linear attention (gated delta rule) in layers 0-2, softmax
    attention in layer 3; Qwen2-VL-style image tokens."""
    from transformers import Qwen3_5Config, Qwen3VLProcessor

    tok = _tokenizer(_QWEN_SPECIALS)
    rope = {
        "rope_type": "default",
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
    }
    text = _text_config(
        "qwen3_5_text",
        len(tok),
        head_dim=16,
        rope_parameters=rope,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    config = Qwen3_5Config(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 16,
        },
        text_config=text,
        **_qwen_token_ids(tok),
    )
    return config, _qwen_processor(Qwen3VLProcessor, tok, patch_size=14)


def _llama4(out: Path) -> tuple[Any, Any]:
    """Llama 4: chunked attention (chunks of 8 tokens, shorter than any prompt) in layers 0-2,
    full attention in layer 3."""
    from transformers import Llama4Config, Llama4Processor

    specials = ["<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>"]
    tok = _tokenizer(specials)
    text = _text_config(
        "llama4_text",
        len(tok),
        head_dim=16,
        intermediate_size_mlp=128,
        num_local_experts=2,
        attention_chunk_size=8,
        no_rope_layers=[1, 1, 1, 0],
    )
    config = Llama4Config(
        vision_config=_vision(
            vision_output_dim=32, projector_input_dim=64, projector_output_dim=64
        ),
        text_config=text,
        boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
        eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"),
        image_token_index=tok.convert_tokens_to_ids("<|patch|>"),
    )
    if has_torchvision():
        from transformers import Llama4ImageProcessor as ImageProcessor
    else:  # Llama 4's image processor needs torchvision: a stand-in, for text-only prompts
        from transformers import GotOcr2ImageProcessorPil as ImageProcessor  # type: ignore[assignment]
    processor = Llama4Processor(
        image_processor=ImageProcessor(),
        tokenizer=tok,
        patch_size=14,
        chat_template=_chat_template("<|image|>"),
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


def _random_projection(model: Any) -> None:
    """Gemma 3 initialises its image projection to zeros (the image would be irrelevant)."""
    import torch

    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(0.0, 0.2)


_BUILDERS: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "llava": lambda out: _llava(out, anyres=False),
    "llava_next": lambda out: _llava(out, anyres=True),
    "qwen2_vl": lambda out: _qwen_vl(out, "2"),
    "qwen2_5_vl": lambda out: _qwen_vl(out, "2.5"),
    "qwen3_vl": lambda out: _qwen3_vl(out, moe=False),
    "qwen3_vl_moe": lambda out: _qwen3_vl(out, moe=True),
    "internvl": _internvl,
    "idefics3": lambda out: _idefics(out, "idefics3"),
    "smolvlm": lambda out: _idefics(out, "smolvlm"),
    "gemma3": _gemma3,
    "paligemma": lambda out: _paligemma(out, 1),
    "paligemma2": lambda out: _paligemma(out, 2),
    "llava_onevision": _llava_onevision,
    "mistral3": _mistral3,
    "aya_vision": _aya_vision,
    "qwen3_5": _qwen3_5,
    "llama4": _llama4,
    "mllama": _mllama,
}
# after the random initialisation: weights a family's own init leaves at zero
_FINISH: dict[str, Callable[[Any], None]] = {"gemma3": _random_projection, "mllama": _open_gates}


# Processor init arguments that the image-only save must keep.
_PROCESSOR_FIELDS = (
    "image_seq_length",
    "image_seq_len",
    "num_image_tokens",
    "vision_feature_select_strategy",
    "vision_aspect_ratio",
)


def build_tiny(family: str, out: Path | str, seed: int = 0) -> Path:
    """Write a random tiny checkpoint of `family` to `out` and return the folder."""
    import torch
    from transformers import AutoModelForImageTextToText

    if family not in _BUILDERS:
        from vlmflow.errors import VlmflowError

        raise VlmflowError(
            f"no tiny model for family {family!r}: choose one of {', '.join(_BUILDERS)}"
        )
    out = Path(out)
    config, processor = _BUILDERS[family](out)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    if family in _FINISH:
        _FINISH[family](model)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extra = {k: getattr(processor, k) for k in _PROCESSOR_FIELDS if hasattr(processor, k)}
    save_processor(processor, out, **extra)
    return out

"""The default model's processor: 224 px DINOv2 preprocessing, SmolLM2 tokenizer, chat template.

The prompt format is SmolLM2's own ChatML (with its default system turn), with the image
placed before the text of the user turn, as LLaVA does: `<|im_start|>user\\n<image>\\nText`.
`LlavaProcessor` expands the single `<image>` into one token per DINOv2 patch (CLS dropped).
"""

from __future__ import annotations

from typing import Any

from vlmflow.default_model.dinov2_onnx import IMAGE_MEAN, IMAGE_STD

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 16 patches per side
NUM_IMAGE_TOKENS = GRID * GRID  # 256: the CLS token is dropped ("default" strategy)
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}"
    "{{ '" + IMAGE_TOKEN + "\\n' }}"
    "{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}"
    "{{ item['text'] }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def image_processor() -> Any:
    """Square resize to 224 px (bicubic), no crop, ImageNet normalisation as DINOv2 expects."""
    from transformers.models.clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,  # PIL bicubic
        do_center_crop=False,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def add_image_token(tokenizer: Any) -> int:
    """Register `<image>` as a special token (appended after SmolLM2's 49152); return its id."""
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return token_id


def build_processor(tokenizer: Any) -> Any:
    """A `LlavaProcessor` whose token count matches the model (256 per image)."""
    from transformers import LlavaProcessor

    tokenizer.chat_template = CHAT_TEMPLATE
    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # DINOv2's CLS token
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )

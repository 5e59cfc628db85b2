"""Processor loading that also works where torchvision is missing.

transformers only defines video processors when torchvision is installed, and the processors of
video-capable families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, SmolVLM) refuse to be built
without one, even for still images. torchvision has no CPU wheel on PyPI, so on CPU-only
machines those families get an image-only variant of their own processor class: identical text
and image handling, no `video_processor`. Everywhere else `AutoProcessor` is used unchanged.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def image_only(cls: type) -> type:
    """Subclass of a processor class that accepts `video_processor=None`."""

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return super(subclass, self).check_argument_for_proper_class(argument_name, argument)  # type: ignore[arg-type]

    def apply_chat_template(self: Any, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        # Some families fill in video defaults here (SmolVLM reads `video_processor.fps`).
        from transformers import ProcessorMixin

        return ProcessorMixin.apply_chat_template(self, conversation, *args, **kwargs)

    namespace = {
        "check_argument_for_proper_class": check_argument_for_proper_class,
        "apply_chat_template": apply_chat_template,
    }
    subclass = type(cls.__name__, (cls,), namespace)
    return subclass


def _needs_video(cls: type) -> bool:
    return "video_processor" in getattr(cls, "get_attributes", lambda: [])()


def load_processor(path: str | Path, **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained`, or the image-only variant where torchvision is missing."""
    import transformers
    from transformers import AutoProcessor

    folder = Path(path)
    config_file = folder / "processor_config.json"
    if has_torchvision() or not config_file.is_file():
        return AutoProcessor.from_pretrained(path, **kwargs)
    config = json.loads(config_file.read_text())
    cls = getattr(transformers, str(config.get("processor_class")), None)
    if cls is None or not _needs_video(cls):
        return AutoProcessor.from_pretrained(path, **kwargs)
    from transformers import AutoImageProcessor, AutoTokenizer

    image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    template_file = folder / "chat_template.jinja"
    chat_template = template_file.read_text() if template_file.is_file() else None
    skip = {"processor_class", "image_processor", "video_processor", "auto_map"}
    extra = {k: v for k, v in config.items() if k not in skip}
    return image_only(cls)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template,
        **extra,
    )


def save_processor(processor: Any, path: str | Path, **extra: Any) -> None:
    """`processor.save_pretrained`, writing image-only processors in the standard layout."""
    if getattr(processor, "video_processor", True) is not None:
        processor.save_pretrained(path)
        return
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(folder)
    image_config = processor.image_processor.to_dict()
    image_config.pop("_processor_class", None)
    config = {"image_processor": image_config, "processor_class": type(processor).__name__, **extra}
    (folder / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if processor.chat_template:
        (folder / "chat_template.jinja").write_text(processor.chat_template)

"""Processor loading that also works where torchvision is missing.

transformers only defines video processors when torchvision is installed, and the processors of
video-capable families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, SmolVLM, LLaVA-OneVision)
refuse to be built without one, even for still images. torchvision has no CPU wheel on PyPI, so
on CPU-only machines those families get an image-only variant of their own processor class:
identical text and image handling, no `video_processor`.

Pixtral's processor (Mistral 3) has no video processor, but its module imports one helper from
the torchvision image processor's module, so transformers offers only a placeholder class
without torchvision. The PIL image processor's module defines the same helper: the processor
module is imported with that module standing in for the torchvision one (for the import only),
which gives transformers' own class. Everywhere else `AutoProcessor` is used unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
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


# processor class -> (its module, the torchvision module it imports, the PIL module standing in)
_PIL_STAND_INS = {
    "PixtralProcessor": (
        "transformers.models.pixtral.processing_pixtral",
        "transformers.models.pixtral.image_processing_pixtral",
        "transformers.models.pixtral.image_processing_pil_pixtral",
    ),
}


def processor_class(name: str) -> type | None:
    """transformers' processor class `name` (None when transformers has none by that name).

    Where torchvision is missing, a class of `_PIL_STAND_INS` is imported from its own module
    with the PIL image processor's module in place of the torchvision one during the import
    (`sys.modules` is restored right after)."""
    import transformers

    if name in _PIL_STAND_INS and not has_torchvision():
        module, torchvision_module, pil_module = _PIL_STAND_INS[name]
        if module not in sys.modules:
            before = sys.modules.get(torchvision_module)
            sys.modules[torchvision_module] = importlib.import_module(pil_module)
            try:
                importlib.import_module(module)
            finally:
                if before is None:
                    del sys.modules[torchvision_module]
                else:
                    sys.modules[torchvision_module] = before
        return getattr(sys.modules[module], name)  # type: ignore[no-any-return]
    cls = getattr(transformers, name, None)
    return cls if isinstance(cls, type) else None


def _needs_video(cls: type) -> bool:
    return "video_processor" in getattr(cls, "get_attributes", lambda: [])()


def load_processor(path: str | Path, **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained`, or the image-only variant where torchvision is missing."""
    from transformers import AutoProcessor

    folder = Path(path)
    config_file = folder / "processor_config.json"
    if has_torchvision() or not config_file.is_file():
        return AutoProcessor.from_pretrained(path, **kwargs)
    config = json.loads(config_file.read_text())
    name = str(config.get("processor_class"))
    cls = processor_class(name)
    if name in _PIL_STAND_INS and cls is not None:
        return cls.from_pretrained(path, **kwargs)  # type: ignore[attr-defined]
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

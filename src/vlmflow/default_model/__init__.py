"""vlmflow-tiny: the embedded default VLM (DINOv2 ViT-S/14 + SmolLM2-135M-Instruct, llava-hf).

`ensure_checkpoint()` returns a standard checkpoint folder that loads with
`AutoProcessor.from_pretrained` / `AutoModelForImageTextToText.from_pretrained`.
"""

from vlmflow.default_model.assemble import (
    NAME,
    checkpoint_dir,
    default_cache_dir,
    ensure_checkpoint,
)

__all__ = ["NAME", "checkpoint_dir", "default_cache_dir", "ensure_checkpoint"]

"""Does the asked cell move a model's answer to a position question? For each fixed scene with
one object, the yes-minus-no logit of the first answer token to "Is there a <name> in the <cell>
of the image?" for all nine cells, and whether the object's own cell gets the largest margin.

    python scripts/position_margins.py [--model FOLDER] [--scenes N]

A model that looks the cell up has a clear maximum at the object's cell; one that has learnt
that position questions are a coin toss has small, flat margins. Loads the folder with the plain
transformers Auto classes (default: the assembled vlmflow-tiny).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from vlmflow.scenes.layout import POSITIONS
from vlmflow.scenes.questions import position_text
from vlmflow.scenes.scene import Scene


def prompt(processor: Any, question: str) -> str:
    """The chat-template text asking `question` about one image."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    text: str = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return text


def margins(processor: Any, model: Any, scene: Scene, name: str) -> list[float]:
    """Yes-minus-no first-token logits of the nine position questions about `name`, one batch."""
    tokenizer = processor.tokenizer
    texts = [prompt(processor, position_text(name, c)) for c in POSITIONS]
    tokenizer.padding_side = "left"  # so every row's last position is its answer's first token
    inputs = processor(
        images=[scene.image] * len(texts), text=texts, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]  # (9, vocab)
    yes, no = (tokenizer.convert_tokens_to_ids(w) for w in ("Yes", "No"))
    return (logits[:, yes] - logits[:, no]).tolist()


def main() -> int:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmflow.scenes.fixed import fixed_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: vlmflow-tiny)")
    parser.add_argument("--scenes", type=int, default=10, help="one-object scenes to probe")
    args = parser.parse_args()
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no checkpoint folder (config.json) there")
    if args.model is None:
        from vlmflow.default_model import ensure_checkpoint

        args.model = ensure_checkpoint()
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    own: list[float] = []
    other: list[float] = []
    top = 0
    scenes = [s for s in fixed_set() if len(s.objects) == 1][: args.scenes]
    for scene in scenes:
        obj = scene.objects[0]
        row = margins(processor, model, scene, obj.name)
        cell = POSITIONS.index(obj.position)
        own.append(row[cell])
        other += row[:cell] + row[cell + 1 :]
        top += max(range(len(row)), key=row.__getitem__) == cell
        print(f"{obj.name:>12} {obj.position:>13}: " + " ".join(f"{m:+.1f}" for m in row))
    print(
        f"{len(scenes)} scenes: mean yes-no margin {statistics.mean(own):+.2f} at the object's "
        f"cell, {statistics.mean(other):+.2f} elsewhere (sd {statistics.pstdev(other):.2f}); "
        f"largest at the object's cell in {top} of {len(scenes)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`vlmflow describe IMAGE`: greedy description, optionally under a knockout."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from vlmflow.attention.knockout import SETTINGS
from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (PNG, JPEG, ...)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="user text after the image")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--knockout", choices=sorted(SETTINGS), help="block attention src->tgt")
    parser.add_argument("--layers", default="all", help="all, from:L, only:A-B, except:A-B")
    parser.add_argument("--attn", default="sdpa", help="sdpa (default), eager or flash_attention_2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--device-map", help="'auto': spread the model over visible devices")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import vlmflow
    from vlmflow.attention.layers import Layers
    from vlmflow.errors import VlmflowError
    from vlmflow.images import read_image
    from vlmflow.validate import whole_number

    whole_number(args.max_new_tokens, "--max-new-tokens")
    read_image(args.image)  # a missing or damaged image fails before the model loads
    layers = Layers.parse(args.layers)
    if args.knockout and args.attn.startswith("flash"):
        raise VlmflowError(
            "flash-attention kernels cannot take knockout masks: use --attn sdpa (the default)"
        )
    handle = vlmflow.load(
        args.model, device=args.device, attn=args.attn, device_map=args.device_map
    )
    layers.resolve(handle.num_layers)  # fail early on an out-of-range spec
    prompt = handle.prepare(args.image, args.prompt)
    knockouts = [vlmflow.Knockout.parse(args.knockout, layers)] if args.knockout else []
    start = time.perf_counter()
    with vlmflow.session(handle, prompt, knockout=knockouts) as s:
        generated = s.generate(max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - start
    text = handle.decode(generated)[0]
    if args.json:
        out: dict[str, Any] = {
            "text": text,
            "model": args.model,
            "family": handle.family,
            "prompt": args.prompt,
            "knockout": args.knockout,
            "layers": str(layers) if args.knockout else None,
            "input_ids": prompt.input_ids[0].tolist(),
            "generated_ids": generated[0].tolist(),
            "roles": prompt.layout.counts(0) | {"generated": int(generated.shape[1])},
            "num_layers": handle.num_layers,
            "seconds": round(seconds, 4),
        }
        print(json.dumps(out))
    else:
        print(text)
    return 0

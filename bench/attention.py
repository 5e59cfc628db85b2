"""One decoder layer's prefill attention under knockout: split (no mask) vs dense mask vs plain.

    python bench/attention.py [--model vlmflow-tiny] [--images 4,12] [--repeats 20]

Calls the registered attention function (`vlmflow.attention.backend.attention`) of layer 0 on
random query/key/value tensors of the model's head shapes over the whole prompt, inside a
session with each knockout setting, once with the split path and once with the dense
(b, 1, q, kv) mask (`backend.SPLIT = False`), interleaved with transformers' plain causal SDPA.
Prints median milliseconds and the ratio to plain SDPA: the attention cost alone, without the
vision tower, the MLPs and the decode steps that dilute it in `bench/core.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import vlmflow
from core import PROMPT, images, settings
from vlmflow.attention import backend
from vlmflow.defaults import DEFAULT_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--images", default="4,12", help="images per prompt, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    handle = vlmflow.load(args.model)
    module = next(m for m in handle.model.modules() if getattr(m, "layer_idx", None) == 0)
    text = handle.model.config.get_text_config()
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    dim = text.hidden_size // heads
    results = []
    for n in (int(v) for v in args.images.split(",")):
        prompt = handle.prepare(images(n), PROMPT)
        length = prompt.layout.length
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, heads, length, dim, generator=g)
        k = torch.randn(1, kv_heads, length, dim, generator=g)
        v = torch.randn(1, kv_heads, length, dim, generator=g)
        scale = dim**-0.5

        def plain(q=q, k=k, v=v, scale=scale) -> None:
            sdpa_attention_forward(module, q, k, v, None, scaling=scale)

        calls = {"plain causal SDPA": plain}
        for name, knockouts in settings(prompt, handle.num_layers).items():
            for split in (True, False):

                def call(
                    knockouts=knockouts, split=split, prompt=prompt, q=q, k=k, v=v, scale=scale
                ) -> None:
                    backend.SPLIT = split
                    with vlmflow.session(handle, prompt, knockout=knockouts):
                        backend.attention(module, q, k, v, None, scaling=scale)
                    backend.SPLIT = True

                calls[f"{name} [{'split' if split else 'dense mask'}]"] = call
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.inference_mode():
            for fn in calls.values():
                fn()
            for _ in range(args.repeats):
                for name, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        base = med["plain causal SDPA"]
        print(f"{length} prompt tokens, median of {args.repeats} interleaved repeats (layer 0):")
        for name, ms in med.items():
            print(f"  {name:<58} {ms:8.2f} ms  {ms / base:6.2f}x")
        results.append({"prompt_tokens": length, "median_ms": med})
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Follow-up question from a compressed context vs the full image prompt, side by side.

    python bench/reprompt.py [--model vlmflow-tiny] [--k 0.05] [--new-tokens 4] [--repeats 5]

Prints (issue acceptance in brackets):
  time to answer from the k context / Naive time (image + question)   [<= 0.25]
  KV cache bytes of the k context / KV bytes of the Naive prompt
Both answer with the same number of new tokens (greedy, EOS ignored) so only the context differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import vlmflow
from vlmflow.compression import compress
from vlmflow.defaults import DEFAULT_MODEL

QUESTIONS = ("Is there a dog in the image?", "Is there a car in the top left of the image?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--k", type=float, default=0.05)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from vlmflow.scenes import fixed_set

    image = fixed_set()[7].image
    handle = vlmflow.load(args.model, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    context = compress(handle, image, k=args.k)

    def naive(question: str) -> int:
        prompt = handle.prepare(image, question)  # the processor's work is part of the cost
        with torch.inference_mode():
            out = handle.model.generate(
                **prompt.inputs,
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                return_dict_in_generate=True,
            )
        return sum(k.numel() * k.element_size() * 2 for k, *_ in out.past_key_values)

    def ours(question: str) -> int:
        context.ask(question, max_new_tokens=args.new_tokens, stop_at_eos=False)
        return context.kv_bytes()

    times: dict[str, list[float]] = {"naive": [], "compressed": []}
    kv: dict[str, int] = {}
    for fn in (naive, ours):
        fn(QUESTIONS[0])  # warm-up
    for r in range(args.repeats):
        question = QUESTIONS[r % len(QUESTIONS)]
        for name, fn in (("naive", naive), ("compressed", ours)):
            sync()
            start = time.perf_counter()
            kv[name] = fn(question)
            sync()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model,
        "device": args.device,
        "k": args.k,
        "new_tokens": args.new_tokens,
        "context_tokens": context.context_tokens,
        "full_tokens": context.full_tokens,
        "seconds": med,
        "time_ratio": med["compressed"] / med["naive"],
        "kv_bytes": kv,
        "kv_ratio": kv["compressed"] / kv["naive"],
    }
    print(
        f"model {args.model} on {args.device}, k={args.k}: context {context.context_tokens} "
        f"of {context.full_tokens} tokens, {args.new_tokens} new tokens, median of {args.repeats}"
    )
    print(f"  naive (image + question) {med['naive']:.3f} s, KV {kv['naive'] / 2**20:.2f} MiB")
    print(
        f"  compressed context       {med['compressed']:.3f} s, "
        f"KV {kv['compressed'] / 2**20:.2f} MiB"
    )
    print(
        f"  time ratio {result['time_ratio']:.3f} (target <= 0.25), "
        f"KV memory ratio {result['kv_ratio']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Throughput of a knockout sweep on one image: settings one by one vs as rows of one batch.

    python bench/batched.py [--model vlmflow-tiny] [--scene 7] [--layers 0,3,...] \
        [--new-tokens 32] [--repeats 3]

Settings: the baseline plus `image -> generated` from layer L on, for each L of `--layers`
(default: every third layer, and the last). One by one = one `vlmflow.session(...).generate()`
per setting (the vision tower, the prompt's prefill and a batch-1 decode each time), as the
knockout experiment runs them. Batched = `generate_variants`: one prefill shared by all rows,
one decode loop over all settings. Both produce the same number of new tokens (EOS ignored via
min_new_tokens). Prints settings per minute for each, the ratio (issue acceptance: batched /
one-by-one >= 2) and whether the two give identical tokens. Times are medians of interleaved
repeats; "batched, no sharing" (every row computes the whole prompt) shows what sharing adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import vlmflow
from vlmflow.attention.batch import generate_variants
from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--scene", type=int, default=7, help="index into the fixed scene set")
    parser.add_argument("--layers", help="start layers of the sweep, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from vlmflow.scenes import fixed_set

    handle = vlmflow.load(args.model, device=args.device)
    depth = handle.num_layers
    if args.layers:
        layers = [int(x) for x in args.layers.split(",")]
    else:
        layers = sorted({*range(0, depth, 3), depth - 1})
    variants: list[list[vlmflow.Knockout]] = [[]]
    variants += [[vlmflow.Knockout.parse("image->generated", f"from:{x}")] for x in layers]
    names = ["baseline", *(f"image->generated@from:{x}" for x in layers)]
    prompt = handle.prepare(fixed_set()[args.scene].image, DEFAULT_PROMPT)
    new = args.new_tokens
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def one_by_one() -> list[list[int]]:
        out = []
        for variant in variants:
            with vlmflow.session(handle, prompt, knockout=variant) as s:
                out.append(s.generate(max_new_tokens=new, min_new_tokens=new)[0].tolist())
        return out

    def batched(share: bool = True) -> list[list[int]]:
        run = generate_variants(
            handle, prompt, variants, max_new_tokens=new, min_new_tokens=new, share_prefill=share
        )
        return [ids.tolist() for ids in run.ids]

    runs = {
        "one_by_one": one_by_one,
        "batched": batched,
        "batched_no_sharing": lambda: batched(False),
    }
    tokens = {name: fn() for name, fn in runs.items()}  # warm-up, and the tokens to compare
    same = {name: tokens[name] == tokens["one_by_one"] for name in runs}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    per_minute = {name: 60.0 * len(variants) / s for name, s in med.items()}
    result = {
        "model": args.model,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "settings": names,
        "prompt_tokens": prompt.layout.length,
        "image_tokens": prompt.layout.counts()["image"],
        "new_tokens": new,
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": med,
        "settings_per_minute": per_minute,
        "batched_over_one_by_one": per_minute["batched"] / per_minute["one_by_one"],
        "identical_tokens": same,
    }
    print(
        f"model {args.model} on {args.device}, {torch.get_num_threads()} threads: "
        f"{len(variants)} settings (baseline + image->generated@from:L, L in {layers}), "
        f"{prompt.layout.length} prompt tokens ({result['image_tokens']} image), "
        f"{new} new tokens, median of {args.repeats}"
    )
    for name in runs:
        print(
            f"  {name:<19} {med[name]:8.2f} s  {per_minute[name]:7.1f} settings/min"
            f"  identical tokens: {same[name]}"
        )
    print(
        f"  batched / one-by-one throughput  {result['batched_over_one_by_one']:.2f}  (target >= 2)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

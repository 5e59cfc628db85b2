"""Prefill and per-token decode time of one model on one prompt, measured apart.

    python bench/prefill_decode.py --model /tmp/vlmflow-bench-llava7b [--images 1] [--repeats 3]
        [--json out.json]

Times `generate` with 1 and with 9 new tokens (forced, greedy), interleaved, median of
`--repeats` after one warm-up: prefill = the 1-token run (prefill plus the first token),
decode = (9-token run - 1-token run) / 8 per token. Build the 7B-shaped checkpoint with
`bench/core.py --shape llava7b --shape-dir DIR` first. These are the inputs of the full-sweep
estimate in `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import vlmflow
from vlmflow.defaults import DEFAULT_PROMPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=1, help="fixed scenes in the prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from core import images  # bench/core.py: the same deterministic images

    handle = vlmflow.load(args.model)
    prompt = handle.prepare(images(args.images), DEFAULT_PROMPT)

    def run(new: int) -> float:
        start = time.perf_counter()
        handle.generate(prompt, max_new_tokens=new, min_new_tokens=new)
        return time.perf_counter() - start

    run(1)  # warm-up
    runs: dict[int, list[float]] = {1: [], 9: []}
    for _ in range(args.repeats):
        for new in runs:
            runs[new].append(run(new))
    med = {new: statistics.median(v) for new, v in runs.items()}
    result = {
        "model": args.model,
        "prompt_tokens": prompt.layout.length,
        "runs": runs,
        "prefill_seconds": med[1],
        "decode_seconds_per_token": (med[9] - med[1]) / 8,
    }
    print(
        f"{prompt.layout.length} prompt tokens: prefill {med[1]:.2f} s,"
        f" decode {result['decode_seconds_per_token']:.3f} s per token"
        f" (median of {args.repeats})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

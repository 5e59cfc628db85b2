"""Cost of knockout and capture against plain generation, measured side by side in one run.

    python bench/core.py [--model vlmflow-tiny] [--images 4] [--new-tokens 32] [--repeats 5]

Prints three ratios (issue acceptance in brackets):
  knockout generate time / plain SDPA generate time          [<= 1.15]
  all-layer role-fraction capture time / plain SDPA time     [<= 1.5]
  capture peak memory / eager output_attentions peak memory  [<= 0.1]
Times: median of interleaved repeats. Memory: peak resident memory above the level just before
the call, sampled every millisecond in a fresh subprocess per variant (CPU), or
torch.cuda.max_memory_allocated above the level before the call (GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vlmflow
from vlmflow.defaults import DEFAULT_MODEL
from vlmflow.defaults import DEFAULT_PROMPT as PROMPT


def images(count: int) -> list[Image.Image]:
    """Deterministic images: the scene world's fixed scenes when present, else noise."""
    try:
        from vlmflow.scenes import fixed_set

        return [s.image for s in fixed_set()[:count]]
    except Exception:
        rng = np.random.RandomState(0)
        return [
            Image.fromarray((rng.rand(448, 448, 3) * 255).astype("uint8")) for _ in range(count)
        ]


class PeakRss:
    """Peak resident set size above the starting level, sampled in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRss:
        self.start = self.rss()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.start)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss() - self.start)


def run_variant(variant: str, model: str, n_images: int, new_tokens: int, device: str) -> dict:
    """One generation in this process; returns seconds and peak extra memory in bytes."""
    attn = "eager" if variant == "eager_attentions" else "sdpa"
    handle = vlmflow.load(model, device=device, attn=attn)
    prompt = handle.prepare(images(n_images), PROMPT)
    handle.generate(prompt, max_new_tokens=2)  # warm-up
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    capture = vlmflow.Capture.of() if variant == "capture" else None
    with PeakRss() as mem:
        start = time.perf_counter()
        if variant == "eager_attentions":
            with torch.inference_mode():
                out = handle.model.generate(
                    **prompt.inputs,
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    output_attentions=True,
                    return_dict_in_generate=True,
                )
            kept = sum(a.numel() * a.element_size() for step in out.attentions for a in step)
        else:
            with vlmflow.session(handle, prompt, capture=capture) as s:
                s.generate(max_new_tokens=new_tokens)
            kept = 0
            if capture is not None:
                r = s.capture
                kept = r.fractions.numel() * 4
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before if cuda else mem.peak
    return {
        "variant": variant,
        "seconds": seconds,
        "peak_bytes": int(peak),
        "kept_bytes": kept,
        "image_tokens": prompt.layout.counts()["image"],
        "prompt_tokens": prompt.layout.length,
    }


def time_variants(model: str, n_images: int, new_tokens: int, repeats: int, device: str) -> dict:
    """Interleaved timing of plain SDPA, knockout and capture on one loaded model."""
    from transformers import AutoModelForImageTextToText

    handle = vlmflow.load(model, device=device)
    plain_model = (
        AutoModelForImageTextToText.from_pretrained(
            handle.model.name_or_path, attn_implementation="sdpa", dtype=handle.model.dtype
        )
        .to(device)
        .eval()
    )
    prompt = handle.prepare(images(n_images), PROMPT)
    knockout = vlmflow.Knockout.parse("image->generated", "all")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def plain() -> torch.Tensor:
        with torch.inference_mode():
            return plain_model.generate(
                **prompt.inputs,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
            )

    def ko() -> torch.Tensor:
        with vlmflow.session(handle, prompt, knockout=knockout) as s:
            return s.generate(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def cap() -> torch.Tensor:
        with vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()) as s:
            out = s.generate(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            s.capture  # noqa: B018 - include moving the result to CPU
            return out

    runs: dict[str, list[float]] = {"plain": [], "knockout": [], "capture": []}
    for fn in (plain, ko, cap):
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("knockout", ko), ("capture", cap)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            runs[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "median_seconds": med,
        "runs": runs,
        "prompt_tokens": prompt.layout.length,
        "image_tokens": prompt.layout.counts()["image"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=4, help="images per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one memory variant
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.variant:
        print(
            json.dumps(
                run_variant(args.variant, args.model, args.images, args.new_tokens, args.device)
            )
        )
        return

    timing = time_variants(args.model, args.images, args.new_tokens, args.repeats, args.device)
    med = timing["median_seconds"]
    memory = {}
    for variant in ("plain", "capture", "eager_attentions"):
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--images",
            str(args.images),
            "--new-tokens",
            str(args.new_tokens),
            "--device",
            args.device,
            "--variant",
            variant,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])
    result = {
        "model": args.model,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": timing["prompt_tokens"],
        "image_tokens": timing["image_tokens"],
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "seconds": med,
        "knockout_over_plain": med["knockout"] / med["plain"],
        "capture_over_plain": med["capture"] / med["plain"],
        "peak_bytes": {k: v["peak_bytes"] for k, v in memory.items()},
        "capture_over_eager_memory": memory["capture"]["peak_bytes"]
        / memory["eager_attentions"]["peak_bytes"],
    }
    print(
        f"model {args.model} on {args.device}: {result['prompt_tokens']} prompt tokens "
        f"({result['image_tokens']} image), {args.new_tokens} new tokens, "
        f"median of {args.repeats}"
    )
    for k in ("plain", "knockout", "capture"):
        print(f"  {k:<9} {med[k]:8.3f} s")
    print(
        f"  knockout / plain SDPA time      {result['knockout_over_plain']:.3f}  (target <= 1.15)"
    )
    print(f"  capture / plain SDPA time       {result['capture_over_plain']:.3f}  (target <= 1.5)")
    for k, v in result["peak_bytes"].items():
        print(f"  peak extra memory {k:<16} {v / 2**20:9.1f} MiB")
    print(
        f"  capture / eager-attentions peak {result['capture_over_eager_memory']:.4f}"
        "  (target <= 0.1)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Cost of knockout and capture against plain generation, measured side by side in one run.

    python bench/core.py [--model vlmflow-tiny] [--images 4,12] [--new-tokens 8] [--repeats 3]
        [--dense] [--paired] [--memory-images 4] [--prefill-chunk N] [--shape llava7b]
        [--device cpu|cuda] [--json out.json]

For each prompt size (`--images`: fixed scenes in one prompt; 4 = 1,062 tokens, 12 = about
3.1k with vlmflow-tiny) it times, interleaved, plain SDPA generate (the same checkpoint loaded by
transformers with `attn_implementation="sdpa"`) and under a session: every knockout setting of
the paper (image -> generated, image -> query, image -> query+generated, all layers), image ->
query+generated from the middle layer on, a key-set knockout (95% of the image keys blocked,
scattered, as top-k pruning at k = 5% blocks them; queries: query+generated), and an all-layer
role-fraction capture. Every variant runs once untimed first; each repeat then runs them all,
starting one variant later than the previous repeat. Prints each median wall time / plain SDPA
median (issue acceptance: knockout <= 1.05, capture <= 1.5), and the same for process CPU time.
`--paired` runs plain between every two variants (P V1 P V2 ... P) and also prints, per variant,
the median over repeats of its run / the mean of the two plain runs beside it: a host whose
speed drifts over minutes moves both alike, so the ratio of neighbours resolves what the ratio of
medians cannot (twice the runs).
`--dense` also times the knockouts whose prefill holds knocked rows with the dense
(b, 1, q, kv) mask (`backend.SPLIT = False`), the path the split replaces, side by side.
Memory (`--memory-images` sizes only; eager output_attentions grows with the square of the
prompt): peak memory above the level just before the call, sampled every millisecond in a fresh
subprocess per variant (CPU; glibc maps every block over 128 KiB on its own, so resident memory
follows the live tensors instead of reusing the warm-up run's freed heap), or
torch.cuda.max_memory_allocated above the level before the call (GPU); capture / eager
output_attentions [<= 0.1]. `--prefill-chunk N` also measures plain and capture with
transformers' chunked prefill (`generate(prefill_chunk_size=N)`), which bounds the prefill's
activations (the MLP's, at a 7B shape) by N positions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


# random-weight decoders at real model shapes (`--shape`): LLaVA-1.5-7B's decoder (hidden 4096,
# 32 heads, 11008 MLP) cut to 4 layers, behind a small CLIP-shaped vision tower that yields
# LLaVA-1.5's 576 image tokens per image (336 px, patch 14); 5 images = LLaVA-NeXT's 2,880
SHAPES = {
    "llava7b": {
        "text": {
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "head_dim": 128,  # set, not derived: the tiny config it starts from names its own
            "intermediate_size": 11008,
            "num_hidden_layers": 4,
        },
        "image_size": 336,
    },
}


def build_shape(shape: str, folder: Path) -> str:
    """Write (once) a random-weight checkpoint of `shape` to `folder`; returns its path.

    The tokenizer and processor are those of vlmflow's tiny LLaVA (built locally, nothing is
    downloaded); its small vocabulary makes the output layer smaller than the real model's.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from vlmflow.models.processors import save_processor
    from vlmflow.models.tiny import build_tiny

    spec = SHAPES[shape]
    done = folder / "shape.txt"  # written last: the folder holds the whole checkpoint
    marker = json.dumps({shape: spec}, sort_keys=True)  # a changed spec builds anew
    if done.exists() and done.read_text() == marker:
        return str(folder)
    build_tiny("llava", folder)
    config = AutoConfig.from_pretrained(folder)
    for k, v in spec["text"].items():
        setattr(config.text_config, k, v)
    config.text_config.initializer_range = 0.02
    config.vision_config.image_size = spec["image_size"]
    processor = AutoProcessor.from_pretrained(folder)
    size = spec["image_size"]
    processor.image_processor.size = {"shortest_edge": size}
    processor.image_processor.crop_size = {"height": size, "width": size}
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16).eval()
    text = model.config.text_config
    for k, v in spec["text"].items():  # the model has the shape asked for
        assert getattr(text, k) == v, (k, getattr(text, k), v)
    q_proj = model.model.language_model.layers[0].self_attn.q_proj  # (heads x head_dim, hidden)
    assert q_proj.out_features == text.num_attention_heads * text.head_dim == text.hidden_size
    model.save_pretrained(folder)
    save_processor(processor, folder)
    done.write_text(marker)
    return str(folder)


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


def run_variant(
    variant: str, model: str, n_images: int, new_tokens: int, device: str, chunk: int | None
) -> dict:
    """One generation in this process; returns seconds and peak extra memory in bytes.
    `chunk`: transformers' `prefill_chunk_size` for the variants named `... chunked`."""
    attn = "eager" if variant == "eager_attentions" else "sdpa"
    extra = {"prefill_chunk_size": chunk} if variant.endswith(" chunked") else {}
    handle = vlmflow.load(model, device=device, attn=attn)
    prompt = handle.prepare(images(n_images), PROMPT)
    handle.generate(prompt, max_new_tokens=2)  # warm-up
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    capture = vlmflow.Capture.of() if variant.startswith("capture") else None
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
                s.generate(max_new_tokens=new_tokens, **extra)
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


def settings(prompt: vlmflow.Prompt, num_layers: int) -> dict[str, list[vlmflow.Knockout]]:
    """The knockout settings timed, by name."""
    K = vlmflow.Knockout
    image = prompt.layout.image_positions(0)
    kept = set(image[::20])  # 5% of the image keys stay, scattered over the image
    blocked = [p for p in image if p not in kept]
    middle = num_layers // 2
    return {
        "image->generated": [K.parse("image->generated", "all")],
        "image->query": [K.parse("image->query", "all")],
        "image->query+generated": [K.parse("image->query+generated", "all")],
        f"image->query+generated from:{middle}": [
            K.parse("image->query+generated", f"from:{middle}")
        ],
        "key set 5% kept -> query+generated": [
            K.key_set(dict.fromkeys(range(num_layers), blocked), tgt="query+generated")
        ],
    }


def time_variants(
    model: str,
    n_images: int,
    new_tokens: int,
    repeats: int,
    device: str,
    dense: bool,
    paired: bool = False,
) -> dict:
    """Interleaved timing of plain SDPA, every knockout setting and capture on one model;
    `paired`: a plain run between every two variants, and each variant's ratio taken to the
    mean of the plain runs on either side of it (median over repeats)."""
    from transformers import AutoModelForImageTextToText

    from vlmflow.attention import backend

    handle = vlmflow.load(model, device=device)
    plain_model = (
        AutoModelForImageTextToText.from_pretrained(
            handle.model.name_or_path, attn_implementation="sdpa", dtype=handle.model.dtype
        )
        .to(device)
        .eval()
    )
    prompt = handle.prepare(images(n_images), PROMPT)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fixed = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}

    def plain() -> None:
        with torch.inference_mode():
            plain_model.generate(**prompt.inputs, do_sample=False, **fixed)

    def knocked(knockouts: list[vlmflow.Knockout], split: bool):
        def run() -> None:
            backend.SPLIT = split
            try:
                with vlmflow.session(handle, prompt, knockout=knockouts) as s:
                    s.generate(**fixed)
            finally:
                backend.SPLIT = True

        return run

    def cap() -> None:
        with vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()) as s:
            s.generate(**fixed)
            s.capture  # noqa: B018 - include moving the result to CPU

    variants = {"plain": plain}
    for name, knockouts in settings(prompt, handle.num_layers).items():
        variants[name] = knocked(knockouts, True)
        if dense and "query" in name.split("->")[1]:  # the prefill holds knocked rows
            variants[f"{name} [dense mask]"] = knocked(knockouts, False)
    variants["capture"] = cap
    runs: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up (and the attention guard's one probe)
        fn()
    # paired: each variant's run / the mean of the plain runs just before and after it
    ratios: dict[str, list[float]] = {name: [] for name in variants if name != "plain"}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in ratios}

    def timed(name: str) -> tuple[float, float]:
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        variants[name]()
        sync()
        runs[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)
        return runs[name][-1], cpu[name][-1]

    names = list(variants) if not paired else list(ratios)
    for r in range(repeats):
        # each repeat starts one variant later, so no variant always follows the same one
        order = names[r % len(names) :] + names[: r % len(names)]
        before = timed("plain") if paired else (0.0, 0.0)
        for name in order:
            wall, used = timed(name)
            if paired:
                after = timed("plain")
                ratios[name].append(wall / ((before[0] + after[0]) / 2))
                cpu_ratios[name].append(used / ((before[1] + after[1]) / 2))
                before = after
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "images": n_images,
        "prompt_tokens": prompt.layout.length,
        "image_tokens": prompt.layout.counts()["image"],
        "median_seconds": med,
        "over_plain": {k: v / med["plain"] for k, v in med.items()},
        "median_cpu_seconds": med_cpu,
        "cpu_over_plain": {k: v / med_cpu["plain"] for k, v in med_cpu.items()},
        "runs": runs,
        "cpu_runs": cpu,
    }
    if paired:  # (without --paired the ratio lists are empty: no median)
        result["paired_over_plain"] = {k: statistics.median(v) for k, v in ratios.items()}
        result["paired_cpu_over_plain"] = {k: statistics.median(v) for k, v in cpu_ratios.items()}
        result["paired_ratios"] = ratios
        result["paired_cpu_ratios"] = cpu_ratios
    return result


def measure_memory(
    model: str, n_images: int, new_tokens: int, device: str, chunk: int | None
) -> dict:
    """Peak memory of plain, capture and eager output_attentions, one subprocess each; with
    `chunk`, also plain and capture with transformers' chunked prefill (`prefill_chunk_size`).
    Eager is measured without it: with chunks, `generate` returns the last chunk's attention
    only, so it would not hold the maps capture is compared with."""
    memory = {}
    variants = ["plain", "capture", "eager_attentions"]
    if chunk:
        variants += ["plain chunked", "capture chunked"]
    for variant in variants:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            model,
            "--images",
            str(n_images),
            "--new-tokens",
            str(new_tokens),
            "--device",
            device,
            "--variant",
            variant,
            "--prefill-chunk",
            str(chunk or 0),
        ]
        # glibc: every block over 128 KiB its own mapping, unmapped when freed, so resident
        # memory follows the live tensors (no reuse of freed heap from the warm-up run)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])
    peak = {k: v["peak_bytes"] for k, v in memory.items()}
    return {
        "images": n_images,
        "image_tokens": memory["capture"]["image_tokens"],
        "prompt_tokens": memory["capture"]["prompt_tokens"],
        "peak_bytes": peak,
        "prefill_chunk_size": chunk,
        "capture_over_eager": peak["capture"] / peak["eager_attentions"],
        **(
            {"capture_chunked_over_eager": peak["capture chunked"] / peak["eager_attentions"]}
            if chunk
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        help="time a random-weight model of this shape instead of --model (built on first use)",
    )
    parser.add_argument(
        "--shape-dir", type=Path, help="where --shape builds its checkpoint (default: a temp dir)"
    )
    parser.add_argument(
        "--images", default="4,12", help="images per timed prompt, comma-separated ('' for none)"
    )
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense", action="store_true", help="also time the dense-mask path")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="run plain between every two variants; also print each variant / its neighbours",
    )
    parser.add_argument(
        "--memory-images", default="4", help="sizes whose memory is measured ('' for none)"
    )
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=0,
        help="also measure memory with transformers' prefill_chunk_size=N (0: not)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one memory variant
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.shape:
        folder = args.shape_dir or Path(tempfile.gettempdir()) / f"vlmflow-bench-{args.shape}"
        args.model = build_shape(args.shape, folder)
    if args.variant:
        n = int(args.images)
        print(
            json.dumps(
                run_variant(
                    args.variant,
                    args.model,
                    n,
                    args.new_tokens,
                    args.device,
                    args.prefill_chunk or None,
                )
            )
        )
        return

    sizes = [int(v) for v in args.images.split(",") if v.strip()]
    result = {
        "model": args.shape or args.model,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "timing": [],
        "memory": [],
    }

    def save() -> None:  # after each measurement: a later failure loses nothing measured
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))

    for n in sizes:
        result["timing"].append(
            time_variants(
                args.model,
                n,
                args.new_tokens,
                args.repeats,
                args.device,
                args.dense,
                args.paired,
            )
        )
        save()
    if sizes:
        print_timing(result, args)
    for n in (int(v) for v in args.memory_images.split(",") if v.strip()):
        m = measure_memory(args.model, n, args.new_tokens, args.device, args.prefill_chunk or None)
        result["memory"].append(m)
        save()
        peaks = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in m["peak_bytes"].items())
        print(
            f"  memory at {m['prompt_tokens']} tokens ({m['image_tokens']} image): {peaks};"
            f" capture / eager output_attentions {m['capture_over_eager']:.4f} (target <= 0.1)"
            + (
                f"; capture with prefill_chunk_size={m['prefill_chunk_size']} / eager"
                f" {m['capture_chunked_over_eager']:.4f}"
                if "capture_chunked_over_eager" in m
                else ""
            ),
            flush=True,
        )


def print_timing(result: dict, args: argparse.Namespace) -> None:
    """The timing table: wall time, then process CPU time, each / plain SDPA generate."""
    timing = result["timing"]
    print(
        f"model {args.shape or args.model} on {args.device}, {args.new_tokens} new tokens,"
        f" median of {args.repeats} interleaved repeats (order rotated per repeat), after one"
        " warm-up run of each; wall time / plain SDPA generate"
        " (target: knockout <= 1.05, capture <= 1.5)"
    )
    head = "".join(f"{t['prompt_tokens']:>10} tok" for t in timing)
    print(f"  {'variant':<48}{head}")
    for name in timing[0]["median_seconds"]:
        cells = "".join(
            f"{t['over_plain'][name]:>9.3f} ({t['median_seconds'][name]:6.1f}s)" for t in timing
        )
        print(f"  {name:<48}{cells}")
    print("  process CPU time / plain (all threads; steadier than wall time on a shared machine)")
    for name in timing[0]["median_cpu_seconds"]:
        cells = "".join(
            f"{t['cpu_over_plain'][name]:>9.3f} ({t['median_cpu_seconds'][name]:6.1f}s)"
            for t in timing
        )
        print(f"  {name:<48}{cells}", flush=True)
    if "paired_over_plain" not in timing[0]:
        return
    print(
        "  paired: median over repeats of each run / the mean of the plain runs just before and"
        " after it (wall time; process CPU time)"
    )
    for name in timing[0]["paired_over_plain"]:
        cells = "".join(
            f"{t['paired_over_plain'][name]:>9.3f} ({t['paired_cpu_over_plain'][name]:5.3f})"
            for t in timing
        )
        print(f"  {name:<48}{cells}", flush=True)


if __name__ == "__main__":
    main()

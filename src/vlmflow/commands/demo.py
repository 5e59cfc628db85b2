"""`vlmflow demo`: the main job on the default model, end to end in a few minutes.

For a few evaluation scenes it prints the reference description, the model's description, the
description when the image is knocked out from the query and generated tokens (paper Sec. 4.1),
and where the generated tokens' attention goes layer by layer (paper Fig. 1). Then it runs a
small pass of every analysis of the paper into a results store and writes the HTML report.
Running it again resumes: finished results are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    parser.add_argument("--scenes", type=int, default=3, help="how many evaluation scenes")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object per scene")
    parser.add_argument("--out", default="vlmflow-demo", help="results store and report folder")
    parser.add_argument(
        "--report-scenes", type=int, default=2, help="scenes for the analyses and the report"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the experiments")


def _bar(fraction: float, width: int = 20) -> str:
    filled = round(fraction * width)
    return "#" * filled + "." * (width - filled)


def run(args: argparse.Namespace) -> int:
    import torch

    import vlmflow
    from vlmflow.scenes import fixed_set
    from vlmflow.validate import output_folder, torch_device, whole_number

    total = len(fixed_set())
    whole_number(args.scenes, "--scenes", 1, total)
    whole_number(args.max_new_tokens, "--max-new-tokens")
    if not args.no_report:
        whole_number(args.report_scenes, "--report-scenes", 1, total)
        output_folder(args.out)
    torch_device(args.device)
    start = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    handle = vlmflow.load(args.model, device=args.device)
    if "untrained" in str(handle.model.name_or_path):
        print(
            f"note: this {DEFAULT_MODEL} has no trained projector yet, so its descriptions are not"
            " grounded in the image; the analyses below run all the same"
        )
    scenes = fixed_set()[: args.scenes]
    knockout = vlmflow.Knockout.parse("image->query+generated")
    for scene in scenes:
        prompt = handle.prepare(scene.image, DEFAULT_PROMPT)
        with vlmflow.session(handle, prompt, capture=vlmflow.Capture.of()) as s:
            base = s.generate(max_new_tokens=args.max_new_tokens)
        fractions = s.capture.fractions[1:, :, 0, :]  # (steps, layers, roles) of generated tokens
        per_layer = torch.nan_to_num(fractions).mean(0)  # (layers, roles)
        with vlmflow.session(handle, prompt, knockout=knockout) as s:
            cut = s.generate(max_new_tokens=args.max_new_tokens)
        result: dict[str, Any] = {
            "scene": scene.id,
            "reference": scene.description,
            "description": handle.decode(base)[0],
            "knockout_image_to_query_generated": handle.decode(cut)[0],
            "roles": prompt.layout.counts(),
            "image_fraction_per_layer": [round(float(x), 4) for x in per_layer[:, 1]],
        }
        if args.json:
            print(json.dumps(result))
            continue
        print(f"\n== {scene.id}  ({result['roles']['image']} image tokens)")
        print(f"  reference : {result['reference']}")
        print(f"  model     : {result['description']}")
        print(f"  no image  : {result['knockout_image_to_query_generated']}")
        print("  attention of generated tokens per layer: image | prefix | query | generated")
        for layer, row in enumerate(per_layer.tolist()):
            shares = " | ".join(f"{row[i]:.2f}" for i in (0, 2, 3))
            print(f"    layer {layer:2d}  {_bar(row[1])} {row[1]:.2f} | {shares}")
    if not args.no_report:
        report = _experiments(handle, args)
        print(f"\nreport: {report}")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return 0


def _experiments(handle: Any, args: argparse.Namespace) -> Any:
    """A small pass of all the paper's analyses on the same scenes, then the report."""
    from vlmflow.experiments import ImageSource, Runner, create
    from vlmflow.experiments.registry import bind_model
    from vlmflow.report import build_report
    from vlmflow.store import ResultStore, store_path
    from vlmflow.store.lock import run_lock

    tokens = min(args.max_new_tokens, 32)
    last = handle.num_layers - 1
    sweep = sorted({round(last * f / 5) for f in range(6)})
    options: dict[str, dict[str, Any]] = {
        "fractions": {"max_new_tokens": tokens},
        "histogram": {"max_new_tokens": tokens},
        "maps": {"max_new_tokens": tokens},
        "knockout": {"max_new_tokens": tokens, "layers": sweep, "judge": "scene"},
        "topk": {"max_new_tokens": tokens, "k": [0.02, 0.1, 0.5, 1.0], "judge": "scene"},
        "localization": {"max_new_tokens": tokens},
    }
    experiments = [create(name, opts) for name, opts in options.items()]
    bind_model(experiments, handle.num_layers)
    print(f"\nrunning the paper's analyses on {args.report_scenes} scenes into {args.out}/ ...")
    with run_lock(store_path(args.out)), ResultStore.open(args.out) as store:
        Runner(
            experiments,
            ImageSource.parse(f"scenes:{args.report_scenes}"),
            store,
            model=args.model,
            handle_factory=lambda: handle,
        ).run()
    return build_report(args.out)

"""`vlmflow scenes ...`: look at the scene world from the command line.

    vlmflow scenes list [--types]          the evaluation set, or the object types
    vlmflow scenes show N [--out F.png]    description and questions of evaluation scene N
    vlmflow scenes render SEED --out F.png a generated scene (with --masks M.png: mask overlay)
    vlmflow scenes build-fixed [--out DIR] rewrite the shipped evaluation set
    vlmflow scenes evaluate [--model M]    a model's object P/R/F1 and yes/no ACC on the set

Each subcommand is one entry of SUBCOMMANDS, so model-based ones (evaluate) slot in beside them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from vlmflow.defaults import DEFAULT_MODEL
from vlmflow.errors import VlmflowError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="scenes_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="list the evaluation scenes or the object types")
    p.add_argument("--types", action="store_true", help="list the vocabulary instead")

    p = sub.add_parser("show", help="print an evaluation scene's description and questions")
    p.add_argument("index", type=int, help="scene index, 0-79")
    _add_outputs(p)

    p = sub.add_parser("render", help="generate the scene of a seed and save it")
    p.add_argument("seed", type=int)
    p.add_argument("--size", type=int, default=448, help="canvas side in pixels (448)")
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=8)
    _add_outputs(p)

    p = sub.add_parser("build-fixed", help="rewrite the shipped evaluation set from its seeds")
    p.add_argument("--out", type=Path, default=None, help="folder (default: package data)")

    p = sub.add_parser(
        "evaluate", help="score a model's descriptions and yes/no answers on the evaluation set"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    p.add_argument(
        "--scenes", type=int, default=None, metavar="N", help="only the first N fixed scenes"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=96, metavar="N", help="per description (96)"
    )
    p.add_argument("--answer-tokens", type=int, default=4, metavar="N", help="per yes/no reply (4)")
    p.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="prompts per forward pass (8)"
    )
    p.add_argument(
        "--hint",
        action="store_true",
        help='append "Answer yes or no." to each question (for general chat models)',
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE.jsonl", help="write the per-scene records here"
    )
    p.add_argument("--json", action="store_true", help="print the aggregates as one JSON object")


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="save the image here (PNG)")
    parser.add_argument("--masks", type=Path, help="save the image with masks tinted here")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "scenes_command", None)
    if name is None:
        raise VlmflowError(
            "name a subcommand: vlmflow scenes {list,show,render,build-fixed,evaluate}"
        )
    return SUBCOMMANDS[name](args)


def _list(args: argparse.Namespace) -> int:
    if args.types:
        from vlmflow.scenes.vocabulary import VOCABULARY

        for kind in VOCABULARY.values():
            print(f"{kind.name:<12} {kind.category:<19} {', '.join(kind.synonyms)}")
        return 0
    from vlmflow.scenes.fixed import fixed_metadata

    for index, meta in enumerate(fixed_metadata()):
        names = ", ".join(o["name"] for o in meta["objects"])
        count = len(meta["objects"])
        print(f"{index:>2}  {meta['id']}  {count} object{'s' if count > 1 else ''}: {names}")
    return 0


def _print_scene(scene: object, args: argparse.Namespace) -> int:
    from vlmflow.scenes.render import overlay
    from vlmflow.scenes.scene import Scene

    assert isinstance(scene, Scene)
    if args.json:
        print(json.dumps(scene.to_json(), indent=1))
    else:
        print(f"{scene.id} (seed {scene.seed}, {scene.size} px, {scene.background.kind})")
        print(scene.description)
        for obj in scene.objects:
            print(f"  {obj.name:<12} {obj.position:<14} {obj.size_class:<7} box {obj.box}")
        for q in scene.questions:
            print(f"  [{q.category:<9} {q.answer:>3}] {q.text}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        scene.image.save(args.out)
    if args.masks:
        args.masks.parent.mkdir(parents=True, exist_ok=True)
        overlay(scene.image, scene.label_map()).save(args.masks)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """--out / --masks are PNG files vlmflow may write (checked before any rendering)."""
    from vlmflow.validate import output_file

    for flag in ("out", "masks"):
        if getattr(args, flag, None) is not None:
            output_file(getattr(args, flag), f"--{flag}", None, (".png",), missing_parent_ok=True)


def _show(args: argparse.Namespace) -> int:
    from vlmflow.scenes.fixed import load_fixed_scene

    _check_outputs(args)
    return _print_scene(load_fixed_scene(args.index), args)


def _render(args: argparse.Namespace) -> int:
    from vlmflow.scenes.scene import generate
    from vlmflow.validate import MAX_CANVAS_SIDE, whole_number

    whole_number(args.size, "--size", 64, MAX_CANVAS_SIDE)
    _check_outputs(args)
    scene = generate(
        args.seed, size=args.size, min_objects=args.min_objects, max_objects=args.max_objects
    )
    return _print_scene(scene, args)


def _build_fixed(args: argparse.Namespace) -> int:
    from vlmflow.scenes.fixed import build_fixed
    from vlmflow.validate import output_folder

    if args.out is not None:
        output_folder(args.out)
    print(build_fixed(args.out))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import sys

    import vlmflow
    from vlmflow.scenes import evaluate as ev
    from vlmflow.scenes.fixed import fixed_metadata, load_fixed_scene
    from vlmflow.validate import output_file, torch_device

    total = len(fixed_metadata())
    count = total if args.scenes is None else args.scenes
    if not 1 <= count <= total:
        raise VlmflowError(f"--scenes {args.scenes} is out of range: use 1-{total}")
    for flag in ("max_new_tokens", "answer_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            raise VlmflowError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.out is not None:
        output_file(args.out, "--out", missing_parent_ok=True)
    if args.threads is not None:
        if args.threads < 1:
            raise VlmflowError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    torch_device(args.device)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    handle = vlmflow.load(args.model, device=args.device)
    if "untrained" in str(handle.model.name_or_path):
        print(
            f"note: this {DEFAULT_MODEL} has no trained projector yet: expect scores near zero",
            file=sys.stderr,
        )
    scenes = [load_fixed_scene(i) for i in range(count)]  # only the images used
    result = ev.evaluate(
        handle,
        scenes,
        max_new_tokens=args.max_new_tokens,
        answer_tokens=args.answer_tokens,
        batch_size=args.batch_size,
        question_template=ev.QUESTION_HINTED if args.hint else ev.QUESTION_PLAIN,
        progress=True,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w") as f:
            for record in result.records:
                f.write(json.dumps(record.to_json()) + "\n")
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_evaluation(result))
    return 0


def format_evaluation(result: object) -> str:
    """The aggregates as a small table: objects first, then yes/no per category."""
    from vlmflow.scenes.evaluate import SceneEvaluation

    assert isinstance(result, SceneEvaluation)
    s, o = result.settings, result.objects
    lines = [
        f"{s.get('model', '?')} on {len(result.records)} fixed scenes"
        f" ({s.get('seconds', 0):.1f} s, {s.get('seconds_per_scene', 0):.2f} s per scene)",
        "",
        "objects (type level, micro)  precision  recall     F1    TP    FP    FN",
        f"{'':<29}{o.precision:>9.3f}{o.recall:>8.3f}{o.f1:>7.3f}{o.tp:>6}{o.fp:>6}{o.fn:>6}",
        "",
        "yes/no      ACC   ACC+   score  unparsed  said yes",
    ]
    rows = [*result.categories.items(), ("all", result.yes_no)]
    for name, y in rows:
        score = result.mme_score if name == "all" else y.score
        lines.append(
            f"{name:<10}{y.accuracy:>6.3f}{y.acc_plus:>7.3f}{score:>8.1f}"
            f"{y.unparsed:>10}{y.yes_rate:>10.2f}"
        )
    lines.append("(score = 100 * (ACC + ACC+) per category; for all: their sum)")
    return "\n".join(lines)


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _list,
    "show": _show,
    "render": _render,
    "build-fixed": _build_fixed,
    "evaluate": _evaluate,
}

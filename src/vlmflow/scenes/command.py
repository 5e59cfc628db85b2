"""`vlmflow scenes ...`: look at the scene world from the command line.

    vlmflow scenes list [--types]          the evaluation set, or the object types
    vlmflow scenes show N [--out F.png]    description and questions of evaluation scene N
    vlmflow scenes render SEED --out F.png a generated scene (with --masks M.png: mask overlay)
    vlmflow scenes build-fixed [--out DIR] rewrite the shipped evaluation set

Each subcommand is one entry of SUBCOMMANDS, so model-based ones (evaluate) slot in beside them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

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


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="save the image here (PNG)")
    parser.add_argument("--masks", type=Path, help="save the image with masks tinted here")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "scenes_command", None)
    if name is None:
        raise VlmflowError("name a subcommand: vlmflow scenes {list,show,render,build-fixed}")
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


def _show(args: argparse.Namespace) -> int:
    from vlmflow.scenes.fixed import load_fixed_scene

    return _print_scene(load_fixed_scene(args.index), args)


def _render(args: argparse.Namespace) -> int:
    from vlmflow.scenes.scene import generate

    scene = generate(
        args.seed, size=args.size, min_objects=args.min_objects, max_objects=args.max_objects
    )
    return _print_scene(scene, args)


def _build_fixed(args: argparse.Namespace) -> int:
    from vlmflow.scenes.fixed import build_fixed

    print(build_fixed(args.out))
    return 0


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _list,
    "show": _show,
    "render": _render,
    "build-fixed": _build_fixed,
}

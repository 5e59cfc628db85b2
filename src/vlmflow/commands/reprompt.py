"""`vlmflow reprompt IMAGE --question Q ...`: answer questions from a compressed visual context."""

from __future__ import annotations

import argparse
import json
import time

from vlmflow.defaults import DEFAULT_MODEL, DEFAULT_PROMPT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file")
    parser.add_argument("--question", action="append", required=True, help="repeatable")
    parser.add_argument("--k", type=float, default=0.05, help="fraction of image tokens kept")
    parser.add_argument(
        "--rank",
        choices=("sum", "max"),
        default="sum",
        help="rank image tokens by the total (sum) or the largest (max) attention a generated "
        "token gave them",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the first prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="per answer")
    parser.add_argument("--save", help="also save the compressed context to this file")
    parser.add_argument("--context", help="answer from this saved context instead of the image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="one JSON object per question")


def run(args: argparse.Namespace) -> int:
    import vlmflow
    from vlmflow.compression import compress, load_context
    from vlmflow.errors import VlmflowError
    from vlmflow.images import read_image
    from vlmflow.validate import input_file, output_file, whole_number

    whole_number(args.max_new_tokens, "--max-new-tokens")
    if not 0 < args.k <= 1:
        raise VlmflowError(f"--k {args.k}: give the fraction of image tokens kept, in (0, 1]")
    if args.context:
        input_file(args.context, "--context", "saved context file")
    else:
        read_image(args.image)  # a missing or damaged image fails before the model loads
    if args.save:
        output_file(args.save, "--save")
    handle = vlmflow.load(args.model, device=args.device)
    start = time.perf_counter()
    if args.context:
        context = load_context(args.context, handle)
    else:
        context = compress(handle, args.image, k=args.k, prompt=args.prompt, rank=args.rank)
    built = time.perf_counter() - start
    if args.save:
        context.save(args.save)
    if not args.json:
        print(f"description ({built:.2f} s): {context.description}")
        print(f"context: {context.context_tokens} of {context.full_tokens} tokens (k={context.k})")
    for question in args.question:
        answer = context.ask(question, max_new_tokens=args.max_new_tokens)
        if args.json:
            print(
                json.dumps(
                    {
                        "question": question,
                        "answer": answer.text,
                        "context_tokens": answer.context_tokens,
                        "full_tokens": answer.full_tokens,
                        "seconds": round(answer.seconds, 4),
                        "k": context.k,
                        "rank": context.rank,
                    }
                )
            )
        else:
            print(f"Q: {question}\nA: {answer.text}  ({answer.seconds:.2f} s)")
    return 0

"""Train the projector (+ LoRA) of vlmflow-tiny on the scene world; resumable, 2 CPU cores.

    python scripts/train_default.py                      # train (or resume) with the defaults
    python scripts/train_default.py --stop-after 20      # one short sitting, then exit
    python scripts/train_default.py --eval-only --eval fixed   # score the current state

State (cached DINOv2 features, checkpoints) lives in --state (default train-state/ at the repo
root); killing the process loses at most --checkpoint-every steps, and running the same
command again continues from the last checkpoint with identical batches. When the last step
is done, the trained weights and their sha256 are written to
src/vlmflow/default_model/weights/, which `ensure_checkpoint()` then assembles.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# the later phases' lengths of the shipped weights (TrainConfig leaves them off): the defaults
# reproduce those weights; `--quiz-steps 0 --where-steps 0 --check-steps 0` trains three phases
SHIPPED = {"quiz_steps": 360, "where_steps": 240, "check_steps": 240}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vlmflow.default_model.training import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--state", type=Path, default=REPO / "train-state", help="state folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--scenes", type=int, default=d.scenes, help="training scenes (cached)")
    p.add_argument(
        "--align-steps", type=int, default=d.align_steps, help="grounding-only steps first"
    )
    p.add_argument("--steps", type=int, default=d.steps, help="steps through the language model")
    p.add_argument(
        "--focus-steps",
        type=int,
        default=d.focus_steps,
        help="then question-heavy steps (may extend a finished run in the same --state)",
    )
    p.add_argument("--focus-caption-fraction", type=float, default=d.focus_caption_fraction)
    p.add_argument(
        "--focus-weights",
        default=",".join(f"{w:g}" for w in d.focus_weights),
        help="sampling weights of existence,count,position,category questions when focusing",
    )
    p.add_argument(
        "--focus-open-fraction",
        type=float,
        default=d.focus_open_fraction,
        help="share of focus question slots asked as 'where is / how many' questions",
    )
    p.add_argument(
        "--focus-followup-fraction",
        type=float,
        default=d.focus_followup_fraction,
        help="share of focus question slots asked as a second turn after the describe prompt",
    )
    p.add_argument(
        "--quiz-steps",
        type=_count,
        default=SHIPPED["quiz_steps"],
        help="then steps whose question slots each ask several questions in turn (may extend a "
        "finished run; adds LoRA on k/o/MLP projections)",
    )
    p.add_argument("--quiz-turns", type=_positive, default=d.quiz_turns, help="questions per quiz")
    p.add_argument("--quiz-caption-fraction", type=_fraction, default=d.quiz_caption_fraction)
    p.add_argument(
        "--quiz-followup-fraction",
        type=_fraction,
        default=d.quiz_followup_fraction,
        help="share of quizzes whose first question follows the describe prompt",
    )
    p.add_argument(
        "--where-steps",
        type=_count,
        default=SHIPPED["where_steps"],
        help="then quiz steps that also put each image token's cell into the position words "
        "(may extend a finished run)",
    )
    p.add_argument("--where-caption-fraction", type=_fraction, default=d.where_caption_fraction)
    p.add_argument(
        "--where-weight", type=_weight, default=d.where_weight, help="of the position-word loss"
    )
    p.add_argument(
        "--where-empty-fraction",
        type=_fraction,
        default=d.where_empty_fraction,
        help='share of position "no" questions moved to an empty cell in the where phase',
    )
    p.add_argument(
        "--check-steps",
        type=_count,
        default=SHIPPED["check_steps"],
        help="then steps whose question slots each ask several yes/no questions, each answered "
        "as if asked alone (may extend a finished run)",
    )
    p.add_argument("--check-caption-fraction", type=_fraction, default=d.check_caption_fraction)
    p.add_argument(
        "--check-questions", type=_positive, default=d.check_questions, help="questions per check"
    )
    p.add_argument(
        "--check-weights",
        default=",".join(f"{w:g}" for w in d.check_weights),
        help="sampling weights of existence,count,position,category questions in checks",
    )
    p.add_argument(
        "--check-lr-lora", type=_weight, default=d.check_lr_lora, help="LoRA rate when checking"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr-projector", type=float, default=d.lr_projector)
    p.add_argument("--lr-lora", type=float, default=d.lr_lora)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0 disables LoRA")
    p.add_argument("--grounding-weight", type=float, default=d.grounding_weight)
    p.add_argument("--position-weight", type=float, default=d.position_weight)
    p.add_argument("--checkpoint-every", type=int, default=25, help="steps between saves")
    p.add_argument("--stop-after", type=int, default=0, help="leave after this many steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--eval",
        choices=("none", "validation", "fixed"),
        default="fixed",
        help="scenes scored after the last step (fixed: the 80 shipped evaluation scenes)",
    )
    p.add_argument("--eval-scenes", type=int, default=40, help="validation scenes to score")
    p.add_argument("--eval-every", type=int, default=400, help="steps between validation scores")
    p.add_argument("--eval-only", action="store_true", help="score the saved state and exit")
    p.add_argument("--export-only", action="store_true", help="write weights from the state")
    p.add_argument(
        "--lora-dtype",
        choices=("float32", "float16"),
        default="float16",
        help="how the weights file stores LoRA factors (float16: half the size)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=REPO / "src/vlmflow/default_model/weights/vlmflow-tiny.safetensors",
        help="where the trained weights go",
    )
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import torch

    from vlmflow.default_model import training as tr
    from vlmflow.scenes import training_scenes

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = replace(
        tr.TrainConfig(),
        seed=args.seed,
        scenes=args.scenes,
        align_steps=args.align_steps,
        steps=args.steps,
        batch_size=args.batch_size,
        lr_projector=args.lr_projector,
        lr_lora=args.lr_lora,
        lora_rank=args.lora_rank,
        grounding_weight=args.grounding_weight,
        position_weight=args.position_weight,
        focus_steps=args.focus_steps,
        focus_caption_fraction=args.focus_caption_fraction,
        focus_weights=_weights(args.focus_weights, "--focus-weights"),
        focus_open_fraction=args.focus_open_fraction,
        focus_followup_fraction=args.focus_followup_fraction,
        quiz_steps=args.quiz_steps,
        quiz_turns=args.quiz_turns,
        quiz_caption_fraction=args.quiz_caption_fraction,
        quiz_followup_fraction=args.quiz_followup_fraction,
        where_steps=args.where_steps,
        where_caption_fraction=args.where_caption_fraction,
        where_weight=args.where_weight,
        where_empty_fraction=args.where_empty_fraction,
        check_steps=args.check_steps,
        check_caption_fraction=args.check_caption_fraction,
        check_questions=args.check_questions,
        check_weights=_weights(args.check_weights, "--check-weights"),
        check_lr_lora=args.check_lr_lora,
    )
    args.state.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train = tr.build_feature_cache(
        args.state / "features-train",
        lambda start, n: training_scenes(start, n),
        config.scenes,
        threshold=config.cell_threshold,
        progress=log,
    )
    log(f"training features ready ({len(train)} scenes, {time.perf_counter() - started:.0f} s)")
    trainer = tr.Trainer(config, train)
    checkpoint = args.state / "checkpoint.pt"
    history: list[dict[str, float]] = []
    if checkpoint.is_file():
        history = trainer.load(checkpoint)
        minutes = trainer.elapsed / 60
        log(f"resumed at step {trainer.step}/{config.total_steps} ({minutes:.1f} min trained)")

    if not (args.eval_only or args.export_only):
        stop = _StopFlag()
        sitting_steps = 0
        last = trainer.step
        while trainer.step < config.total_steps and not stop.requested:
            t0, c0 = time.perf_counter(), time.process_time()
            losses = trainer.train_step()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            trainer.elapsed += dt
            sitting_steps += 1
            record = {"step": trainer.step, "seconds": dt, "cpu": cpu}
            history.append({**record, **losses.__dict__})
            log(
                f"step {trainer.step}/{config.total_steps} loss {losses.total:.3f}"
                f" (text {losses.text:.3f}"
                f" ground {losses.grounding:.3f} pos {losses.position:.3f}"
                + (f" where {losses.where:.3f}" if losses.where else "")
                + f") {dt:.2f} s/step"
                f" ({cpu:.1f} cpu-s)"
                f"  ETA {tr.eta(_remaining_seconds(history, config))}"
            )
            if trainer.step % args.checkpoint_every == 0 or trainer.step == config.total_steps:
                trainer.save(checkpoint, history)
                last = trainer.step
            in_lm = trainer.step > config.align_steps
            if (
                args.eval_every
                and in_lm
                and (trainer.step - config.align_steps) % args.eval_every == 0
            ):
                run_eval(trainer, args, "validation")
            if args.stop_after and sitting_steps >= args.stop_after:
                break
        if trainer.step != last:
            trainer.save(checkpoint, history)
        log(f"saved step {trainer.step}; {trainer.elapsed / 60:.1f} min of training in total")
        if trainer.step < config.total_steps:
            return 0

    if args.export_only or trainer.step >= config.total_steps:
        metadata = {
            "steps": str(trainer.step),
            "train_seconds": f"{trainer.elapsed:.0f}",
            "config": json.dumps(config.to_json(), sort_keys=True),
        }
        digest = trainer.export(args.weights, metadata, getattr(torch, args.lora_dtype))
        log(f"wrote {args.weights} (sha256 {digest}), trained {trainer.elapsed / 3600:.2f} h")

    if args.eval != "none":
        run_eval(trainer, args, args.eval)
    return 0


def _number(text: str, kind: type[int] | type[float], low: float, high: float, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"needs {what}, got {text!r}")
    return value


def _count(text: str) -> int:
    return int(_number(text, int, 0, float("inf"), "a whole number >= 0"))


def _positive(text: str) -> int:
    return int(_number(text, int, 1, float("inf"), "a whole number >= 1"))


def _weight(text: str) -> float:
    return _number(text, float, 0.0, float("inf"), "a number >= 0")


def _fraction(text: str) -> float:
    return _number(text, float, 0.0, 1.0, "a fraction from 0 to 1")


def _weights(text: str, flag: str) -> tuple[float, float, float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or min(parts) < 0 or sum(parts) <= 0:
        raise SystemExit(f"{flag} needs four weights >= 0, e.g. 1,2,3,1; got {text!r}")
    return (parts[0], parts[1], parts[2], parts[3])


def _remaining_seconds(history: list[dict[str, float]], config: Any) -> float:
    """Time left from the mean step time of each phase (7 s a step until one is measured)."""

    def mean(rows: list[dict[str, float]], default: float) -> float:
        recent = rows[-50:]
        return sum(r["seconds"] for r in recent) / len(recent) if recent else default

    align = [r for r in history if r["step"] <= config.align_steps]
    language = [r for r in history if r["step"] > config.align_steps]
    done = int(history[-1]["step"]) if history else 0
    left_align = max(0, config.align_steps - done)
    left_language = config.total_steps - max(done, config.align_steps)
    return left_align * mean(align, 0.2) + left_language * mean(language, 7.0)


def run_eval(trainer: Any, args: argparse.Namespace, which: str) -> None:
    """Score the trainer on cached validation or fixed scenes; log and save the result."""
    from vlmflow.default_model import training as tr
    from vlmflow.scenes import fixed_set, validation_scenes

    source: Callable[[int, int], Iterable[Any]]
    if which == "fixed":
        scenes = fixed_set()
        source, count = (lambda s, n: scenes[s : s + n]), len(scenes)
    else:
        source, count = (lambda s, n: validation_scenes(s, n)), args.eval_scenes
    cache = tr.build_feature_cache(
        args.state / f"features-{which}-{count}",
        source,
        count,
        threshold=trainer.config.cell_threshold,
        progress=log,
    )
    started = time.perf_counter()
    result = tr.evaluate(trainer, cache, progress=lambda _: None)
    seconds = time.perf_counter() - started
    log(f"eval {which} at step {trainer.step} ({seconds:.0f} s): {result.line()}")
    (args.state / f"eval-{which}-step{trainer.step}.json").write_text(
        json.dumps(result.__dict__, indent=2) + "\n"
    )


class _StopFlag:
    """SIGINT/SIGTERM finish the current step, save, and exit (a hard kill loses < N steps)."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # second signal: leave now
            raise KeyboardInterrupt
        self.requested = True
        log("stopping after this step")


if __name__ == "__main__":
    sys.exit(main())

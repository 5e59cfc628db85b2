"""`vlmflow run EXPERIMENT...`: run experiments into OUT/results.sqlite3, resumably.

Running the same command again resumes: finished (item, setting) pairs are skipped. A sharded
run writes OUT/results.rank{R}.sqlite3 per rank. Under torchrun the ranks are taken from the
environment and rank 0 merges them into OUT/results.sqlite3 at the end (see
`vlmflow.experiments.distributed`); by hand (`--rank R --world-size W`, one process per rank)
`--merge` folds the ranks together once all have finished.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmflow.defaults import DEFAULT_MODEL
from vlmflow.sources import SOURCES

if TYPE_CHECKING:
    from vlmflow.experiments.distributed import Launch
    from vlmflow.experiments.protocol import Experiment
    from vlmflow.sources import ImageSource

DEFAULT_OUT = "runs"

EPILOG = """\
data parallel (one process per rank; every rank writes OUT/results.rank{R}.sqlite3):
  one node:    torchrun --nproc-per-node 8 -m vlmflow run EXPERIMENT --device cuda ...
  multi-node:  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
                 --rdzv-endpoint HOST:PORT -m vlmflow run EXPERIMENT --device cuda ...
               (the same command on every node)
  Rank 0 merges the rank files into OUT/results.sqlite3 at the end, so all ranks must see
  the same --out (a shared filesystem); otherwise copy the rank files into one folder and
  run: vlmflow run --merge --out DIR. --device cuda gives each rank cuda:LOCAL_RANK. If a
  rank fails or is killed the others exit non-zero; run the same command again to resume
  (torchrun --max-restarts N does that by itself).
  Without torchrun, --rank R --world-size W shards by hand; then --merge when all are done.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="experiment names")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    parser.add_argument(
        "--images",
        default="scenes",
        help=", ".join(spec.usage for spec in SOURCES.values())
        + ", a folder, a .txt list or an image",
    )
    parser.add_argument("--config", help="JSON or TOML file: one table of options per experiment")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--device-map",
        help="'auto' spreads a model too large for one device over all visible ones (accelerate)",
    )
    parser.add_argument(
        "--rank", type=int, help="shard by hand: this process's shard (0-based; torchrun sets it)"
    )
    parser.add_argument(
        "--world-size", type=int, help="shard by hand: number of shards (torchrun sets it)"
    )
    parser.add_argument(
        "--rank-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="under torchrun: a rank silent this long counts as lost (default 300)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run failed items again")
    parser.add_argument("--export", metavar="FILE", help="write a .csv or .parquet table after")
    parser.add_argument("--force", action="store_true", help="let --export replace a file")
    parser.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a damaged OUT/results.sqlite3 from its readable rows and exit",
    )
    parser.add_argument("--merge", action="store_true", help="merge per-rank stores and exit")
    parser.add_argument("--partial", action="store_true", help="with --merge: allow unfinished")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="when another run is writing the same --out, stop at once instead of waiting for "
        "it and then resuming",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list experiments and exit")


def run(args: argparse.Namespace) -> int:
    from vlmflow.errors import VlmflowError
    from vlmflow.experiments import distributed, registry
    from vlmflow.sources import ImageSource
    from vlmflow.store import merge
    from vlmflow.validate import output_file, output_folder, positive_seconds

    if args.list:
        for name in registry.names():
            print(f"{name:16s} {registry.EXPERIMENTS[name].help}")
        return 0
    if args.no_wait and args.merge:
        raise VlmflowError("--no-wait applies to a run or --repair, not to --merge: drop it")
    out = output_folder(args.out)
    if args.repair:
        return _repair(out, wait=not args.no_wait)
    if args.export:
        output_file(args.export, "--export", args.force or False, (".csv", ".parquet"))
    positive_seconds(args.rank_timeout, "--rank-timeout")
    launch = distributed.detect(args.rank, args.world_size, args.device)
    if args.merge:
        if launch.coordinated and launch.rank != 0:
            return 0  # under torchrun one merge is enough: rank 0's
        report = merge(out, partial=args.partial)
        print(
            f"merged ranks {list(report.ranks)} into {report.path}: "
            f"{report.results_added} results, {report.failures_added} failures added"
        )
        _export(args, out)
        return 0
    if not args.experiments:
        raise VlmflowError("name at least one experiment: vlmflow run --list shows them")
    options = _read_config(args.config, args.experiments)
    experiments = [registry.create(name, options.get(name)) for name in args.experiments]
    source = ImageSource.parse(args.images)
    if any(e.needs_model for e in experiments):
        _check_model_args(args)
    registry.bind_model(experiments, args.model)
    if not launch.coordinated:
        return _run_shard(args, launch, experiments, source, out)
    _assemble_default_model(args.model)
    with distributed.process_group(launch, args.rank_timeout) as meeting:
        try:
            code = _run_shard(args, launch, experiments, source, out)
        except BaseException as err:
            distributed.abandon(meeting, f"{type(err).__name__}: {err}")
            raise
        if code != 0:
            distributed.abandon(meeting, "stopped by a signal")
            return code
        try:
            merged = distributed.finish(meeting, out)
        except distributed.RankLost as err:
            raise distributed.RankLost(
                f"rank {launch.rank}: {err}; {distributed.resume_hint(out)}"
            ) from None
    if merged is not None:
        print(
            f"merged ranks {list(merged.ranks)} into {merged.path}: "
            f"{merged.results_added} results, {merged.failures_added} failures added"
        )
        _export(args, out)
    return 0


def _run_shard(
    args: argparse.Namespace,
    launch: Launch,
    experiments: list[Experiment],
    source: ImageSource,
    out: Path,
) -> int:
    """Run this process's shard into its store; 0, or 128 + signal when stopped by one."""
    from vlmflow.experiments.runner import Runner
    from vlmflow.store import ResultStore, merge, rank_files, store_path
    from vlmflow.store.lock import run_lock

    shard = launch.shard

    def load_model() -> Any:
        import vlmflow

        return vlmflow.load(
            args.model, device=launch.device, dtype=args.dtype, device_map=args.device_map
        )

    if shard.world_size == 1 and rank_files(out):
        # Resuming a sharded run in one process: fold the ranks in first, so nothing is redone
        # and results.sqlite3 ends up complete.
        report = merge(out, partial=True)
        print(f"merged per-rank stores {list(report.ranks)} into {report.path} first")
    with (
        run_lock(store_path(out, shard.rank, shard.world_size), wait=not args.no_wait),
        ResultStore.open(out, shard.rank, shard.world_size) as store,
    ):
        runner = Runner(
            experiments,
            source,
            store,
            model=_model_key(args.model),
            handle_factory=load_model,
            shard=shard,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
        summary = runner.run()
        path = store.path
    if launch.launched:
        again = "the same torchrun command"
    else:
        again = "vlmflow " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "the same command"
    counts = f"{summary.done} done, {summary.failed} failed, {summary.skipped} already done"
    if summary.interrupted:
        assert summary.signal is not None
        print(
            f"vlmflow run: stopped by {signal.Signals(summary.signal).name} ({counts}, "
            f"{summary.remaining} left); to resume, run again: {again}",
            file=sys.stderr,
        )
        return 128 + summary.signal
    print(f"{counts} in {summary.seconds:.1f} s -> {path}")
    if summary.failed:
        print(f"failures are in the 'failures' table of {path} (and in --export files)")
    if launch.coordinated:
        print(f"rank {shard.rank} finished its shard")
    elif shard.world_size > 1:
        print(f"rank {shard.rank} finished; once every rank has: vlmflow run --merge --out {out}")
    else:
        _export(args, out)
    return 0


def _export(args: argparse.Namespace, out: Path) -> None:
    from vlmflow.store import MAIN_FILE, ResultStore

    if not args.export:
        return
    target = Path(args.export)
    with ResultStore(out / MAIN_FILE, create=False) as store:
        n = store.to_csv(target) if target.suffix == ".csv" else store.to_parquet(target)
    print(f"wrote {n} rows to {target}")


def _repair(out: Path, wait: bool = True) -> int:
    """`--repair`: rebuild each damaged store file of `out` from its readable rows."""
    from vlmflow.errors import VlmflowError
    from vlmflow.store import MAIN_FILE, rank_files
    from vlmflow.store.lock import run_lock
    from vlmflow.store.repair import repair

    files = [out / MAIN_FILE] if (out / MAIN_FILE).is_file() else []
    files += list(rank_files(out).values())
    if not files:
        raise VlmflowError(f"no results store in {out}: give the --out folder of a run")
    for file in files:
        with run_lock(file, wait=wait):
            print(repair(file).summary())
    return 0


def _check_model_args(args: argparse.Namespace) -> None:
    """The device exists on this machine and the dtype is known: checked before any work."""
    from vlmflow.validate import torch_device, torch_dtype

    if args.device_map is None:
        torch_device(args.device)
    torch_dtype(args.dtype)


def _assemble_default_model(model: str) -> None:
    """Assemble the default model (once, on first use) before the process group starts:
    transformers saves nothing on ranks other than 0 once torch.distributed is up. Every rank
    may build it; the cache keeps whichever finishes first."""
    from vlmflow.default_model.assemble import ensure_checkpoint

    if model == DEFAULT_MODEL:
        ensure_checkpoint()


def _model_key(model: str) -> str:
    """A local checkpoint by absolute path (the same on every rank); a hub id as given; the
    default model with its weights' version, so results of other weights never count as done."""
    if model == DEFAULT_MODEL:
        from vlmflow.default_model.weights import WEIGHTS_FILE, load_weights

        return f"{DEFAULT_MODEL}@{load_weights(WEIGHTS_FILE).version}"
    from vlmflow.store.runs import checkpoint_digest

    path = Path(model).expanduser()
    if path.is_dir():
        return f"{path.resolve()}@{checkpoint_digest(path)}"
    return str(path.resolve()) if path.exists() else model


def _read_config(path: str | None, chosen: list[str]) -> dict[str, dict[str, Any]]:
    """{experiment: options} from a JSON or TOML file; unknown sections are typos, so refused."""
    from vlmflow.errors import VlmflowError
    from vlmflow.experiments.registry import names
    from vlmflow.validate import input_file

    if path is None:
        return {}
    file = input_file(path, "--config", "JSON or TOML file")
    try:
        if file.suffix == ".toml":
            import tomllib

            data = tomllib.loads(file.read_text(encoding="utf-8"))
        else:
            data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, TOMLDecodeError and UnicodeDecodeError
        first = str(err).splitlines()[0][:200]
        raise VlmflowError(f"cannot parse {file} ({first}): fix the file's syntax") from None
    if not isinstance(data, dict):
        raise VlmflowError(f"{file} must hold one table of options per experiment name")
    for name, section in data.items():
        if name not in names():
            raise VlmflowError(
                f"{file}: section {name!r} is not an experiment: use one of {', '.join(names())}"
            )
        if not isinstance(section, dict):
            raise VlmflowError(f"{file}: section {name!r} must be a table of options")
    return {name: data[name] for name in chosen if name in data}

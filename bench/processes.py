"""Throughput of a knockout sweep run by `vlmflow run`: one process vs `torchrun` with N ranks.

    python bench/processes.py [--model vlmflow-tiny] [--images scenes:4] [--procs 2] \
        [--layers 0,4,...] [--new-tokens 32] [--batch 8] [--json FILE]

Both runs execute the same command on the same work (the baseline and `image -> generated`,
`image -> query`, `image -> query+generated` over all layers and from each of `--layers`, for
every image), each into a fresh output folder, one after the other: one process with all the
machine's cores as torch threads, then `torchrun --nproc-per-node N` with cores / N threads per
rank (the shard of each rank is every N-th image). Times are wall clock of the whole command
as a user sees it (interpreter start-up included) and the runner's own time (the slowest
rank's, model loading included). The judge is the scene world's closed vocabulary so that the
figures measure the model, not WordNet's start-up. Prints settings per minute and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlmflow.defaults import DEFAULT_MODEL

DONE = re.compile(r"(\d+) done, (\d+) failed, (\d+) already done in ([\d.]+) s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--images", default="scenes:4")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--layers", default="0,4,8,12,16,20,24,28")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="the sweep's batch option")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="vlmflow-bench-"))
    config = work / "config.json"
    options = {
        "layers": [int(x) for x in args.layers.split(",")],
        "scopes": ["all", "from"],
        "max_new_tokens": args.new_tokens,
        "judge": "scene",
        "batch": args.batch,
    }
    config.write_text(json.dumps({"knockout": options}), encoding="utf-8")
    common = ["run", "knockout", "--model", args.model, "--images", args.images]
    common += ["--config", str(config), "--no-progress"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        raise SystemExit("torchrun not found next to this Python: install torch in this venv")
    runs = {
        "1 process": (
            [sys.executable, "-m", "vlmflow", *common, "--out", str(work / "one")],
            cores,
        ),
        f"{args.procs} processes": (
            [
                torchrun,
                "--standalone",
                f"--nproc-per-node={args.procs}",
                "-m",
                "vlmflow",
                *common,
                "--out",
                str(work / "many"),
            ],
            max(1, cores // args.procs),
        ),
    }
    results = {}
    for name, (command, threads) in runs.items():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        lines = DONE.findall(done.stdout + done.stderr)
        units = sum(int(m[0]) for m in lines)
        failed = sum(int(m[1]) for m in lines)
        runner = max(float(m[3]) for m in lines)
        results[name] = {
            "threads_per_process": threads,
            "settings": units,
            "failed": failed,
            "wall_s": round(wall, 1),
            "runner_s": round(runner, 1),
            "settings_per_min_wall": round(60 * units / wall, 1),
            "settings_per_min_runner": round(60 * units / runner, 1),
        }
        print(f"{name:12s} {results[name]}")
    one, many = results["1 process"], results[f"{args.procs} processes"]
    ratio_wall = many["settings_per_min_wall"] / one["settings_per_min_wall"]
    ratio_runner = many["settings_per_min_runner"] / one["settings_per_min_runner"]
    print(
        f"{args.procs} processes / 1 process throughput: {ratio_wall:.2f} (wall clock), "
        f"{ratio_runner:.2f} (runner time)"
    )
    if args.json:
        summary = {"cores": cores, "options": options, "images": args.images, "runs": results}
        summary["ratio_wall"] = round(ratio_wall, 3)
        summary["ratio_runner"] = round(ratio_runner, 3)
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

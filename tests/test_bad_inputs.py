"""Bad input anywhere: every subcommand and the Python API over a matrix of bad inputs.

Each CLI case must end with a non-zero exit, exactly one error line on stderr that names the fix
(argparse's usage lines aside), and no traceback; each API case must raise VlmflowError with a
one-line message. Around every case: no stored result is lost and no file outside vlmflow's own
(lock, WAL and judge cache files) changes. The CLI runs in-process (`vlmflow.cli.main`); a few
cases run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmflow.errors import VlmflowError

# Files vlmflow may create or change while refusing input: its locks, SQLite's side files
# and its own judge cache.
OWN_SUFFIXES = (".lock", "-wal", "-shm")
LONG_PROMPT = "word " * 5000  # past the tiny models' 4096 positions


# -- the world the cases run in -------------------------------------------------------------


def _png_with_bad_crc(good: bytes) -> bytes:
    """`good` with one byte of its IDAT data flipped (the chunk's CRC no longer matches)."""
    data = bytearray(good)
    at = data.index(b"IDAT") + 4 + 10
    data[at] ^= 0x55
    return bytes(data)


def _store_with_rows(folder: Path, rows: int) -> None:
    from vlmflow.store import ResultKey, ResultStore, RunSpec

    with ResultStore.open(folder) as store:
        run = store.add_run(RunSpec("toy", "m", "scenes:2"))
        for i in range(rows):
            key = ResultKey(run, "toy", f"item-{i:04d}", "s", i, 0)
            store.put_result(key, {"v": i}, {"marker": f"payload-{i:04d}", "pad": "x" * 200})


def _read_only_folder(root: Path) -> Path:
    """A folder this process cannot write in (a chmod 555 folder; as root, a read-only mount)."""
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/proc/sys"), Path("/sys/fs/cgroup")):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
    raise AssertionError("no read-only folder found on this machine")


@pytest.fixture(scope="module")
def world(tiny_path: Any, photo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-inputs")
    tiny = tiny_path("llava")
    good = root / "good.png"
    photo.save(good)
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "bad-crc.png").write_bytes(_png_with_bad_crc(data))
    (root / "text.png").write_text("not an image at all")
    (root / "empty.png").write_bytes(b"")
    photo.save(root / "good.jpg")
    jpeg = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "text.txt").write_text("a dog and a cat")
    (root / "existing.csv").write_text("user,data\n1,2\n")
    (root / "a-file").write_text("a file, not a folder")
    (root / "d.png").mkdir()  # folders named like files
    (root / "d.csv").mkdir()

    models = root / "models"
    for name, config in {
        "bad-json": "{ not json",
        "list-json": "[1, 2]",
        "other-family": '{"model_type": "blip-2"}',
    }.items():
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text(config)
    (models / "no-config").mkdir()
    truncated = models / "truncated-weights"
    shutil.copytree(tiny, truncated)
    for weights in truncated.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])
    binary = models / "binary-config"
    shutil.copytree(tiny, binary)
    (binary / "config.json").write_bytes(b"\xff\xfe\x00garbage")

    configs = root / "configs"
    configs.mkdir()
    for name, text in {
        "malformed.json": "{ not json",
        "malformed.toml": "knockout = [",
        "list.json": "[1, 2]",
        "unknown-section.json": '{"nosuch": {}}',
        "not-table.json": '{"knockout": 3}',
        "unknown-option.json": '{"knockout": {"nosuch": 1}}',
        "layers-true.toml": "[knockout]\nlayers = [true]\n",
        "step-float.toml": "[knockout]\nstep = 1.5\n",
        "tokens-zero.json": '{"fractions": {"max_new_tokens": 0}}',
        "tokens-text.json": '{"fractions": {"max_new_tokens": "ten"}}',
        "tokens-negative.json": '{"fractions": {"max_new_tokens": -4}}',
        "cache-int.json": '{"knockout": {"judge_cache": 1}}',
        "k-bool.json": '{"topk": {"k": [true]}}',
        "k-text.json": '{"topk": {"k": "half"}}',
        "batch-zero.json": '{"topk": {"batch": 0}}',
        "prompt-number.json": '{"fractions": {"prompt": 5}}',
        "settings-number.json": '{"knockout": {"settings": 3}}',
        "per-step-text.json": '{"fractions": {"per_step": "yes"}}',
        "size-zero.json": '{"maps": {"size": 0}}',
        "thumbnail-int.json": '{"check": {"thumbnail": 1}}',
    }.items():
        (configs / name).write_text(text)
    (configs / "binary.json").write_bytes(b"\xff\xfe\x00\x01garbage")
    (configs / "folder.json").mkdir()

    stores = root / "stores"
    keep = stores / "keep"
    _store_with_rows(keep, 40)
    corrupt = stores / "corrupt"
    _store_with_rows(corrupt, 300)
    path = corrupt / "results.sqlite3"
    page = bytearray(path.read_bytes())
    at = page.index(b"payload-0150") // 4096 * 4096
    page[at : at + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(page))
    garbage = stores / "garbage"
    garbage.mkdir()
    (garbage / "results.sqlite3").write_bytes(b"this is not a database " * 100)
    (stores / "empty").mkdir()
    (root / "judge-cache.sqlite3").write_bytes(b"not sqlite either " * 100)

    import vlmflow
    from vlmflow.compression import compress

    handle = vlmflow.load(str(tiny))
    context = root / "context.safetensors"
    compress(handle, good, k=0.25, max_new_tokens=2).save(context)
    raw = bytearray(context.read_bytes())
    raw[-3] ^= 0x10
    (root / "flipped.safetensors").write_bytes(bytes(raw))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]

    return {
        "root": str(root),
        "tiny": str(tiny),
        "good": str(good),
        "models": str(models),
        "configs": str(configs),
        "stores": str(stores),
        "readonly": str(_read_only_folder(root)),
        "dead": f"http://127.0.0.1:{closed_port}/v1",
    }


@pytest.fixture(scope="module")
def handle(world: dict[str, str]) -> Any:
    import vlmflow

    return vlmflow.load(world["tiny"])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.name.endswith(OWN_SUFFIXES):
            if "cache" in path.relative_to(root).parts:
                continue
            stat = path.stat()
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def _stored(world: dict[str, str]) -> int:
    with sqlite3.connect(Path(world["stores"]) / "keep" / "results.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])


@pytest.fixture
def guarded(world: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Around a case: nothing outside vlmflow's own files changes, no stored result is lost."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # as `vlmflow` does before transformers is first imported
    root = Path(world["root"])
    monkeypatch.setenv("VLMFLOW_CACHE", str(root / "cache"))
    monkeypatch.chdir(root)
    for name in ("VLMFLOW_JUDGE_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    before, rows = _snapshot(root), _stored(world)
    yield world
    assert _snapshot(root) == before
    assert _stored(world) == rows


# -- the CLI --------------------------------------------------------------------------------

DESCRIBE = ["describe", "{good}", "--model", "{tiny}"]
REPROMPT = ["reprompt", "{good}", "--question", "Is there a dog?", "--model", "{tiny}"]
RUN = ["run", "check", "--images", "scenes:2", "--out", "{root}/fresh/run"]
RUN_MODEL = ["run", "fractions", "--images", "scenes:2", "--model", "{tiny}", "--out"]
RUN_MODEL.append("{root}/fresh/model")
KNOCKOUT = ["describe", "{good}", "--model", "{tiny}", "--knockout", "image-query"]
LLM = ["judge", "a dog", "a cat", "--backend", "llm", "--no-cache"]
SCENE_JUDGE = ["judge", "a", "b", "--backend", "scene", "--vocabulary"]
SCENE_JUDGE.append("{configs}/unknown-section.json")

CLI: dict[str, tuple[list[str], str]] = {
    # general
    "unknown command": (["nosuch"], "invalid choice"),
    # describe: images
    "describe missing image": ([*DESCRIBE[:1], "{root}/nope.png", *DESCRIBE[2:]], "not found"),
    "describe image is a folder": ([*DESCRIBE[:1], "{root}", *DESCRIBE[2:]], "image"),
    "describe truncated png": ([*DESCRIBE[:1], "{root}/truncated.png", *DESCRIBE[2:]], "intact"),
    "describe png crc mismatch": ([*DESCRIBE[:1], "{root}/bad-crc.png", *DESCRIBE[2:]], "intact"),
    "describe text as png": ([*DESCRIBE[:1], "{root}/text.png", *DESCRIBE[2:]], "image"),
    "describe empty file": ([*DESCRIBE[:1], "{root}/empty.png", *DESCRIBE[2:]], "image"),
    "describe truncated jpeg": ([*DESCRIBE[:1], "{root}/truncated.jpg", *DESCRIBE[2:]], "intact"),
    "describe binary file": ([*DESCRIBE[:1], "{root}/binary.bin", *DESCRIBE[2:]], "image"),
    # describe: numbers and specs
    "describe max-new-tokens 0": ([*DESCRIBE, "--max-new-tokens", "0"], ">= 1"),
    "describe max-new-tokens -5": ([*DESCRIBE, "--max-new-tokens", "-5"], ">= 1"),
    "describe max-new-tokens text": ([*DESCRIBE, "--max-new-tokens", "ten"], "invalid int"),
    "describe bad layer spec": ([*KNOCKOUT, "--layers", "middle"], "from:L"),
    "describe layer out of range": ([*KNOCKOUT, "--layers", "from:99"], "layers 0-"),
    "describe except all layers": ([*KNOCKOUT, "--layers", "except:0-3"], "zero of"),
    "describe reversed range": ([*KNOCKOUT, "--layers", "only:3-1"], "after end"),
    "describe negative layer": ([*KNOCKOUT, "--layers", "from:-1"], "from:L"),
    "describe unknown knockout": ([*DESCRIBE, "--knockout", "image-sky"], "invalid choice"),
    "describe knockout under flash": ([*KNOCKOUT, "--attn", "flash_attention_2"], "--attn sdpa"),
    "describe unknown attention": ([*DESCRIBE, "--attn", "fast"], "sdpa"),
    # describe: device, dtype, model
    "describe cuda index": ([*DESCRIBE, "--device", "cuda:99"], "cuda"),
    "describe tpu": ([*DESCRIBE, "--device", "tpu"], "cpu"),
    "describe device garbage": ([*DESCRIBE, "--device", "cuda:x"], "cpu"),
    "describe missing model": ([*DESCRIBE[:2], "--model", "{root}/no-model"], "checkpoint"),
    "describe model is a file": ([*DESCRIBE[:2], "--model", "{root}/a-file"], "checkpoint"),
    "describe malformed config.json": (
        [*DESCRIBE[:2], "--model", "{models}/bad-json"],
        "config.json",
    ),
    "describe config.json a list": ([*DESCRIBE[:2], "--model", "{models}/list-json"], "object"),
    "describe binary config.json": (
        [*DESCRIBE[:2], "--model", "{models}/binary-config"],
        "config.json",
    ),
    "describe no config.json": ([*DESCRIBE[:2], "--model", "{models}/no-config"], "config.json"),
    "describe other family": ([*DESCRIBE[:2], "--model", "{models}/other-family"], "supports"),
    "describe truncated safetensors": (
        [*DESCRIBE[:2], "--model", "{models}/truncated-weights"],
        "again",
    ),
    # describe: prompts
    "describe special token prompt": ([*DESCRIBE, "--prompt", "what is <image>?"], "reword"),
    "describe prompt past positions": ([*DESCRIBE, "--prompt", LONG_PROMPT], "shorten"),
    # demo
    **{f"demo scenes {n}": (["demo", "--scenes", n], "from 1 to 80") for n in ("0", "-3", "1000")},
    "demo scenes text": (["demo", "--scenes", "three"], "invalid int"),
    "demo max-new-tokens 0": (["demo", "--max-new-tokens", "0"], ">= 1"),
    "demo report-scenes 0": (["demo", "--report-scenes", "0"], "from 1 to 80"),
    "demo out is a file": (["demo", "--out", "{root}/a-file"], "give a folder"),
    "demo out /dev/null": (["demo", "--out", "/dev/null"], "give a folder"),
    "demo out read-only": (["demo", "--out", "{readonly}/demo"], "writable"),
    "demo out under a file": (["demo", "--out", "{root}/a-file/demo"], "not a folder"),
    "demo cuda index": (["demo", "--device", "cuda:99"], "cuda"),
    "demo unknown device": (["demo", "--device", "gpu"], "cpu"),
    # reprompt
    "reprompt max-new-tokens 0": ([*REPROMPT, "--max-new-tokens", "0"], ">= 1"),
    "reprompt max-new-tokens -1": ([*REPROMPT, "--max-new-tokens", "-1"], ">= 1"),
    "reprompt k 0": ([*REPROMPT, "--k", "0"], "(0, 1]"),
    "reprompt k 2": ([*REPROMPT, "--k", "2"], "(0, 1]"),
    "reprompt k negative": ([*REPROMPT, "--k", "-0.5"], "(0, 1]"),
    "reprompt k nan": ([*REPROMPT, "--k", "nan"], "(0, 1]"),
    "reprompt unknown rank": ([*REPROMPT, "--rank", "median"], "invalid choice"),
    "reprompt save missing folder": ([*REPROMPT, "--save", "{root}/nope/c.st"], "create it"),
    "reprompt save is a folder": ([*REPROMPT, "--save", "{root}"], "is a folder"),
    "reprompt save /dev/null": ([*REPROMPT, "--save", "/dev/null"], "regular file"),
    "reprompt save read-only": ([*REPROMPT, "--save", "{readonly}/c.st"], "writable"),
    "reprompt save under a file": ([*REPROMPT, "--save", "{root}/a-file/c.st"], "not a folder"),
    "reprompt context missing": ([*REPROMPT, "--context", "{root}/nope.st"], "no such"),
    "reprompt context folder": ([*REPROMPT, "--context", "{root}"], "is a folder"),
    "reprompt context garbage": ([*REPROMPT, "--context", "{root}/text.txt"], "save it again"),
    "reprompt context flipped": (
        [*REPROMPT, "--context", "{root}/flipped.safetensors"],
        "checksum",
    ),
    "reprompt missing image": ([*REPROMPT[:1], "{root}/nope.png", *REPROMPT[2:]], "not found"),
    "reprompt crc image": ([*REPROMPT[:1], "{root}/bad-crc.png", *REPROMPT[2:]], "intact"),
    "reprompt special question": (
        [*REPROMPT[:2], "--question", "<image>", *REPROMPT[4:]],
        "reword",
    ),
    "reprompt cuda": ([*REPROMPT, "--device", "cuda:99"], "cuda"),
    "reprompt no question": (["reprompt", "{good}"], "required"),
    # run: what to run
    "run nothing": (["run", "--out", "{root}/fresh/none"], "--list"),
    "run unknown experiment": (["run", "nosuch", "--out", "{root}/fresh/x"], "--list"),
    "run bad images": ([*RUN[:2], "--images", "pictures", *RUN[4:]], "scenes"),
    "run scenes:0": ([*RUN[:2], "--images", "scenes:0", *RUN[4:]], "scenes:N"),
    "run scenes:999": ([*RUN[:2], "--images", "scenes:999", *RUN[4:]], "scenes:N"),
    "run missing folder": ([*RUN[:2], "--images", "{root}/nowhere", *RUN[4:]], "folder"),
    "run missing coco": ([*RUN[:2], "--images", "coco:{root}/nope.json", *RUN[4:]], "json"),
    # run: --out
    "run out is a file": ([*RUN[:-1], "{root}/a-file"], "give a folder"),
    "run out /dev/null": ([*RUN[:-1], "/dev/null"], "give a folder"),
    "run out read-only": ([*RUN[:-1], "{readonly}/out"], "writable"),
    "run out under a file": ([*RUN[:-1], "{root}/a-file/out"], "not a folder"),
    "run corrupt store": ([*RUN[:-1], "{stores}/corrupt"], "--repair"),
    "run garbage store": ([*RUN[:-1], "{stores}/garbage"], "another --out"),
    "run merge no-wait": (["run", "--merge", "--no-wait", "--out", "{root}/fresh/m"], "--no-wait"),
    # run: --export
    "run export txt": ([*RUN, "--export", "{root}/t.txt"], ".csv or .parquet"),
    "run export existing": ([*RUN, "--export", "{root}/existing.csv"], "--force"),
    "run export folder": ([*RUN, "--export", "{root}/configs/folder.json"], ".csv"),
    "run export folder csv": ([*RUN, "--export", "{root}/d.csv"], "is a folder"),
    "run export /dev/null": ([*RUN, "--export", "/dev/null"], ".csv or .parquet"),
    "run export missing parent": ([*RUN, "--export", "{root}/nope/t.csv"], "create it"),
    "run export read-only": ([*RUN, "--export", "{readonly}/t.csv"], "writable"),
    # run: --config
    "run config missing": ([*RUN, "--config", "{root}/nope.json"], "no such"),
    "run config folder": ([*RUN, "--config", "{configs}/folder.json"], "is a folder"),
    "run config binary": ([*RUN, "--config", "{configs}/binary.json"], "syntax"),
    "run config /dev/null": ([*RUN, "--config", "/dev/null"], "not a regular file"),
    **{
        f"run config {name}": (
            [*RUN_MODEL[:1], experiment, *RUN_MODEL[2:], "--config", f"{{configs}}/{name}"],
            needle,
        )
        for name, experiment, needle in [
            ("malformed.json", "knockout", "syntax"),
            ("malformed.toml", "knockout", "syntax"),
            ("list.json", "knockout", "one table"),
            ("unknown-section.json", "knockout", "use one of"),
            ("not-table.json", "knockout", "table of options"),
            ("unknown-option.json", "knockout", "known options"),
            ("layers-true.toml", "knockout", "config file"),
            ("step-float.toml", "knockout", "config file"),
            ("tokens-zero.json", "fractions", "at least 1"),
            ("tokens-text.json", "fractions", "config file"),
            ("tokens-negative.json", "fractions", "at least 1"),
            ("cache-int.json", "knockout", "config file"),
            ("k-bool.json", "topk", "config file"),
            ("k-text.json", "topk", "config file"),
            ("batch-zero.json", "topk", "at least 1"),
            ("prompt-number.json", "fractions", "config file"),
            ("settings-number.json", "knockout", "config file"),
            ("per-step-text.json", "fractions", "config file"),
            ("size-zero.json", "maps", "at least 1"),
            ("thumbnail-int.json", "check", "config file"),
        ]
    },
    # run: device, dtype, sharding, timeouts
    "run cuda index": ([*RUN_MODEL, "--device", "cuda:99"], "cuda"),
    "run unknown device": ([*RUN_MODEL, "--device", "gpu0"], "cpu"),
    "run dtype float17": ([*RUN_MODEL, "--dtype", "float17"], "bfloat16"),
    "run dtype int8": ([*RUN_MODEL, "--dtype", "int8"], "bfloat16"),
    "run dtype text": ([*RUN_MODEL, "--dtype", "Tensor"], "bfloat16"),
    "run rank outside world": ([*RUN, "--rank", "3", "--world-size", "2"], "rank"),
    "run rank-timeout negative": ([*RUN, "--rank-timeout", "-1"], "seconds > 0"),
    "run rank-timeout zero": ([*RUN, "--rank-timeout", "0"], "seconds > 0"),
    "run repair empty folder": (["run", "--repair", "--out", "{stores}/empty"], "no results"),
    "run merge without ranks": (["run", "--merge", "--out", "{stores}/empty"], "rank"),
    # report
    "report missing folder": (["report", "{root}/nope"], "--out folder"),
    "report a file": (["report", "{root}/a-file"], "--out folder"),
    "report no store": (["report", "{stores}/empty"], "run experiments"),
    "report corrupt store": (["report", "{stores}/corrupt"], "--repair"),
    "report garbage store": (["report", "{stores}/garbage"], "another --out"),
    "report read-only": (["report", "{readonly}"], "writable"),
    "report no folder": (["report"], "required"),
    # judge: texts
    "judge no texts": (["judge"], "REFERENCE"),
    "judge one text": (["judge", "a dog"], "REFERENCE"),
    "judge three texts": (["judge", "a", "b", "c"], "REFERENCE"),
    "judge missing @file": (["judge", "@{root}/nope.txt", "a"], "drop the @"),
    "judge binary @file": (["judge", "@{root}/binary.bin", "a"], "text file"),
    "judge @folder": (["judge", "@{root}", "a"], "drop the @"),
    "judge png @file": (["judge", "@{root}/good.png", "a"], "text file"),
    "judge unknown backend": (["judge", "a", "b", "--backend", "gpt"], "invalid choice"),
    # judge: llm settings
    "judge url without scheme": ([*LLM, "--base-url", "localhost:8000/v1"], "http(s)"),
    "judge ftp url": ([*LLM, "--base-url", "ftp://host/v1"], "http(s)"),
    "judge url without host": ([*LLM, "--base-url", "http://"], "http(s)"),
    "judge timeout -1": ([*LLM, "--base-url", "{dead}", "--timeout", "-1"], "seconds > 0"),
    "judge timeout 0": ([*LLM, "--base-url", "{dead}", "--timeout", "0"], "seconds > 0"),
    "judge timeout nan": ([*LLM, "--base-url", "{dead}", "--timeout", "nan"], "seconds > 0"),
    "judge timeout text": ([*LLM, "--timeout", "soon"], "invalid float"),
    "judge retries -1": ([*LLM, "--base-url", "{dead}", "--retries", "-1"], "whole number"),
    "judge retries 1000": ([*LLM, "--base-url", "{dead}", "--retries", "1000"], "whole number"),
    "judge unreachable": ([*LLM, "--base-url", "{dead}", "--retries", "0"], "server is running"),
    "judge openai without key": (LLM, "VLMFLOW_JUDGE_API_KEY"),
    # judge: files
    "judge scene without vocabulary": (["judge", "a", "b", "--backend", "scene"], "--vocabulary"),
    "judge vocabulary missing": (
        ["judge", "a", "b", "--backend", "scene", "--vocabulary", "{root}/nope.json"],
        "JSON file",
    ),
    "judge vocabulary binary": (
        ["judge", "a", "b", "--backend", "scene", "--vocabulary", "{root}/binary.bin"],
        "JSON file",
    ),
    "judge vocabulary list": (
        ["judge", "a", "b", "--backend", "scene", "--vocabulary", "{configs}/list.json"],
        "JSON object",
    ),
    "judge cache not sqlite": (
        [*SCENE_JUDGE, "--cache", "{root}/judge-cache.sqlite3"],
        "--no-cache",
    ),
    "judge cache folder": (["judge", "a", "b", "--cache", "{root}"], "is a folder"),
    "judge cache /dev/null": (["judge", "a", "b", "--cache", "/dev/null"], "regular file"),
    "judge cache read-only": (["judge", "a", "b", "--cache", "{readonly}/j.sqlite3"], "writable"),
    "judge agreement missing": (["judge", "agreement", "{root}/nope.jsonl"], "JSON-lines"),
    "judge agreement binary": (["judge", "agreement", "{root}/binary.bin"], "JSON-lines"),
    "judge agreement extra": (["judge", "agreement", "a", "b"], "usage"),
    # scenes
    "scenes no subcommand": (["scenes"], "subcommand"),
    "scenes show 999": (["scenes", "show", "999"], "0-79"),
    "scenes show -1": (["scenes", "show", "-1"], "0-79"),
    "scenes render size 100000": (["scenes", "render", "1", "--size", "100000"], "64 to 8192"),
    "scenes render size 10": (["scenes", "render", "1", "--size", "10"], "64 to 8192"),
    "scenes render size 0": (["scenes", "render", "1", "--size", "0"], "64 to 8192"),
    "scenes render min-objects 0": (["scenes", "render", "1", "--min-objects", "0"], "--min"),
    "scenes render max-objects 99": (["scenes", "render", "1", "--max-objects", "99"], "--max"),
    "scenes render min over max": (
        ["scenes", "render", "1", "--min-objects", "5", "--max-objects", "2"],
        "--min",
    ),
    "scenes render out folder": (["scenes", "render", "1", "--out", "{root}/d.png"], "folder"),
    "scenes render out /dev/null": (["scenes", "render", "1", "--out", "/dev/null"], ".png"),
    "scenes render out jpg": (["scenes", "render", "1", "--out", "{root}/x.jpg"], ".png"),
    "scenes render out read-only": (
        ["scenes", "render", "1", "--out", "{readonly}/x.png"],
        "writable",
    ),
    "scenes render masks folder": (["scenes", "render", "1", "--masks", "{root}/d.png"], "folder"),
    "scenes show out under a file": (
        ["scenes", "show", "1", "--out", "{root}/a-file/x.png"],
        "not a folder",
    ),
    "scenes evaluate scenes 0": (["scenes", "evaluate", "--scenes", "0"], "1-80"),
    "scenes evaluate scenes 999": (["scenes", "evaluate", "--scenes", "999"], "1-80"),
    "scenes evaluate tokens 0": (["scenes", "evaluate", "--max-new-tokens", "0"], ">= 1"),
    "scenes evaluate answer 0": (["scenes", "evaluate", "--answer-tokens", "0"], ">= 1"),
    "scenes evaluate batch 0": (["scenes", "evaluate", "--batch-size", "0"], ">= 1"),
    "scenes evaluate threads 0": (["scenes", "evaluate", "--threads", "0"], ">= 1"),
    "scenes evaluate out folder": (["scenes", "evaluate", "--out", "{root}"], "is a folder"),
    "scenes evaluate cuda": (["scenes", "evaluate", "--device", "cuda:99"], "cuda"),
    "scenes build-fixed out file": (["scenes", "build-fixed", "--out", "{root}/a-file"], "folder"),
}


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


if _no_cuda():  # plain `--device cuda` is a bad input only where there is no CUDA
    CLI["describe cuda without a gpu"] = ([*DESCRIBE, "--device", "cuda"], "--device cpu")
    CLI["run cuda without a gpu"] = ([*RUN_MODEL, "--device", "cuda"], "--device cpu")


def _fill(argv: list[str], world: dict[str, str]) -> list[str]:
    return [a.format(**world) if "{" in a and a != LONG_PROMPT else a for a in argv]


def _error_lines(err: str) -> list[str]:
    """stderr without argparse's usage block (its `usage:` line and continuation lines)."""
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if line.startswith("vlmflow")][-1:]
    return lines


def _check_failure(code: int, err: str, needle: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert "error" in lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from vlmflow.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CLI))
def test_cli_bad_input(case: str, guarded: dict[str, str], capsys: Any) -> None:
    argv, needle = CLI[case]
    code, err = _cli(_fill(argv, guarded), capsys)
    _check_failure(code, err, needle)
    assert not Path(guarded["root"], "fresh").exists() or not any(
        p.is_file() and not p.name.endswith(OWN_SUFFIXES)
        for p in Path(guarded["root"], "fresh").rglob("*")
    )


def test_cli_lock_with_no_wait_refuses_a_second_run(guarded: dict[str, str], capsys: Any) -> None:
    from vlmflow.store.lock import run_lock

    out = Path(guarded["stores"]) / "keep"
    argv = ["run", "check", "--images", "scenes:2", "--out", str(out), "--no-wait"]
    with run_lock(out / "results.sqlite3"):  # another open file description: a second holder
        code, err = _cli(argv, capsys)
    _check_failure(code, err, "another vlmflow run")


SUBPROCESS = ["demo scenes 0", "run corrupt store", "judge binary @file", "report corrupt store"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_cli_bad_input_in_a_real_process(case: str, guarded: dict[str, str]) -> None:
    argv, needle = CLI[case]
    done = subprocess.run(
        [sys.executable, "-m", "vlmflow", *_fill(argv, guarded)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_failure(done.returncode, done.stderr, needle)


# -- the Python API -------------------------------------------------------------------------


def _api_cases() -> dict[str, tuple[Callable[[dict[str, str], Any], Any], str]]:
    import vlmflow
    from vlmflow import validate
    from vlmflow.compression import compress, load_context
    from vlmflow.experiments import ImageSource
    from vlmflow.experiments.registry import create
    from vlmflow.images import read_image
    from vlmflow.judge import get_backend
    from vlmflow.judge.cache import JudgeCache
    from vlmflow.judge.llm import LlmJudge
    from vlmflow.report import build_report
    from vlmflow.scenes.fixed import load_fixed_scene
    from vlmflow.scenes.scene import generate
    from vlmflow.store import ResultStore
    from vlmflow.store.repair import repair

    def path(w: dict[str, str], key: str, rest: str) -> Path:
        return Path(w[key]) / rest

    cases: dict[str, tuple[Callable[[dict[str, str], Any], Any], str]] = {
        # loading
        "load missing": (lambda w, h: vlmflow.load(w["root"] + "/nope"), "checkpoint"),
        "load malformed config": (
            lambda w, h: vlmflow.load(w["models"] + "/bad-json"),
            "config.json",
        ),
        "load truncated weights": (
            lambda w, h: vlmflow.load(w["models"] + "/truncated-weights"),
            "again",
        ),
        "load dtype float17": (lambda w, h: vlmflow.load(w["tiny"], dtype="float17"), "bfloat16"),
        "load dtype int": (lambda w, h: vlmflow.load(w["tiny"], dtype="int64"), "bfloat16"),
        "load device cuda:99": (lambda w, h: vlmflow.load(w["tiny"], device="cuda:99"), "cuda"),
        "load device bogus": (lambda w, h: vlmflow.load(w["tiny"], device="npu7"), "cpu"),
        "load attn bogus": (lambda w, h: vlmflow.load(w["tiny"], attn="fast"), "sdpa"),
        # layer specs and knockouts
        "layers bad spec": (lambda w, h: vlmflow.Layers.parse("middle"), "from:L"),
        "layers except everything": (
            lambda w, h: vlmflow.Layers.parse("except:0-3").resolve(4),
            "zero of",
        ),
        "layers past the end": (lambda w, h: vlmflow.Layers.parse("from:9").resolve(4), "0-3"),
        "layers reversed": (lambda w, h: vlmflow.Layers.parse("only:3-1").resolve(4), "after"),
        "knockout unknown": (lambda w, h: vlmflow.Knockout.parse("image->sky"), "image"),
        # images
        "image missing": (lambda w, h: read_image(path(w, "root", "nope.png")), "not found"),
        "image truncated": (lambda w, h: read_image(path(w, "root", "truncated.png")), "intact"),
        "image crc": (lambda w, h: read_image(path(w, "root", "bad-crc.png")), "intact"),
        "image text": (lambda w, h: read_image(path(w, "root", "text.png")), "image"),
        "image empty": (lambda w, h: read_image(path(w, "root", "empty.png")), "image"),
        "image jpeg cut": (lambda w, h: read_image(path(w, "root", "truncated.jpg")), "intact"),
        # a loaded model
        "prepare special token": (
            lambda w, h: h.prepare(w["good"], "see <image> here"),
            "reword",
        ),
        "prepare past positions": (lambda w, h: h.prepare(w["good"], LONG_PROMPT), "shorten"),
        "prepare crc image": (lambda w, h: h.prepare(path(w, "root", "bad-crc.png")), "intact"),
        "generate zero tokens": (
            lambda w, h: h.generate(h.prepare(w["good"]), max_new_tokens=0),
            "at least 1",
        ),
        "generate past positions": (
            lambda w, h: h.generate(h.prepare(w["good"]), max_new_tokens=10**6),
            "max_new_tokens",
        ),
        "compress k 5": (lambda w, h: compress(h, w["good"], k=5), "fraction"),
        "ask zero tokens": (
            lambda w, h: load_context(path(w, "root", "context.safetensors"), h).ask(
                "Is there a dog?", max_new_tokens=0
            ),
            "1",
        ),
        "context missing": (lambda w, h: load_context(path(w, "root", "nope.st"), h), "no saved"),
        "context garbage": (
            lambda w, h: load_context(path(w, "root", "text.txt"), h),
            "save it again",
        ),
        "context flipped": (
            lambda w, h: load_context(path(w, "root", "flipped.safetensors"), h),
            "checksum",
        ),
        # scenes
        "scene size huge": (lambda w, h: generate(1, size=100000), "64-8192"),
        "scene size small": (lambda w, h: generate(1, size=10), "64-8192"),
        "scene size bool": (lambda w, h: generate(1, size=True), "64-8192"),
        "scene size float": (lambda w, h: generate(1, size=448.5), "64-8192"),
        "scene objects 0": (lambda w, h: generate(1, min_objects=0), "--min-objects"),
        "scene fixed 999": (lambda w, h: load_fixed_scene(999), "0-79"),
        # experiments
        "experiment unknown": (lambda w, h: create("nosuch"), "--list"),
        "experiment unknown option": (lambda w, h: create("fractions", {"bogus": 1}), "known"),
        "experiment layers true": (lambda w, h: create("knockout", {"layers": [True]}), "type"),
        "experiment step float": (lambda w, h: create("knockout", {"step": 1.5}), "type"),
        "experiment step zero": (lambda w, h: create("knockout", {"step": 0}), "at least 1"),
        "experiment tokens zero": (
            lambda w, h: create("fractions", {"max_new_tokens": 0}),
            "at least 1",
        ),
        "experiment tokens bool": (
            lambda w, h: create("fractions", {"max_new_tokens": True}),
            "type",
        ),
        "experiment k text": (lambda w, h: create("topk", {"k": "half"}), "type"),
        "experiment rank bool": (lambda w, h: create("reprompt", {"naive": 1}), "type"),
        "source bogus": (lambda w, h: ImageSource.parse("pictures"), "scenes"),
        "source scenes 0": (lambda w, h: ImageSource.parse("scenes:0"), "scenes:N"),
        # stores
        "store corrupt": (lambda w, h: ResultStore.open(path(w, "stores", "corrupt")), "--repair"),
        "store garbage": (
            lambda w, h: ResultStore.open(path(w, "stores", "garbage")),
            "another --out",
        ),
        "store missing": (
            lambda w, h: ResultStore(path(w, "stores", "empty/x.sqlite3"), create=False),
            "--out",
        ),
        "store rank outside": (
            lambda w, h: ResultStore.open(path(w, "stores", "empty"), 3, 2),
            "rank",
        ),
        "repair missing": (
            lambda w, h: repair(path(w, "stores", "empty/results.sqlite3")),
            "--out",
        ),
        "report corrupt": (lambda w, h: build_report(path(w, "stores", "corrupt")), "--repair"),
        "report empty": (lambda w, h: build_report(path(w, "stores", "empty")), "run experiments"),
        # judge
        "judge url no scheme": (lambda w, h: LlmJudge(base_url="localhost:1/v1"), "http(s)"),
        "judge timeout -1": (lambda w, h: LlmJudge(base_url=w["dead"], timeout=-1), "> 0"),
        "judge retries -1": (lambda w, h: LlmJudge(base_url=w["dead"], retries=-1), "whole"),
        "judge unreachable": (
            lambda w, h: LlmJudge(base_url=w["dead"], retries=0).compare("a", "b"),
            "server is running",
        ),
        "judge backend unknown": (lambda w, h: get_backend("gpt"), "offline"),
        "judge cache not sqlite": (
            lambda w, h: JudgeCache(path(w, "root", "judge-cache.sqlite3")),
            "--no-cache",
        ),
        "judge cache folder": (lambda w, h: JudgeCache(w["root"]), "is a folder"),
        # validation helpers users may call too
        "whole number bool": (lambda w, h: validate.whole_number(True, "n"), "whole number"),
        "output file device": (lambda w, h: validate.output_file("/dev/null", "f"), "device"),
        "output folder file": (
            lambda w, h: validate.output_folder(path(w, "root", "a-file")),
            "folder",
        ),
    }
    return cases


API = _api_cases()


@pytest.mark.parametrize("case", sorted(API))
def test_api_bad_input(case: str, guarded: dict[str, str], handle: Any) -> None:
    call, needle = API[case]
    with pytest.raises(VlmflowError) as err:
        call(guarded, handle)
    message = str(err.value)
    assert "\n" not in message and needle.lower() in message.lower(), message


def test_the_matrix_is_large_enough() -> None:
    assert len(CLI) + len(API) + len(SUBPROCESS) + 1 >= 150


def test_every_subcommand_is_in_the_matrix() -> None:
    from vlmflow.cli import COMMANDS

    covered = {argv[0] for argv, _ in CLI.values()}
    assert set(COMMANDS) <= covered


def test_png_helper_really_breaks_the_crc(world: dict[str, str]) -> None:
    data = Path(world["root"], "bad-crc.png").read_bytes()
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4 : at], "big")
    chunk = data[at : at + 4 + length]
    crc = int.from_bytes(data[at + 4 + length : at + 8 + length], "big")
    assert zlib.crc32(chunk) != crc
    assert json.loads(json.dumps(world))  # the world is plain text paths

"""Durable, resumable results: an SQLite store per output folder, merge of ranks, export.

    store = ResultStore.open("out")                   # out/results.sqlite3 (WAL)
    run = store.add_run(RunSpec("knockout", model, source, config))
    store.put_result(ResultKey(run, "knockout", item, setting), metrics, payload, blobs)
    store.done_keys(run)                              # what a restart skips
    store.to_csv("out/results.csv"); store.to_parquet("out/results.parquet")
    merge("out")                                      # results.rank*.sqlite3 -> results.sqlite3

This package imports no torch and no numpy at module level.
"""

from vlmflow.store.merge import MergeReport, merge, rank_files
from vlmflow.store.results import (
    MAIN_FILE,
    Failure,
    ResultKey,
    ResultStore,
    Row,
    ShardInfo,
    store_path,
)
from vlmflow.store.runs import RunInfo, RunSpec, canonical_json

__all__ = [
    "MAIN_FILE",
    "Failure",
    "MergeReport",
    "ResultKey",
    "ResultStore",
    "Row",
    "RunInfo",
    "RunSpec",
    "ShardInfo",
    "canonical_json",
    "merge",
    "rank_files",
    "store_path",
]

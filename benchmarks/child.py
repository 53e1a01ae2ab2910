"""One measured child: `python -m benchmarks.child SPEC.json RESULT.json`.

SPEC's `kind` picks the work: `ingest` (Store.ingest of a JSONL file), `ours` (run_export
end to end), `dagster` (a run of the export_collection job, in process) or `reference` (the
hand-written DuckDB statements). Each imports only what
its work needs, so the reference's peak RSS carries no export_pipeline modules. The work
alone is timed; RESULT gets `seconds`, `rows`, the output `files` with their sizes and
`extra` details.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


def _files(entries: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{**entry, "bytes": Path(entry["path"]).stat().st_size} for entry in entries]


def ingest(spec: dict[str, Any]) -> dict[str, Any]:
    """Ingest a JSONL file into an existing collection with the real Store.ingest."""
    from export_pipeline.settings import Settings
    from export_pipeline.store import Store

    store = Store(Settings(home=Path(spec["home"])))
    started = time.perf_counter()
    result = store.ingest(spec["namespace"], spec["collection"], Path(spec["source"]))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": result.ingested, "files": []}


def _timed(steps: dict[str, float], function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            steps[function.__name__] = steps.get(function.__name__, 0.0) + elapsed

    return wrapper


def ours(spec: dict[str, Any]) -> dict[str, Any]:
    """run_export end to end, publishing into the case's own folder.

    The lifecycle's steps (select, write_shard, assemble, publish, cleanup) are wrapped with
    timers, so the result also says where the time went; run_export itself runs unchanged.
    """
    from export_pipeline import export
    from export_pipeline.settings import Settings

    steps: dict[str, float] = {}
    lifecycle = export.ExportLifecycle
    for name in ("select", "write_shard", "assemble", "publish", "cleanup"):
        step = lifecycle.__dict__[name]
        if isinstance(step, staticmethod):
            setattr(lifecycle, name, staticmethod(_timed(steps, step.__func__)))
        else:
            setattr(lifecycle, name, _timed(steps, step))
    settings = Settings(home=Path(spec["home"]), storage=Path(spec["out_dir"]).as_uri())
    started = time.perf_counter()
    result = export.run_export(
        spec["namespace"], spec["collection"], spec["request"], settings=settings
    )
    seconds = time.perf_counter() - started
    steps["other"] = seconds - sum(steps.values())  # planning, and anything not wrapped
    return {
        "seconds": seconds,
        "rows": result.response.document_count,
        "files": _files(_published(result.response)),
        "extra": {
            "steps": steps,
            "memory_limit": settings.duckdb_memory_limit,
            "threads": settings.duckdb_threads,
            "max_columns": settings.max_columns,
            "warnings": result.manifest.get("warnings", []),
        },
    }


def dagster(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of the export_collection job as the CLI launches it: one shard in process,
    several in parallel processes (`spec["shards"]`, default EXPORT_PIPELINE_SHARDS)."""
    from export_pipeline.orchestration.instance import local_instance
    from export_pipeline.orchestration.launch import execute
    from export_pipeline.settings import Settings

    settings = Settings(home=Path(spec["home"]), storage=Path(spec["out_dir"]).as_uri())
    if spec.get("shards"):
        settings = settings.model_copy(update={"shards": str(spec["shards"])})
    instance = local_instance(settings)
    started = time.perf_counter()
    run = execute(settings, spec["namespace"], spec["collection"], spec["request"], "cli", instance)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": run.response.document_count,
        "files": _files(_published(run.response)),
        "extra": {"run_id": run.run_id, "warnings": run.manifest.get("warnings", [])},
    }


def _published(response: Any) -> list[dict[str, str]]:
    entries = [{"role": "documents", "path": unquote(urlparse(response.s3_path).path)}]
    if response.vectors_s3_path:
        entries.append(
            {"role": "vectors", "path": unquote(urlparse(response.vectors_s3_path).path)}
        )
    return entries


def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The hand-written statements in a fresh DuckDB connection: defaults but threads."""
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {int(spec['threads'])}")
    rows = 0
    for number, sql in enumerate(spec["statements"]):
        count = con.execute(sql).fetchall()
        if number == spec["documents_statement"]:
            rows = count[0][0]
    con.close()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "files": _files(spec["files"])}


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ingest": ingest,
    "ours": ours,
    "dagster": dagster,
    "reference": reference,
}


def main(spec_path: str, result_path: str) -> int:
    """Run the spec and write its result (or the error's traceback); the exit code."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result, code = KINDS[spec["kind"]](spec), 0
    except BaseException as exc:
        message = (str(exc).strip().splitlines() or [""])[0]
        summary = f"{type(exc).__name__}: {message}"
        result, code = {"error": traceback.format_exc(), "summary": summary}, 1
    Path(result_path).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    exit_code = main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skip interpreter teardown: the work is done, measured and written

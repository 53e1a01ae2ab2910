"""Incremental exports (docs/contract.md M5, M6): what changed after an earlier version.

With `changed_since` the export's row predicate gains one more condition, "the id is in the
history of a version after it" (the union of those versions' history files, read by
DuckDB), so the documents and vectors files hold exactly the changed documents that match
(sampled and projected as usual). The deletes file is then the changed ids minus those
matches: ids deleted since, and ids updated since that no longer match. Applying the
documents (upserts) and then the deletes to the earlier export gives this version's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from export_pipeline import duck
from export_pipeline.engine.changed_ids import history_copies
from export_pipeline.engine.manifest import MANIFEST_NAME, OutputFile, sha256_of
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.selection import open_scratch, scratch_files
from export_pipeline.engine.sinks import TableWriter, line_sink, sink_of
from export_pipeline.engine.writers import CONTENT_TYPES
from export_pipeline.errors import InvalidInput, NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.storage import open_storage
from export_pipeline.store import Collection, Namespace, Store
from export_pipeline.store.history import FULL_EXPORT, check_since

DELETES_ROLE = "deletes"


def resolve_since(
    store: Store, namespace: Namespace, collection: Collection, changed_since: int | str
) -> int:
    """M5: the version `changed_since` names (itself, or the version an earlier export of
    this collection reflects); a InvalidInput where the history cannot answer from it."""
    since = changed_since
    if isinstance(changed_since, str):
        try:
            found = store.exports.find(namespace, changed_since)
        except NotFoundError:
            raise _refused(f"changed_since {changed_since!r} is not an export of namespace"
                           f" {namespace.name!r}") from None  # fmt: skip
        if found.collection_id != collection.id:
            raise _refused(
                f"changed_since {changed_since!r} is an export of another collection,"
                f" not of {collection.name!r}"
            )
        storage = open_storage(store.settings, found.storage)
        manifest = json.loads(storage.read(f"{found.prefix}/{MANIFEST_NAME}"))
        since = int(manifest.get("version", manifest["collection"]["version"]))
    assert isinstance(since, int)
    check_since(collection, since)
    return since


def _refused(message: str) -> InvalidInput:
    return InvalidInput(
        f"{message}; {FULL_EXPORT}", [{"loc": "changed_since", "msg": "not a usable watermark"}]
    )


def deletes_file(plan: ExportPlan, store: Store, settings: Settings) -> OutputFile:
    """M6: an incremental export's deletes file, in its scratch space (the assembly's step)."""
    with open_scratch(plan, settings) as con:
        return write_deletes(
            con,
            store,
            plan.collection,
            (plan.filter_sql, list(plan.filter_params)),
            history_copies(plan, store),
            plan.request.format,
            scratch_files(plan) / plan.deletes_name,
            plan.segment_copies,
        )


def write_deletes(
    con: duckdb.DuckDBPyConnection,
    store: Store,
    collection: Collection,
    where: tuple[str, list[Any]],
    history: list[str],
    fmt: str,
    path: Path,
    copies: Path,
) -> OutputFile:
    """M6: the deletes file: the changed ids (`history`) not among the snapshot's matches of
    `where` (the export's filter, before sampling), in id order, in the export's format."""
    segments = store.documents.segment_files(collection, copies)
    nothing = "SELECT NULL::VARCHAR AS document_id WHERE FALSE"
    changed = matches = nothing
    if history:
        changed = f"SELECT document_id FROM read_parquet([{', '.join(map(duck.literal, history))}])"
    if history and segments:
        # only the changed documents are tested (a set: no order is relied on here)
        listing = ", ".join(duck.literal(str(p)) for p in segments)
        matches = (
            f"SELECT document_id FROM read_parquet([{listing}])"
            f" WHERE document_id IN ({changed}) AND ({where[0]})"
        )
    ids = f"SELECT DISTINCT document_id FROM ({changed}) ANTI JOIN ({matches}) USING (document_id)"
    column = "document_id"
    if fmt == "json":  # one JSON object a line (W2)
        column = """'{"document_id":' || to_json(document_id)::VARCHAR || '}' AS line"""
    sql = f"SELECT {column} FROM ({ids}) ORDER BY document_id"
    opener = line_sink(path) if fmt == "json" else sink_of(fmt, True)(path)
    writer = TableWriter(path, opener)
    try:
        for batch in duck.streamed(con, sql, list(where[1]), 65536):
            writer.write(pa.Table.from_batches([batch]))
        name = "line" if fmt == "json" else "document_id"
        empty = pa.table({name: pa.array([], pa.string())})
        written = writer.close(empty)
    except BaseException:
        writer.abort()
        raise
    return OutputFile(
        role=DELETES_ROLE,
        name=path.name,
        path=path,
        content_type=CONTENT_TYPES[fmt],
        rows=written.rows,
        bytes=path.stat().st_size,
        sha256=sha256_of(path),
        columns=[{"name": "document_id", "type": "string"}],
    )

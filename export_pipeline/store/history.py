"""A collection's change history (docs/contract.md M1-M4): which ids each version changed.

Every version an ingest or a delete makes has one small parquet file, `document_id` (sorted)
and `change` ('upsert' or 'delete'), beside the segments: under the collection's
`history/` folder, or in S3 where the segments are (EXPORT_PIPELINE_SEGMENTS), so that any
worker sharing the catalog can read it. The catalog's `history` table lists each version's
file; a file is written before the swap, under a name of its own (a killed change's file
never collides with the next change's), recorded with the change's operation, and listed by
the swap's transaction. Files older than EXPORT_PIPELINE_HISTORY_RETENTION_SECONDS leave at
the collection's next change, and `history_from` moves past them (M4).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb

from export_pipeline import duck
from export_pipeline.errors import InvalidInput
from export_pipeline.store.catalog import Catalog, Collection
from export_pipeline.store.database import Connection
from export_pipeline.store.ingest import Change
from export_pipeline.store.segment_files import SegmentFiles

UPSERT = "upsert"
DELETE = "delete"
FULL_EXPORT = "run a full export (without changed_since)"


def write_history(
    con: duckdb.DuckDBPyConnection,
    files: SegmentFiles,
    collection: Collection,
    folder: Path,
    ids_sql: str,
    kind: str,
    change: Change,
) -> str:
    """Write the history file of the version `change` makes (`ids_sql`: a DuckDB source of
    a `document_id` column; `folder`: the collection's history folder, or, for S3, a local
    one the file is made in); its path or URI, for the swap to list."""
    name = f"v{collection.version + 1:012d}_{uuid.uuid4().hex[:12]}.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / name
    target = str(local)
    if files.remote:
        target = files.uri(collection.namespace_id, collection.id, name, folder="history")
        change.uploaded.append(target)  # removed if the change fails, as its segments are
        if change.record is not None:
            change.record.add(segments=[target])
    else:
        change.will_create(local)
    con.execute(
        f"COPY (SELECT DISTINCT document_id, ? AS change FROM {ids_sql} ORDER BY document_id)"
        f" TO {duck.literal(str(local))} (FORMAT parquet)",
        [kind],
    )
    if files.remote:
        files.upload([(local, target)])
    return target


def list_history(
    db: Connection, collection: Collection, path: str, now: float, retention: int
) -> None:
    """In the swap's transaction: list the new version's history file; files past retention
    go to `retired_segments` already expired (removed after the swap, as retired segments
    are, S3 retried) and `history_from` moves past them."""
    db.execute(
        "INSERT INTO history (collection_id, version, path, written_at) VALUES (?, ?, ?, ?)",
        (collection.id, collection.version + 1, path, now),
    )
    expired = db.execute(
        "SELECT version, path FROM history WHERE collection_id = ? AND written_at < ?",
        (collection.id, now - retention),
    ).fetchall()
    start = collection.history_from
    if expired:
        db.executemany(
            "DELETE FROM history WHERE collection_id = ? AND version = ?",
            [(collection.id, row[0]) for row in expired],
        )
        db.executemany(
            "INSERT INTO retired_segments VALUES (?, 0)"
            " ON CONFLICT (path) DO UPDATE SET retired_at = excluded.retired_at",
            [(row[1],) for row in expired],
        )
        start = max(start, *(int(row[0]) for row in expired))
    db.execute("UPDATE collections SET history_from = ? WHERE id = ?", (start, collection.id))


def check_since(collection: Collection, since: int) -> None:
    """M5: `since` must be a version whose later changes the history still covers."""
    if since > collection.version:
        raise InvalidInput(
            f"changed_since version {since} is after the collection's current version"
            f" {collection.version}; {FULL_EXPORT}",
            [{"loc": "changed_since", "msg": "in the future"}],
        )
    if since < collection.history_from:
        raise InvalidInput(
            f"changed_since version {since} is older than the history kept for collection"
            f" {collection.name!r} (from version {collection.history_from}); {FULL_EXPORT}",
            [{"loc": "changed_since", "msg": "older than the retained history"}],
        )


def changed_paths(catalog: Catalog, collection: Collection, since: int) -> list[str]:
    """The history files (paths, URIs) of the versions after `since` up to the snapshot's."""
    with catalog.reading() as db:
        rows = db.execute(
            "SELECT path FROM history WHERE collection_id = ? AND version > ? AND version <= ?"
            " ORDER BY version",
            (collection.id, since, collection.version),
        ).fetchall()
    return [row[0] for row in rows]

"""A change becomes the collection's next version: the catalog swap, and what retention
lets go of (replaced segments, old history files) once it is listed."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from export_pipeline.errors import ConflictError
from export_pipeline.settings import Settings
from export_pipeline.store.catalog import Catalog, Collection, utc_now
from export_pipeline.store.history import list_history
from export_pipeline.store.ingest import Change
from export_pipeline.store.segment_files import SegmentFiles, is_remote
from export_pipeline.store.segments import shapes_file


def swap(
    catalog: Catalog,
    settings: Settings,
    folder: Path,
    collection: Collection,
    change: Change,
    count: int,
    history: str,
) -> list[str]:
    """List the change's segments and history file as version + 1 (`folder`: the local
    segments'); remove local retired files past retention, and return the S3 ones (`expire`)."""
    now = time.time()
    with catalog.transaction() as db:
        changed = db.execute(
            "UPDATE collections SET version = version + 1, segments = ?,"
            " document_count = ?, updated_at = ? WHERE id = ? AND version = ?",
            (
                orjson.dumps(change.keep).decode(),
                count,
                utc_now(),
                collection.id,
                collection.version,
            ),
        ).rowcount
        if changed != 1:
            raise ConflictError(
                f"collection {collection.name!r} changed during this ingest or delete"
            )
        list_history(db, collection, history, now, settings.history_retention_seconds)
        db.executemany(
            "INSERT INTO retired_segments VALUES (?, ?)"
            " ON CONFLICT (path) DO UPDATE SET retired_at = excluded.retired_at",
            [(s if is_remote(s) else str(folder / s), now) for s in change.retired],
        )
        expired = [
            row[0]
            for row in db.execute(
                "SELECT path FROM retired_segments WHERE retired_at < ?",
                (now - settings.segment_retention_seconds,),
            ).fetchall()
        ]
        local = [(path,) for path in expired if not is_remote(path)]
        db.executemany("DELETE FROM retired_segments WHERE path = ?", local)
    for (path,) in local:
        # Exports reading an older snapshot had the retention period to finish.
        Path(path).unlink(missing_ok=True)
        shapes_file(Path(path)).unlink(missing_ok=True)
    return [path for path in expired if is_remote(path)]


def expire(catalog: Catalog, files: SegmentFiles, uris: list[str]) -> None:
    """Remove retired S3 files, then forget them; where S3 fails, the next change of any
    collection tries again (the change that retired them has succeeded)."""
    if not uris:
        return
    try:
        files.remove(uris)
    except Exception:
        return
    with catalog.transaction() as db:
        db.executemany("DELETE FROM retired_segments WHERE path = ?", [(u,) for u in uris])


def listed_files(catalog: Catalog) -> tuple[set[str], set[str]]:
    """The segment and history files every collection's current version lists, and the
    retired ones retention still keeps, as absolute paths or URIs (one catalog snapshot)."""
    with catalog.reading() as db:
        rows = db.execute("SELECT id, namespace_id, segments FROM collections").fetchall()
        retired = {row[0] for row in db.execute("SELECT path FROM retired_segments")}
        listed = {row[0] for row in db.execute("SELECT path FROM history")}
    for row in rows:
        folder = catalog.home / "collections" / row["namespace_id"] / row["id"]
        listed.update(
            s if is_remote(s) else str(folder / "segments" / s) for s in orjson.loads(row[2])
        )
    return listed, retired

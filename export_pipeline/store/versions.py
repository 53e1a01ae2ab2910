"""A change becomes the collection's next version: the catalog swap, which retires what it
replaced (segments, history past its retention) for store/pins.py to remove."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from export_pipeline.errors import ConflictError
from export_pipeline.settings import Settings
from export_pipeline.store import pins
from export_pipeline.store.catalog import Catalog, Collection, utc_now
from export_pipeline.store.database import Connection
from export_pipeline.store.history import list_history
from export_pipeline.store.ingest import Change
from export_pipeline.store.segment_files import is_remote


def swap(
    catalog: Catalog,
    settings: Settings,
    folder: Path,
    collection: Collection,
    change: Change,
    count: int,
    history: str,
) -> float:
    """List the change's segments and history file as version + 1 (`folder`: the local
    segments') and retire what it replaced; when. What retention and pins let go of is
    removed afterwards (store/pins.py: `expire_retired`)."""
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
        _retire(db, folder, change.retired, now)
    return now


def relist(catalog: Catalog, folder: Path, collection: Collection, change: Change) -> float:
    """List the change's segments in place of the version's, the version unchanged (a
    compaction: the same documents), and retire the replaced ones; when. The collection's
    lock excludes other changes; the WHERE, any that slipped past it."""
    now = time.time()
    with catalog.transaction() as db:
        changed = db.execute(
            "UPDATE collections SET segments = ?, updated_at = ? WHERE id = ? AND version = ?",
            (orjson.dumps(change.keep).decode(), utc_now(), collection.id, collection.version),
        ).rowcount
        if changed != 1:
            raise ConflictError(f"collection {collection.name!r} changed during the compaction")
        _retire(db, folder, change.retired, now)
    return now


def _retire(db: Connection, folder: Path, segments: list[str], now: float) -> None:
    """Segments a version no longer lists, kept for exports reading them (D5)."""
    db.executemany(
        "INSERT INTO retired_segments VALUES (?, ?)"
        " ON CONFLICT (path) DO UPDATE SET retired_at = excluded.retired_at",
        [(s if is_remote(s) else str(folder / s), now) for s in segments],
    )


def listed_files(catalog: Catalog) -> tuple[set[str], set[str]]:
    """The segment and history files every collection's current version lists, and the
    retired ones still kept (retention, pins), as absolute paths or URIs (one snapshot)."""
    with catalog.reading() as db:
        listed = pins.listed(db, catalog.home)
        listed.update(row[0] for row in db.execute("SELECT path FROM history"))
        return listed, pins.retired(db)

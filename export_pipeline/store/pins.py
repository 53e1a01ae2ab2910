"""Pins: retired segments are removed only once no running export reads them (docs/contract.md D5).

An export's operation record lists the segments of its snapshot as `pins` (recorded by
`Operations.begin` in the transaction that checks they still exist). `expire_retired`, run by
every change to a collection and by the sweep, removes the retired segments past
EXPORT_PIPELINE_SEGMENT_RETENTION_SECONDS that no record of a live owner pins; a crashed
export's pins stop counting when its owner is gone, and the sweep forgets its record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from export_pipeline.settings import Settings
from export_pipeline.store.catalog import Catalog
from export_pipeline.store.database import Connection
from export_pipeline.store.operations import Operation, Operations, Owner, owner_gone
from export_pipeline.store.segment_files import SegmentFiles, is_remote


def listed(db: Connection, home: Path) -> set[str]:
    """The segments every collection's current version lists, as absolute paths or URIs."""
    found: set[str] = set()
    for row in db.execute("SELECT id, namespace_id, segments FROM collections").fetchall():
        folder = home / "collections" / row["namespace_id"] / row["id"] / "segments"
        found.update(s if is_remote(s) else str(folder / s) for s in json.loads(row["segments"]))
    return found


def retired(db: Connection) -> set[str]:
    """The replaced segments still kept (by retention or by pins)."""
    return {row[0] for row in db.execute("SELECT path FROM retired_segments")}


def unavailable(db: Connection, home: Path, segments: Iterable[str]) -> list[str]:
    """Those of `segments` neither listed nor retired: removed, or about to be."""
    wanted = list(segments)
    if not wanted:
        return []
    kept = listed(db, home) | retired(db)
    return [segment for segment in wanted if segment not in kept]


def live_pins(db: Connection, settings: Settings) -> set[str]:
    """The segments pinned by records whose owner still runs (or may: another host's)."""
    rows = db.execute(
        "SELECT host, pid, pid_started, started_at, pins FROM operations WHERE pins <> '[]'"
    ).fetchall()
    return {
        segment
        for row in rows
        if not owner_gone(Owner(row[0], row[1], row[2]), row[3], settings)
        for segment in json.loads(row[4])
    }


def expire_retired(
    catalog: Catalog, files: SegmentFiles, settings: Settings, now: float | None = None
) -> int:
    """Remove the retired segments retired before `now` minus the retention that no live
    export pins; how many were removed. S3 ones that fail to go are kept for the next try."""
    now = time.time() if now is None else now
    before = now - settings.segment_retention_seconds
    with catalog.connect() as db:  # most calls: nothing past retention, and no write lock
        found = db.execute(
            "SELECT 1 FROM retired_segments WHERE retired_at < ? LIMIT 1", (before,)
        ).fetchone()
    if found is None:
        return 0
    removal_id = f"rm_{uuid.uuid4().hex}"
    removal = Operation(Operations(catalog), "removal", removal_id, Owner.current(), now)
    with catalog.transaction() as db:
        pinned = live_pins(db, settings)
        rows = db.execute(
            "SELECT path, retired_at FROM retired_segments WHERE retired_at < ?", (before,)
        ).fetchall()
        expired = [(row[0], row[1]) for row in rows if row[0] not in pinned]
        if not expired:
            return 0
        # Forgotten before they are removed, so an export can no longer pin them (its pin
        # checks they are still retired, in a transaction of its own).
        db.executemany("DELETE FROM retired_segments WHERE path = ?", [(p,) for p, _ in expired])
        removal.segments = [path for path, _ in expired if is_remote(path)]
        if removal.segments:  # a crash before they are gone leaves them to the sweep
            removal.operations.insert(db, removal)
    removed = files.remove([path for path, _ in expired if not is_remote(path)])
    if not removal.segments:
        return removed
    try:
        removed += files.remove(removal.segments)
    except Exception:
        with catalog.transaction() as db:  # retired again: the next change tries again
            db.executemany(
                "INSERT INTO retired_segments VALUES (?, ?) ON CONFLICT (path) DO NOTHING",
                [(path, at) for path, at in expired if is_remote(path)],
            )
            db.execute("DELETE FROM operations WHERE id = ?", (removal.id,))
        return removed
    removal.end()
    return removed

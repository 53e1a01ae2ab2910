"""An export's start: its operation record, which pins its snapshot's segments (D5), made
before the plan reads any of them, so no change removes them while the export runs."""

from __future__ import annotations

from typing import Any

from export_pipeline.contract import ExportRequest
from export_pipeline.engine.plan import ExportPlan, parse_request, parts_prefix, plan_export
from export_pipeline.storage import export_prefix
from export_pipeline.store import Collection, Store
from export_pipeline.store.catalog import new_id
from export_pipeline.store.operations import Owner, StaleSnapshot

_ATTEMPTS = 3  # snapshots that lost a segment between their read and their pin


def record_export(
    store: Store,
    export_id: str,
    collection: Collection,
    parts: str | None,
    owner: Owner | None = None,
) -> None:
    """Record an export (its scratch, final prefix, staged parts) pinning the segments of
    `collection`'s snapshot; StaleSnapshot where one is removed already."""
    prefix = export_prefix(collection.namespace_id, collection.id, export_id)
    store.operations.begin(
        "export",
        export_id,
        paths=[store.settings.scratch_dir / export_id],  # ExportPlan.scratch_dir
        storage=store.settings.storage_uri,
        storage_prefixes=[prefix, *([parts] if parts else [])],
        pins=store.documents.segment_paths(collection),
        owner=owner,
    )


def start_export(
    store: Store,
    namespace: str,
    collection: str,
    request: ExportRequest | dict[str, Any] | None,
    shards: int | None = None,
    stage_parts: bool = False,
    *,
    owner: Owner | None = None,
) -> ExportPlan:
    """Resolve the snapshot, record the export pinning it, then plan from exactly that
    snapshot; the record ends with the export (or here, if the plan fails)."""
    if not isinstance(request, ExportRequest):
        request = parse_request(request)  # refused before anything is recorded
    for attempt in range(1, _ATTEMPTS + 1):
        snapshot = store.resolve(namespace, collection)
        export_id = new_id("exp_", 16)
        parts = parts_prefix(export_id) if stage_parts else None
        try:
            record_export(store, export_id, snapshot[1], parts, owner)
        except StaleSnapshot:  # only where the retention is shorter than this very moment
            if attempt == _ATTEMPTS:
                raise
            continue  # a newer snapshot, then
        try:
            return plan_export(
                store,
                namespace,
                collection,
                request,
                shards,
                stage_parts,
                snapshot=snapshot,
                export_id=export_id,
            )
        except BaseException:
            store.operations.end(export_id)  # plan_export removed what it made
            raise
    raise AssertionError("unreachable")

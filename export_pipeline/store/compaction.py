"""Compaction (docs/contract.md M8): a collection's segments merged into one sorted segment,
the same documents under the same version.

Every ingest adds a segment and an upsert adds one whose ids interleave with the others', so
a changed collection's exports merge many runs (and cannot let DuckDB read the segments one
after the other). Compaction rewrites them as one segment in id order, through the same
merge that exports read by, and lists it in place of the old ones without a new version:
nothing any export returns changes (the replaced segments are retired as an upsert's, so
exports already reading them finish, D5). Ingests and deletes compact once a collection
holds more than COMPACT_AT_SEGMENTS segments; `export-pipeline compact` does it on demand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from export_pipeline.store import ingest as steps
from export_pipeline.store.catalog import Collection
from export_pipeline.store.documents import DocumentStore
from export_pipeline.store.segments import SegmentWriter, segment_schema, shapes_file
from export_pipeline.store.versions import relist

COMPACT_AT_SEGMENTS = 16  # past this many segments, a change compacts the collection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did: the segments before and after, the (unchanged) version."""

    segments_before: int
    segments_after: int
    document_count: int
    version: int


def compact(documents: DocumentStore, collection: Collection) -> CompactResult:
    """Merge the collection's segments into one, in id order, under the same version."""
    with documents.changing(collection) as (fresh, work, change, con):
        before = len(fresh.segments)
        if before <= 1:  # one segment is already sorted and whole
            return CompactResult(before, before, fresh.document_count, fresh.version)
        remote = documents.files.remote
        folder = work / "new" if remote else documents.collection_dir(fresh) / "segments"
        folder.mkdir(parents=True, exist_ok=True)
        schema = segment_schema(fresh.vector_indexes)
        target = folder / steps.new_segment_name()
        change.will_create(target, shapes_file(target))
        rows = documents.rows(fresh, schema.names, copies=work / "stored")
        with SegmentWriter(target, schema, con) as writer:  # structures numbered afresh
            for batch in rows:
                writer.write(batch)
        change.keep, change.retired = [target.name], list(fresh.segments)
        if remote:
            steps.upload(documents.files, fresh, folder, change)
        segments = documents.collection_dir(fresh) / "segments"
        retired_at = relist(documents.catalog, segments, fresh, change)
        change.uploaded = []  # listed now: nothing after this may remove them
    documents.expire(retired_at)
    return CompactResult(before, 1, fresh.document_count, fresh.version)


def compact_if_due(documents: DocumentStore, collection: Collection) -> None:
    """Compact a collection holding more than COMPACT_AT_SEGMENTS segments; a failure is
    logged, never raised: the change that called it has succeeded, and the next one retries."""
    if len(collection.segments) <= COMPACT_AT_SEGMENTS:
        return
    try:
        compact(documents, collection)
    except Exception as exc:
        log.warning("compaction of %s did not happen: %s", collection.id, exc)

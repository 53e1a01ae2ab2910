"""The embedded collection store: a catalog (SQLite or PostgreSQL) plus parquet segments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from export_pipeline.errors import CHANGED_NOTHING, INGESTED_NOTHING, InvalidInput, guard
from export_pipeline.settings import Settings
from export_pipeline.store.catalog import Catalog, Collection, Namespace, VectorIndex
from export_pipeline.store.compaction import CompactResult, compact, compact_if_due
from export_pipeline.store.deletes import DeleteResult, delete, delete_filter, target_ids
from export_pipeline.store.documents import DocumentStore, IngestResult
from export_pipeline.store.exports import ExportRegistry, PublishedExport
from export_pipeline.store.keys import ApiKey, ApiKeys
from export_pipeline.store.operations import Operations

__all__ = [
    "ApiKey",
    "Collection",
    "DeleteResult",
    "IngestResult",
    "Namespace",
    "PublishedExport",
    "Store",
    "VectorIndex",
]


class Store:
    """Namespaces, collections and their documents under one home directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.catalog is not None:  # SQLite's Catalog makes home for its file, as here
            with guard(settings.home_dir, "home"):
                settings.home_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(settings.home_dir, settings.catalog)
        self.documents = DocumentStore(self.catalog, settings)
        self.exports = ExportRegistry(self.catalog)
        self.keys = ApiKeys(self.catalog)
        self.operations = Operations(self.catalog)

    def resolve(self, namespace: str, collection: str) -> tuple[Namespace, Collection]:
        """Look up a namespace by id or name, then a collection inside it by id or name."""
        found = self.catalog.namespace(namespace)
        return found, self.catalog.collection(found, collection)

    def ingest(
        self, namespace: str, collection: str, source: Path, *, upsert: bool = False
    ) -> IngestResult:
        """Ingest a JSONL file into a collection (all or nothing); a full or read-only disk
        fails naming the path, and the collection is left as it was."""
        from export_pipeline.recovery import sweep_quietly  # it imports this module

        sweep_quietly(self.settings, self)  # what killed exports and ingests left
        with guard(self.settings.home_dir, "home", INGESTED_NOTHING):
            _, found = self.resolve(namespace, collection)
            with guard(self.documents.collection_dir(found), "collection folder"):
                result = self.documents.ingest(found, source, upsert=upsert)
        self._compact_if_due(namespace, collection)
        return result

    def delete(
        self,
        namespace: str,
        collection: str,
        *,
        ids: pa.Array | list[str] | None = None,
        filter: dict[str, Any] | None = None,
    ) -> DeleteResult:
        """M2: delete documents by id, or those a LogicalOperator matches, as one new version
        (all or nothing); ids not stored count as not found (M3)."""
        from export_pipeline.recovery import sweep_quietly  # it imports this module

        if (ids is None) == (filter is None):
            raise InvalidInput("a delete takes document ids or a filter (exactly one)")
        where = None if filter is None else delete_filter(filter)  # validated before any read
        targets = None if ids is None else target_ids(ids)
        sweep_quietly(self.settings, self)
        with guard(self.settings.home_dir, "home", CHANGED_NOTHING):
            _, found = self.resolve(namespace, collection)
            with guard(self.documents.collection_dir(found), "collection folder"):
                result = delete(self.documents, found, ids=targets, where=where)
        self._compact_if_due(namespace, collection)
        return result

    def compact(self, namespace: str, collection: str) -> CompactResult:
        """M8: merge the collection's segments into one, in id order, under the same version
        (what every export returns is unchanged)."""
        with guard(self.settings.home_dir, "home", CHANGED_NOTHING):
            _, found = self.resolve(namespace, collection)
            with guard(self.documents.collection_dir(found), "collection folder"):
                return compact(self.documents, found)

    def _compact_if_due(self, namespace: str, collection: str) -> None:
        _, found = self.resolve(namespace, collection)
        compact_if_due(self.documents, found)

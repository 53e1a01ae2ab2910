"""The embedded collection store: a catalog (SQLite or PostgreSQL) plus parquet segments."""

from __future__ import annotations

from pathlib import Path

from export_pipeline.errors import INGESTED_NOTHING, guard
from export_pipeline.settings import Settings
from export_pipeline.store.catalog import Catalog, Collection, Namespace, VectorIndex
from export_pipeline.store.documents import DocumentStore, IngestResult
from export_pipeline.store.exports import ExportRegistry, PublishedExport
from export_pipeline.store.keys import ApiKey, ApiKeys
from export_pipeline.store.operations import Operations

__all__ = [
    "ApiKey",
    "Collection",
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
                return self.documents.ingest(found, source, upsert=upsert)

"""Where each published export lives, so fresh links can be signed after the first expire."""

from __future__ import annotations

from pydantic import BaseModel

from export_pipeline.errors import NotFoundError
from export_pipeline.store.catalog import Catalog, Namespace


class PublishedExport(BaseModel):
    """One published export: its storage target and its folder (W6 prefix) there."""

    id: str
    namespace_id: str
    collection_id: str
    storage: str
    prefix: str
    exported_at: str


class ExportRegistry:
    """The exports table of the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def record(self, export: PublishedExport) -> None:
        """Remember a published export."""
        with self.catalog.transaction() as db:
            db.execute(
                "INSERT INTO exports (id, namespace_id, collection_id, storage, prefix,"
                " exported_at) VALUES (:id, :namespace_id, :collection_id, :storage, :prefix,"
                " :exported_at)",
                export.model_dump(),
            )

    def find(self, namespace: Namespace, export_id: str) -> PublishedExport:
        """An export of this namespace; another namespace's exports are not found (D1)."""
        with self.catalog.transaction() as db:
            row = db.execute(
                "SELECT * FROM exports WHERE id = ? AND namespace_id = ?",
                (export_id, namespace.id),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"export {export_id!r} not found in namespace {namespace.name!r}")
        return PublishedExport(**dict(row))

"""Fresh download links for a published export, signed again from its manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from export_pipeline.contract import RESPONSE_EXTENSIONS, ExportPart, ExportResponse
from export_pipeline.engine.manifest import MANIFEST_NAME
from export_pipeline.errors import NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.storage import Storage, open_storage
from export_pipeline.store import Store


class ExportLinks(BaseModel):
    """The A1 response of an earlier export with new links, and when they expire."""

    export_id: str
    download_url: str
    s3_path: str
    format: str
    document_count: int
    file_size_bytes: int
    exported_at: datetime
    vectors_download_url: str | None
    vectors_s3_path: str | None
    urls_expire_at: datetime | None  # None where links do not expire (local files)
    parts: list[ExportPart] | None = None  # every part, for an export with max_file_size_bytes
    version: int | None = None  # the collection version exported (None: published before it)
    deletes_download_url: str | None = None  # M6: an incremental export's deletes file
    deletes_s3_path: str | None = None
    deleted_count: int | None = None

    # No return annotation: one would replace the model's schema in the OpenAPI document.
    @model_serializer(mode="wrap")
    def _parts_if_any(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # An export of one file each is shown as before: no `parts` key (nor other
        # extensions the export does not have).
        data = handler(self)
        if isinstance(data, dict):
            for name in RESPONSE_EXTENSIONS:
                if getattr(self, name, None) is None:
                    data.pop(name, None)
        return data


def export_response(manifest: dict[str, Any], storage: Storage, ttl_seconds: int) -> ExportResponse:
    """The A1 response of a published export, from its manifest, with links signed now (the
    publish step, fresh links and the API's run-queue path all answer with this)."""
    # The first file of each role: the only one, or the first part.
    documents = next(entry for entry in manifest["files"] if entry["role"] == "documents")
    vectors = next((entry for entry in manifest["files"] if entry["role"] == "vectors"), None)
    deletes = next((entry for entry in manifest["files"] if entry["role"] == "deletes"), None)
    parts = None
    if manifest["request"].get("max_file_size_bytes") is not None:
        parts = [
            ExportPart(
                role=entry["role"],
                name=entry["name"],
                download_url=storage.download_url(entry["key"], ttl_seconds),
                s3_path=storage.uri_of(entry["key"]),
                document_count=entry["rows"],
                file_size_bytes=entry["bytes"],
                sha256=entry["sha256"],
            )
            for entry in manifest["files"]
        ]
    return ExportResponse(
        download_url=storage.download_url(documents["key"], ttl_seconds),
        s3_path=storage.uri_of(documents["key"]),
        format=manifest["format"],
        document_count=manifest["document_count"],
        file_size_bytes=documents["bytes"],
        exported_at=manifest["exported_at"],
        vectors_download_url=storage.download_url(vectors["key"], ttl_seconds) if vectors else None,
        vectors_s3_path=storage.uri_of(vectors["key"]) if vectors else None,
        parts=parts,
        version=manifest.get("version"),
        deletes_download_url=storage.download_url(deletes["key"], ttl_seconds) if deletes else None,
        deletes_s3_path=storage.uri_of(deletes["key"]) if deletes else None,
        deleted_count=manifest.get("deleted_count"),
    )


def published_manifest(
    store: Store,
    settings: Settings,
    namespace: str,
    export_id: str,
    collection_id: str | None = None,
) -> tuple[dict[str, Any], Storage]:
    """The manifest of an export of `namespace` (and of that collection, if given), and the
    storage it was published to."""
    found = store.exports.find(store.catalog.namespace(namespace), export_id)
    if collection_id is not None and found.collection_id != collection_id:
        raise NotFoundError(f"export {export_id!r} is not an export of this collection")
    storage = open_storage(settings, found.storage)
    return json.loads(storage.read(f"{found.prefix}/{MANIFEST_NAME}")), storage


def fresh_links(
    store: Store,
    settings: Settings,
    namespace: str,
    export_id: str,
    collection_id: str | None = None,
) -> ExportLinks:
    """Sign new links for an export of `namespace` (and of that collection, if given), from
    the storage it was published to."""
    manifest, storage = published_manifest(store, settings, namespace, export_id, collection_id)
    ttl = settings.url_ttl_seconds
    signed_at = datetime.now(UTC).replace(microsecond=0)
    response = export_response(manifest, storage, ttl)
    return ExportLinks(
        export_id=export_id,
        urls_expire_at=signed_at + timedelta(seconds=ttl) if storage.links_expire else None,
        **dict(response),
    )

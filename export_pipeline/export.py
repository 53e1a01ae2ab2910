"""run_export: the one call every entry point makes, as steps an orchestrator can take apart."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from export_pipeline import duck
from export_pipeline.contract import ExportRequest, ExportResponse
from export_pipeline.engine.manifest import (
    MANIFEST_NAME,
    OutputFile,
    Outputs,
    build_manifest,
    sha256_of,
)
from export_pipeline.engine.plan import ExportPlan, plan_export
from export_pipeline.engine.schema import Shape, inspect, top_level_keys
from export_pipeline.engine.selection import (
    SELECTED,
    open_scratch,
    ordered,
    scratch_files,
    select_documents,
    selected_shapes,
    selected_vectors,
    selects_all,
)
from export_pipeline.engine.writers import CONTENT_TYPES, Written, write_documents, write_vectors
from export_pipeline.settings import Settings
from export_pipeline.storage import LocalFile, Storage, export_prefix, open_storage
from export_pipeline.store import PublishedExport, Store


@dataclass(frozen=True)
class ExportResult:
    """The A1 response plus the manifest that was published with the files."""

    response: ExportResponse
    manifest: dict[str, Any]


def load(plan: ExportPlan, store: Store, settings: Settings) -> int:
    """Step 1: filter and sample into the export's own DuckDB file; returns the match count."""
    with open_scratch(plan, settings) as con:
        return select_documents(con, plan, store)


def write(plan: ExportPlan, store: Store, settings: Settings) -> Outputs:
    """Step 2: write the documents file (and vectors file) into scratch space."""
    fmt = plan.request.format
    out = scratch_files(plan)
    with open_scratch(plan, settings) as con:
        shape = _shape(con, plan, store)
        documents = write_documents(
            con, fmt, shape, plan.select_paths, out / plan.documents_name, presorted=ordered(plan)
        )
        files = [_output("documents", plan.documents_name, fmt, documents)]
        if plan.request.include_vectors:
            vectors = write_vectors(
                con,
                selected_vectors(con, plan, store),
                fmt,
                plan.collection.vector_indexes,
                out / plan.vectors_name,
            )
            files.append(_output("vectors", plan.vectors_name, fmt, vectors))
    return Outputs(
        document_count=documents.rows,
        files=files,
        warnings=shape.warnings + documents.warnings,
    )


def _shape(con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store) -> Shape:
    """What the writer needs to know of the exported documents' structure."""
    if plan.request.format == "json" and plan.select_paths is None and not selects_all(plan):
        keys = top_level_keys(con, SELECTED)
        if keys is not None:
            return keys
    return inspect(con, selected_shapes(plan, store), plan.select_paths)


def _output(role: str, name: str, fmt: str, written: Written) -> OutputFile:
    return OutputFile(
        role=role,
        name=name,
        path=written.path,
        content_type=CONTENT_TYPES[fmt],
        rows=written.rows,
        bytes=written.path.stat().st_size,
        sha256=sha256_of(written.path),
        columns=written.columns,
    )


def publish(
    plan: ExportPlan, outputs: Outputs, storage: Storage, settings: Settings, store: Store
) -> ExportResult:
    """Step 3: put the files and, last, the manifest at their final keys; presign links."""
    prefix = export_prefix(plan.namespace.id, plan.collection.id, plan.export_id)
    keys = {f.name: f"{prefix}/{f.name}" for f in outputs.files}
    exported_at = datetime.now(UTC).replace(microsecond=0)
    manifest = build_manifest(plan, outputs, keys, exported_at)
    manifest_path = scratch_files(plan) / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    local = [LocalFile(f.name, f.path, f.content_type, f.sha256) for f in outputs.files]
    local.append(LocalFile(MANIFEST_NAME, manifest_path, "application/json"))
    published = {obj.name: obj for obj in storage.publish(prefix, local)}
    store.exports.record(
        PublishedExport(
            id=plan.export_id,
            namespace_id=plan.namespace.id,
            collection_id=plan.collection.id,
            storage=storage.target,
            prefix=prefix,
            exported_at=exported_at.isoformat(),
        )
    )
    ttl = settings.url_ttl_seconds
    documents = published[plan.documents_name]
    vectors = published.get(plan.vectors_name) if plan.request.include_vectors else None
    response = ExportResponse(
        download_url=storage.download_url(documents.key, ttl),
        s3_path=documents.uri,
        format=plan.request.format,
        document_count=outputs.document_count,
        file_size_bytes=outputs.files[0].bytes,
        exported_at=exported_at,
        vectors_download_url=storage.download_url(vectors.key, ttl) if vectors else None,
        vectors_s3_path=vectors.uri if vectors else None,
    )
    return ExportResult(response=response, manifest=manifest)


def cleanup(plan: ExportPlan) -> None:
    """Remove the export's scratch space, whether it succeeded or failed."""
    shutil.rmtree(plan.scratch_dir, ignore_errors=True)
    duck.discard(plan.scratch_dir)  # its DuckDB file, where a `?` in the path kept it aside


def run_export(
    namespace: str,
    collection: str,
    request: ExportRequest | dict[str, Any] | None,
    *,
    settings: Settings | None = None,
    store: Store | None = None,
    storage: Storage | None = None,
) -> ExportResult:
    """Validate, select, write and publish one export; nothing is left behind on failure."""
    settings = settings or Settings()
    store = store or Store(settings)
    storage = storage or open_storage(settings)
    plan = plan_export(store, namespace, collection, request or {})
    try:
        load(plan, store, settings)
        outputs = write(plan, store, settings)
        return publish(plan, outputs, storage, settings, store)
    finally:
        cleanup(plan)

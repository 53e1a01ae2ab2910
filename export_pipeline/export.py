"""run_export: the one call every entry point makes, as steps an orchestrator can take apart."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from export_pipeline import duck
from export_pipeline.contract import ExportRequest, ExportResponse
from export_pipeline.engine import width
from export_pipeline.engine.manifest import (
    MANIFEST_NAME,
    OutputFile,
    Outputs,
    build_manifest,
    sha256_of,
)
from export_pipeline.engine.plan import ExportPlan, plan_export
from export_pipeline.engine.preview import markdown_table, preview_rows
from export_pipeline.engine.schema import Shape, shape_of
from export_pipeline.engine.selection import (
    Selection,
    chosen,
    chosen_rows,
    keep,
    kept_rows,
    marked,
    matching_rows,
    needs_survey,
    open_scratch,
    scratch_files,
    selects_all,
    survey,
    surveyed_shapes,
)
from export_pipeline.engine.writers import (
    CONTENT_TYPES,
    DocumentsWriter,
    VectorsWriter,
    Written,
    top_level_keys,
)
from export_pipeline.errors import ExportPipelineError
from export_pipeline.recovery import sweep_quietly
from export_pipeline.settings import Settings
from export_pipeline.storage import LocalFile, Storage, export_prefix, open_storage
from export_pipeline.store import PublishedExport, Store
from export_pipeline.store.batches import QUERY_ROWS, gathered
from export_pipeline.store.segments import SHAPE_ID, segment_schema, vector_column

# Rows x columns per batch of a csv or parquet export: a wide file takes fewer rows at once.
BATCH_CELLS = 4_000_000


@dataclass(frozen=True)
class ExportResult:
    """The A1 response plus the manifest that was published with the files."""

    response: ExportResponse
    manifest: dict[str, Any]


def load(plan: ExportPlan, store: Store, settings: Settings) -> Selection:
    """Step 1: where the selection must be known before writing (a sample's cutoff, the
    columns of a filtered csv or parquet export), a pass over the matches decides it."""
    if not needs_survey(plan):  # nothing to decide, so no DuckDB connection either
        return Selection()
    with open_scratch(plan, settings) as con:
        return survey(con, plan, store)


def write(plan: ExportPlan, store: Store, settings: Settings, selection: Selection) -> Outputs:
    """Step 2: the documents file (and vectors file) in scratch space, batch by batch."""
    fmt = plan.request.format
    out = scratch_files(plan)
    with open_scratch(plan, settings) as con:
        shape = _shape(con, plan, store, selection, settings.max_columns)
        # The survey kept the chosen documents or marked the chosen rows; otherwise each
        # batch is filtered here (a json export of a filter: one pass, the documents' text
        # passed through).
        where = chosen(plan, selection)
        bitmap = chosen_rows(plan) if selection.marked else None
        # A json export of some documents lists the keys of their structures, by number.
        structures = None
        if shape is None and store.documents.numbered(plan.collection):
            structures = store.documents.structures(plan.collection)
        if selection.streamed:  # the matches, read in one streaming query
            assert shape is not None
            written = _write_matches(con, plan, store, shape, out, settings.max_columns)
            return _outputs(plan, written, None)
        vectors = None
        if plan.request.include_vectors:
            vectors = VectorsWriter(
                con, fmt, plan.collection.vector_indexes, out / plan.vectors_name
            )
        documents = _documents_writer(
            con, plan, shape, out, settings.max_columns, structures=structures
        )
        columns = ["document_id", "doc"]
        if structures is not None:
            columns.append(SHAPE_ID)
        if vectors is not None:
            columns += [vector_column(index.name) for index in plan.collection.vector_indexes]
        max_bytes, max_rows = duck.batch_bytes(con), _batch_rows(shape, fmt)
        # Every document and no vectors: one streaming DuckDB query reads, converts and
        # hands over the rows, where the segments let DuckDB read them itself within the
        # same bounds (`scan_source`); otherwise Arrow reads them, one query per batch.
        source = None
        whole = bitmap is None and not selection.kept and where[0] == "TRUE"
        if vectors is None and whole and shape is not None:
            source = store.documents.scan_source(plan.collection, max_bytes)
        empty: pa.Table | None = None
        start = 0

        def chosen_rows_of(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
            nonlocal start
            for batch in batches:
                if bitmap is not None:  # rows not chosen never reach DuckDB
                    mask = marked(bitmap, start, batch.num_rows)
                    start += batch.num_rows
                    yield batch.filter(mask)
                else:
                    yield keep(con, batch, *where)

        # A filter alone (a json export: no survey) is read and applied by one streaming
        # DuckDB query where the segments allow it, as a whole export is.
        matches = None
        if vectors is None and bitmap is None and not selection.kept and where[0] != "TRUE":
            matches = matching_rows(con, plan, store, columns, where, max_bytes, max_rows)
        if selection.kept:  # the survey kept the chosen documents: only they are read
            rows = gathered(kept_rows(plan, max_bytes, max_rows), max_bytes, max_rows)
        elif matches is not None:
            rows = matches
        else:
            rows = store.documents.rows(plan.collection, columns, max_bytes, max_rows)
            # Row groups, and the few rows a selection keeps of each, are gathered into
            # batches as large as the bounds allow: each query has a cost of its own.
            rows = gathered(rows, max_bytes, max_rows)
            if bitmap is not None or where[0] != "TRUE":
                rows = gathered(chosen_rows_of(rows), max_bytes, max_rows)
        # Each writer encodes a batch on a thread of its own while the next is converted; on
        # a failure (or an interrupt) they stop before the scratch space is removed.
        try:
            if source is not None:
                documents.write_all(source, max_bytes, max_rows)
            else:
                for batch in rows:
                    empty = batch.slice(0, 0)
                    documents.write(batch)
                    if vectors is not None:
                        vectors.write(batch)
            written = documents.close()
            if vectors is not None:
                schema = empty.schema if empty is not None else _empty_rows(plan).schema
                done = vectors.close(schema.empty_table())
        except BaseException:
            documents.abort()
            if vectors is not None:
                vectors.abort()
            raise
    return _outputs(plan, written, done if vectors is not None else None)


def _documents_writer(
    con: duckdb.DuckDBPyConnection,
    plan: ExportPlan,
    shape: Shape | None,
    out: Path,
    max_columns: int,
    **options: Any,
) -> DocumentsWriter:
    """The writer of the export's documents file in scratch folder `out`."""
    path = out / plan.documents_name
    fmt, select = plan.request.format, plan.select_paths
    return DocumentsWriter(con, fmt, shape, select, path, max_columns, **options)


def _write_matches(
    con: duckdb.DuckDBPyConnection,
    plan: ExportPlan,
    store: Store,
    shape: Shape,
    out: Path,
    max_columns: int,
) -> Written:
    """A filter's matches read, filtered and converted by one streaming query, written with
    the snapshot's shape (`shape`): the structures of the rows written are counted, and
    where theirs is another shape (they lack structures the snapshot's was merged from, in a
    way the file shows) the file is written again with it. A second pass at worst, against
    a pass before every write to learn the shape first."""
    fmt, select = plan.request.format, plan.select_paths
    max_bytes = duck.batch_bytes(con)
    files = store.documents.scan_files(plan.collection, max_bytes)
    if files is None:  # the survey found it readable: the segments changed under the export
        raise ExportPipelineError("the collection's segments changed during the export")
    source = duck.parquet_source(files)
    where = (plan.filter_sql, list(plan.filter_params))
    writer = _documents_writer(
        con, plan, shape, out, max_columns, where=where, count_structures=True
    )
    try:
        shape_id = store.documents.shape_id_sql(plan.collection, files)
        writer.write_all(source, max_bytes, _batch_rows(shape, fmt), shape_id)
    except BaseException:
        writer.abort()
        raise
    counts = writer.structure_counts
    present = np.flatnonzero(counts)
    texts = store.documents.structures(plan.collection).take(present).to_pylist()
    found = list(zip(texts, counts[present].tolist(), strict=True))
    theirs = shape_of(found, select, fmt=fmt, max_columns=max_columns)
    if _same_shape(theirs, shape):
        return writer.close()
    writer.abort()
    again = _documents_writer(con, plan, theirs, out, max_columns, where=where)
    try:
        if len(present):  # else no rows: the file has only the header or schema
            again.write_all(source, max_bytes, _batch_rows(theirs, fmt))
        return again.close()
    except BaseException:
        again.abort()
        raise


def _same_shape(one: Shape, other: Shape) -> bool:
    """Whether two shapes give the same file: columns in the same order, same warnings."""
    return one == other and json.dumps(one.structure) == json.dumps(other.structure)


def _outputs(plan: ExportPlan, written: Written, vectors: Written | None) -> Outputs:
    """The written files as the publish step takes them."""
    fmt = plan.request.format
    files = [_output("documents", plan.documents_name, fmt, written)]
    if vectors is not None:
        files.append(_output("vectors", plan.vectors_name, fmt, vectors))
    return Outputs(
        document_count=written.rows,
        files=files,
        warnings=written.warnings,
        preview=markdown_table(preview_rows(written.head, fmt)),
    )


def _shape(
    con: duckdb.DuckDBPyConnection,
    plan: ExportPlan,
    store: Store,
    selection: Selection,
    max_columns: int,
) -> Shape | None:
    """What the writer needs to know of the exported documents' structure; None for a json
    export without listed fields of a selection (it lists the keys it writes)."""
    fmt, select = plan.request.format, plan.select_paths
    if fmt == "json" and select is None and not selects_all(plan):
        return None
    if selection.surveyed:
        shapes = surveyed_shapes(plan)
    else:
        shapes = store.documents.shapes(plan.collection) or _shapes_by_pass(con, plan, store)
    if fmt == "json" and select is None:  # json lines need only the top-level keys
        return Shape(structure=dict.fromkeys(top_level_keys(con, [text for text, _ in shapes])))
    return shape_of(shapes, select, fmt=fmt, max_columns=max_columns)


def _shapes_by_pass(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store
) -> list[tuple[str, int]]:
    """Every document's structure, counted (for segments written without a sidecar)."""
    counts: Counter[str] = Counter()
    sql = f"SELECT json_structure(doc)::VARCHAR, count(*) FROM {duck.BATCH} GROUP BY 1"
    for batch in store.documents.rows(plan.collection, ["doc"], duck.batch_bytes(con)):
        found = duck.on_batch(con, sql, batch)
        for shape, count in zip(*(column.to_pylist() for column in found.columns), strict=True):
            counts[shape] += count
    return list(counts.items())


def _batch_rows(shape: Shape | None, fmt: str) -> int:
    if shape is None or fmt == "json" or shape.whole_document:
        return QUERY_ROWS
    columns = width.leaves(shape.structure, arrays_whole=fmt == "csv")
    return max(64, min(QUERY_ROWS, BATCH_CELLS // columns))


def _empty_rows(plan: ExportPlan) -> pa.Table:
    """A snapshot with no segments still has a schema: the segment layout's."""
    schema = segment_schema(plan.collection.vector_indexes)
    return schema.empty_table()


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
    sweep_quietly(settings, store, storage)  # recovery: what killed exports left
    plan = plan_export(store, namespace, collection, request or {})
    # recovery: the record before anything is created; the lifecycle will move it
    record = store.operations.begin(
        "export",
        plan.export_id,
        paths=[plan.scratch_dir],
        storage=storage.target,
        storage_prefixes=[export_prefix(plan.namespace.id, plan.collection.id, plan.export_id)],
    )
    try:
        selection = load(plan, store, settings)
        outputs = write(plan, store, settings, selection)
        return publish(plan, outputs, storage, settings, store)
    finally:
        cleanup(plan)
        record.end()  # recovery: published, or what it wrote is removed

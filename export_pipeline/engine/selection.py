"""Plan -> the `selected` table in the export's own DuckDB file: filter, sample, project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.filters import install_macros
from export_pipeline.paths import json_path
from export_pipeline.settings import Settings
from export_pipeline.store import Store, VectorIndex
from export_pipeline.store.jsonl import vector_column

SELECTED = "selected"
BATCH_ROWS = 16_384


def open_scratch(plan: ExportPlan, settings: Settings) -> duckdb.DuckDBPyConnection:
    """The export's own DuckDB database file in its scratch folder (never a shared one)."""
    plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    con = duck.connect(
        plan.scratch_dir / "work.duckdb",
        temp_dir=plan.scratch_dir / "duckdb_tmp",
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
    )
    install_macros(con)
    return con


def select_documents(con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store) -> int:
    """Materialise the matching (and sampled) documents, projected per S1/S2; return the count."""
    source = store.documents.scan_sql(plan.collection)
    matches = f"SELECT document_id, doc FROM {source} WHERE {plan.filter_sql}"
    params = list(plan.filter_params)
    if plan.request.sample_size is not None:
        # O2: rank ids by a hash of seed and id and keep the first N. Hashing the joined
        # text (combining two hashes only mixes them weakly) gives each seed its own
        # pseudo-random order. Only ids are sorted: documents and vectors never pass
        # through a reservoir.
        con.execute(
            "CREATE TABLE sample_ids AS SELECT document_id FROM "
            f"({matches}) ORDER BY hash(CAST(? AS VARCHAR) || ':' || document_id), document_id"
            " LIMIT ?",
            [*params, plan.sample_seed, plan.request.sample_size],
        )
        matches = f"SELECT document_id, doc FROM {source} SEMI JOIN sample_ids USING (document_id)"
        params = []
    line = projection_sql(plan.select_paths) if plan.select_paths else "doc"
    # Every document of the snapshot: a view over the segments, so the documents are not
    # copied once more before they are written.
    kind = "VIEW" if selects_all(plan) else "TABLE"
    con.execute(
        f"CREATE {kind} {SELECTED} AS SELECT document_id, {line} AS doc FROM ({matches})", params
    )
    return con.execute(f"SELECT count(*) FROM {SELECTED}").fetchall()[0][0]


def selects_all(plan: ExportPlan) -> bool:
    """Whether the export takes every document of its snapshot (no filter, no sample)."""
    return plan.filter_sql == "TRUE" and plan.request.sample_size is None


def projection_sql(paths: list[str]) -> str:
    """W2/S2: a JSON object text of the listed paths, parents rebuilt, missing paths omitted."""
    tree: dict[str, dict] = {}
    for path in paths:
        node = tree
        for segment in path.split("."):
            node = node.setdefault(segment, {})
    return _object_sql(tree, [])


def _object_sql(tree: dict[str, dict], prefix: list[str]) -> str:
    members = []
    for key, children in tree.items():
        path = [*prefix, key]
        if children:
            value = _object_sql(children, path)
        else:
            value = f"CAST(json_extract(doc, {duck.literal(json_path('.'.join(path)))}) AS VARCHAR)"
        # P1 keys hold no quotes or backslashes, so the key is valid JSON as written.
        members.append(f"""'"{key}":' || {value}""")
    # concat_ws skips NULLs: a missing member disappears, and an empty object with it.
    return f"'{{' || nullif(concat_ws(',', {', '.join(members)}), '') || '}}'"


def selected_vectors(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store
) -> pa.RecordBatchReader:
    """W1: document_id plus one column per vector index for the selected documents, in
    document_id order (O3), streamed in record batches."""
    indexes = plan.collection.vector_indexes
    files = store.documents.segment_files(plan.collection)
    if len(files) == 1:
        # Segments are sorted by document_id: read the one file in order, no sort needed.
        rows = None
        if not selects_all(plan):
            rows = con.sql(
                f"SELECT file_row_number FROM read_parquet({duck.literal(str(files[0]))},"
                f" file_row_number = true) SEMI JOIN {SELECTED} USING (document_id) ORDER BY 1"
            ).fetchnumpy()["file_row_number"]
        return _segment_rows(files[0], indexes, rows)
    columns = "".join(
        f", {duck.identifier(vector_column(index.name))} AS {duck.identifier(index.name)}"
        for index in indexes
    )
    source = store.documents.scan_sql(plan.collection)
    chosen = "" if selects_all(plan) else f" SEMI JOIN {SELECTED} USING (document_id)"
    query = f"SELECT document_id{columns} FROM {source}{chosen} ORDER BY document_id"
    return con.sql(query).to_arrow_reader(BATCH_ROWS)


def _segment_rows(
    file: Path, indexes: list[VectorIndex], rows: np.ndarray | None
) -> pa.RecordBatchReader:
    """The given rows (all when None) of one segment file, in file order."""
    columns = ["document_id", *(vector_column(index.name) for index in indexes)]
    names = ["document_id", *(index.name for index in indexes)]
    parquet = pq.ParquetFile(file)
    schema = pa.schema(
        [parquet.schema_arrow.field(c).with_name(n) for c, n in zip(columns, names, strict=True)]
    )

    def batches() -> Iterator[pa.RecordBatch]:
        offset = 0
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                size = batch.num_rows
                if rows is not None:
                    lo, hi = np.searchsorted(rows, [offset, offset + size])
                    batch = batch.take(pa.array(rows[lo:hi] - offset))
                offset += size
                yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        finally:
            parquet.close()

    return pa.RecordBatchReader.from_batches(schema, batches())


def scratch_files(plan: ExportPlan) -> Path:
    """Where the export's output files are written before publishing."""
    folder = plan.scratch_dir / "out"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

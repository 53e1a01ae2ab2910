"""One shard's parts: its rows of the documents file (and of the vectors file), in scratch.

Every shard of an export writes with the same shape (columns, types) and the same predicate,
so its parts are pieces of the one file an unsharded export writes: json lines and headerless
csv rows are joined as they are, parquet parts by their row groups (`engine/assembly.py`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from export_pipeline import duck
from export_pipeline.engine import width
from export_pipeline.engine.changed_ids import only_changed
from export_pipeline.engine.export_shape import export_shape
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.preview import preview_rows
from export_pipeline.engine.rolling import PartRoller
from export_pipeline.engine.schema import Shape
from export_pipeline.engine.selection import (
    Selection,
    chosen_where,
    keep,
    matching_rows,
    open_scratch,
)
from export_pipeline.engine.shards import Shard
from export_pipeline.engine.vectors_writer import VectorsWriter
from export_pipeline.engine.writers import DocumentsWriter
from export_pipeline.settings import Settings
from export_pipeline.storage.base import StoredRange
from export_pipeline.store import Store
from export_pipeline.store.batches import QUERY_ROWS, gathered
from export_pipeline.store.segments import SHAPE_ID, segment_schema, vector_column

# Rows x columns per batch of a csv or parquet export: a wide file takes fewer rows at once.
BATCH_CELLS = 4_000_000


class Part(BaseModel):
    """One shard's part of one file."""

    path: Path
    rows: int
    columns: list[dict[str, str]]
    key: str | None = None  # where it waits on the export storage (ExportPlan.parts_prefix)
    # with `key`: its size and checksum, taken before it left this machine's scratch space
    size: int | None = None
    sha256: str | None = None

    def source(self) -> Path | StoredRange:
        """Where its bytes are: the file in scratch space, or the whole object it was put as."""
        if self.key is None:
            return self.path
        if self.size is None or self.sha256 is None:
            raise ValueError(f"part {self.key} was put on the storage without its size or sha256")
        return StoredRange(self.key, 0, self.size)


class ShardParts(BaseModel):
    """What one shard wrote; small, so it can pass between processes."""

    shard: Shard
    documents: Part
    vectors: Part | None = None
    warnings: list[str] = []
    preview: list[dict[str, Any]] = []  # the first rows, for the run's preview
    # rows written per SHAPE_ID, where the shape was the snapshot's (`Selection.streamed`)
    structure_counts: list[int] | None = None
    # with max_file_size_bytes: the shard's part files in order, documents and vectors
    # aligned row for row (`documents` then only totals the rows and lists the columns)
    documents_parts: list[Part] | None = None
    vectors_parts: list[Part] | None = None
    seconds: float = 0.0
    worker: str = ""  # host name and process id that wrote the parts
    bytes: int = 0  # the size of its files together

    def files(self) -> list[Part]:
        """Every file the shard wrote in scratch space."""
        if self.documents_parts is not None:
            return [*self.documents_parts, *(self.vectors_parts or [])]
        return [self.documents] + ([self.vectors] if self.vectors else [])


def shard_folder(plan: ExportPlan, shard: Shard) -> Path:
    """Where a shard writes its parts (inside the export's scratch folder)."""
    folder = plan.scratch_dir / "shards" / f"{shard.index:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_parts(
    plan: ExportPlan,
    store: Store,
    settings: Settings,
    selection: Selection,
    shard: Shard,
    shape: Shape | None = None,
) -> ShardParts:
    """Write the shard's chosen documents (and vectors) as parts in its folder; `shape`
    overrides the one the selection gives (a rewrite after the structures were counted)."""
    started = time.perf_counter()
    folder = shard_folder(plan, shard)
    with open_scratch(plan, settings) as con:
        if shape is None:
            shape = export_shape(con, plan, store, selection, settings.max_columns)
        writing = _ShardWrite(con, plan, store, settings, selection, shard, shape, folder)
        parts = writing.run()
    parts.seconds = round(time.perf_counter() - started, 3)
    parts.worker = f"{socket.gethostname()}:{os.getpid()}"
    parts.bytes = sum(part.path.stat().st_size for part in parts.files())
    return parts


class _ShardWrite:
    """The writers of one shard and the rows that feed them."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        plan: ExportPlan,
        store: Store,
        settings: Settings,
        selection: Selection,
        shard: Shard,
        shape: Shape | None,
        folder: Path,
    ) -> None:
        self.con, self.plan, self.store, self.settings = con, plan, store, settings
        self.selection, self.shard, self.shape, self.folder = selection, shard, shape, folder
        fmt = plan.request.format
        where, params = chosen_where(plan, selection)
        ids, id_params = shard.sql()
        self.where = (f"({where}) AND {ids}", [*params, *id_params])
        # The first shard's csv part starts with the header, the others' have none: joined
        # in order they are the one file (and the first part can become it).
        self.csv_header = shard.index == 0
        self.roller = None
        if plan.request.max_file_size_bytes is not None:
            roles = ["documents", "vectors"] if plan.request.include_vectors else ["documents"]
            limit = plan.request.max_file_size_bytes
            self.roller = PartRoller(fmt, limit, folder, roles)
            self.csv_header = False  # the roller puts the header before each part's rows
        self.max_bytes = duck.batch_bytes(con)
        self.max_rows = batch_rows(shape, fmt)
        # A json export of some documents lists the keys of their structures, by number.
        self.structures = None
        copies = plan.segment_copies
        if shape is None and store.documents.numbered(plan.collection, copies=copies):
            self.structures = store.documents.structures(plan.collection, copies=copies)

    def run(self) -> ShardParts:
        plan, fmt = self.plan, self.plan.request.format
        vectors = None
        if plan.request.include_vectors:
            path = self.folder / plan.vectors_name
            indexes = plan.collection.vector_indexes
            vectors = VectorsWriter(
                self.con, fmt, indexes, path, csv_header=self.csv_header, rolling=self.roller
            )
        # Without vectors, DuckDB reads, filters and converts the rows in one streaming query
        # where the segments let it (`scan_files`); otherwise Arrow reads them in batches.
        files = None
        if vectors is None and plan.changed_since is None:  # changed rows: only_changed
            files = self.store.documents.scan_files(
                plan.collection, self.max_bytes, copies=plan.segment_copies
            )
        streaming = files is not None
        counting = self.selection.streamed
        documents = self._documents_writer(
            where=self.where if streaming and self.shape is not None else ("TRUE", []),
            count_structures=counting,
        )
        empty: pa.Table | None = None
        try:
            if streaming and self.shape is not None:
                assert files is not None
                shape_id = None
                if counting:
                    shape_id = self.store.documents.shape_id_sql(
                        plan.collection, files, copies=plan.segment_copies
                    )
                documents.write_all(
                    duck.parquet_source(files), self.max_bytes, self.max_rows, shape_id
                )
            else:
                for batch in self._rows(streaming):
                    empty = batch.slice(0, 0)
                    documents.write(batch)
                    if vectors is not None:
                        vectors.write(batch)
            written = documents.close()
            done = None
            if vectors is not None:
                schema = empty.schema if empty is not None else _empty_rows(plan).schema
                done = vectors.close(schema.empty_table())
        except BaseException:
            documents.abort()
            if vectors is not None:
                vectors.abort()
            raise
        counts = documents.structure_counts.tolist() if counting else None
        rolled = self._rolled(written.columns, done.columns if done else [])
        return ShardParts(
            shard=self.shard,
            documents=Part(path=written.path, rows=written.rows, columns=written.columns),
            vectors=None
            if done is None
            else Part(path=done.path, rows=done.rows, columns=done.columns),
            warnings=written.warnings,
            preview=preview_rows(written.head, fmt),
            structure_counts=counts,
            documents_parts=rolled.get("documents"),
            vectors_parts=rolled.get("vectors"),
        )

    def _rolled(
        self, documents: list[dict[str, str]], vectors: list[dict[str, str]]
    ) -> dict[str, list[Part]]:
        """The roller's part files by role, if the export is cut into parts."""
        if self.roller is None:
            return {}
        columns = {"documents": documents, "vectors": vectors}
        return {
            role: [Part(path=p.path, rows=p.rows, columns=columns[role]) for p in rolled]
            for role, rolled in self.roller.parts.items()
        }

    def _documents_writer(self, **options: Any) -> DocumentsWriter:
        plan = self.plan
        path = self.folder / plan.documents_name
        fmt, select = plan.request.format, plan.select_paths
        return DocumentsWriter(
            self.con,
            fmt,
            self.shape,
            select,
            path,
            self.settings.max_columns,
            structures=self.structures,
            csv_header=self.csv_header,
            rolling=self.roller,
            **options,
        )

    def _rows(self, streaming: bool) -> Iterator[pa.Table]:
        """The shard's chosen rows in id order, in bounded batches."""
        plan, store = self.plan, self.store
        columns = ["document_id", "doc"]
        if self.structures is not None:
            columns.append(SHAPE_ID)
        if plan.request.include_vectors:
            columns += [vector_column(index.name) for index in plan.collection.vector_indexes]
        if streaming:  # a json export of some documents: DuckDB filters, the text is kept
            matches = matching_rows(
                self.con, plan, store, columns, self.where, self.max_bytes, self.max_rows
            )
            if matches is not None:
                return matches
        ids = (self.shard.lower, self.shard.upper)
        rows = store.documents.rows(
            plan.collection, columns, self.max_bytes, self.max_rows, ids, copies=plan.segment_copies
        )
        # Row groups, and the few rows a selection keeps of each, are gathered into
        # batches as large as the bounds allow: each query has a cost of its own.
        rows = gathered(rows, self.max_bytes, self.max_rows)
        if plan.changed_since is not None:
            rows = (only_changed(plan, store, batch) for batch in rows)
        if self.where[0] == "TRUE":
            return gathered(rows, self.max_bytes, self.max_rows)
        kept = (keep(self.con, batch, *self.where) for batch in rows)
        return gathered(kept, self.max_bytes, self.max_rows)


def batch_rows(shape: Shape | None, fmt: str) -> int:
    """Rows per batch: fewer for wide csv and parquet files."""
    if shape is None or fmt == "json" or shape.whole_document:
        return QUERY_ROWS
    columns = width.leaves(shape.structure, arrays_whole=fmt == "csv")
    return max(64, min(QUERY_ROWS, BATCH_CELLS // columns))


def _empty_rows(plan: ExportPlan) -> pa.Table:
    """A snapshot with no segments still has a schema: the segment layout's."""
    schema = segment_schema(plan.collection.vector_indexes)
    return schema.empty_table()

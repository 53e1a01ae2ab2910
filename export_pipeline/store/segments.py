"""The segment layout: one parquet file of documents sorted by id, and its shapes sidecar.

A segment holds `document_id`, `created_at`, `doc` (the stored JSON text) and one column per
vector index. Row groups are bounded in bytes as well as rows, so that any reader that takes
one row group at a time (every reader here) holds a bounded amount of memory however large
the documents are. Beside each segment, `<name>.shapes.parquet` holds every distinct JSON
structure of its documents with how many documents have it: an export of whole segments
knows its columns without reading every document.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.store.batches import byte_chunks
from export_pipeline.store.catalog import VectorIndex

SEGMENT_COMPRESSION = "snappy"  # cheap to write and read; exports recompress as asked
ROW_GROUP_ROWS = 16_384
ROW_GROUP_BYTES = 32 * 1024 * 1024


def vector_column(index_name: str) -> str:
    """The segment column holding one vector index."""
    return f"vec_{index_name}"


def vector_type(index: VectorIndex) -> pa.DataType:
    """W4 vector types: dense fixed_size_list<float32>, sparse struct of lists."""
    if index.type == "dense":
        return pa.list_(pa.float32(), index.dimensions)
    return pa.struct([("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))])


def segment_schema(indexes: list[VectorIndex]) -> pa.Schema:
    """The columns of a stored segment: id, creation time, the document's JSON text, vectors."""
    fields = [
        pa.field("document_id", pa.string(), nullable=False),
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("doc", pa.string(), nullable=False),
    ]
    fields += [pa.field(vector_column(index.name), vector_type(index)) for index in indexes]
    return pa.schema(fields)


def internal_suffix(created_at: str, updated_at: str) -> str:
    """The tail of every stored document: `_internal` last, fixed width (upserts rely on it)."""
    return f',"_internal":{{"created_at":"{created_at}","updated_at":"{updated_at}"}}}}'


def shapes_file(segment: Path) -> Path:
    """The file beside a segment holding one representative document per shape, with counts."""
    return segment.with_suffix(".shapes.parquet")


# Each distinct JSON structure (engine/shapes.py merges them) and how many documents have it.
_SHAPES_OF_BATCH = (
    "SELECT json_structure(doc)::VARCHAR AS shape, count(*) AS n FROM batch GROUP BY shape"
)
_SHAPES = pa.schema([("shape", pa.string()), ("n", pa.int64())])


class SegmentWriter:
    """Writes a segment batch by batch (rows already in id order) with bounded row groups,
    and its shapes sidecar when closed."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        con: duckdb.DuckDBPyConnection,
        *,
        shapes: bool = True,
    ) -> None:
        self.path = path
        self.schema = schema
        self.con = con
        self.shapes = shapes  # False: the caller provides the sidecar
        self.rows = 0
        self._writer = pq.ParquetWriter(path, schema, compression=SEGMENT_COMPRESSION)
        self._shapes: list[pa.Table] = []
        self._pending: list[pa.Table] = []  # rows waiting to fill a row group
        self._pending_rows = self._pending_bytes = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append rows (in document_id order, after the rows written so far)."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self._pending.append(table.cast(self.schema))
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        # Small batches are gathered into full row groups: fewer, larger reads later.
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        if not self._pending:
            return
        chunks = list(byte_chunks(pa.concat_tables(self._pending), ROW_GROUP_BYTES, ROW_GROUP_ROWS))
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
        if not final and chunks:  # the remainder waits for more rows
            last = chunks.pop()
            self._pending, self._pending_rows, self._pending_bytes = (
                [last],
                last.num_rows,
                last.nbytes,
            )
        for chunk in chunks:
            self._writer.write_table(chunk)
            self.rows += chunk.num_rows
            if self.shapes:
                docs = chunk.select(["doc"])
                for part in byte_chunks(docs, duck.batch_bytes(self.con), ROW_GROUP_ROWS):
                    self._shapes.append(self._shapes_of(part))
            if len(self._shapes) >= 64:  # keep the pending shapes few; they are merged at close
                self._shapes = [self._merged()]

    def _shapes_of(self, docs: pa.Table) -> pa.Table:
        self.con.register("batch", docs)
        try:
            return self.con.sql(_SHAPES_OF_BATCH).to_arrow_table().cast(_SHAPES)
        finally:
            self.con.unregister("batch")

    def _merged(self) -> pa.Table:
        pending = pa.concat_tables(self._shapes) if self._shapes else _SHAPES.empty_table()
        self.con.register("pending", pending)
        try:
            return (
                self.con.sql("SELECT shape, sum(n)::BIGINT AS n FROM pending GROUP BY shape")
                .to_arrow_table()
                .cast(_SHAPES)
            )
        finally:
            self.con.unregister("pending")

    def close(self) -> None:
        """Finish the segment and write its sidecar."""
        self._flush(final=True)
        self._writer.close()
        if self.shapes:
            pq.write_table(self._merged().select(["shape", "n"]), shapes_file(self.path))

    def abort(self) -> None:
        """Close and remove whatever was written."""
        self._writer.close()
        self.path.unlink(missing_ok=True)
        shapes_file(self.path).unlink(missing_ok=True)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

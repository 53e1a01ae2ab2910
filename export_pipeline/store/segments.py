"""The segment layout: one parquet file of documents sorted by id, and its shapes sidecar.

A segment holds `document_id`, `created_at`, `doc` (the stored JSON text), one column per
vector index and `shape_id`, the number of the document's JSON structure. Row groups are
bounded in bytes as well as rows, so that any reader that takes one row group at a time
(every reader here) holds a bounded amount of memory however large the documents are.
Beside each segment, `<name>.shapes.parquet` holds every distinct JSON structure of its
documents (row i: shape_id i) with how many documents have it: an export of whole
segments knows its columns without reading every document, and an export of some
documents counts their shape_ids instead of deriving their structures again.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


# Each distinct JSON structure of a segment's documents (engine/shapes.py merges them) and
# how many documents have it; row i of the sidecar is the structure of the documents whose
# SHAPE_ID is i. Sidecars of older versions have no such numbering (and their segments no
# SHAPE_ID column): the marker in the sidecar's metadata says which kind a sidecar is.
SHAPE_ID = "shape_id"
_SHAPES = pa.schema([("shape", pa.string()), ("n", pa.int64())])
_NUMBERED = {b"export_pipeline.shape_ids": b"1"}
# In the slice's order whatever the connection's preserve_insertion_order.
_STRUCTURES = f"SELECT json_structure(doc)::VARCHAR AS shape FROM {duck.BATCH} ORDER BY i"


def stored_schema(schema: pa.Schema) -> pa.Schema:
    """The segment file's columns: the layout's, then each document's structure number."""
    if SHAPE_ID in schema.names:
        return schema
    return schema.append(pa.field(SHAPE_ID, pa.int32(), nullable=False))


def numbered(sidecar: pa.Schema) -> bool:
    """Whether a sidecar numbers its structures (its segment has a SHAPE_ID column)."""
    return (sidecar.metadata or {}).get(b"export_pipeline.shape_ids") == b"1"


class SegmentWriter:
    """Writes a segment batch by batch (rows already in id order) with bounded row groups;
    each document's structure is numbered as it is written, and the numbers' structures
    with their counts go to the sidecar when closed."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        con: duckdb.DuckDBPyConnection,
        *,
        shapes: bool = True,
    ) -> None:
        self.path = path
        self.schema = stored_schema(schema)
        self.con = con
        # False: the rows carry their SHAPE_ID already and the caller provides the sidecar
        self.shapes = shapes
        self.rows = 0
        self._writer = pq.ParquetWriter(path, self.schema, compression=SEGMENT_COMPRESSION)
        self._known: dict[str, int] = {}  # structure text -> its number in this segment
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[pa.Table] = []  # rows waiting to fill a row group
        self._pending_rows = self._pending_bytes = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append rows (in document_id order, after the rows written so far)."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if self.shapes:
            if SHAPE_ID in table.column_names:  # rewritten rows are numbered afresh
                table = table.drop_columns([SHAPE_ID])
            table = table.append_column(SHAPE_ID, self._numbers(table.column("doc")))
        self._pending.append(table.cast(self.schema))
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        # Small batches are gathered into full row groups: fewer, larger reads later.
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _numbers(self, docs: pa.ChunkedArray) -> pa.Array:
        """Each document's structure number (one DuckDB query per bounded slice; Python
        sees each distinct structure once per slice, never each document)."""
        parts = []
        table = pa.table({"doc": docs})
        for part in byte_chunks(table, duck.batch_bytes(self.con), ROW_GROUP_ROWS):
            part = part.append_column("i", pa.array(np.arange(part.num_rows, dtype=np.int32)))
            found = duck.on_batch(self.con, _STRUCTURES, part).column(0).combine_chunks()
            encoded = pc.dictionary_encode(found)
            numbers = np.array(
                [
                    self._known.setdefault(text, len(self._known))
                    for text in encoded.dictionary.to_pylist()
                ],
                dtype=np.int32,
            )
            ids = numbers[encoded.indices.to_numpy(zero_copy_only=False)]
            if len(self._known) > len(self._counts):
                grown = np.zeros(max(len(self._known), 2 * len(self._counts)), dtype=np.int64)
                grown[: len(self._counts)] = self._counts
                self._counts = grown
            self._counts += np.bincount(ids, minlength=len(self._counts))
            parts.append(pa.array(ids, pa.int32()))
        return pa.concat_arrays(parts) if parts else pa.array([], pa.int32())

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

    def close(self) -> None:
        """Finish the segment and write its sidecar."""
        self._flush(final=True)
        self._writer.close()
        if self.shapes:
            table = pa.table(
                {"shape": list(self._known), "n": self._counts[: len(self._known)]},
                schema=_SHAPES.with_metadata(_NUMBERED),
            )
            pq.write_table(table, shapes_file(self.path))

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

"""Selected rows -> files, streamed in Arrow record batches (W1-W5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.engine.schema import (
    Shape,
    csv_columns,
    json_leaves,
    ordered,
    parquet_structure,
    pointer,
    text_value_sql,
)
from export_pipeline.engine.selection import BATCH_ROWS, SELECTED
from export_pipeline.store import VectorIndex
from export_pipeline.store.jsonl import vector_type

PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 1
VECTOR_COMPRESSION = "snappy"
CONTENT_TYPES = {
    "json": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


@dataclass
class Written:
    """A finished output file and what it holds."""

    path: Path
    rows: int
    columns: list[dict[str, str]]
    warnings: list[str] = field(default_factory=list)


Query = tuple[str, list[Any]]


def write_documents(
    con: duckdb.DuckDBPyConnection,
    fmt: str,
    shape: Shape,
    select: list[str] | None,
    path: Path,
    *,
    presorted: bool = False,
) -> Written:
    """The documents file in `fmt`, rows ordered by document_id (O3); `presorted` says the
    selected documents already come in that order."""
    structure = ordered(shape.structure, select)
    order_by = "" if presorted else " ORDER BY s.document_id"
    if fmt == "json":
        query = (f"SELECT doc FROM {SELECTED} s{order_by}", [])
        return write_lines(run(con, query), path, list(structure))
    if fmt == "csv":
        columns = csv_columns(structure, select)
        leaves = json_leaves(structure)
        # Parsed once into a struct of JSON leaves where the keys allow one; each cell is
        # then a field access instead of another parse of the document.
        cells = ", ".join(
            f"{text_value_sql(_cell(c, leaves))} AS c{number}" for number, c in enumerate(columns)
        )
        parsed = "from_json(doc, ?)" if leaves is not None else "NULL"
        query = (
            f"SELECT {cells} FROM (SELECT document_id, doc, {parsed} AS row FROM {SELECTED}) s"
            f"{order_by}",
            [json.dumps(leaves)] if leaves is not None else [],
        )
        return write_csv(run(con, query), path, [".".join(c) for c in columns])
    typed, apart, as_text = parquet_structure(structure)
    extra = "".join(
        f", from_json(json_extract(s.doc, {duck.literal(pointer((key,)))}), ?) AS x{number}"
        for number, key in enumerate(apart)
    )
    query = (
        f"SELECT unnest(from_json(s.doc, ?)){extra} FROM {SELECTED} s{order_by}",
        [json.dumps(typed), *(json.dumps(node) for node in apart.values())],
    )
    produced = [*typed, *apart]
    order = [produced.index(key) for key in structure]
    written = write_parquet(run(con, query), path, names=list(structure), order=order)
    written.warnings = [
        f"field {name!r} holds values that parquet cannot type as one column; written as JSON text"
        " (W4)"
        for name in as_text
    ]
    return written


def _cell(path: tuple[str, ...], leaves: dict[str, Any] | None) -> str:
    """A csv cell's JSON value: a field of the parsed row where the structure has the path
    all the way down, else read from the document text."""
    expression, node = "s.row", leaves
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return f"json_extract(s.doc, {duck.literal(pointer(path))})"
        expression, node = f"struct_extract({expression}, {duck.literal(key)})", node[key]
    return expression


def vector_text_sql(index: VectorIndex, column: str) -> str:
    """A vector as JSON text, float32 values in their shortest round-trip form; NULL if none."""
    floats = "array_to_string(list_transform({}, lambda x: CAST(x AS VARCHAR)), ',')"
    if index.type == "dense":
        return "'[' || " + floats.format(f"CAST({column} AS FLOAT[])") + " || ']'"
    return (
        f"""'{{"indices":' || CAST(to_json({column}.indices) AS VARCHAR) || ',"values":[' || """
        + floats.format(f"{column}.values")
        + " || ']}'"
    )


def write_vectors(
    con: duckdb.DuckDBPyConnection,
    source: tuple[str, list[Any], bool],
    fmt: str,
    indexes: list[VectorIndex],
    path: Path,
) -> Written:
    """W1: document_id plus one column/key per vector index, same rows and order as documents.

    `source` is (query, parameters, already ordered); its order is kept, so an ordered
    source streams without any sort.
    """
    sql, params, presorted = source
    keys = ["document_id", *(index.name for index in indexes)]
    names = [(index, duck.identifier(index.name)) for index in indexes]
    if fmt == "parquet":
        select = "*"
    elif fmt == "json":
        members = "".join(
            f""" || ',"{index.name}":' || coalesce({vector_text_sql(index, name)}, 'null')"""
            for index, name in names
        )
        select = f"""'{{"document_id":' || CAST(to_json(document_id) AS VARCHAR){members} || '}}'"""
    else:
        select = "document_id" + "".join(f", {vector_text_sql(index, n)}" for index, n in names)
    # Kept insertion order carries the sort's order through the projection (a presorted
    # source's connection keeps it already).
    con.execute("SET preserve_insertion_order = true")
    try:
        reader = run(con, (f"SELECT {select} FROM ({sql})", params))
        if fmt == "parquet":
            return write_parquet(reader, path, _vector_schema(indexes))
        if fmt == "json":
            return write_lines(reader, path, keys)
        return write_csv(reader, path, keys)
    finally:
        if not presorted:
            con.execute("SET preserve_insertion_order = false")


def _vector_schema(indexes: list[VectorIndex]) -> pa.Schema:
    fields = [pa.field(index.name, vector_type(index)) for index in indexes]
    return pa.schema([pa.field("document_id", pa.string()), *fields])


def run(con: duckdb.DuckDBPyConnection, query: Query) -> pa.RecordBatchReader:
    """A query's result as a stream of record batches."""
    sql, params = query
    return con.sql(sql, params=params or None).to_arrow_reader(BATCH_ROWS)


def _stream(
    reader: pa.RecordBatchReader,
    path: Path,
    open_sink: Callable[[pa.Schema], Any],
    schema: pa.Schema | None = None,
    names: list[str] | None = None,
    order: list[int] | None = None,
) -> Written:
    """Feed a stream of batches to a sink; columns may be reordered (by position) and
    renamed, or cast to `schema`."""
    fields = list(reader.schema)
    if order is not None:
        fields = [fields[i] for i in order]
    if names is not None:
        fields = [f.with_name(name) for f, name in zip(fields, names, strict=True)]
    target = schema or pa.schema(fields)
    rows = 0
    with open_sink(target) as sink:
        for batch in reader:
            columns = batch.columns if order is None else [batch.column(i) for i in order]
            batch = pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))
            if schema is not None:
                batch = batch.cast(schema)
            sink.write_batch(batch)
            rows += batch.num_rows
    columns = [{"name": f.name, "type": str(f.type)} for f in target]
    return Written(path=path, rows=rows, columns=columns)


_EMPTY = pa.scalar("", pa.large_string())
_NEWLINE = pa.scalar("\n", pa.large_string())


class _LineSink:
    """Writes a one-string-column batch as newline-terminated lines (W2), no per-row Python."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> _LineSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        text = batch.column(0).cast(pa.large_string())
        lines = pc.binary_join_element_wise(text, _EMPTY, _NEWLINE)
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
        start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
        self.file.write(memoryview(lines.buffers()[2])[start:end])


def write_lines(reader: pa.RecordBatchReader, path: Path, keys: list[str]) -> Written:
    """JSON lines from a stream's single text column; `keys` are the top-level keys."""
    written = _stream(reader, path, lambda schema: _LineSink(path))
    written.columns = [{"name": key, "type": "json"} for key in keys]
    return written


def write_csv(reader: pa.RecordBatchReader, path: Path, header: list[str]) -> Written:
    """RFC 4180 CSV with CRLF line ends; every string is quoted, so "" differs from null."""
    options = pacsv.WriteOptions(
        include_header=True, quoting_style="needed", quoting_header="needed", eol="\r\n"
    )

    def open_sink(schema: pa.Schema) -> pacsv.CSVWriter:
        return pacsv.CSVWriter(path, schema, write_options=options)

    return _stream(reader, path, open_sink, names=header)


def leaf_columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """Parquet paths and types of every leaf column."""

    def walk(kind: pa.DataType, path: str) -> list[tuple[str, pa.DataType]]:
        if isinstance(kind, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
            return walk(kind.value_type, f"{path}.list.element")
        if isinstance(kind, pa.StructType):
            return [leaf for child in kind for leaf in walk(child.type, f"{path}.{child.name}")]
        return [(path, kind)]

    return [leaf for field in schema for leaf in walk(field.type, field.name)]


def write_parquet(
    reader: pa.RecordBatchReader,
    path: Path,
    schema: pa.Schema | None = None,
    names: list[str] | None = None,
    order: list[int] | None = None,
) -> Written:
    """Parquet, zstd, streamed batch by batch; floats byte-stream-split before compression."""

    def open_sink(target: pa.Schema) -> pq.ParquetWriter:
        # float32 values (vectors) are byte-stream-split rather than dictionary-encoded,
        # then compressed with snappy: their bytes barely compress further, and zstd spends
        # most of the export's time finding that out. Everything else is zstd.
        leaves = leaf_columns(target)
        floats = [path for path, kind in leaves if pa.types.is_float32(kind)]
        others = [path for path, kind in leaves if not pa.types.is_float32(kind)]
        return pq.ParquetWriter(
            path,
            target,
            compression={
                **dict.fromkeys(others, PARQUET_COMPRESSION),
                **dict.fromkeys(floats, VECTOR_COMPRESSION),
            },
            compression_level=dict.fromkeys(others, PARQUET_COMPRESSION_LEVEL),
            use_dictionary=others or False,
            use_byte_stream_split=floats or False,
        )

    return _stream(reader, path, open_sink, schema, names, order)

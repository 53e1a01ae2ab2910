"""Chosen documents -> the documents file (the vectors file: `vectors_writer`), one bounded
batch at a time.

Each batch of (document_id, doc, vectors) rows, already in document_id order (O3), goes to
both writers, so the two files line up row for row (W1). What needs JSON work (csv cells,
parquet columns, listed fields, vector text) is one DuckDB query per batch, or, for every
document of a snapshot DuckDB may read itself, one streaming query (`write_all`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from export_pipeline import duck
from export_pipeline.engine.rolling import PartRoller, table_writer
from export_pipeline.engine.schema import (
    Shape,
    cell_sql,
    csv_columns,
    json_leaves,
    ordered,
    parquet_structure,
    pointer,
)
from export_pipeline.engine.selection import projection_sql
from export_pipeline.engine.sinks import Written, line_sink, parquet_sink, sink_of
from export_pipeline.engine.tally import summed_counts
from export_pipeline.engine.width import WHOLE_DOCUMENT
from export_pipeline.store.batches import gathered
from export_pipeline.store.segments import SHAPE_ID

CONTENT_TYPES = {
    "json": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
_INPUT = pa.schema([("document_id", pa.string()), ("doc", pa.string())])


class DocumentsWriter:
    """The documents file in one format (W2-W5) for a known shape of the documents."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        fmt: str,
        shape: Shape | None,
        select: list[str] | None,
        path: Path,
        max_keys: int,
        where: tuple[str, list[Any]] = ("TRUE", []),
        structures: pa.ChunkedArray | None = None,
        count_structures: bool = False,
        csv_header: bool = True,
        rolling: PartRoller | None = None,
    ) -> None:
        """`where` picks the rows of each batch to write (a predicate and its parameters);
        `structures` are the snapshot's structures as SHAPE_ID numbers them, when it does;
        `count_structures`: `write_all` counts the SHAPE_IDs of the rows it writes;
        `csv_header`: whether a csv file starts with its header (a shard's part does not);
        `rolling`: the roller that cuts the file into parts of bounded size, if any."""
        self.con, self.fmt, self.select = con, fmt, select
        self.counting = count_structures
        self.structure_counts = np.zeros(0, dtype=np.int64)  # rows written, by SHAPE_ID
        self.max_keys = max_keys
        self.warnings = list(shape.warnings) if shape else []
        # json lists its top-level keys: from the shape when known, else from the
        # structures of the rows written (by number), else from the lines.
        self.keys: set[str] | None = None if shape is None else set(shape.structure)
        self.found_keys: set[str] = set()
        self.structures = structures
        self.numbers: set[int] = set()
        doc = projection_sql(select) if select else "doc"
        condition, self.where_params = where
        # A counted SHAPE_ID rides along as the last column of the conversion's results.
        carry = f", {SHAPE_ID}" if count_structures else ""
        source = f"(SELECT document_id, {doc} AS doc{carry} FROM {duck.BATCH} WHERE {condition})"
        self.params: list[Any] = []
        if fmt == "json":
            passthrough = select is None and condition == "TRUE"
            self.sql = None if passthrough and not carry else f"SELECT doc{carry} FROM {source} s"
            self.writer = table_writer(path, line_sink, rolling, "documents")
        elif shape is None:
            raise ValueError("csv and parquet need the documents' shape")
        elif shape.whole_document:
            self.sql = (
                f"SELECT document_id, doc AS {duck.identifier(WHOLE_DOCUMENT)}{carry} FROM {source}"
            )
            self.writer = table_writer(path, sink_of(fmt, csv_header), rolling, "documents")
        elif fmt == "csv":
            self.sql, self.params, names = _csv_query(shape, select, source, carry)
            sink = sink_of(fmt, csv_header)
            self.writer = table_writer(path, sink, rolling, "documents", names=names)
        else:
            self.sql, self.params, names, order, as_text = _parquet_query(
                shape, select, source, carry
            )
            self.writer = table_writer(
                path, parquet_sink, rolling, "documents", names=names, order=order
            )
            self.warnings += [
                f"field {name!r} holds values that parquet cannot type as one column;"
                " written as JSON text (W4)"
                for name in as_text
                if name not in shape.collapsed
            ]

    def write(self, batch: pa.Table) -> None:
        """Append the documents of one batch (columns document_id and doc)."""
        rows = batch.select(["document_id", "doc"])
        out = rows.select(["doc"]) if self.sql is None else self._run(rows)
        if self.fmt == "json" and self.keys is None:
            if self.structures is not None and SHAPE_ID in batch.column_names:
                self.numbers.update(pc.unique(batch.column(SHAPE_ID)).to_pylist())
            else:
                self._gather_keys(out)
        self.writer.write(out)

    def write_all(
        self,
        source: str,
        max_bytes: int,
        max_rows: int,
        shape_id: tuple[str, list[Any]] | None = None,
    ) -> None:
        """Append every row of `source` (a FROM-clause source of document_id and doc, read
        in order) the writer's predicate holds for, converted by one streaming query instead
        of one query per batch; the results go to the file in batches of at most `max_rows`
        rows and about `max_bytes` bytes. `shape_id`: the SQL of a row's SHAPE_ID in `source`
        and its parameters, when the writer counts structures."""
        if self.fmt == "json" and self.keys is None:
            raise ValueError("a json export without its shape lists keys batch by batch")
        if self.counting != (shape_id is not None):
            raise ValueError("a writer that counts structures needs their SQL, and only it")
        sql = self.sql or f"SELECT doc FROM {duck.BATCH}"
        numbered, numbered_params = shape_id or ("", [])
        rows = f"SELECT document_id, doc{', ' if numbered else ''}{numbered} FROM {source}"
        query = f"WITH {duck.BATCH} AS NOT MATERIALIZED ({rows}) {sql}"
        # Placeholders in the order they appear: the SHAPE_ID's, the conversion's, the filter's.
        params = [*numbered_params, *self.params, *self.where_params]
        batches = duck.streamed(self.con, query, params, max_rows)
        with contextlib.closing(batches):
            tables = (pa.Table.from_batches([batch]) for batch in batches)
            for table in gathered(tables, max_bytes, max_rows):
                if self.counting:
                    table = self._counted(table)
                self.writer.write(table)

    def _counted(self, table: pa.Table) -> pa.Table:
        """The table without its last column, the rows' SHAPE_IDs, which are counted."""
        last = table.num_columns - 1
        found = np.bincount(table.column(last).to_numpy(zero_copy_only=False))
        self.structure_counts = summed_counts([self.structure_counts, found])
        return table.remove_column(last)

    def _run(self, rows: pa.Table) -> pa.Table:
        # Placeholders: the conversion's (outer query) come first, then the predicate's.
        return duck.on_batch(self.con, self.sql or "", rows, self.params + self.where_params)

    def _gather_keys(self, lines: pa.Table) -> None:
        found = duck.on_batch(
            self.con,
            f"SELECT DISTINCT unnest(json_keys(doc)) FROM (SELECT doc FROM {duck.BATCH})",
            lines,
        )
        self.found_keys.update(found.column(0).to_pylist())

    def abort(self) -> None:
        """Stop writing after a failure (the file is left to the scratch space's removal)."""
        self.writer.abort()

    def close(self) -> Written:
        """Finish the file; json lists the top-level keys of what it wrote (`json_columns`
        makes the manifest's list of them)."""
        empty = _INPUT.empty_table()
        if self.sql is None:
            converted = empty.select(["doc"])
        elif self.counting:
            numbered = empty.append_column(SHAPE_ID, pa.array([], pa.int32()))
            converted = self._counted(self._run(numbered))
        else:
            converted = self._run(empty)
        written = self.writer.close(converted)
        written.warnings = self.warnings
        if self.fmt == "json":
            if self.numbers and self.structures is not None:
                chosen = self.structures.take(sorted(self.numbers)).to_pylist()
                self.found_keys.update(top_level_keys(self.con, chosen))
            keys = list(ordered(dict.fromkeys(self.keys or self.found_keys), self.select))
            written.columns = [{"name": key, "type": "json"} for key in keys]
        return written


def json_columns(
    keys: list[str], select: list[str] | None, max_keys: int
) -> tuple[list[dict[str, str]], list[str]]:
    """The manifest's columns of a json documents file (its top-level keys, in order, at most
    `max_keys`), and the warning when there are more."""
    names = list(ordered(dict.fromkeys(keys), select))
    warnings = []
    if len(names) > max_keys:
        warnings.append(
            f"the documents have {len(names):,} distinct top-level keys; the manifest"
            f" lists the first {max_keys:,} (EXPORT_PIPELINE_MAX_COLUMNS)"
        )
        names = names[:max_keys]
    return [{"name": name, "type": "json"} for name in names], warnings


def top_level_keys(con: duckdb.DuckDBPyConnection, structures: list[str]) -> list[str]:
    """The keys of the structures' top levels, found by DuckDB (there may be one per
    document)."""
    texts = pa.table({"doc": pa.array(structures, pa.string())})
    found = duck.on_batch(con, f"SELECT DISTINCT unnest(json_keys(doc)) FROM {duck.BATCH}", texts)
    return found.column(0).to_pylist()


def _csv_query(
    shape: Shape, select: list[str] | None, source: str, carry: str
) -> tuple[str, list[Any], list[str]]:
    structure = ordered(shape.structure, select)
    columns = csv_columns(structure, select)
    leaves = json_leaves(structure)
    # Parsed once into a struct of JSON leaves where the keys allow one; each cell is then a
    # field access instead of another parse of the document.
    cells = ", ".join(
        f"{cell_sql(*_cell(c, leaves, structure))} AS c{number}" for number, c in enumerate(columns)
    )
    parsed = "from_json(doc, ?)" if leaves is not None else "NULL"
    sql = (
        f"SELECT {cells}{carry} FROM"
        f" (SELECT document_id, doc, {parsed} AS row{carry} FROM {source}) s"
    )
    params = [json.dumps(leaves)] if leaves is not None else []
    return sql, params, [".".join(c) for c in columns]


def _cell(
    path: tuple[str, ...], leaves: dict[str, Any] | None, structure: dict[str, Any]
) -> tuple[str, Any]:
    """A csv cell's value and its merged type: a field of the parsed row where the structure
    has the path all the way down, else read from the document text (type unknown)."""
    expression, node = "s.row", leaves
    kind: dict[str, Any] | str | None = structure
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return f"json_extract(s.doc, {duck.literal(pointer(path))})", None
        expression, node = f"struct_extract({expression}, {duck.literal(key)})", node[key]
        kind = kind.get(key) if isinstance(kind, dict) else None
    if isinstance(node, dict) or kind is None:  # an object's text (not reached: leaves)
        return expression, None
    return expression, "VARCHAR" if node == "VARCHAR" else kind


def _parquet_query(
    shape: Shape, select: list[str] | None, source: str, carry: str
) -> tuple[str, list[Any], list[str], list[int], list[str]]:
    structure = ordered(shape.structure, select)
    typed, apart, as_text = parquet_structure(structure)
    extra = "".join(
        f", from_json(json_extract(s.doc, {duck.literal(pointer((key,)))}), ?) AS x{number}"
        for number, key in enumerate(apart)
    )
    sql = f"SELECT unnest(from_json(s.doc, ?)){extra}{carry} FROM {source} s"
    params = [json.dumps(typed), *(json.dumps(node) for node in apart.values())]
    produced = [*typed, *apart]
    order = [produced.index(key) for key in structure]
    return sql, params, list(structure), order, as_text

"""The vectors file (W1): document_id plus one column (or key) per vector index, row for row
with the documents file, one bounded batch at a time."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from export_pipeline import duck
from export_pipeline.engine.rolling import PartRoller, table_writer
from export_pipeline.engine.sinks import Written, line_sink, parquet_sink, sink_of
from export_pipeline.store import VectorIndex
from export_pipeline.store.segments import vector_column, vector_type


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


class VectorsWriter:
    """W1: document_id plus one column (or key) per vector index, row for row with the
    documents file."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        fmt: str,
        indexes: list[VectorIndex],
        path: Path,
        *,
        csv_header: bool = True,
        rolling: PartRoller | None = None,
    ) -> None:
        """`csv_header`: whether a csv file starts with its header (a shard's part does not);
        `rolling`: the roller that cuts the file into parts, with the documents file."""
        self.con, self.fmt, self.indexes = con, fmt, indexes
        self.columns = ["document_id", *(vector_column(index.name) for index in indexes)]
        stored = [(index, duck.identifier(vector_column(index.name))) for index in indexes]
        if fmt == "parquet":
            schema = pa.schema(
                [("document_id", pa.string())]
                + [(index.name, vector_type(index)) for index in indexes]
            )
            self.sql = None
            self.writer = table_writer(
                path, parquet_sink, rolling, "vectors", names=self.keys, schema=schema
            )
            return
        if fmt == "json":
            members = "".join(
                f""" || ',"{index.name}":' || coalesce({vector_text_sql(index, column)}, 'null')"""
                for index, column in stored
            )
            self.sql = (
                f"""SELECT '{{"document_id":' || CAST(to_json(document_id) AS VARCHAR)"""
                f"""{members} || '}}' FROM {duck.BATCH}"""
            )
            self.writer = table_writer(path, line_sink, rolling, "vectors")
            return
        texts = "".join(f", {vector_text_sql(index, column)}" for index, column in stored)
        self.sql = f"SELECT document_id{texts} FROM {duck.BATCH}"
        sink = sink_of(fmt, csv_header)
        self.writer = table_writer(path, sink, rolling, "vectors", names=self.keys)

    @property
    def keys(self) -> list[str]:
        """The file's columns (json: keys)."""
        return ["document_id", *(index.name for index in self.indexes)]

    def write(self, batch: pa.Table) -> None:
        """Append the vectors of one batch (columns document_id and vec_*)."""
        rows = batch.select(self.columns)
        self.writer.write(rows if self.sql is None else duck.on_batch(self.con, self.sql, rows))

    def abort(self) -> None:
        """Stop writing after a failure (the file is left to the scratch space's removal)."""
        self.writer.abort()

    def close(self, empty: pa.Table) -> Written:
        """Finish the file; `empty` is a batch with no rows (for the schema)."""
        rows = empty.select(self.columns)
        written = self.writer.close(
            rows if self.sql is None else duck.on_batch(self.con, self.sql, rows)
        )
        if self.fmt == "json":
            written.columns = [{"name": key, "type": "json"} for key in self.keys]
        return written

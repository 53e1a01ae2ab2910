"""Arrow tables -> one file (W2 json lines, W3 csv, W4 parquet), streamed, no per-row Python."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 1
VECTOR_COMPRESSION = "snappy"
PREVIEW_ROWS = 10


@dataclass
class Written:
    """A finished output file and what it holds."""

    path: Path
    rows: int
    columns: list[dict[str, str]]
    warnings: list[str] = field(default_factory=list)
    head: pa.Table | None = None  # the first rows as written, for a preview


class Sink(Protocol):
    """Where converted tables go, in order."""

    def write_table(self, table: pa.Table) -> None:
        """Append the rows."""
        ...

    def close(self) -> None:
        """Finish the file."""
        ...


class TableWriter:
    """Feeds tables to a sink opened on the first table (or on an empty one at close, so a
    file with no rows still has its header or schema, W5); columns may be reordered by
    position, renamed, or cast to a fixed schema.

    A table is encoded and written by a thread of its own while the caller converts the
    next one (Arrow's writers release the GIL, as DuckDB does): at most one table is being
    written at a time, so memory holds one more converted batch than a serial writer's.
    `close` or `abort` waits for it; an error it raised comes back from the next call.
    """

    def __init__(
        self,
        path: Path,
        open_sink: Callable[[pa.Schema], Sink],
        *,
        names: list[str] | None = None,
        order: list[int] | None = None,
        schema: pa.Schema | None = None,
    ) -> None:
        self.path = path
        self.open_sink = open_sink
        self.names, self.order, self.schema = names, order, schema
        self.rows = 0
        self.head: pa.Table | None = None
        self._sink: Sink | None = None
        self._target: pa.Schema | None = None
        self._writing: threading.Thread | None = None
        self._failed: BaseException | None = None

    def write(self, table: pa.Table) -> None:
        """Append the rows of one converted table (written once the previous one is)."""
        table = self._shaped(table)
        self._wait()
        self._noted(table)
        self._writing = threading.Thread(
            target=self._write_now, args=(table,), name="table-writer", daemon=True
        )
        self._writing.start()

    def _noted(self, table: pa.Table) -> None:
        """Count the rows about to be written; keep the first few, and the schema."""
        if self._target is None:
            self._target = table.schema
        if self.head is None or self.head.num_rows < PREVIEW_ROWS:
            first = table.slice(0, PREVIEW_ROWS)
            self.head = first if self.head is None else pa.concat_tables([self.head, first])
        self.rows += table.num_rows

    def _write_now(self, table: pa.Table) -> None:
        try:
            if self._sink is None:
                self._sink = self.open_sink(table.schema)
            self._sink.write_table(table)
        except BaseException as exc:  # re-raised by the caller's next write or close
            self._failed = exc

    def _wait(self) -> None:
        """Until the table being written is; then its error, if it raised one."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    def _shaped(self, table: pa.Table) -> pa.Table:
        columns = table.columns if self.order is None else [table.column(i) for i in self.order]
        names = self.names or [
            table.schema.field(i).name for i in self.order or range(len(columns))
        ]
        shaped = pa.Table.from_arrays(columns, names=names)
        return shaped.cast(self.schema) if self.schema is not None else shaped

    def close(self, empty: pa.Table) -> Written:
        """Finish the file; `empty` is a converted table with no rows, for the schema."""
        if self._target is None:
            self.write(empty)
        self._wait()
        sink, self._sink = self._sink, None
        assert sink is not None and self._target is not None
        sink.close()
        columns = [{"name": f.name, "type": str(f.type)} for f in self._target]
        return Written(path=self.path, rows=self.rows, columns=columns, head=self.head)

    def abort(self) -> None:
        """After a failure elsewhere: wait for the table being written, then close the file
        quietly (it goes with the scratch space)."""
        with contextlib.suppress(BaseException):  # the caller is raising its own error
            self._wait()
        if self._writing is not None and self._writing.is_alive():
            return  # interrupted again while waiting: the thread still holds the sink
        sink, self._sink = self._sink, None
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.close()


_EMPTY = pa.scalar("", pa.large_string())
_NEWLINE = pa.scalar("\n", pa.large_string())


class LineSink:
    """Writes a one-string-column table as newline-terminated lines (W2)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write_table(self, table: pa.Table) -> None:
        """Each value of the first column, then a newline."""
        for chunk in table.column(0).chunks:
            text = chunk.cast(pa.large_string())
            lines = pc.binary_join_element_wise(text, _EMPTY, _NEWLINE)
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
            start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
            self.file.write(memoryview(lines.buffers()[2])[start:end])

    def close(self) -> None:
        """Close the file."""
        self.file.close()


def csv_sink(path: Path, *, header: bool = True) -> Callable[[pa.Schema], Sink]:
    """RFC 4180 CSV with CRLF line ends; every string is quoted, so "" differs from null.
    Without `header`, the rows only (a shard's part, joined after `csv_header`)."""
    options = _csv_options(header)

    def open_sink(schema: pa.Schema) -> Sink:
        writer = pacsv.CSVWriter(path, schema, write_options=options)
        return writer

    return open_sink


def csv_header(names: list[str]) -> bytes:
    """The header line `csv_sink` writes for columns named `names`."""
    table = pa.table({f"c{i}": pa.array([], pa.string()) for i in range(len(names))})
    out = pa.BufferOutputStream()
    pacsv.write_csv(table.rename_columns(names), out, write_options=_csv_options(True))
    return out.getvalue().to_pybytes()


def _csv_options(header: bool) -> pacsv.WriteOptions:
    return pacsv.WriteOptions(
        include_header=header, quoting_style="needed", quoting_header="needed", eol="\r\n"
    )


def leaf_columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """Parquet paths and types of every leaf column."""

    def walk(kind: pa.DataType, path: str) -> list[tuple[str, pa.DataType]]:
        if isinstance(kind, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
            return walk(kind.value_type, f"{path}.list.element")
        if isinstance(kind, pa.StructType):
            return [leaf for child in kind for leaf in walk(child.type, f"{path}.{child.name}")]
        return [(path, kind)]

    return [leaf for field in schema for leaf in walk(field.type, field.name)]


def parquet_sink(path: Path) -> Callable[[pa.Schema], Sink]:
    """Parquet, zstd; float32 values (vectors) byte-stream-split and snappy-compressed."""

    def open_sink(target: pa.Schema) -> Sink:
        # Float32 bytes barely compress further: zstd would spend most of the export's time
        # finding that out. Everything else is zstd.
        leaves = leaf_columns(target)
        floats = [name for name, kind in leaves if pa.types.is_float32(kind)]
        others = [name for name, kind in leaves if not pa.types.is_float32(kind)]
        compression: Any = {
            **dict.fromkeys(others, PARQUET_COMPRESSION),
            **dict.fromkeys(floats, VECTOR_COMPRESSION),
        }
        return pq.ParquetWriter(
            path,
            target,
            compression=compression,
            compression_level=dict.fromkeys(others, PARQUET_COMPRESSION_LEVEL),
            use_dictionary=others or False,
            use_byte_stream_split=floats or False,
        )

    return open_sink


def line_sink(path: Path) -> Callable[[pa.Schema], Sink]:
    """The sink factory of a json lines file (its lines made by the writer's query)."""
    return lambda schema: LineSink(path)


def sink_of(fmt: str, header: bool) -> Callable[[Path], Callable[[pa.Schema], Sink]]:
    """The sink factory of a csv (with or without its header) or parquet file."""
    if fmt == "csv":
        return lambda path: csv_sink(path, header=header)
    return parquet_sink

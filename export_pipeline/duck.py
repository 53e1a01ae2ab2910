"""DuckDB connections configured once, the same way for ingest and export.

What DuckDB 2.0.1 does that this module relies on (no httpfs, the memory cost of insertion
order, defaults that are not bounds, globs and `?` in paths) is in docs/environment.md.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

_shared_lock = threading.Lock()
_shared: dict[int, duckdb.DuckDBPyConnection] = {}  # process id -> its connection


def connect(
    *, temp_dir: Path, memory_limit: str = "512MB", threads: int = 2
) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with bounded memory that spills to `temp_dir`.

    Never a database file: nothing here outlives one step, and DuckDB 2.0.1 cannot keep a
    database under a path holding a `?` (it cuts the write-ahead log's name there).
    """
    con = duckdb.connect(":memory:")
    temp_dir.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = {literal(str(temp_dir))}")
    con.execute(f"SET memory_limit = {literal(memory_limit)}")
    con.execute(f"SET threads = {int(threads)}")
    # Order comes from explicit ORDER BY; keeping insertion order costs gigabytes over a
    # whole relation (per-batch queries turn it back on: a batch is small).
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET TimeZone = 'UTC'")
    return con


@contextmanager
def shared_connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """A process-wide in-memory connection for small queries on constants, one caller at a time.

    Opening a connection costs ~20 ms, a query on an open one well under 1 ms. A forked
    child opens its own: a DuckDB connection must not be used across fork.
    """
    with _shared_lock:
        con = _shared.get(os.getpid())
        if con is None:
            con = _shared[os.getpid()] = duckdb.connect()
            con.execute("SET threads = 1")
        yield con


def close_shared() -> None:
    """Close this process's shared connection, if any (a process about to fork children)."""
    with _shared_lock:
        con = _shared.pop(os.getpid(), None)
    if con is not None:
        con.close()


def literal(text: str) -> str:
    """A SQL string literal for text the program made itself (file paths, settings)."""
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def parquet_source(files: list[Path]) -> str:
    """A FROM-clause source reading exactly the given parquet files (DuckDB's `file_index`
    column tells each row's position in the list).

    DuckDB expands `*`, `?` and `[...]` in every path it reads, also in a list of files: a
    home such as `/data/a?b` would read `/data/axb`'s files too. Each such character is put
    in a bracket of its own, which matches only itself.
    """
    listing = ", ".join(literal(_glob_escaped(str(path))) for path in files)
    return f"read_parquet([{listing}])"


BATCH = "batch"
_CHUNK_ROWS = 2048  # DuckDB's vector size: one chunk per thread task


def on_batch(
    con: duckdb.DuckDBPyConnection, sql: str, table: pa.Table, params: list[Any] | None = None
) -> pa.Table:
    """Run `sql`, which reads the relation `batch`, over one bounded Arrow table.

    DuckDB never sees more documents at once than the table holds; cut into chunks of its
    vector size, the table is scanned by every thread.
    """
    con.register(BATCH, pa.Table.from_batches(table.to_batches(_CHUNK_ROWS), table.schema))
    try:
        return con.sql(sql, params=params or None).to_arrow_table()
    finally:
        con.unregister(BATCH)


def streamed(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None, rows: int
) -> Generator[pa.RecordBatch]:
    """The results of one query as Arrow batches of at most `rows` rows, while it runs.

    An error of the query reaches Python through Arrow's stream interface, which reports
    it as an OSError in DuckDB's words; it is raised as the DuckDB exception it was.
    """
    reader = con.sql(sql, params=params or None).to_arrow_reader(rows)
    try:
        yield from reader
    except OSError as exc:
        raise _duckdb_error(exc) from exc
    finally:
        reader.close()


_DUCKDB_ERRORS = {
    name.lower(): kind
    for name, kind in vars(duckdb).items()
    if isinstance(kind, type) and issubclass(kind, duckdb.Error) and name.endswith("Exception")
}


def _duckdb_error(exc: OSError) -> Exception:
    found = re.match(r"([A-Za-z ]+) Error: ", str(exc))
    if exc.errno is not None or found is None:
        return exc
    kind = _DUCKDB_ERRORS.get(found.group(1).replace(" ", "").lower() + "exception", duckdb.Error)
    return kind(str(exc))


_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
MAX_BATCH_BYTES = 16 * 1024 * 1024


def batch_bytes(con: duckdb.DuckDBPyConnection) -> int:
    """How much data one per-batch query may be given: a sixteenth of the connection's
    memory limit, at most 16 MiB (DuckDB's JSON functions hold several times their input,
    on every thread)."""
    (text,) = con.execute("SELECT current_setting('memory_limit')").fetchall()[0]
    number, _, unit = str(text).partition(" ")
    limit = float(number) * _UNITS.get(unit, 1)
    return max(1 << 20, min(MAX_BATCH_BYTES, int(limit // 16)))


def _glob_escaped(path: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", path)


def regex_problem(pattern: str) -> str | None:
    """Why DuckDB's RE2 rejects `pattern`, or None when it compiles.

    One shared connection: a connection per pattern cost ~25 ms, 23 s for 1,000 regexes.
    """
    try:
        with shared_connection() as con:
            con.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
    except duckdb.Error as exc:
        return str(exc).split("Error: ", 1)[-1]
    return None

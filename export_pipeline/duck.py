"""DuckDB connections configured once, the same way for ingest and export."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

_shared_lock = threading.Lock()
_shared: dict[int, duckdb.DuckDBPyConnection] = {}  # process id -> its connection


def connect(
    database: Path | str = ":memory:",
    *,
    temp_dir: Path,
    memory_limit: str = "512MB",
    threads: int = 2,
) -> duckdb.DuckDBPyConnection:
    """A connection with bounded memory that spills to `temp_dir`."""
    con = duckdb.connect(str(database))
    temp_dir.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = {literal(str(temp_dir))}")
    con.execute(f"SET memory_limit = {literal(memory_limit)}")
    con.execute(f"SET threads = {int(threads)}")
    # Order comes from explicit ORDER BY; keeping insertion order costs gigabytes (ENVIRONMENT.md).
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


def literal(text: str) -> str:
    """A SQL string literal for text the program made itself (file paths, settings)."""
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def parquet_source(files: list[Path]) -> str:
    """A FROM-clause source reading the given parquet files."""
    listing = ", ".join(literal(str(path)) for path in files)
    return f"read_parquet([{listing}])"

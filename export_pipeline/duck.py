"""DuckDB connections configured once, the same way for ingest and export."""

from __future__ import annotations

from pathlib import Path

import duckdb


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

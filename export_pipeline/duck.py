"""DuckDB connections configured once, the same way for ingest and export."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
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
    target = openable(database)
    if target is not database:  # kept aside: its private folder is made on first use
        Path(target).parent.mkdir(mode=0o700, exist_ok=True)
    con = duckdb.connect(str(target))
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
    """A FROM-clause source reading exactly the given parquet files.

    DuckDB expands `*`, `?` and `[...]` in every path it reads, also in a list of files: a
    home such as `/data/a?b` would read `/data/axb`'s files too. Each such character is put
    in a bracket of its own, which matches only itself.
    """
    listing = ", ".join(literal(_glob_escaped(str(path))) for path in files)
    return f"read_parquet([{listing}])"


def _glob_escaped(path: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", path)


# DuckDB 2.0.1 names a database's write-ahead log by inserting `.wal` before the first `?` of
# the database's real path (symlinks resolved), taken as the start of URL parameters: under
# `/data/a?b` it writes `/data/a.wal?b/...`, which does not exist, and every commit fails.
# Such databases are kept in a private folder under the system's temp folder instead (TMPDIR
# chooses it), one folder per database folder, removed by `discard`.


def openable(database: Path | str) -> Path | str:
    """Where DuckDB can keep `database`: itself, unless its path holds a `?`."""
    if str(database) == ":memory:" or "?" not in os.path.realpath(database):
        return database
    return _aside_folder(Path(database).parent) / Path(database).name


def discard(folder: Path) -> None:
    """Remove the databases kept aside for `folder` (see `openable`), if any."""
    if "?" in os.path.realpath(folder):
        shutil.rmtree(_aside_folder(folder), ignore_errors=True)


def _aside_folder(folder: Path) -> Path:
    root = Path(tempfile.gettempdir()) / f"export_pipeline-duckdb-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    # The temp folder is shared: use the root only if it is this user's own folder.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{root} is not a private folder of this user")
    key = hashlib.sha256(os.path.abspath(folder).encode("utf-8", "surrogateescape")).hexdigest()
    return root / key[:32]

"""How a failure of the machine is read (README: Using it): on real exceptions raised by Python,
DuckDB and SQLite themselves, into one line naming the cause, the path and what was left
undone; and what an HTTP client is told of it."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import duckdb
import pytest

from export_pipeline.errors import (
    CHANGED_NOTHING,
    PUBLISHED_NOTHING,
    EnvironmentProblem,
    InsufficientStorage,
    TransientStorageError,
    environment_problem,
    from_dict,
    guard,
)


def test_a_permission_error_names_the_path_and_its_folder(tmp_path: Path) -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "home" / "x"))
    problem = environment_problem(denied, tmp_path / "home", "home", PUBLISHED_NOTHING)
    assert isinstance(problem, EnvironmentProblem)
    assert problem.exit_code == 1 and problem.type_name == "EnvironmentError"
    assert (
        problem.message == f"Permission denied at {tmp_path}/home/x (home): nothing was published"
    )
    assert problem.details["errno"] == "EACCES"


def test_duckdb_and_sqlite_errors_name_their_files(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "documents.parquet"
    with pytest.raises(duckdb.IOException) as duck_error:
        duckdb.connect().execute(f"COPY (SELECT 1) TO '{target}' (FORMAT parquet)")
    problem = environment_problem(duck_error.value, tmp_path, "scratch space", PUBLISHED_NOTHING)
    assert problem is not None and problem.details["errno"] == "ENOENT"
    assert problem.message == (
        f"No such file or directory at {target} (scratch space): nothing was published"
    )
    catalog = tmp_path / "gone" / "catalog.sqlite"
    with pytest.raises(sqlite3.OperationalError) as sqlite_error:
        sqlite3.connect(catalog)
    problem = environment_problem(sqlite_error.value, catalog, "catalog", CHANGED_NOTHING)
    assert problem is not None
    assert problem.message == (
        f"unable to open database file at {catalog} (catalog): nothing was changed"
    )


def test_other_errors_are_left_alone_and_outer_guards_say_what_was_left_undone(
    tmp_path: Path,
) -> None:
    for other in (ValueError("a bug"), TransientStorageError("503 Slow Down")):
        assert environment_problem(other, tmp_path, "home", CHANGED_NOTHING) is None
    # An inner guard names the catalog; the export's outer guard says nothing was published.
    with (
        pytest.raises(InsufficientStorage) as raised,
        guard(tmp_path, "home", PUBLISHED_NOTHING),
        guard(tmp_path / "catalog.sqlite", "catalog"),
    ):
        raise sqlite3.OperationalError("database or disk is full")
    assert raised.value.message == (
        f"No space left on device at {tmp_path}/catalog.sqlite (catalog): nothing was published"
    )
    client = raised.value.for_client()
    assert (
        client.message == "No space left on device in the server's catalog: nothing was published"
    )
    assert str(tmp_path) not in json.dumps(client.to_dict())


def test_a_problem_crosses_process_boundaries_as_a_dict(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "exports" / "x"))
    problem = environment_problem(full, tmp_path / "exports", "exports folder", PUBLISHED_NOTHING)
    assert problem is not None
    back = from_dict(json.loads(json.dumps(problem.to_dict())))
    assert isinstance(back, InsufficientStorage)
    assert (back.message, back.details, back.exit_code) == (problem.message, problem.details, 1)
    assert back.for_client().message == (
        "No space left on device in the server's exports folder: nothing was published"
    )


def test_duckdb_out_of_room_to_spill_is_a_full_scratch(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{tmp_path / 'spill'}'")
    # The same error as a full disk under the temp folder, on a disk that is not full.
    con.execute("SET memory_limit = '20MB'")
    con.execute("SET max_temp_directory_size = '1MB'")
    con.execute("SET threads = 1")
    with pytest.raises(duckdb.OutOfMemoryException) as raised:
        con.execute("CREATE TABLE t AS SELECT repeat('x', 100) || range AS a FROM range(1000000)")
        con.execute("CREATE TABLE u AS SELECT * FROM t ORDER BY a DESC")
    problem = environment_problem(raised.value, tmp_path, "scratch space", PUBLISHED_NOTHING)
    assert isinstance(problem, InsufficientStorage)
    assert problem.message == (
        f"No space left on device at {tmp_path} (scratch space): nothing was published"
    )


def test_a_home_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    with pytest.raises(EnvironmentProblem) as raised, guard(home, "home"):
        home.mkdir(parents=True, exist_ok=True)
    assert raised.value.message == f"Not a directory at {home} (home): nothing was changed"

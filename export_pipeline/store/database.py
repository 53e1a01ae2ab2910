"""The catalog's database: a SQLite file under home, or PostgreSQL (EXPORT_PIPELINE_CATALOG).

The catalog's SQL is written once, in SQLite's dialect with `?` (or `:name`) parameters; the
PostgreSQL connection (store/postgres.py) translates the placeholders and gives rows that read
by position and by column name, as sqlite3.Row does.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from export_pipeline.errors import InvalidInput, guard


class Cursor(Protocol):
    """What the catalog reads of a statement's result (sqlite3.Cursor, psycopg's Cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection as the catalog uses it: SQL with `?` or `:name` parameters."""

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


class IntegrityError(Exception):
    """A constraint the PostgreSQL catalog refused (sqlite3.IntegrityError's counterpart)."""


# What a refused UNIQUE, PRIMARY KEY or FOREIGN KEY raises, whichever the database.
INTEGRITY_ERRORS = (sqlite3.IntegrityError, IntegrityError)


class Database(Protocol):
    """One catalog database: connections, write transactions, read snapshots, ingest locks."""

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection whose statements each commit on their own."""
        ...

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction, serialised with every other one, committed on success."""
        ...

    def reading(self) -> AbstractContextManager[Connection]:
        """A read transaction: its statements see one snapshot; no writer waits on it."""
        ...

    def collection_lock(self, collection_id: str) -> AbstractContextManager[None]:
        """Held for a whole ingest: one writer per collection across processes and hosts."""
        ...


def open_database(
    home: Path,
    url: str | None,
    sqlite_schema: str,
    sqlite_added: Sequence[tuple[str, str, str]] = (),
) -> Database:
    """The SQLite file under `home` when `url` is None, else the PostgreSQL database;
    `sqlite_added`: (table, column, declaration) added to an older SQLite file."""
    if url is None:
        return SqliteDatabase(home, sqlite_schema, sqlite_added)
    if not url.startswith(("postgresql://", "postgres://")):
        raise InvalidInput(
            "EXPORT_PIPELINE_CATALOG takes a postgresql://user:password@host:port/db URL,"
            f" got {masked(url)}"
        )
    # psycopg is imported only for a PostgreSQL catalog: the SQLite path loads nothing more.
    from export_pipeline.store.postgres import PostgresDatabase

    return PostgresDatabase(url)


_PASSWORD_IN_AUTHORITY = re.compile(r"(://[^/@:]*:)[^/@]*@")
_PASSWORD_IN_QUERY = re.compile(r"(?i)(password=)[^&]*")


def masked(url: str) -> str:
    """The URL with its password (in user:password@ or ?password=) shown as ***."""
    return _PASSWORD_IN_QUERY.sub(r"\1***", _PASSWORD_IN_AUTHORITY.sub(r"\1***@", url))


def catalog_path(home: Path) -> Path:
    """The catalog's SQLite file under a home."""
    return home / "catalog.sqlite"


# Catalog files (path, device, inode) whose schema this process has created or found: a Catalog
# is made for every request and every step of an export, and need not check its schema again.
# A catalog deleted and made anew by a Catalog gets its schema then; an empty file in its
# place (even one reusing the inode) is checked again.
_SCHEMA_READY: set[tuple[str, int, int]] = set()
_SCHEMA_LOCK = threading.Lock()


class SqliteDatabase:
    """The catalog in one SQLite file under home; SQLite serialises concurrent writers."""

    def __init__(self, home: Path, schema: str, added: Sequence[tuple[str, str, str]] = ()) -> None:
        self.path = catalog_path(home)
        if self._file_id() in _SCHEMA_READY:
            return
        with guard(home, "home"):
            home.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            # One transaction: a catalog whose tables all exist costs no write.
            db.executescript(f"BEGIN;{schema}COMMIT;")
            _add_columns(db, added)
        ready = self._file_id()
        if ready[1] != -1:
            with _SCHEMA_LOCK:
                _SCHEMA_READY.add(ready)

    def _file_id(self) -> tuple[str, int, int]:
        """The catalog file's identity; (path, -1, -1) while there is no non-empty file."""
        try:
            found = os.stat(self.path)
        except OSError:
            return (str(self.path), -1, -1)
        if found.st_size == 0:
            return (str(self.path), -1, -1)
        return (str(self.path), found.st_dev, found.st_ino)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode, rows readable by column name."""
        # SQLite says "unable to open database file" or "database or disk is full" without a
        # path: the guard names the catalog and, where it can tell, why.
        with guard(self.path, "catalog"):
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA foreign_keys=ON")
                db.row_factory = sqlite3.Row
                yield db
            finally:
                db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction, committed on success."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: its statements see one snapshot, and no writer waits on it."""
        with self.connect() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("ROLLBACK")

    def collection_lock(self, collection_id: str) -> AbstractContextManager[None]:
        """Nothing more: the collection folder's flock already serialises a home's ingests."""
        return nullcontext()


def _add_columns(db: sqlite3.Connection, added: Sequence[tuple[str, str, str]]) -> None:
    """Columns newer than a catalog file, added where missing (SQLite has no ADD COLUMN IF
    NOT EXISTS; a concurrent opener may add it first, so the check is under the write lock)."""
    for table, column, declaration in added:
        if column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

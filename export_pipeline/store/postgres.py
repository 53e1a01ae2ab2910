"""The catalog in PostgreSQL through psycopg 3: connections, locks and versioned migrations.

Write transactions are serialised by a transaction-level advisory lock, as SQLite's
`BEGIN IMMEDIATE` serialises them; an ingest holds a session-level advisory lock on its
collection, so two ingests into one collection apply one after the other, whichever hosts
run them. Migrations run under an advisory lock too, so processes starting together apply
each one exactly once.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg.rows import RowMaker

from export_pipeline.errors import CHANGED_NOTHING, EnvironmentProblem, InvalidInput
from export_pipeline.store.database import IntegrityError, masked

# Advisory lock keys (PostgreSQL scopes them to the database): the catalog's writers, its
# migrations, and the class (first half of a two-key lock) of per-collection ingest locks.
_WRITE_LOCK = 7_401_000_001
_MIGRATION_LOCK = 7_401_000_002
_INGEST_LOCK_CLASS = 740_100

# Columns compared or sorted as text use the "C" collation, so names and timestamps sort by
# their bytes, as in SQLite, whatever the database's locale.
_C = 'TEXT COLLATE "C"'
MIGRATIONS: list[str] = [
    f"""
CREATE TABLE namespaces (id {_C} PRIMARY KEY, name {_C} NOT NULL UNIQUE, created_at {_C} NOT NULL);
CREATE TABLE collections (
    id {_C} PRIMARY KEY,
    namespace_id {_C} NOT NULL REFERENCES namespaces(id),
    name {_C} NOT NULL,
    vector_indexes TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    segments TEXT NOT NULL DEFAULT '[]',
    document_count BIGINT NOT NULL DEFAULT 0,
    created_at {_C} NOT NULL,
    updated_at {_C} NOT NULL,
    UNIQUE (namespace_id, name));
CREATE TABLE retired_segments (path {_C} PRIMARY KEY, retired_at DOUBLE PRECISION NOT NULL);
CREATE TABLE exports (
    id {_C} PRIMARY KEY,
    namespace_id {_C} NOT NULL,
    collection_id {_C} NOT NULL,
    storage TEXT NOT NULL,
    prefix TEXT NOT NULL,
    exported_at {_C} NOT NULL);
CREATE TABLE operations (
    id {_C} PRIMARY KEY,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    pid_started TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    storage TEXT,
    paths TEXT NOT NULL DEFAULT '[]',
    storage_prefixes TEXT NOT NULL DEFAULT '[]',
    segments TEXT NOT NULL DEFAULT '[]');
CREATE TABLE api_keys (
    id {_C} PRIMARY KEY,
    name TEXT,
    lookup {_C} NOT NULL,
    hash TEXT NOT NULL,
    created_at {_C} NOT NULL,
    last_used_at {_C},
    revoked_at {_C});
CREATE INDEX api_keys_lookup ON api_keys (lookup);
CREATE TABLE api_key_namespaces (
    key_id {_C} NOT NULL REFERENCES api_keys(id),
    namespace_id {_C} NOT NULL REFERENCES namespaces(id),
    position BIGINT NOT NULL,
    PRIMARY KEY (key_id, namespace_id));
""",
    # 2: the segments a running export reads (store/pins.py, docs/contract.md D5)
    "ALTER TABLE operations ADD COLUMN pins TEXT NOT NULL DEFAULT '[]';",
    # 3: change history (M1-M6): the versions an incremental export may start from, and
    # each version's history file.
    f"""
ALTER TABLE collections ADD COLUMN history_from BIGINT;
CREATE TABLE history (
    collection_id {_C} NOT NULL,
    version BIGINT NOT NULL,
    path TEXT NOT NULL,
    written_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (collection_id, version));
""",
]

# Databases (by URL) this process has found or brought up to date: a Catalog is made for
# every request and step, and need not ask again.
_MIGRATED: set[str] = set()
_MIGRATED_LOCK = threading.Lock()


class Row(tuple[Any, ...]):
    """A row readable by position and by column name, as sqlite3.Row is."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._index[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        """The column names, in order (so dict(row) works)."""
        return list(self._index)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    """psycopg's row factory for Row: the column names are looked up once per result."""
    index = {column.name: at for at, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._index = index
        return row

    return make


_NAMED = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's `?` and `:name` parameters as psycopg's `%s` and `%(name)s`."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))


class PostgresConnection:
    """A psycopg connection speaking the catalog's SQLite-style parameters."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        """Run one statement; a refused constraint raises database.IntegrityError."""
        try:
            if not parameters:
                return self.connection.execute(sql)
            return self.connection.execute(translate(sql), parameters)
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityError(str(exc).split("\n")[0]) from None

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> psycopg.Cursor[Any]:
        """Run one statement per parameter set."""
        cursor = self.connection.cursor()
        try:
            cursor.executemany(translate(sql), list(parameters))
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityError(str(exc).split("\n")[0]) from None
        return cursor


class PostgresDatabase:
    """The catalog in a PostgreSQL database, its schema migrated on first use."""

    def __init__(self, url: str, *, migrated: bool = True) -> None:
        self.url = url
        self.name = masked(url)
        # a server that does not answer fails in 10 s, unless the URL says otherwise
        self.options: dict[str, Any] = {}
        if "connect_timeout" not in _check(url):
            self.options["connect_timeout"] = 10
        if migrated and url not in _MIGRATED:
            migrate(self)
            with _MIGRATED_LOCK:
                _MIGRATED.add(url)

    @contextmanager
    def connect(self) -> Iterator[PostgresConnection]:
        """A connection in autocommit mode. Errors name the database with its password
        masked, and drop psycopg's own exception, whose text may hold the URL."""
        try:
            connection = psycopg.connect(
                self.url, autocommit=True, row_factory=_rows, **self.options
            )
        except psycopg.OperationalError as exc:
            raise self._problem(exc) from None
        except psycopg.ProgrammingError as exc:  # an option libpq refuses
            raise _unusable(self.url, exc) from None
        with connection:
            try:
                yield PostgresConnection(connection)
            except psycopg.OperationalError as exc:  # the server went away, or stopped us
                raise self._problem(exc) from None

    def _problem(self, exc: psycopg.Error) -> EnvironmentProblem:
        cause = _cause(self.url, exc)
        return EnvironmentProblem.of(cause, self.name, None, "catalog", CHANGED_NOTHING)

    @contextmanager
    def transaction(self) -> Iterator[PostgresConnection]:
        """A transaction serialised with every other writer, committed on success."""
        with self.connect() as db:
            db.execute("BEGIN")
            try:
                # One writer at a time, as with SQLite's BEGIN IMMEDIATE. READ COMMITTED: each
                # statement after the lock sees every write committed before it was granted.
                db.execute(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK})")
                yield db
            except BaseException:
                _rollback(db)
                raise
            db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[PostgresConnection]:
        """A read-only snapshot (REPEATABLE READ): its statements see one state of the catalog."""
        with self.connect() as db:
            db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield db
            finally:
                _rollback(db)

    @contextmanager
    def collection_lock(self, collection_id: str) -> Iterator[None]:
        """The collection's ingest lock, held by this session until the block ends."""
        with self.connect() as db:
            # A session lock: it is released when the connection closes, also when this
            # process dies, so a killed ingest never blocks the next one.
            db.execute(
                f"SELECT pg_advisory_lock({_INGEST_LOCK_CLASS}, hashtext(?))", (collection_id,)
            )
            yield


def migrate(database: PostgresDatabase) -> list[int]:
    """Apply the migrations the database lacks, in order, under an advisory lock; the
    versions this call applied (none when another process got there first)."""
    with database.connect() as db:
        if _version(db) >= len(MIGRATIONS):
            return []  # up to date: no lock taken, nothing written
        applied: list[int] = []
        db.execute("BEGIN")
        try:
            db.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in db.execute("SELECT version FROM schema_version")}
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    db.execute(sql)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    applied.append(version)
        except BaseException:
            _rollback(db)
            raise
        db.execute("COMMIT")
        return applied


def _version(db: PostgresConnection) -> int:
    table = db.execute("SELECT to_regclass('schema_version')").fetchone()
    if table is None or table[0] is None:
        return 0
    latest = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return 0 if latest is None else int(latest[0])


def _rollback(db: PostgresConnection) -> None:
    # A connection the server dropped cannot roll back; closing it discards the transaction.
    if not (db.connection.closed or db.connection.broken):
        db.execute("ROLLBACK")


def _check(url: str) -> dict[str, Any]:
    """The URL's connection options; a InvalidInput for a URL libpq cannot use."""
    try:
        options = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise _unusable(url, exc) from None
    port = options.get("port")
    if port is not None and not re.fullmatch(r"[0-9]+(,[0-9]+)*", str(port)):
        raise InvalidInput(
            f"EXPORT_PIPELINE_CATALOG {masked(url)} is not a usable PostgreSQL URL:"
            f" its port {port!r} is not a number"
        )
    return options


def _unusable(url: str, exc: psycopg.Error) -> InvalidInput:
    return InvalidInput(
        f"EXPORT_PIPELINE_CATALOG {masked(url)} is not a usable PostgreSQL URL: {_cause(url, exc)}"
    )


def _cause(url: str, exc: psycopg.Error) -> str:
    """psycopg's first line about `exc`, never showing the URL or its password."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = (lines[0] if lines else type(exc).__name__).replace(url, masked(url))
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    return cause.replace(str(password), "***") if password else cause

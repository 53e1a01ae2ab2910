"""Namespaces and collections (docs/contract.md D1, D2): a SQLite file under home, or PostgreSQL."""

from __future__ import annotations

import json
import re
import secrets
import string
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from export_pipeline.errors import ConflictError, InvalidInput, NotFoundError
from export_pipeline.store.database import (
    INTEGRITY_ERRORS,
    Connection,
    Database,
    catalog_path,
    open_database,
)

NAME = re.compile(r"[A-Za-z0-9_-]{3,100}")
INDEX_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
NAMESPACE_ID = re.compile(r"ns_[a-z0-9]{12}")
COLLECTION_ID = re.compile(r"col_[a-z0-9]{10}")
MAX_DIMENSIONS = 65_536

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id TEXT PRIMARY KEY,
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    name TEXT NOT NULL,
    vector_indexes TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    segments TEXT NOT NULL DEFAULT '[]',
    document_count INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    history_from INTEGER,
    UNIQUE (namespace_id, name));
CREATE TABLE IF NOT EXISTS history (
    collection_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    written_at REAL NOT NULL,
    PRIMARY KEY (collection_id, version));
CREATE TABLE IF NOT EXISTS retired_segments (path TEXT PRIMARY KEY, retired_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY,
    namespace_id TEXT NOT NULL,
    collection_id TEXT NOT NULL,
    storage TEXT NOT NULL,
    prefix TEXT NOT NULL,
    exported_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_started TEXT NOT NULL,
    started_at REAL NOT NULL,
    storage TEXT,
    paths TEXT NOT NULL DEFAULT '[]',
    storage_prefixes TEXT NOT NULL DEFAULT '[]',
    segments TEXT NOT NULL DEFAULT '[]',
    pins TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT,
    lookup TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT);
CREATE INDEX IF NOT EXISTS api_keys_lookup ON api_keys (lookup);
CREATE TABLE IF NOT EXISTS api_key_namespaces (
    key_id TEXT NOT NULL REFERENCES api_keys(id),
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (key_id, namespace_id));
"""
# Columns added since a table was first created: a home made before gets them on opening
# (in PostgreSQL, MIGRATIONS adds them).
_ADDED_COLUMNS = [
    ("operations", "pins", "TEXT NOT NULL DEFAULT '[]'"),
    ("collections", "history_from", "INTEGER"),
]


def new_id(prefix: str, length: int) -> str:
    """`prefix` + `length` random lowercase alphanumerics."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def utc_now() -> str:
    """Fixed-width ISO-8601 UTC timestamp with microseconds, e.g. 2026-11-28T18:58:19.123456Z."""
    return utc_timestamp(datetime.now(UTC))


def utc_timestamp(moment: datetime) -> str:
    """`moment` (in UTC) in `utc_now`'s fixed-width format, so timestamps compare as strings."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VectorIndex(BaseModel):
    """A collection's vector index (D2)."""

    name: str
    dimensions: int = Field(ge=1, le=MAX_DIMENSIONS)
    type: Literal["dense", "sparse"] = "dense"
    datatype: Literal["float32"] = "float32"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not INDEX_NAME.fullmatch(value):
            raise ValueError("vector index names match [A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
        return value


class Namespace(BaseModel):
    """D1: every collection, document and export lives in exactly one namespace."""

    id: str
    name: str


class Collection(BaseModel):
    """D2 plus the current snapshot of its stored segments."""

    id: str
    name: str
    namespace_id: str
    vector_indexes: list[VectorIndex]
    version: int
    segments: list[str]
    document_count: int
    # M4: the oldest version changed_since may name (history covers every later one)
    history_from: int = 0


class Catalog:
    """CRUD over namespaces and collections, in SQLite under home or in PostgreSQL."""

    def __init__(self, home: Path, url: str | None = None) -> None:
        self.home = home
        self.path = catalog_path(home)  # the SQLite file (unused with a PostgreSQL catalog)
        self.database: Database = open_database(home, url, _SCHEMA, _ADDED_COLUMNS)

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection whose statements each commit on their own (no write lock)."""
        return self.database.connect()

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction, serialised with every other writer, committed on success."""
        return self.database.transaction()

    def reading(self) -> AbstractContextManager[Connection]:
        """A read transaction: its statements see one snapshot, and no writer waits on it."""
        return self.database.reading()

    def check(self) -> None:
        """Raise if the catalog cannot be read."""
        with self.connect() as db:
            db.execute("SELECT count(*) FROM namespaces").fetchone()

    def create_namespace(self, name: str) -> Namespace:
        """Create a namespace with a unique name."""
        _check_name("namespace", name, NAMESPACE_ID)
        namespace = Namespace(id=new_id("ns_", 12), name=name)
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO namespaces VALUES (?, ?, ?)",
                    (namespace.id, name, utc_now()),
                )
        except INTEGRITY_ERRORS:
            raise ConflictError(f"namespace {name!r} already exists") from None
        return namespace

    def namespace(self, identifier: str) -> Namespace:
        """The namespace with this id or name."""
        with self.connect() as db:
            row = db.execute(
                "SELECT id, name FROM namespaces WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                (identifier, identifier, identifier),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"namespace {identifier!r} not found")
        return Namespace(id=row["id"], name=row["name"])

    def create_collection(
        self, namespace: Namespace, name: str, vector_indexes: list[VectorIndex]
    ) -> Collection:
        """Create a collection, its name unique within the namespace."""
        _check_name("collection", name, COLLECTION_ID)
        names = [index.name for index in vector_indexes]
        if len(set(names)) != len(names):
            raise InvalidInput("vector index names must be unique within a collection")
        now = utc_now()
        collection_id = new_id("col_", 10)
        indexes_json = json.dumps([index.model_dump() for index in vector_indexes])
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO collections (id, namespace_id, name, vector_indexes,"
                    " created_at, updated_at, history_from) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (collection_id, namespace.id, name, indexes_json, now, now),
                )
        except INTEGRITY_ERRORS:
            raise ConflictError(
                f"collection {name!r} already exists in namespace {namespace.name!r}"
            ) from None
        return self.collection(namespace, collection_id)

    def collection(self, namespace: Namespace, identifier: str) -> Collection:
        """The collection with this id or name, looked up inside `namespace` only."""
        with self.connect() as db:
            row = db.execute(
                "SELECT * FROM collections WHERE namespace_id = ? AND (id = ? OR name = ?)"
                " ORDER BY id = ? DESC",
                (namespace.id, identifier, identifier, identifier),
            ).fetchone()
        if row is None:
            raise NotFoundError(
                f"collection {identifier!r} not found in namespace {namespace.name!r}"
            )
        return _collection(row)

    def collections(self, namespace: Namespace) -> list[Collection]:
        """The namespace's collections, by name."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT * FROM collections WHERE namespace_id = ? ORDER BY name", (namespace.id,)
            ).fetchall()
        return [_collection(row) for row in rows]


def _collection(row: Any) -> Collection:
    return Collection(
        id=row["id"],
        name=row["name"],
        namespace_id=row["namespace_id"],
        vector_indexes=[VectorIndex(**index) for index in json.loads(row["vector_indexes"])],
        version=row["version"],
        segments=json.loads(row["segments"]),
        document_count=row["document_count"],
        # None: a collection made before history was kept, covered from its next change
        history_from=row["version"] if row["history_from"] is None else row["history_from"],
    )


def _check_name(kind: str, name: str, id_pattern: re.Pattern[str]) -> None:
    if not NAME.fullmatch(name):
        raise InvalidInput(f"{kind} names match [A-Za-z0-9_-]{{3,100}}, got {name!r}")
    if id_pattern.fullmatch(name):
        # A name shaped like an id would make `id or name` lookups ambiguous.
        raise InvalidInput(f"{kind} name {name!r} looks like a {kind} id; choose another")

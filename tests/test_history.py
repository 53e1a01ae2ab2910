"""Change history (M1-M4): one file per collection version, the ids it changed, kept for
EXPORT_PIPELINE_HISTORY_RETENTION_SECONDS; on SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import make_collection, write_jsonl

from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store
from export_pipeline.store.documents import DocumentStore


@pytest.fixture
def settings(catalog_settings: Settings) -> Settings:
    """Every test here runs with the catalog in SQLite and in PostgreSQL."""
    return catalog_settings


def history(store: Store, col: Collection) -> dict[int, list[tuple[str, str]]]:
    """Each listed version's (document_id, change) rows, as read from its file."""
    with store.catalog.reading() as db:
        rows = db.execute(
            "SELECT version, path FROM history WHERE collection_id = ? ORDER BY version",
            (col.id,),
        ).fetchall()
    return {
        row[0]: [(r["document_id"], r["change"]) for r in pq.read_table(row[1]).to_pylist()]
        for row in rows
    }


def history_files(store: Store, col: Collection) -> list[Path]:
    return sorted((store.documents.collection_dir(col) / "history").glob("*.parquet"))


def ingest(store: Store, ns: Namespace, col: Collection, docs: list[Any], upsert: bool = True):
    source = write_jsonl(store.settings.home_dir.parent / "in", docs)
    return store.ingest(ns.id, col.id, source, upsert=upsert)


def fresh(store: Store, ns: Namespace, col: Collection) -> Collection:
    return store.catalog.collection(ns, col.id)


def test_M1_every_ingest_records_the_ids_it_inserted_or_replaced(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": d} for d in ("c", "a", "b")])
    assert history(store, col) == {1: [("a", "upsert"), ("b", "upsert"), ("c", "upsert")]}
    ingest(store, ns, col, [{"document_id": "b", "x": 1}, {"document_id": "d"}])
    assert history(store, col)[2] == [("b", "upsert"), ("d", "upsert")]
    assert fresh(store, ns, col).history_from == 0
    assert len(history_files(store, col)) == 2


def test_M1_a_failed_ingest_leaves_no_history(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = make_collection(store, [{"document_id": "a"}])
    before = history_files(store, col)

    def swap_fails(*args: Any) -> None:
        assert len(history_files(store, col)) == len(before) + 1  # written, not yet listed
        raise RuntimeError("the catalog went away")

    monkeypatch.setattr(DocumentStore, "_swap", swap_fails)
    with pytest.raises(RuntimeError):
        ingest(store, ns, col, [{"document_id": "b"}])
    assert history_files(store, col) == before
    assert list(history(store, col)) == [1]
    assert store.operations.records() == []


def test_M4_history_past_retention_goes_at_the_next_change(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": "a"}])
    ingest(store, ns, col, [{"document_id": "b"}])
    short = Store(store.settings.model_copy(update={"history_retention_seconds": 0}))
    ingest(short, ns, col, [{"document_id": "c"}])
    now = fresh(store, ns, col)
    assert now.version == 3
    # versions 1 and 2 were written before this change, so older than 0 seconds: gone;
    # the history covers only version 3, so changed_since may name 2 or 3
    assert list(history(store, col)) == [3]
    assert now.history_from == 2
    assert len(history_files(store, col)) == 1


@pytest.mark.parametrize("catalog_settings", ["sqlite"], indirect=True)
def test_M4_an_older_sqlite_catalog_gets_the_history_column(settings: Settings) -> None:
    home = settings.home_dir
    home.mkdir(parents=True)
    with sqlite3.connect(home / "catalog.sqlite") as db:  # as the version before history
        db.executescript(
            "CREATE TABLE namespaces (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
            " created_at TEXT NOT NULL);"
            "CREATE TABLE collections (id TEXT PRIMARY KEY, namespace_id TEXT NOT NULL,"
            " name TEXT NOT NULL, vector_indexes TEXT NOT NULL,"
            " version INTEGER NOT NULL DEFAULT 0, segments TEXT NOT NULL DEFAULT '[]',"
            " document_count INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,"
            " updated_at TEXT NOT NULL, UNIQUE (namespace_id, name));"
            "INSERT INTO namespaces VALUES ('ns_000000000000', 'old-ns', 'x');"
            "INSERT INTO collections (id, namespace_id, name, vector_indexes, version,"
            " created_at, updated_at) VALUES ('col_0000000000', 'ns_000000000000', 'old',"
            " '[]', 4, 'x', 'x');"
        )
    store = Store(settings)
    ns = store.catalog.namespace("old-ns")
    col = store.catalog.collection(ns, "old")
    assert col.history_from == 4  # no history before this version
    ingest(store, ns, col, [{"document_id": "a"}])
    assert fresh(store, ns, col).history_from == 4
    assert list(history(store, col)) == [5]

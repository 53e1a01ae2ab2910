"""Deletes (M2, M3): by ids (a file, stdin) or by filter, as one new version, all or
nothing; exports before see the documents, exports after never do. Both catalogs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import export_job, files_under, make_collection, read_json_lines

from export_pipeline.export import ExportLifecycle
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store
from export_pipeline.store.documents import DocumentStore

DOCS = [{"document_id": f"d{n:02d}", "n": n, "even": n % 2 == 0} for n in range(12)]


@pytest.fixture
def settings(catalog_settings: Settings) -> Settings:
    """Every test here runs with the catalog in SQLite and in PostgreSQL."""
    return catalog_settings


@pytest.fixture
def numbers(store: Store) -> tuple[Namespace, Collection]:
    """d00..d11 with `n` and `even`, in two segments (two ingests)."""
    ns, col = make_collection(store, DOCS[:6], name="numbers")
    store.ingest(ns.id, col.id, _jsonl(store, DOCS[6:]))
    return ns, store.catalog.collection(ns, col.id)


def _jsonl(store: Store, docs: list[dict[str, Any]]) -> Path:
    from helpers import write_jsonl

    return write_jsonl(store.settings.home_dir.parent / "in", docs)


def exported_ids(store: Store, ns: Namespace, col: Collection) -> list[str]:
    result = export_job(ns.id, col.id, {"format": "json"}, settings=store.settings)
    return [doc["document_id"] for doc in read_json_lines(result.response.s3_path)]


def ids_file(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def deleted_history(store: Store, col: Collection, version: int) -> list[dict[str, str]]:
    with store.catalog.reading() as db:
        (path,) = db.execute(
            "SELECT path FROM history WHERE collection_id = ? AND version = ?", (col.id, version)
        ).fetchone()
    return pq.read_table(path).to_pylist()


def test_M2_delete_by_ids_file_makes_a_new_version(
    cli: Any, store: Store, numbers: tuple[Namespace, Collection], tmp_path: Path
) -> None:
    ns, col = numbers
    assert exported_ids(store, ns, col) == [d["document_id"] for d in DOCS]
    code, out = cli(
        "delete", "numbers", "-n", ns.name, "--ids", str(ids_file(tmp_path, ["d07", "d01"]))
    )
    assert code == 0, out
    assert out == {"deleted": 2, "not_found": 0, "document_count": 10, "version": 3}
    expected = [d["document_id"] for d in DOCS if d["document_id"] not in ("d01", "d07")]
    assert exported_ids(store, ns, col) == expected
    assert deleted_history(store, col, 3) == [
        {"document_id": "d01", "change": "delete"},
        {"document_id": "d07", "change": "delete"},
    ]


def test_M2_delete_by_ids_on_stdin_and_M3_not_found_counted(
    cli: Any, store: Store, numbers: tuple[Namespace, Collection]
) -> None:
    ns, col = numbers
    stdin = "d03\r\nnope\n\nd03\nd10\nalso-nope\n"  # CRLF, a blank line and a repeat
    code, out = cli("delete", col.id, "-n", ns.id, "--ids", "-", stdin=stdin)
    assert code == 0, out
    assert out == {"deleted": 2, "not_found": 2, "document_count": 10, "version": 3}
    assert "d03" not in exported_ids(store, ns, col)


def test_M3_deleting_only_missing_ids_answers_without_a_new_version(
    cli: Any, store: Store, numbers: tuple[Namespace, Collection]
) -> None:
    ns, col = numbers
    before = files_under(store.documents.collection_dir(col))
    code, out = cli("delete", "numbers", "-n", ns.name, "--ids", "-", stdin="x\ny\n")
    assert code == 0, out
    assert out == {"deleted": 0, "not_found": 2, "document_count": 12, "version": 2}
    assert store.catalog.collection(ns, col.id).version == 2
    assert files_under(store.documents.collection_dir(col)) == before


def test_M2_delete_by_filter(cli: Any, store: Store, numbers: tuple[Namespace, Collection]) -> None:
    ns, col = numbers
    condition = {"AND": [{"field": "even", "operator": "eq", "value": True},
                         {"field": "n", "operator": "gte", "value": 4}]}  # fmt: skip
    code, out = cli("delete", "numbers", "-n", ns.name, "--filter", json.dumps(condition))
    assert code == 0, out
    assert out == {"deleted": 4, "not_found": 0, "document_count": 8, "version": 3}
    left = ["d00", "d01", "d02", "d03", "d05", "d07", "d09", "d11"]
    assert exported_ids(store, ns, col) == left


@pytest.mark.parametrize(
    "condition",
    [
        {"AND": [{"field": "n", "operator": "between", "value": 1}]},  # no such operator
        {"AND": [{"field": "bad path!", "operator": "eq", "value": 1}]},  # P1
        {"AND": [{"field": "n", "operator": "in", "value": []}]},  # F4
        [1, 2],
        {},  # no condition: would delete everything
        {"AND": [], "case_sensitive": False},
    ],
)
def test_M2_a_refused_filter_changes_nothing(
    cli: Any, store: Store, numbers: tuple[Namespace, Collection], condition: Any
) -> None:
    ns, col = numbers
    before = files_under(store.settings.home_dir / "collections")
    code, out = cli("delete", "numbers", "-n", ns.name, "--filter", json.dumps(condition))
    assert code == 2, out
    assert out["error"]["type"] == "ValidationError"
    assert store.catalog.collection(ns, col.id) == col
    assert files_under(store.settings.home_dir / "collections") == before


def test_M2_ids_and_filter_together_or_neither_are_refused(
    cli: Any, numbers: tuple[Namespace, Collection]
) -> None:
    ns, _ = numbers
    code, _ = cli("delete", "numbers", "-n", ns.name)
    assert code == 2
    code, _ = cli("delete", "numbers", "-n", ns.name, "--ids", "-", "--filter", "{}")
    assert code == 2


def test_M2_a_delete_failing_midway_changes_nothing_and_leaves_no_files(
    store: Store, numbers: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = numbers
    before = files_under(store.settings.home_dir / "collections")

    def swap_fails(*args: Any) -> None:
        # the rewritten segment and the history file exist, not yet listed
        assert len(files_under(store.settings.home_dir / "collections")) > len(before)
        raise RuntimeError("the catalog went away")

    monkeypatch.setattr(DocumentStore, "_swap", swap_fails)
    with pytest.raises(RuntimeError):
        store.delete(ns.id, col.id, ids=["d02", "d08"])
    monkeypatch.undo()
    assert store.catalog.collection(ns, col.id) == col
    assert files_under(store.settings.home_dir / "collections") == before
    assert store.operations.records() == []
    assert exported_ids(store, ns, col) == [d["document_id"] for d in DOCS]


def test_M2_an_export_planned_before_a_delete_still_sees_the_documents(
    store: Store, numbers: tuple[Namespace, Collection]
) -> None:
    ns, col = numbers
    lifecycle = ExportLifecycle(store.settings, store)
    plan = lifecycle.plan(ns.id, col.id, {"format": "json"})
    assert store.delete(ns.id, col.id, ids=["d00", "d11"]).deleted == 2
    selection = lifecycle.select(plan)
    parts = [lifecycle.write_shard(plan, selection, shard) for shard in plan.shards]
    result = lifecycle.publish(plan, lifecycle.assemble(plan, selection, parts))
    lifecycle.cleanup(plan)
    earlier = [doc["document_id"] for doc in read_json_lines(result.response.s3_path)]
    assert earlier == [d["document_id"] for d in DOCS]
    assert result.response.version == 2
    assert exported_ids(store, ns, col) == [d["document_id"] for d in DOCS[1:11]]


def test_M2_deleting_every_document_leaves_an_empty_collection(
    store: Store, numbers: tuple[Namespace, Collection]
) -> None:
    ns, col = numbers
    result = store.delete(
        ns.id, col.id, filter={"AND": [{"field": "n", "operator": "gte", "value": 0}]}
    )
    assert (result.deleted, result.document_count, result.version) == (12, 0, 3)
    assert exported_ids(store, ns, col) == []
    store.ingest(ns.id, col.id, _jsonl(store, DOCS[:1]))
    assert exported_ids(store, ns, col) == ["d00"]

"""Publishing: the export's folder and manifest (W6), nothing left on failure (W7), the response
(A1), the seed's request, and validation before any data is read."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from exports import FORMATS, export_dirs, run, scratch_leftovers
from helpers import (
    NUMBERED,
    RESPONSE_FIELDS,
    SEED_REQUEST,
    VECTOR_DOCS,
    export_job,
    local_path,
    make_collection,
    read_json_lines,
    read_parquet,
)

from export_pipeline.engine.vectors_writer import VectorsWriter
from export_pipeline.errors import (
    EnvironmentProblem,
    ExportPipelineError,
    InvalidInput,
    NotFoundError,
)
from export_pipeline.settings import Settings
from export_pipeline.storage import local as local_storage
from export_pipeline.store import Collection, Namespace, Store


def test_W6_export_id_folder_and_manifest(
    store: Store, vectored: tuple[Namespace, Collection]
) -> None:
    ns, col = vectored
    request = {
        "format": "csv",
        "include_vectors": True,
        "select_fields": ["nothing"],
        "sample_size": 3,
    }
    before = datetime.now(UTC).replace(microsecond=0)
    result = run(store, ns, col, request)
    folder = local_path(result.response.s3_path).parent
    export_id = folder.name
    assert re.fullmatch(r"exp_[a-z0-9]{16}", export_id)
    assert folder == store.settings.home_dir / "exports" / ns.id / "exports" / col.id / export_id
    assert sorted(p.name for p in folder.iterdir()) == [
        "documents.csv",
        "manifest.json",
        "my_vec-col_vectors.csv",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["export_id"] == export_id
    assert manifest["version"] == manifest["collection"]["version"] == col.version == 1
    assert manifest["request"] == request
    assert manifest["document_count"] == 3
    assert type(manifest["sample_seed"]) is int
    assert any("nothing" in w for w in manifest["warnings"])
    by_name = {f["name"]: f for f in manifest["files"]}
    assert set(by_name) == {"documents.csv", "my_vec-col_vectors.csv"}
    for name, entry in by_name.items():
        data = (folder / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == 3
        assert entry["columns"]
    for key in ("planned_at", "exported_at"):
        stamp = datetime.fromisoformat(manifest[key])
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
        assert before <= stamp <= datetime.now(UTC)
    assert datetime.fromisoformat(manifest["exported_at"]) == result.response.exported_at


def test_W6_exports_never_overwrite_each_other(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    first = run(store, ns, col, {"format": "json"})
    first_bytes = {
        p.name: p.read_bytes() for p in local_path(first.response.s3_path).parent.iterdir()
    }
    second = run(store, ns, col, {"format": "json"})
    third = run(store, ns, col, {"format": "json", "sample_size": 1})
    folders = {local_path(r.response.s3_path).parent for r in (first, second, third)}
    assert len(folders) == 3
    assert export_dirs(store.settings) == sorted(folders)
    assert {
        p.name: p.read_bytes() for p in local_path(first.response.s3_path).parent.iterdir()
    } == first_bytes


def test_W6_W7_no_scratch_left_after_success(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    run(store, ns, col, {"include_vectors": True})
    assert scratch_leftovers(store.settings) == []
    staging = store.settings.home_dir / "exports" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def assert_nothing_published(settings: Settings) -> None:
    assert export_dirs(settings) == []
    assert scratch_leftovers(settings) == []
    staging = settings.home_dir / "exports" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_W7_failed_publish_rename_leaves_nothing(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people

    def broken_rename(src: Any, dst: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(local_storage.os, "rename", broken_rename)
    with pytest.raises(ExportPipelineError, match="OSError: disk on fire"):
        run(store, ns, col, {"format": "csv", "include_vectors": True})
    assert_nothing_published(store.settings)


def test_W7_failure_after_first_file_copied_leaves_nothing(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people
    real_move = local_storage.shutil.move
    calls: list[Any] = []

    def move_then_fail(src: Any, dst: Any) -> Any:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("no space left")
        return real_move(src, dst)

    monkeypatch.setattr(local_storage.shutil, "move", move_then_fail)
    with pytest.raises(ExportPipelineError, match="OSError: no space left"):
        run(store, ns, col, {"format": "json", "include_vectors": True})
    assert len(calls) == 2
    assert_nothing_published(store.settings)


def test_W7_failed_write_step_leaves_nothing(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people

    def broken_write(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("writer crashed")

    monkeypatch.setattr(VectorsWriter, "write", broken_write)
    with pytest.raises(ExportPipelineError, match="RuntimeError: writer crashed"):
        run(store, ns, col, {"format": "parquet", "include_vectors": True})
    assert_nothing_published(store.settings)


def test_W7_unwritable_storage_root_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage root should be")
    settings = Settings(home=tmp_path / "home", storage=blocker.as_uri())
    store = Store(settings)
    ns, col = make_collection(store, NUMBERED[:3])
    with pytest.raises(EnvironmentProblem, match=r"^Not a directory at .*nothing was published$"):
        export_job(ns.id, col.id, {"format": "json"}, settings=settings)
    assert scratch_leftovers(settings) == []
    assert blocker.read_text() == "a file where the storage root should be"


def test_W7_existing_export_folder_is_not_overwritten(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people
    first = run(store, ns, col, {"format": "json"})
    folder = local_path(first.response.s3_path).parent
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr("export_pipeline.engine.start.new_id", lambda prefix, n: folder.name)
    with pytest.raises(ExportPipelineError, match="already exists"):
        run(store, ns, col, {"format": "json", "sample_size": 1})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == original
    assert scratch_leftovers(store.settings) == []


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("include_vectors", [False, True])
def test_A1_response_fields(
    store: Store, vectored: tuple[Namespace, Collection], fmt: str, include_vectors: bool
) -> None:
    ns, col = vectored
    before = datetime.now(UTC).replace(microsecond=0)
    result = run(store, ns, col, {"format": fmt, "include_vectors": include_vectors})
    response = result.response
    after = datetime.now(UTC)
    assert set(response.model_dump()) == RESPONSE_FIELDS
    assert set(json.loads(response.model_dump_json())) == RESPONSE_FIELDS
    assert response.version == col.version == result.manifest["version"]
    assert response.format == fmt
    assert response.document_count == len(VECTOR_DOCS)
    documents = local_path(response.s3_path)
    assert response.s3_path.startswith("file://")
    assert local_path(response.download_url) == documents
    assert response.file_size_bytes == documents.stat().st_size == os.path.getsize(documents)
    assert response.exported_at.utcoffset() is not None
    assert response.exported_at.utcoffset().total_seconds() == 0
    assert before <= response.exported_at <= after
    if include_vectors:
        assert local_path(response.vectors_s3_path).exists()
        assert response.file_size_bytes != local_path(response.vectors_s3_path).stat().st_size
    else:
        assert response.vectors_s3_path is None and response.vectors_download_url is None
        assert not list(documents.parent.glob("*_vectors.*"))


def test_R1_A1_empty_request_exports_parquet_without_vectors(
    store: Store, vectored: tuple[Namespace, Collection]
) -> None:
    ns, col = vectored
    for request in (None, {}):
        result = run(store, ns, col, request)
        assert result.response.format == "parquet"
        assert local_path(result.response.s3_path).name == "documents.parquet"
        assert result.response.vectors_s3_path is None
        assert read_parquet(result.response.s3_path).num_rows == len(VECTOR_DOCS)


def test_D2_A1_collection_addressed_by_id_or_name(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    for ns_key in (ns.id, ns.name):
        for col_key in (col.id, col.name):
            result = export_job(ns_key, col_key, {"format": "json"}, settings=store.settings)
            assert result.response.document_count == len(NUMBERED)
            assert f"/{ns.id}/exports/{col.id}/" in result.response.s3_path


SEED_PEOPLE = [
    # (id, name, age, status, role, department, location) -> matches the seed filter?
    ("j01", "John", 35, "active", "user", "Eng", "office", True),
    ("j02", "John", 30, "inactive", "admin", "Sales", "office", True),
    ("j03", "john", 40, "active", "user", "Eng", "office", False),  # case_sensitive
    ("j04", "John", 29, "active", "user", "Eng", "office", False),  # age
    ("j05", "John", 50, "inactive", "user", "Eng", "office", False),  # OR fails
    ("j06", "John", 45, "active", "user", "HR", "office", False),  # NOT department
    ("j07", "John", 45, "active", "user", "Eng", "remote", False),  # NOT location
    ("j08", "John", 45, "active", "user", "Eng", "Remote", True),  # case_sensitive
    ("j09", "John", "45", "active", "user", "Eng", "office", False),  # F6: no coercion
    ("j10", "John", None, "active", "admin", "Eng", "office", False),  # null age
    ("j11", "John", 31.5, "retired", "admin", None, "office", True),  # null department
    ("j12", "Jane", 33, "active", "admin", "Eng", "office", False),
    ("j13", "John", 60, "ACTIVE", "user", "Eng", "office", False),  # case_sensitive OR
    ("j14", "John", 30.0, "active", "user", "hr", "office", True),  # case_sensitive NOT
]


def test_R_F_seed_example_request_runs_verbatim(store: Store) -> None:
    docs = []
    for doc_id, name, age, status, role, department, location, _ in SEED_PEOPLE:
        doc = {
            "document_id": doc_id,
            "name": name,
            "status": status,
            "role": role,
            "location": location,
            "metadata": {"title": f"T-{doc_id}", "category": "c", "x": 1},
        }
        if age is not None:
            doc["age"] = age
        if department is not None:
            doc["department"] = department
        docs.append(doc)
    ns, col = make_collection(store, docs, name="people")
    result = export_job(
        ns.name, col.name, json.loads(json.dumps(SEED_REQUEST)), settings=store.settings
    )
    expected = [row[0] for row in SEED_PEOPLE if row[-1]]
    assert result.response.format == "parquet"
    assert result.response.document_count == len(expected)
    assert result.response.vectors_s3_path is None
    table = read_parquet(result.response.s3_path)
    assert table.column_names == ["document_id", "metadata"]
    assert table.to_pylist() == [
        {"document_id": i, "metadata": {"title": f"T-{i}", "category": "c"}} for i in expected
    ]


@pytest.mark.parametrize(
    ("namespace", "collection", "request_body", "error"),
    [
        ("test-ns", "people", {"format": "xml"}, InvalidInput),
        ("test-ns", "people", {"sample_size": 0}, InvalidInput),
        (
            "test-ns",
            "people",
            {"filters": {"AND": [{"field": "a", "operator": "regex", "value": "("}]}},
            InvalidInput,
        ),
        (
            "test-ns",
            "people",
            {"filters": {"AND": [{"field": "a", "operator": "nope", "value": 1}]}},
            InvalidInput,
        ),
        ("test-ns", "people", {"select_fields": ["a..b"]}, InvalidInput),
        ("test-ns", "people", {"unknown": 1}, InvalidInput),
        ("test-ns", "nobody", {}, NotFoundError),
        ("test-ns", "col_0000000000", {}, NotFoundError),
        ("no-such-ns", "people", {}, NotFoundError),
    ],
)
def test_F4_R7_invalid_request_or_unknown_collection_fails_before_reading(
    store: Store,
    people: tuple[Namespace, Collection],
    monkeypatch: pytest.MonkeyPatch,
    namespace: str,
    collection: str,
    request_body: dict[str, Any],
    error: type[Exception],
) -> None:
    def must_not_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("documents were read before the request was validated")

    monkeypatch.setattr(type(store.documents), "rows", must_not_read)
    with pytest.raises(error) as info:
        export_job(namespace, collection, request_body, settings=store.settings)
    if error is InvalidInput:
        assert info.value.details and all("loc" in d for d in info.value.details)
    assert not store.settings.scratch_dir.exists() or scratch_leftovers(store.settings) == []
    assert export_dirs(store.settings) == []


@pytest.mark.parametrize(
    "body",
    [
        {"filters": {"AND": [{"field": "kind", "operator": "eq", "value": "a"}]}},
        {"sample_size": 2, "sample_seed": 3},
        {},
    ],
)
def test_W6_json_manifest_lists_the_top_level_keys_of_the_exported_documents(
    store: Store, body: dict[str, Any]
) -> None:
    """The keys of the documents in the file, document_id first, then byte order."""
    docs = [
        {"document_id": "d1", "kind": "a", "zeta": 1, "Alpha": {"x": 1}},
        {"document_id": "d2", "kind": "b", "only_b": True},
        {"document_id": "d3", "kind": "a", "beta": None},
        {"document_id": "d4", "kind": "b", "zeta": "z"},
    ]
    ns, col = make_collection(store, docs, name="keyed")
    result = run(store, ns, col, {"format": "json", **body})
    exported = read_json_lines(result.response.s3_path)
    keys = {key for doc in exported for key in doc}
    expected = ["document_id", *sorted(keys - {"document_id"}, key=str.encode)]
    (entry,) = result.manifest["files"]
    assert [column["name"] for column in entry["columns"]] == expected

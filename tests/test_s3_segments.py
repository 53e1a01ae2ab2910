"""Segments in S3 (EXPORT_PIPELINE_SEGMENTS): ingests upload them, exports read local copies.

Against moto's S3 server over HTTP. The same documents ingested into a store keeping its
segments under home and into one keeping them in a bucket export to the same files; the
bucket holds exactly what the catalog lists (and what retention still keeps), also after
a refused or failed ingest; an export leaves no copy behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from helpers import export_job, make_collection, quick_first, read_json_lines, write_jsonl

from export_pipeline.errors import ExportPipelineError
from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.recovery import sweep
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Store, VectorIndex
from export_pipeline.store import ingest as ingest_module
from export_pipeline.store import segments as segments_module
from export_pipeline.store.documents import DocumentStore
from export_pipeline.store.operations import Owner
from export_pipeline.store.segment_files import sidecar_of

INDEXES = [VectorIndex(name="v", dimensions=3)]
NOW = "2026-01-02T03:04:05.678901Z"  # both stores' documents carry the same timestamps


def _doc(number: int, kind: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"document_id": f"d{number:04d}", "n": number}
    doc["_vectors"] = {"v": [number / 7, -1.5, 2.0**-20]}
    if number % 3 == 0:
        doc["kind"] = kind or "obj"
        doc["x"] = {"a": number, "b": f"b{number}"}
    else:
        doc["kind"] = kind or "str"
        doc["x"] = f"text {number}" if number % 2 else [number, "two"]
    if number % 5 == 0:
        doc["text"] = 'quotes " and , commas\r\nlines ünï 😀'
    return doc


def _keys(bucket: str) -> set[str]:
    client = boto3.session.Session().client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def _listed_keys(store: Store, col: Collection, bucket: str) -> set[str]:
    """The objects a collection's current version lists: segments and sidecars, and the
    history files retention keeps (beside the segments, M1)."""
    found = store.catalog.collection(store.catalog.namespace(col.namespace_id), col.id)
    uris = [u for s in found.segments for u in (s, sidecar_of(s))]
    with store.catalog.reading() as db:
        uris += [row[0] for row in db.execute("SELECT path FROM history")]
    assert all(uri.startswith(f"s3://{bucket}/") for uri in uris)
    return {uri.removeprefix(f"s3://{bucket}/") for uri in uris}


def _parquet_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet")) if folder.exists() else []


@pytest.fixture
def s3_settings(tmp_path: Path, bucket: str) -> Settings:
    """A store whose segments go to the test's bucket."""
    return Settings(home=tmp_path / "s3home", segments=f"s3://{bucket}/segs/")


def _fill(store: Store) -> Collection:
    """Four segments of small row groups, one interleaving the others' ids, then an upsert
    that rewrites two of them."""
    numbers = list(range(0, 120))
    batches = [numbers[0:40], numbers[40:80], numbers[80:120:2], numbers[81:120:2]]
    ns, col = make_collection(store, [_doc(n) for n in batches[0]], INDEXES, name="sharded")
    folder = store.settings.home_dir.parent / "in"
    for batch in batches[1:]:
        store.ingest(ns.id, col.id, write_jsonl(folder, [_doc(n) for n in batch]))
    changed = [_doc(n, kind="changed") for n in (5, 50, 51)]
    store.ingest(ns.id, col.id, write_jsonl(folder, changed), upsert=True)
    return store.catalog.collection(ns, col.id)


@pytest.fixture(scope="module")
def twins(
    tmp_path_factory: pytest.TempPathFactory, s3_server: Any
) -> Iterator[tuple[Store, Collection, Store, Collection]]:
    """The same documents in a store with local segments and in one with S3 segments, built
    once for the module's tests, which only export them (each export to a folder of its own)."""
    env = pytest.MonkeyPatch()  # as the s3_env fixture sets it, for the module's duration
    env.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key-do-not-leak")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        env.delenv(name, raising=False)
    bucket = f"twins-{os.getpid()}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("twins")
    patch = pytest.MonkeyPatch()
    patch.setattr(segments_module, "ROW_GROUP_ROWS", 8)
    patch.setattr(ingest_module, "utc_now", lambda: NOW)
    try:
        local = Store(Settings(home=root / "localhome"))
        remote = Store(Settings(home=root / "s3home", segments=f"s3://{bucket}/segs/"))
        filled = local, _fill(local), remote, _fill(remote)
    finally:
        patch.undo()
    yield filled
    env.undo()


def _files(result: ExportRun) -> list[Path]:
    paths = [Path(result.response.s3_path.removeprefix("file://"))]
    if result.response.vectors_s3_path:
        paths.append(Path(result.response.vectors_s3_path.removeprefix("file://")))
    return paths


def _same(path: Path, other: Path, mine: str, theirs: str) -> None:
    """The same bytes (json, csv) or data (parquet), but for the collections' ids, which every
    document carries (the two stores' collections are not the same one)."""
    if path.suffix == ".parquet":
        table, expected = pq.read_table(path), pq.read_table(other)
        assert table.schema.equals(expected.schema, check_metadata=True)
        rows = str(table.to_pylist()).replace(mine, theirs)
        assert rows == str(expected.to_pylist())
    else:
        assert path.read_bytes().replace(mine.encode(), theirs.encode()) == other.read_bytes()


def _export(store: Store, col: Collection, body: dict[str, Any], shards: int) -> ExportRun:
    settings = store.settings.model_copy(update={"shards": str(shards)})
    return export_job(col.namespace_id, col.id, body, settings=settings)


def test_an_ingest_puts_segments_in_the_bucket_and_nothing_under_home(
    s3_settings: Settings, bucket: str
) -> None:
    store = Store(s3_settings)
    _, col = make_collection(store, [_doc(n) for n in range(30)], INDEXES)
    assert len(col.segments) == 1
    (uri,) = col.segments
    assert uri.startswith(f"s3://{bucket}/segs/{col.namespace_id}/{col.id}/segments/seg_")
    assert _keys(bucket) == _listed_keys(store, col, bucket)
    assert _parquet_under(s3_settings.home_dir / "collections") == []
    assert store.operations.records() == []


def test_segment_objects_are_encrypted_as_exports_are(s3_settings: Settings, bucket: str) -> None:
    store = Store(s3_settings.model_copy(update={"s3_sse": "AES256"}))
    make_collection(store, [_doc(n) for n in range(3)], INDEXES)
    client = boto3.session.Session().client("s3")
    for key in _keys(bucket):
        assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


# Every request kind once and every format twice: what the copies change is where the
# engine reads, not what it does with the rows (tests/test_shards.py covers the full matrix).
CASES = [
    ("json", {}, 1),
    ("csv", {"include_vectors": True}, 3),
    ("parquet", {"filters": {"kind": "obj"}}, 3),
    ("json", {"filters": {"kind": "str"}, "include_vectors": True}, 3),
    ("csv", {"select_fields": ["x.a", "text"]}, 3),
    ("parquet", {"sample_size": 17, "sample_seed": 5}, 3),
]


@pytest.mark.parametrize(("fmt", "body", "shards"), quick_first(CASES, keep=2))
def test_exports_of_s3_segments_are_those_of_local_segments(
    twins: tuple[Store, Collection, Store, Collection],
    fmt: str,
    body: dict[str, Any],
    shards: int,
) -> None:
    local, local_col, remote, remote_col = twins
    request = {"format": fmt, **body}
    theirs = _export(local, local_col, request, shards)
    mine = _export(remote, remote_col, request, shards)
    assert len(mine.manifest["shards"]) == shards
    assert mine.response.document_count == theirs.response.document_count
    assert mine.manifest["warnings"] == theirs.manifest["warnings"]
    for path, other in zip(_files(mine), _files(theirs), strict=True):
        _same(path, other, remote_col.id, local_col.id)
    # the copies went with the export's scratch space
    assert _parquet_under(remote.settings.scratch_dir) == []
    assert _parquet_under(remote.settings.home_dir / "collections") == []


@pytest.mark.slow
def test_shards_in_processes_of_their_own_share_one_set_of_copies(
    twins: tuple[Store, Collection, Store, Collection],
) -> None:
    local, local_col, remote, remote_col = twins
    body = {"format": "csv", "include_vectors": True}
    settings = remote.settings.model_copy(update={"shards": "3", "executor": "local"})
    mine = export_job(
        remote_col.namespace_id, remote_col.id, body, settings=settings, processes=True
    )
    theirs = _export(local, local_col, body, 3)
    for path, other in zip(_files(mine), _files(theirs), strict=True):
        _same(path, other, remote_col.id, local_col.id)
    assert _parquet_under(remote.settings.scratch_dir) == []


def test_replaced_segments_leave_the_bucket_after_retention(
    s3_settings: Settings, bucket: str
) -> None:
    settings = s3_settings.model_copy(update={"segment_retention_seconds": 0})
    store = Store(settings)
    ns, col = make_collection(store, [_doc(n) for n in range(20)], INDEXES)
    first = {k for k in _keys(bucket) if "/history/" not in k}  # history: its own retention
    folder = settings.home_dir.parent / "in"
    store.ingest(ns.id, col.id, write_jsonl(folder, [_doc(3, kind="new")]), upsert=True)
    # retired now: an export of the older snapshot may still read it
    assert first <= _keys(bucket)
    store.ingest(ns.id, col.id, write_jsonl(folder, [_doc(100)]))
    assert _keys(bucket) == _listed_keys(store, col, bucket)
    assert not first & _keys(bucket)
    with store.catalog.reading() as db:
        assert db.execute("SELECT count(*) FROM retired_segments").fetchone()[0] == 0


def test_a_refused_ingest_leaves_no_objects(s3_settings: Settings, bucket: str) -> None:
    store = Store(s3_settings)
    ns, col = make_collection(store, [_doc(n) for n in range(20)], INDEXES)
    before = _keys(bucket)
    lines = [_doc(n, kind="new") for n in range(5)] + ['{"document_id": 7, "broken"']
    with pytest.raises(ExportPipelineError):
        store.ingest(ns.id, col.id, write_jsonl(s3_settings.home / "in", lines), upsert=True)
    assert _keys(bucket) == before
    assert store.operations.records() == []


def test_an_ingest_failing_after_its_uploads_removes_them(
    s3_settings: Settings, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(s3_settings)
    ns, col = make_collection(store, [_doc(n) for n in range(20)], INDEXES)
    before = _keys(bucket)

    def swap_fails(*args: Any) -> None:
        assert len(_keys(bucket)) > len(before)  # uploaded, about to be listed
        raise RuntimeError("the catalog went away")

    monkeypatch.setattr(DocumentStore, "_swap", swap_fails)
    source = write_jsonl(s3_settings.home / "in", [_doc(3, kind="new"), _doc(50)])
    with pytest.raises(RuntimeError):
        store.ingest(ns.id, col.id, source, upsert=True)
    assert _keys(bucket) == before
    assert store.operations.records() == []


def test_the_sweep_removes_s3_segments_a_dead_ingest_recorded(
    s3_settings: Settings, bucket: str
) -> None:
    store = Store(s3_settings)
    ns, col = make_collection(store, [_doc(n) for n in range(20)], INDEXES)
    listed = _keys(bucket)
    uri = store.documents.files.uri(ns.id, col.id, "seg_dead.parquet")
    source = s3_settings.home_dir.parent / "dead.parquet"
    source.write_text("x")
    store.documents.files.upload([(source, uri), (source, sidecar_of(uri))])
    dead = Owner("no-such-host", 1, "")
    store.operations.begin("ingest", "stg_dead", segments=[uri, *col.segments], owner=dead)
    report = sweep(s3_settings.model_copy(update={"recovery_foreign_max_age_seconds": 0}), store)
    assert report.segments == 1
    assert _keys(bucket) == listed  # the listed segments it also named stay


def test_local_segments_are_read_where_they_are(store: Store) -> None:
    _, col = make_collection(store, [_doc(n) for n in range(5)], INDEXES)
    (path,) = store.documents.segment_paths(col)
    assert store.documents.segment_files(col, copies=Path("/nowhere")) == [Path(path)]


@pytest.mark.parametrize("target", ["/a/folder", "s3://", "file:///x", "s3:/bucket"])
def test_segments_go_to_s3_only(target: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        Settings(segments=target)


def test_M1_history_lives_beside_s3_segments_and_a_failed_ingest_leaves_none(
    s3_settings: Settings, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(s3_settings)
    ns, col = make_collection(store, [_doc(n) for n in range(5)], INDEXES)
    history = [k for k in _keys(bucket) if "/history/" in k]
    assert len(history) == 1 and history[0].startswith(f"segs/{ns.id}/{col.id}/history/v")
    before = _keys(bucket)
    monkeypatch.setattr(DocumentStore, "_swap", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        store.ingest(ns.id, col.id, write_jsonl(s3_settings.home / "in", [_doc(50)]))
    assert _keys(bucket) == before
    assert _parquet_under(s3_settings.home_dir / "collections") == []


@pytest.mark.parametrize("shards", [1, 2])
def test_M6_an_incremental_export_reads_the_history_in_s3(
    s3_settings: Settings, bucket: str, shards: int
) -> None:
    store = Store(s3_settings)
    ns, col = make_collection(store, [_doc(n) for n in range(20)], INDEXES)
    first = _export(store, col, {"format": "json"}, shards)
    source = write_jsonl(s3_settings.home / "in", [_doc(3, kind="new"), _doc(50)])
    store.ingest(ns.id, col.id, source, upsert=True)
    assert store.delete(ns.id, col.id, ids=["d0007", "d0011"]).deleted == 2
    body = {"format": "json", "changed_since": first.manifest["export_id"]}
    delta = _export(store, store.catalog.collection(ns, col.id), body, shards)
    changed = [doc["document_id"] for doc in read_json_lines(delta.response.s3_path)]
    assert changed == ["d0003", "d0050"]
    deleted = read_json_lines(delta.response.deletes_s3_path)
    assert deleted == [{"document_id": "d0007"}, {"document_id": "d0011"}]
    assert _parquet_under(s3_settings.home_dir / "collections") == []

"""Pins (docs/contract.md D5): an export reads its snapshot to the end, whatever the retention;
replaced segments go once no running export pins them, and a crashed export's pins expire."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from helpers import make_collection, read_json_lines, write_jsonl
from kill_child import armed_environment

from export_pipeline.errors import InvalidInput
from export_pipeline.export import ExportLifecycle
from export_pipeline.recovery import sweep
from export_pipeline.settings import Settings
from export_pipeline.store import Store
from export_pipeline.store.catalog import catalog_path
from export_pipeline.store.operations import StaleSnapshot
from export_pipeline.store.segment_files import SegmentFiles, is_remote

WORKTREE = Path(__file__).resolve().parents[1]
DOCS = [{"document_id": f"d{i:04d}", "n": i} for i in range(40)]


@pytest.fixture
def settings(catalog_settings: Settings) -> Settings:
    """SQLite and PostgreSQL catalogs; replaced segments kept no time at all."""
    return catalog_settings.model_copy(update={"segment_retention_seconds": 0})


def replace_everything(store: Store, ns: str, col: str, times: int = 2) -> None:
    """Upsert every document `times` times: each change retires every segment there is."""
    for round_ in range(times):
        docs = [{**doc, "n": -1 - round_} for doc in DOCS]
        source = write_jsonl(store.settings.home_dir.parent / f"up{round_}", docs)
        store.ingest(ns, col, source, upsert=True)


def existing(paths: list[str]) -> list[str]:
    return [path for path in paths if Path(path).exists()]


def retired(store: Store) -> set[str]:
    return store.documents.listed_segments()[1]


def test_D5_an_export_outlives_retention_while_upserts_replace_every_segment(
    store: Store,
) -> None:
    ns, col = make_collection(store, DOCS[:20])
    store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "more", DOCS[20:]))
    lifecycle = ExportLifecycle(store.settings, store)
    plan = lifecycle.start(ns.id, col.id, {"format": "json"}, shards=2)
    read = store.documents.segment_paths(plan.collection)
    assert len(read) == 2
    replace_everything(store, ns.id, col.id)
    sweep(store.settings, store, grace_seconds=0)
    assert existing(read) == read and set(read) <= retired(store)  # pinned: neither removes
    selection = lifecycle.select(plan)
    parts = [lifecycle.write_shard(plan, selection, shard) for shard in plan.shards]
    result = lifecycle.publish(plan, lifecycle.assemble(plan, selection, parts))
    lifecycle.cleanup(plan)
    lines = read_json_lines(result.response.s3_path)
    assert [(line["document_id"], line["n"]) for line in lines] == [
        (doc["document_id"], doc["n"]) for doc in DOCS
    ]  # the snapshot's documents, not the upserted ones
    assert result.manifest["collection"]["version"] == plan.collection.version
    replace_everything(store, ns.id, col.id, times=1)  # the next change, once unpinned
    assert existing(read) == [] and not set(read) & retired(store)


def test_D5_the_sweep_removes_what_an_ended_export_pinned(store: Store) -> None:
    ns, col = make_collection(store, DOCS)
    lifecycle = ExportLifecycle(store.settings, store)
    plan = lifecycle.start(ns.id, col.id, None)
    read = store.documents.segment_paths(plan.collection)
    replace_everything(store, ns.id, col.id)
    assert existing(read) == read
    lifecycle.cleanup(plan)  # a failed or cancelled export ends its record the same way
    report = sweep(store.settings, store)
    # with what the first upsert wrote, which the second retired
    assert report.segments == len(read) + 1 and existing(read) == []
    assert retired(store) == set()


def test_D5_retention_still_keeps_what_no_export_pins(store: Store) -> None:
    settings = store.settings.model_copy(update={"segment_retention_seconds": 3600})
    store = Store(settings)
    ns, col = make_collection(store, DOCS)
    read = store.documents.segment_paths(col)
    replace_everything(store, ns.id, col.id)
    sweep(settings, store)
    assert existing(read) == read


def test_D5_a_snapshot_that_lost_a_segment_before_its_pin_is_planned_again(
    store: Store,
) -> None:
    ns, col = make_collection(store, DOCS)
    lifecycle = ExportLifecycle(store.settings, store)
    stale = lifecycle.plan(ns.id, col.id, None)
    replace_everything(store, ns.id, col.id)  # the second change removed what the first retired
    with pytest.raises(StaleSnapshot):
        lifecycle.begin(stale)
    assert store.operations.records() == []  # nothing pinned, nothing to reclaim
    plan = lifecycle.start(ns.id, col.id, None)
    assert plan.collection.version == stale.collection.version + 2
    (record,) = store.operations.records()
    assert record.pins == store.documents.segment_paths(plan.collection)
    lifecycle.cleanup(plan)
    with pytest.raises(InvalidInput):  # refused before anything is recorded
        lifecycle.start(ns.id, col.id, {"format": "xml"})
    assert store.operations.records() == []


def _child_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "EXPORT_PIPELINE_HOME": str(settings.home),
        **({"EXPORT_PIPELINE_CATALOG": settings.catalog} if settings.catalog else {}),
        "EXPORT_PIPELINE_SEGMENT_RETENTION_SECONDS": "0",
        "EXPORT_PIPELINE_AGENT": "off",
        "PYTHONPATH": str(WORKTREE),
    }


_BEGIN_AND_WAIT = """
import sys, time
from pathlib import Path
from export_pipeline.errors import InvalidInput
from export_pipeline.export import ExportLifecycle
lifecycle = ExportLifecycle()
plan = lifecycle.start("test-ns", "things", None)
Path(sys.argv[1]).write_text(plan.export_id)
time.sleep(600)
"""


@pytest.mark.slow
def test_D5_a_crashed_exports_pins_do_not_keep_segments(store: Store, tmp_path: Path) -> None:
    ns, col = make_collection(store, DOCS)
    read = store.documents.segment_paths(col)
    marker = tmp_path / "begun"
    child = subprocess.Popen(
        [sys.executable, "-c", _BEGIN_AND_WAIT, str(marker)], env=_child_env(store.settings)
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the child ended before it began its export"
            assert time.monotonic() < deadline, "the child never began its export"
            time.sleep(0.05)
        replace_everything(store, ns.id, col.id)
        assert existing(read) == read  # pinned by the live child
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    (record,) = store.operations.records()
    assert record.pins == read
    assert sweep(store.settings, store).records == 1  # the sweep forgets its record
    assert store.operations.records() == [] and existing(read) == []


_OLD_OPERATIONS = """
CREATE TABLE operations (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    pid_started TEXT NOT NULL, started_at REAL NOT NULL, storage TEXT,
    paths TEXT NOT NULL DEFAULT '[]', storage_prefixes TEXT NOT NULL DEFAULT '[]',
    segments TEXT NOT NULL DEFAULT '[]');
INSERT INTO operations (id, kind, host, pid, pid_started, started_at)
    VALUES ('stg_old', 'ingest', 'another-host', 1, '1', CAST(strftime('%s', 'now') AS REAL));
"""


def test_D5_a_home_made_before_pins_gains_them(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", segment_retention_seconds=0)
    settings.home_dir.mkdir(parents=True)
    with sqlite3.connect(catalog_path(settings.home_dir)) as db:
        db.executescript(_OLD_OPERATIONS)
    store = Store(settings)
    (old,) = store.operations.records()
    assert (old.id, old.pins) == ("stg_old", [])
    ns, col = make_collection(store, DOCS)
    lifecycle = ExportLifecycle(settings, store)
    plan = lifecycle.start(ns.id, col.id, None)
    read = store.documents.segment_paths(plan.collection)
    replace_everything(store, ns.id, col.id)
    assert existing(read) == read
    lifecycle.cleanup(plan)
    assert Store(settings).operations.records()[0].id == "stg_old"


def _keys(bucket: str) -> set[str]:
    """The segment objects in the bucket (history files, M1, live beside them)."""
    client = boto3.session.Session().client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = {item["Key"] for page in pages for item in page.get("Contents", [])}
    return {key for key in keys if "/segments/" in key}


@pytest.fixture
def s3_store(tmp_path: Path, bucket: str) -> Store:
    """Segments in the test's bucket, replaced ones kept no time at all."""
    return Store(
        Settings(
            home=tmp_path / "s3home", segments=f"s3://{bucket}/segs/", segment_retention_seconds=0
        )
    )


def test_D5_pinned_s3_segments_stay_in_the_bucket_until_the_export_ends(
    s3_store: Store, bucket: str
) -> None:
    store = s3_store
    ns, col = make_collection(store, DOCS)
    first = _keys(bucket)
    lifecycle = ExportLifecycle(store.settings, store)
    plan = lifecycle.start(ns.id, col.id, {"format": "json"})
    replace_everything(store, ns.id, col.id)
    sweep(store.settings, store, grace_seconds=0)
    assert first <= _keys(bucket)
    selection = lifecycle.select(plan)
    parts = [lifecycle.write_shard(plan, selection, shard) for shard in plan.shards]
    result = lifecycle.publish(plan, lifecycle.assemble(plan, selection, parts))
    lifecycle.cleanup(plan)
    lines = read_json_lines(result.response.s3_path)
    assert [line["n"] for line in lines] == [doc["n"] for doc in DOCS]
    read = set(store.documents.segment_paths(plan.collection))
    replace_everything(store, ns.id, col.id, times=1)
    assert not first & _keys(bucket)
    assert not read & retired(store) and store.operations.records() == []


def test_D5_s3_segments_that_fail_to_go_stay_retired(
    s3_store: Store, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_store
    ns, col = make_collection(store, DOCS)
    first = _keys(bucket)
    replace_everything(store, ns.id, col.id, times=1)
    original = SegmentFiles.remove

    def s3_down(self: SegmentFiles, segments: list[str]) -> int:
        if any(is_remote(s) for s in segments):
            raise OSError("S3 is down")
        return original(self, segments)

    with monkeypatch.context() as patched:
        patched.setattr(SegmentFiles, "remove", s3_down)
        replace_everything(store, ns.id, col.id, times=1)  # succeeds; its removal does not
    assert first <= _keys(bucket)
    assert len(retired(store)) == 2 and store.operations.records() == []
    replace_everything(store, ns.id, col.id, times=1)
    assert not first & _keys(bucket) and len(retired(store)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("catalog_settings", ["sqlite"], indirect=True)
def test_D5_a_jobs_pins_last_as_long_as_its_launcher_not_its_plan_step(
    store: Store, tmp_path: Path
) -> None:
    """Two shards in processes of their own: the plan step's process has ended while a shard
    writes, and the export's pins still hold; the export failing ends them."""
    ns, col = make_collection(store, DOCS[:20])
    store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "more", DOCS[20:]))
    read = store.documents.segment_paths(store.catalog.collection(ns, col.id))
    marker = tmp_path / "export-writing.reached"
    env = {**_child_env(store.settings), "EXPORT_PIPELINE_SHARDS": "2"}
    env.update(armed_environment(tmp_path, "export-writing", marker))
    argv = ["export", "things", "-n", "test-ns", "--format", "json"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "export_pipeline.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():  # a shard's process, paused mid-write
            assert launcher.poll() is None, launcher.stdout.read() if launcher.stdout else ""
            assert time.monotonic() < deadline, "no shard reached its write"
            time.sleep(0.05)
        step = int(marker.read_text())
        assert step != launcher.pid
        (record,) = store.operations.records()
        assert record.owner.pid == launcher.pid and record.pins == read
        replace_everything(store, ns.id, col.id)
        sweep(store.settings, store, grace_seconds=0)
        assert existing(read) == read
        os.kill(step, signal.SIGKILL)  # the export fails; its launcher cleans up after it
        launcher.communicate(timeout=120)
        assert launcher.returncode != 0
    finally:
        if launcher.poll() is None:
            os.kill(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert store.operations.records() == []
    replace_everything(store, ns.id, col.id, times=1)
    assert existing(read) == []

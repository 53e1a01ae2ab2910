"""The export job's shards on Celery workers (`EXPORT_PIPELINE_EXECUTOR=celery`): real
`export-pipeline worker` processes on a real Redis broker (tests/services.py)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import dagster as dg
import pytest
from deployment import (
    INDEXES,
    deployment_settings,
    doc,
    files_left,
    same_files,
    worker_env,
    workers,
)
from helpers import cli_output, export_job, make_collection, write_jsonl
from kill_child import armed_environment
from services import PostgresServer, RedisServer

from export_pipeline.orchestration.instance import local_instance
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Store
from export_pipeline.store import segments as segments_module


@pytest.fixture
def distributed(
    tmp_path: Path,
    redis: RedisServer,
    postgres: PostgresServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The launcher's settings of a deployment whose machines share no disk: the catalog and
    the Dagster instance in PostgreSQL, segments and exports on S3, Redis as the broker."""
    dagster_url = postgres.create_database().replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_url)
    home = tmp_path / "launcher-home"
    return deployment_settings(home, postgres.create_database(), bucket, redis.url())


@pytest.fixture
def three_segments(distributed: Settings, monkeypatch: pytest.MonkeyPatch) -> Collection:
    """90 documents in three segments of small row groups: something for three shards."""
    monkeypatch.setattr(segments_module, "ROW_GROUP_ROWS", 10)
    store = Store(distributed)
    ns, col = make_collection(store, [doc(n) for n in range(30)], INDEXES)
    for start in (30, 60):
        folder = store.settings.home_dir.parent / "in"
        store.ingest(ns.id, col.id, write_jsonl(folder, [doc(n) for n in range(start, start + 30)]))
    return store.catalog.collection(ns, col.id)


BODIES = [  # csv with vectors: the kill test below
    {"format": "json", "include_vectors": True},
    {"format": "parquet", "include_vectors": True},
    {
        "format": "csv",
        "filters": {"AND": [{"field": "n", "operator": "gte", "value": 10}]},
        "sample_size": 20,
        "sample_seed": 3,
    },
]


@pytest.mark.slow
def test_the_shards_of_an_export_run_on_workers_that_share_no_disk(
    distributed: Settings, three_segments: Collection, bucket: str, tmp_path: Path
) -> None:
    """Two workers, each with a home of its own: the catalog and the run's events in
    PostgreSQL, segments, step outputs and parts on S3. The files are those of the same
    export with every step in one process."""
    ns, col = three_segments.namespace_id, three_segments.id
    s3 = boto3.session.Session().client("s3")
    with workers(2, distributed, tmp_path) as homes:
        for body in BODIES:
            run = export_job(ns, col, body, settings=distributed, processes=True)
            alone = export_job(ns, col, body, settings=distributed)  # in this process
            assert run.manifest["document_count"] == alone.manifest["document_count"]
            assert [s["document_count"] for s in run.manifest["shards"]] != [0, 0, 0]
            same_files(run.response, alone.response, body["format"], s3)
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            assert not [k for k in keys if "/.parts/" in k or ".dagster-io" in k]
            workers_of = {s["worker"].rsplit(":", 1)[-1] for s in run.manifest["shards"]}
            assert str(os.getpid()) not in workers_of
        for home in homes:  # nothing stays on a worker
            assert files_left(home) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not list((distributed.home_dir / "collections").rglob("*.parquet"))


@pytest.mark.slow
def test_a_worker_process_killed_mid_shard_gives_the_shard_to_another_and_leaves_nothing(
    distributed: Settings, three_segments: Collection, bucket: str, tmp_path: Path
) -> None:
    """The first shard to get to its file's end pauses there; its process is SIGKILLed. The
    broker hands the task out again (late acknowledgement), the shard is written anew, and
    the export is the same as with every step in one process."""
    marker = tmp_path / "paused"
    armed = armed_environment(tmp_path, "export-writing", marker)
    ns, col = three_segments.namespace_id, three_segments.id
    body = {"format": "csv", "include_vectors": True}
    s3 = boto3.session.Session().client("s3")
    with workers(2, distributed, tmp_path, armed) as homes, ThreadPoolExecutor(1) as pool:
        running = pool.submit(export_job, ns, col, body, settings=distributed, processes=True)
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert not running.done(), running.result()
            assert time.monotonic() < deadline, "no shard reached its pause"
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        run = running.result(timeout=300)
    alone = export_job(ns, col, body, settings=distributed)
    same_files(run.response, alone.response, "csv", s3)
    # The killed process could not clean up: its worker's next gc reclaims its folder.
    for home in homes:
        cli_output(["gc", "--grace-seconds", "0"], worker_env(distributed, home))
        assert files_left(home) == []
    events = local_instance(distributed).all_logs(run.run_id)
    started = [e.step_key for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_START]
    # six steps (plan, three shards, publish, report), the killed shard's started twice
    assert len(started) == 7 and len(set(started)) == 6
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if "/.parts/" in k or ".dagster-io" in k]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_celery_without_a_broker_or_s3_storage_is_refused_before_any_run(
    store: Store,
) -> None:
    from export_pipeline.errors import InvalidInput

    ns, col = make_collection(store, [doc(n) for n in range(5)], INDEXES)
    celery = store.settings.model_copy(update={"shards": "3", "executor": "celery"})
    with pytest.raises(InvalidInput, match="EXPORT_PIPELINE_CELERY_BROKER"):
        export_job(ns.id, col.id, {}, settings=celery, processes=True)
    brokered = celery.model_copy(update={"celery_broker": "redis://127.0.0.1:9/0"})
    with pytest.raises(InvalidInput, match="EXPORT_PIPELINE_STORAGE on S3"):
        export_job(ns.id, col.id, {}, settings=brokered, processes=True)
    assert local_instance(store.settings).get_runs() == []

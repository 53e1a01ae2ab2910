"""The export job's shards on Celery workers (`EXPORT_PIPELINE_EXECUTOR=celery`): real
`export-pipeline worker` processes on a real Redis broker (tests/services.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pyarrow.parquet as pq
import pytest
from conftest import export_job, make_collection, write_jsonl
from helpers import cli_output
from kill_child import armed_environment
from services import PostgresServer, RedisServer

from export_pipeline.orchestration.launch import local_instance
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Store, VectorIndex
from export_pipeline.store import segments as segments_module

WORKTREE = Path(__file__).resolve().parents[1]
INDEXES = [VectorIndex(name="v", dimensions=3)]


def _doc(number: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"document_id": f"d{number:04d}", "n": number, "kind": "k"}
    doc["_vectors"] = {"v": [number / 7, -1.5, 2.0**-20]}
    if number % 3:
        doc["extra"] = {"a": number, "text": f'"quoted", {number}'}
    return doc


@pytest.fixture
def three_segments(store: Store, monkeypatch: pytest.MonkeyPatch) -> Collection:
    """90 documents in three segments of small row groups: something for three shards."""
    monkeypatch.setattr(segments_module, "ROW_GROUP_ROWS", 10)
    ns, col = make_collection(store, [_doc(n) for n in range(30)], INDEXES)
    for start in (30, 60):
        folder = store.settings.home_dir.parent / "in"
        store.ingest(
            ns.id, col.id, write_jsonl(folder, [_doc(n) for n in range(start, start + 30)])
        )
    return store.catalog.collection(ns, col.id)


@contextmanager
def workers(
    count: int, settings: Settings, log_dir: Path, extra: dict[str, str] | None = None
) -> Iterator[list[Path]]:
    """`count` `export-pipeline worker --concurrency 1` processes, ready, each with a scratch
    folder of its own (yielded), `extra` in their environment; stopped afterwards."""
    from celery import Celery

    broker = settings.celery_broker
    assert broker is not None
    processes = []
    scratches = [log_dir / f"worker-{index}-scratch" for index in range(count)]
    for index in range(count):
        env = {
            **os.environ,
            "EXPORT_PIPELINE_HOME": str(settings.home_dir),
            "EXPORT_PIPELINE_SCRATCH": str(scratches[index]),
            "EXPORT_PIPELINE_STORAGE": settings.storage_uri,
            "EXPORT_PIPELINE_CELERY_BROKER": broker,
            "PYTHONPATH": str(WORKTREE),
            **(extra or {}),
        }
        log = open(log_dir / f"worker-{index}.log", "wb")  # noqa: SIM115 - closed below
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "export_pipeline.cli", "worker", "--concurrency", "1"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    try:
        app = Celery(broker=broker)  # only to ping the workers
        deadline = time.monotonic() + 120
        while len(app.control.ping(timeout=0.5)) < count:
            for process, _ in processes:
                assert process.poll() is None, (log_dir / "worker-0.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers did not come up"
        yield scratches
    finally:
        for process, _ in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, log in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


def _files(response: Any) -> list[Path]:
    paths = [Path(response.s3_path.removeprefix("file://"))]
    if response.vectors_s3_path:
        paths.append(Path(response.vectors_s3_path.removeprefix("file://")))
    return paths


@pytest.mark.slow
def test_the_shards_of_an_export_run_on_celery_workers(
    store: Store,
    three_segments: Collection,
    redis: RedisServer,
    postgres: PostgresServer,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers, each with its own scratch; the run's events in PostgreSQL, its step
    outputs and the shards' parts on S3: the same files as the embedded default."""
    monkeypatch.setenv(
        "DAGSTER_PG_URL",
        postgres.create_database().replace("postgresql://", "postgresql+psycopg2://"),
    )
    celery = store.settings.model_copy(
        update={
            "shards": "3",
            "executor": "celery",
            "celery_broker": redis.url(),
            "storage": f"s3://{bucket}/exports",
        }
    )
    ns, col = three_segments.namespace_id, three_segments.id
    s3 = boto3.session.Session().client("s3")
    with workers(2, celery, tmp_path) as scratches:
        for body in BODIES:
            run = export_job(ns, col, body, settings=celery, processes=True)
            alone = export_job(ns, col, body, settings=store.settings)
            assert run.manifest["document_count"] == alone.manifest["document_count"]
            assert len(run.manifest["shards"]) == 3
            for mine, theirs in zip(
                _published(s3, run.response), _files(alone.response), strict=True
            ):
                if body["format"] == "parquet":
                    assert pq.read_table(mine).equals(pq.read_table(theirs))
                else:
                    assert mine.read_bytes() == theirs.read_bytes(), body
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            assert keys == [k for k in keys if "/exports/" in k.removeprefix("exports/")], keys
            assert not [k for k in keys if "/.parts/" in k or ".dagster-io" in k]
            workers_of = {s["worker"] for s in run.manifest["shards"]}
            assert str(os.getpid()) not in {w.rsplit(":", 1)[-1] for w in workers_of}
        for scratch in scratches:  # nothing stays on a worker
            assert not [p for p in scratch.rglob("*") if p.is_file()]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


BODIES = [
    {"format": "json", "include_vectors": True},
    {"format": "csv", "include_vectors": True},
    {"format": "parquet", "include_vectors": True},
    {
        "format": "csv",
        "filters": {"AND": [{"field": "n", "operator": "gte", "value": 10}]},
        "sample_size": 20,
        "sample_seed": 3,
    },
]


def _published(s3: Any, response: Any) -> list[Path]:
    """The published files, downloaded."""
    found = []
    for uri in (response.s3_path, response.vectors_s3_path):
        if uri:
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            path = Path(tempfile.mkdtemp()) / key.rsplit("/", 1)[-1]
            s3.download_file(bucket, key, str(path))
            found.append(path)
    return found


@pytest.fixture
def distributed(
    store: Store,
    redis: RedisServer,
    postgres: PostgresServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The store's settings with the celery executor, a Redis broker, S3 storage, and the
    Dagster instance in PostgreSQL."""
    url = postgres.create_database().replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    return store.settings.model_copy(
        update={
            "shards": "3",
            "executor": "celery",
            "celery_broker": redis.url(),
            "storage": f"s3://{bucket}/exports",
        }
    )


@pytest.mark.slow
def test_a_worker_process_killed_mid_shard_gives_the_shard_to_another_and_leaves_nothing(
    store: Store, three_segments: Collection, distributed: Settings, bucket: str, tmp_path: Path
) -> None:
    """The first shard to get to its file's end pauses there; its process is SIGKILLed. The
    broker hands the task out again (late acknowledgement), the shard is written anew, and
    the export is the same as the embedded default's."""
    marker = tmp_path / "paused"
    armed = armed_environment(tmp_path, "export-writing", marker)
    ns, col = three_segments.namespace_id, three_segments.id
    body = {"format": "csv", "include_vectors": True}
    s3 = boto3.session.Session().client("s3")
    with workers(2, distributed, tmp_path, armed) as scratches:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(export_job, ns, col, body, settings=distributed, processes=True)
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert not running.done(), running.result()
                assert time.monotonic() < deadline, "no shard reached its pause"
                time.sleep(0.05)
            os.kill(int(marker.read_text()), signal.SIGKILL)
            run = running.result(timeout=300)
        alone = export_job(ns, col, body, settings=store.settings)
        for mine, theirs in zip(_published(s3, run.response), _files(alone.response), strict=True):
            assert mine.read_bytes() == theirs.read_bytes()
        # The killed process could not clean up: its worker's next gc reclaims its folder.
        left = [p for scratch in scratches for p in scratch.rglob("*") if p.is_file()]
        assert {p.parent.parent.parent.name for p in left} <= {"shard-0", "shard-1", "shard-2"}
        for scratch in scratches:
            env = {
                **os.environ,
                "EXPORT_PIPELINE_HOME": str(store.settings.home_dir),
                "EXPORT_PIPELINE_SCRATCH": str(scratch),
                "PYTHONPATH": str(WORKTREE),
            }
            cli_output(["gc", "--grace-seconds", "0"], env)
            assert not [p for p in scratch.rglob("*") if p.is_file()]
    events = local_instance(distributed).all_logs(run.run_id)
    started = [e.step_key for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_START]
    # six steps (plan, three shards, publish, report), the killed shard's started twice
    assert len(started) == 7 and len(set(started)) == 6
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if "/.parts/" in k or ".dagster-io" in k]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_celery_without_a_broker_is_refused_before_any_run(
    store: Store, three_segments: Collection
) -> None:
    from export_pipeline.errors import ValidationError

    celery = store.settings.model_copy(update={"shards": "3", "executor": "celery"})
    with pytest.raises(ValidationError, match="EXPORT_PIPELINE_CELERY_BROKER"):
        export_job(
            three_segments.namespace_id, three_segments.id, {}, settings=celery, processes=True
        )

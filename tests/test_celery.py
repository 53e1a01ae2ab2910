"""The export job's shards on Celery workers (`EXPORT_PIPELINE_EXECUTOR=celery`): real
`export-pipeline worker` processes on a real Redis broker (tests/services.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import export_job, make_collection, write_jsonl
from services import RedisServer

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
def workers(count: int, settings: Settings, broker: str, log_dir: Path) -> Iterator[list[int]]:
    """`count` `export-pipeline worker --concurrency 1` processes, ready; stopped afterwards."""
    from celery import Celery

    env = {
        **os.environ,
        "EXPORT_PIPELINE_HOME": str(settings.home_dir),
        "EXPORT_PIPELINE_CELERY_BROKER": broker,
        "PYTHONPATH": str(WORKTREE),
    }
    processes = []
    for index in range(count):
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
        yield [process.pid for process, _ in processes]
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
    store: Store, three_segments: Collection, redis: RedisServer, tmp_path: Path
) -> None:
    broker = redis.url()
    celery = store.settings.model_copy(
        update={"shards": "3", "executor": "celery", "celery_broker": broker}
    )
    ns, col = three_segments.namespace_id, three_segments.id
    with workers(2, store.settings, broker, tmp_path):
        for fmt in ("json", "csv", "parquet"):
            body = {"format": fmt, "include_vectors": True}
            run = export_job(ns, col, body, settings=celery, processes=True)
            alone = export_job(ns, col, body, settings=store.settings)
            shards = run.manifest["shards"]
            assert [s["document_count"] for s in shards] == [30, 30, 30]
            for mine, theirs in zip(_files(run.response), _files(alone.response), strict=True):
                if fmt == "parquet":
                    import pyarrow.parquet as pq

                    assert pq.read_table(mine).equals(pq.read_table(theirs))
                else:
                    assert mine.read_bytes() == theirs.read_bytes()
    worker_pids = {s["worker"].rsplit(":", 1)[-1] for s in shards}
    assert len(worker_pids) >= 2  # the shards went to more than one worker process
    assert str(os.getpid()) not in worker_pids


def test_celery_without_a_broker_is_refused_before_any_run(
    store: Store, three_segments: Collection
) -> None:
    from export_pipeline.errors import ValidationError

    celery = store.settings.model_copy(update={"shards": "3", "executor": "celery"})
    with pytest.raises(ValidationError, match="EXPORT_PIPELINE_CELERY_BROKER"):
        export_job(
            three_segments.namespace_id, three_segments.id, {}, settings=celery, processes=True
        )

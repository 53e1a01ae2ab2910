"""A distributed deployment on this machine, for tests: `export-pipeline worker` processes
with homes of their own on the test's services, and what an export published."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from helpers import stop_group

from export_pipeline.settings import Settings
from export_pipeline.store import VectorIndex

WORKTREE = Path(__file__).resolve().parents[1]
INDEXES = [VectorIndex(name="v", dimensions=3)]


def doc(number: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"document_id": f"d{number:04d}", "n": number, "kind": "k"}
    doc["_vectors"] = {"v": [number / 7, -1.5, 2.0**-20]}
    if number % 3:
        doc["extra"] = {"a": number, "text": f'"quoted", {number}'}
    return doc


def deployment_settings(
    home: Path, catalog: str, bucket: str, broker: str, **extra: Any
) -> Settings:
    """The launcher's settings of a deployment whose machines share no disk: the catalog in
    PostgreSQL, segments and exports on S3 in `bucket`, Redis as the broker, three shards on
    Celery workers; `extra` settings besides."""
    return Settings(
        home=home,
        catalog=catalog,
        segments=f"s3://{bucket}/segments",
        storage=f"s3://{bucket}/exports",
        shards="3",
        executor="celery",
        celery_broker=broker,
        **extra,
    )


def worker_env(settings: Settings, home: Path) -> dict[str, str]:
    """A worker's environment: the deployment's shared services, a home of its own."""
    shared = ("catalog", "segments", "storage", "celery_broker")
    env = {f"EXPORT_PIPELINE_{name.upper()}": str(getattr(settings, name)) for name in shared}
    return {**os.environ, **env, "EXPORT_PIPELINE_HOME": str(home), "PYTHONPATH": str(WORKTREE)}


@contextmanager
def workers(
    count: int, settings: Settings, folder: Path, extra: dict[str, str] | None = None
) -> Iterator[list[Path]]:
    """`count` `export-pipeline worker --concurrency 1` processes, ready, each with a home of
    its own (yielded) and `extra` in its environment; stopped afterwards."""
    from celery import Celery

    processes = []
    homes = [folder / f"worker-{index}-home" for index in range(count)]
    for index, home in enumerate(homes):
        log = open(folder / f"worker-{index}.log", "wb")  # noqa: SIM115 - closed below
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "export_pipeline.cli", "worker", "--concurrency", "1"],
                    env={**worker_env(settings, home), **(extra or {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    try:
        app = Celery(broker=settings.celery_broker)  # only to ping the workers
        deadline = time.monotonic() + 120
        while len(app.control.ping(timeout=0.5)) < count:
            for process, _ in processes:
                assert process.poll() is None, (folder / "worker-0.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers did not come up"
        yield homes
    finally:
        for process, _ in processes:  # all told at once: they stop side by side
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, log in processes:
            stop_group(process, timeout=60)
            log.close()


def files_left(home: Path) -> list[Path]:
    """Files a worker keeps in its home (its scratch, copies of segments, parts)."""
    return [p for p in home.rglob("*") if p.is_file() and p.name != ".sweep.lock"]


def published(s3: Any, response: Any) -> list[Path]:
    """The published files, downloaded."""
    found = []
    for uri in (response.s3_path, response.vectors_s3_path):
        if uri:
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            path = Path(tempfile.mkdtemp()) / key.rsplit("/", 1)[-1]
            s3.download_file(bucket, key, str(path))
            found.append(path)
    return found


def same_files(one: Any, other: Any, fmt: str, s3: Any) -> None:
    for mine, theirs in zip(published(s3, one), published(s3, other), strict=True):
        if fmt == "parquet":
            assert pq.read_table(mine).equals(pq.read_table(theirs))
        else:
            assert mine.read_bytes() == theirs.read_bytes(), fmt

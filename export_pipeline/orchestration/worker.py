"""`export-pipeline worker`: a Celery worker that runs the export job's steps.

It serves dagster-celery's step task on the queue the celery executor submits to, with the
same Celery options as the executor (`executor.CELERY_OPTIONS`). Each step it takes rebuilds
the job from this process's environment (catalog, segments, storage, scratch) and records its
events in the instance of the run that sent it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from export_pipeline.errors import InvalidInput
from export_pipeline.orchestration.executor import CELERY_OPTIONS
from export_pipeline.settings import Settings

QUEUE = "dagster"  # dagster-celery's default queue, which its executor submits steps to


def celery_app(broker: str) -> Any:
    """The Celery app of the export job's steps, with dagster-celery's step task."""
    from dagster_celery.config import DEFAULT_CONFIG, dict_wrapper
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    app = make_app(
        {
            "broker": broker,
            "backend": broker,
            "include": [],
            "config_source": dict_wrapper({**DEFAULT_CONFIG, **CELERY_OPTIONS}),
        }
    )
    create_task(app)
    return app


def worker_argv(concurrency: int) -> list[str]:
    """Celery's worker arguments: the steps' queue, and a node name of its own per process
    (two workers on one host must not share one)."""
    return [
        "worker",
        "--queues",
        QUEUE,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"export-pipeline-{os.getpid()}@{socket.gethostname()}",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def run_worker(settings: Settings, concurrency: int | None) -> None:
    """Serve the export job's steps until interrupted."""
    if not settings.celery_broker:
        raise InvalidInput("export-pipeline worker needs EXPORT_PIPELINE_CELERY_BROKER")
    if concurrency is not None and concurrency < 1:
        raise InvalidInput(f"--concurrency is at least 1, got {concurrency}")
    app = celery_app(settings.celery_broker)
    app.worker_main(worker_argv(concurrency or os.cpu_count() or 1))

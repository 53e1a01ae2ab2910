"""Warm worker processes that run the export job, so an API request pays no process start.

Each worker imports Dagster and opens the instance once, then runs one export at a time as a
run of `export_collection` (recorded in the instance like any other). The pool enforces the
instance's own limits from dagster.yaml: as many workers as export runs may run at once, and
at most N at a time per collection. A run over its time limit is cancelled by ending its
worker: the run is marked canceled, its scratch space removed and the worker replaced.
"""

from __future__ import annotations

import multiprocessing
import queue
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from export_pipeline.contract import ExportResponse
from export_pipeline.errors import ExportPipelineError, RunTimedOut, from_dict
from export_pipeline.orchestration import sqlite_quiet, tags
from export_pipeline.orchestration.instance import (
    discard_prepared_run,
    local_instance,
    prepared_run_id,
)
from export_pipeline.orchestration.launch import ExportLaunch, ExportRun, run_launch
from export_pipeline.recovery import sweep_quietly
from export_pipeline.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

_CONTEXT = multiprocessing.get_context("spawn")  # never fork a threaded server


def _serve(settings_json: str, conn: Connection) -> None:
    """A worker: run the exports it is sent, one at a time, until told to stop."""
    settings = Settings.model_validate_json(settings_json)
    instance = local_instance(settings)
    # The instance's sqlite files stay quiet for the worker's life. What a run leaves to do
    # (checkpoints, and the next run's event log) is done once it has answered.
    with sqlite_quiet.quiet(instance.root_directory):
        next_run_id = _prepare(instance, str(uuid.uuid4()))
        conn.send({"ready": True, "next_run_id": next_run_id})
        while (job := conn.recv()) is not None:
            launch = ExportLaunch(job["run_config"], job["tags"])
            following = str(uuid.uuid4())
            try:
                done = run_launch(launch, settings, instance, job["run_id"])
                response = done.response.model_dump(mode="json")
                answer = {"ok": True, "response": response, "manifest": done.manifest}
            except ExportPipelineError as exc:
                answer = {"ok": False, "error": exc.to_dict()}
            except Exception as exc:  # the worker survives whatever one run does
                answer = {"ok": False, "error": ExportPipelineError(str(exc)).to_dict()}
            conn.send({**answer, "next_run_id": following})
            sqlite_quiet.settle()
            next_run_id = _prepare(instance, following)
        sqlite_quiet.settle()
        with suppress(Exception):
            discard_prepared_run(instance, next_run_id)


def _prepare(instance: DagsterInstance, run_id: str) -> str:
    """The next run's event log, made now; a run makes it itself if this fails (a full disk:
    the run then fails saying so)."""
    with suppress(Exception):
        prepared_run_id(instance, run_id)
    return run_id


class _Worker:
    def __init__(self, settings: Settings) -> None:
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(
            target=_serve, args=(settings.model_dump_json(), child), daemon=True
        )
        self.process.start()
        child.close()
        self.next_run_id = ""  # the run id of its next export, its event log made already

    def ready(self, timeout: float) -> bool:
        if not self.conn.poll(timeout):
            return False
        message = self.conn.recv()
        if not isinstance(message, dict) or not message.get("ready"):
            return False
        self.next_run_id = message["next_run_id"]
        return True

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class RunPool:
    """Run exports on warm workers within the instance's concurrency limits."""

    def __init__(self, settings: Settings, workers: int, per_collection: int) -> None:
        self.settings = settings
        self.per_collection = per_collection
        self.idle: queue.Queue[_Worker] = queue.Queue()
        self._slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(per_collection)
        )
        self._lock = threading.Lock()
        # sqlite storage is created on first use; processes racing to create it corrupt its
        # schema version, so this process creates it and the workers start one at a time.
        local_instance(settings).get_runs(limit=1)
        self._workers = []
        for _ in range(workers):
            worker = _Worker(settings)
            if not worker.ready(120):
                raise RuntimeError("an export worker did not start")
            self._workers.append(worker)
            self.idle.put(worker)

    @property
    def size(self) -> int:
        """How many exports may run at once."""
        return len(self._workers)

    def run(self, launch: ExportLaunch, timeout: float) -> ExportRun:
        """Run one export; waiting for a worker and a collection slot counts against timeout."""
        deadline = time.monotonic() + timeout
        with self._collection_slot(launch.tags[tags.COLLECTION_ID], deadline):
            worker = self._take(deadline)
            run_id = worker.next_run_id
            try:
                worker.conn.send({"run_id": run_id, **launch.__dict__})
                if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                    self._retire(worker, run_id, canceled=True)
                    raise RunTimedOut(
                        f"the export took longer than {timeout:g} s and was cancelled"
                        f" (run {run_id})"
                    )
                answer = worker.conn.recv()
            except (EOFError, OSError):  # the worker died mid-run (killed, out of memory)
                self._retire(worker, run_id, canceled=False)
                raise ExportPipelineError(
                    f"the export's worker process died (run {run_id})"
                ) from None
            worker.next_run_id = answer["next_run_id"]
            self.idle.put(worker)
        if not answer["ok"]:
            raise from_dict(answer["error"])
        response = ExportResponse.model_validate(answer["response"])
        return ExportRun(run_id, response, answer["manifest"])

    @contextmanager
    def _collection_slot(self, collection_id: str, deadline: float) -> Iterator[None]:
        with self._lock:
            slot = self._slots[collection_id]
        if not slot.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise RunTimedOut("the export waited too long for its collection's other exports")
        try:
            yield
        finally:
            slot.release()

    def _take(self, deadline: float) -> _Worker:
        try:
            return self.idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RunTimedOut("the export waited too long for a free worker") from None

    def _retire(self, worker: _Worker, run_id: str, *, canceled: bool) -> None:
        """End a worker mid-run; close its run, remove its scratch, start a replacement."""
        worker.stop()
        instance = local_instance(self.settings)
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished and canceled:
            instance.report_run_canceled(run, message="cancelled: over the API's time limit")
        elif run is not None and not run.is_finished:
            instance.report_run_failed(run, message="its worker process died")
        if run is not None:
            export_id = run.tags.get(tags.EXPORT_ID)
            if export_id:
                shutil.rmtree(self.settings.scratch_dir / export_id, ignore_errors=True)
        # The worker is gone, so its export's record is dead: its objects, uploads and
        # staging go now, not at the next sweep.
        sweep_quietly(self.settings)
        replacement = _Worker(self.settings)
        with self._lock:
            self._workers[self._workers.index(worker)] = replacement
        threading.Thread(target=self._admit, args=(replacement,), daemon=True).start()

    def _admit(self, worker: _Worker) -> None:
        if worker.ready(120):
            self.idle.put(worker)

    def close(self) -> None:
        """Stop every worker (an idle one first removes the event log it prepared)."""
        for worker in self._workers:
            with suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 2
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            worker.stop()


def instance_limits(settings: Settings) -> tuple[int, int]:
    """(export runs at once, per collection) from the instance's dagster.yaml (4 and 1).

    Only a queued run coordinator has limits; an instance with another one (its dagster.yaml
    names DefaultRunCoordinator, say) gets the defaults.
    """
    from dagster import QueuedRunCoordinator

    coordinator = local_instance(settings).run_coordinator
    if not isinstance(coordinator, QueuedRunCoordinator):
        return 4, 1
    config = coordinator.get_run_queue_config()
    limits = {limit["key"]: limit["limit"] for limit in config.tag_concurrency_limits or []}
    return limits.get(tags.JOB, 4), limits.get(tags.COLLECTION_ID, 1)

"""Launching the export job: validated run config and tags, and runs against the local instance.

The CLI, schedules, sensors and the API all come through here, so a bad request is refused
with the same message before it becomes a run.
"""

import multiprocessing.forkserver
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from export_pipeline.contract import ExportResponse
from export_pipeline.engine.shards import shard_count
from export_pipeline.errors import (
    PUBLISHED_NOTHING,
    EnvironmentProblem,
    ExportPipelineError,
    from_dict,
    guard,
)
from export_pipeline.export import ExportLifecycle
from export_pipeline.orchestration import sqlite_quiet, tags
from export_pipeline.orchestration.config import ExportConfig, executor_config
from export_pipeline.orchestration.instance import local_instance
from export_pipeline.orchestration.job import export_collection, reconstructable_job
from export_pipeline.orchestration.ops import Progress
from export_pipeline.orchestration.resources import (
    resources_from,
    step_outputs_of,
    step_outputs_of_run,
    step_outputs_on_storage,
)
from export_pipeline.settings import Settings, settings_environment
from export_pipeline.storage import open_storage
from export_pipeline.store import Store
from export_pipeline.store.catalog import catalog_path


@dataclass(frozen=True)
class ExportLaunch:
    """Everything a run of the export job needs: its run config and its tags."""

    run_config: dict[str, Any]
    tags: dict[str, str]

    def run_request(self, run_key: str | None = None) -> dg.RunRequest:
        """A RunRequest for a schedule or sensor."""
        return dg.RunRequest(run_key=run_key, run_config=self.run_config, tags=self.tags)


def prepare(
    store: Store,
    namespace: str,
    collection: str,
    body: dict[str, Any] | None,
    trigger: tags.Trigger,
) -> ExportLaunch:
    """Validate the request and resolve the collection; raises the CLI's errors otherwise."""
    config = ExportConfig.of(namespace, collection, body)
    found_ns, found = store.resolve(namespace, collection)
    shards = shard_count(
        store.settings.shards, found.document_count, threads=store.settings.duckdb_threads
    )
    run_config = {
        "namespace": namespace,
        "collection": collection,
        **config.config_fields(),
        "shards": shards,
        "executor": store.settings.executor,
        "celery_broker": store.settings.celery_broker,
    }
    # refused now rather than in a step: a celery run without a broker, or without S3 storage
    executor_config(shards, store.settings.executor, store.settings.celery_broker)
    if shards > 1 and store.settings.executor == "celery":
        step_outputs_on_storage(store.settings.storage_uri)
    return ExportLaunch(run_config, tags.export_tags(found_ns, found, config.format, trigger))


@dataclass(frozen=True)
class ExportRun:
    """A finished run of the export job."""

    run_id: str
    response: ExportResponse
    manifest: dict[str, Any]


def execute(
    settings: Settings,
    namespace: str,
    collection: str,
    body: dict[str, Any] | None,
    trigger: tags.Trigger,
    instance: dg.DagsterInstance | None = None,
) -> ExportRun:
    """Run one export in this process as a run of the job, recorded in the instance."""
    with guard(settings.home_dir, "home", PUBLISHED_NOTHING):
        launch = prepare(Store(settings), namespace, collection, body, trigger)
        return run_launch(launch, settings, instance or local_instance(settings))


def run_launch(
    launch: ExportLaunch,
    settings: Settings,
    instance: dg.DagsterInstance,
    run_id: str | None = None,
) -> ExportRun:
    """One run of the job in this process for a prepared launch; the core's error if it fails."""
    # The instance records every event: a full or read-only DAGSTER_HOME fails the launch
    # itself, outside any op.
    if in_processes(launch.run_config):
        return _run_in_processes(launch, settings, instance)
    with (
        guard(Path(instance.root_directory), "Dagster instance", PUBLISHED_NOTHING),
        sqlite_quiet.quiet(instance.root_directory),
    ):
        if settings.catalog is None:  # a PostgreSQL catalog has no file to hold
            sqlite_quiet.hold(catalog_path(settings.home_dir))
        result = export_collection.execute_in_process(
            run_config=launch.run_config,
            # recovery: the run names its process, so a killed one is marked failed
            tags={**launch.tags, **tags.owner_tags()},
            run_id=run_id,
            instance=instance,
            # one process: the step outputs stay in its memory
            resources=resources_from(settings),
            raise_on_error=False,
        )
    if not result.success:  # its failed step reclaimed what the export wrote
        raise run_error(result)
    return _finished(result)


def in_processes(run_config: dict[str, Any]) -> bool:
    """Whether the run's steps run in processes of their own (several shards, on local
    processes or Celery workers)."""
    return run_config.get("shards", 1) > 1 and run_config.get("executor", "local") != "in_process"


def _finished(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> ExportRun:
    """A successful run's response and manifest (the publish step's output)."""
    progress: Progress = result.output_for_node("publish_files")
    assert progress.response is not None and progress.manifest is not None
    return ExportRun(result.run_id, progress.response, progress.manifest)


def _run_in_processes(
    launch: ExportLaunch, settings: Settings, instance: dg.DagsterInstance
) -> ExportRun:
    """A run whose shards run in parallel processes (the multiprocess executor): each step's
    process rebuilds the job and its resources from the environment, to which this
    launch's settings are exported while it runs."""
    with (
        guard(Path(instance.root_directory), "Dagster instance", PUBLISHED_NOTHING),
        settings_environment(settings),
        _forkserver_of_this_environment(),
        dg.execute_job(
            reconstructable_job(step_outputs_of(settings)),
            instance=instance,
            run_config=launch.run_config,
            tags={**launch.tags, **tags.owner_tags()},
        ) as result,
    ):
        try:
            if not result.success:
                abandon_run(instance, result.run_id, settings)
                raise run_error(result)
            return _finished(result)  # outputs are read while the result is open
        finally:
            if settings.executor == "celery":  # the steps' outputs, on the storage, go too
                with suppress(Exception):
                    open_storage(settings).discard(step_outputs_of_run(result.run_id))


_forkserver_environment: dict[str, str] | None = None


@contextmanager
def _forkserver_of_this_environment() -> Iterator[None]:
    """The step processes are forked from a forkserver, which keeps the environment it was
    started in: one started for a launch with other settings (another home) is stopped, so
    that this launch's steps get a new one started in this environment."""
    global _forkserver_environment
    current = {k: v for k, v in os.environ.items() if k.startswith(("EXPORT_PIPELINE_", "DAGSTER"))}
    if _forkserver_environment is not None and _forkserver_environment != current:
        stop = getattr(multiprocessing.forkserver._forkserver, "_stop", None)
        if stop is not None:  # CPython's; without it the old server's settings would win
            stop()
    _forkserver_environment = current
    yield


def abandon_run(instance: dg.DagsterInstance, run_id: str, settings: Settings) -> None:
    """Whatever a failed run's export left, reclaimed: a step that fails cleans up after
    itself, but one whose process was killed cannot (the run's tags name the export)."""
    run = instance.get_run_by_id(run_id)
    export_id = run.tags.get(tags.EXPORT_ID) if run is not None else None
    if export_id:
        ExportLifecycle(settings).abandon(export_id)


def run_error(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> ExportPipelineError:
    """The error a failed run stands for, as the core raised it where it can be recovered."""
    return error_of_events(result.all_events, result.run_id)


def error_of_events(events: Iterable[dg.DagsterEvent], run_id: str) -> ExportPipelineError:
    """The error a failed run stands for, from its events: its first failed step's `error`
    metadata (the core's error), else that step's message."""
    for event in events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        metadata = data.user_failure_data.metadata if data.user_failure_data else {}
        found = metadata["error"].value if "error" in metadata else None
        if isinstance(found, Mapping):  # what ops.py records: the core error's to_dict()
            error = from_dict(found)
            if isinstance(error, EnvironmentProblem):  # the API names the run, not the path
                error.details = {**(error.details or {}), "run_id": run_id}
            return error
        message = data.error.message.strip() if data.error else "the export failed"
        return ExportPipelineError(f"{event.step_key}: {message} (run {run_id})")
    return ExportPipelineError(f"the export run {run_id} failed")

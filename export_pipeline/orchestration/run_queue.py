"""The API's exports in a distributed deployment: submitted to the Dagster deployment's run
queue (EXPORT_PIPELINE_DAGSTER_URL) through its GraphQL API, and waited for.

The daemon's QueuedRunCoordinator dequeues and launches each run within the limits of the
instance's dagster.yaml, as it does for the launchpad, schedules and sensors; the API only
submits, polls and, past its time limit, terminates. What a run published, or why it failed,
is read back from the shared instance (DAGSTER_PG_URL), the catalog and the storage.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import dagster as dg
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from export_pipeline.errors import ExportPipelineError, RunTimedOut, ServiceUnavailable
from export_pipeline.links import export_response, published_manifest
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.instance import local_instance
from export_pipeline.orchestration.job import JOB_NAME
from export_pipeline.orchestration.launch import (
    ExportLaunch,
    ExportRun,
    abandon_run,
    error_of_events,
)
from export_pipeline.settings import Settings
from export_pipeline.store import Store

log = logging.getLogger(__name__)

LOCATION = "export_pipeline"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository a code location's one Definitions makes
POLL_SECONDS = 0.5
# After a termination, how long the run has to reach its end before what it wrote is left
# to the sweep (reclaiming it under a run still writing would race the run).
TERMINATION_GRACE_SECONDS = 30
REQUEST_TIMEOUT_SECONDS = 30


class RunQueue:
    """Exports as runs of the Dagster deployment at `settings.dagster_url`."""

    def __init__(self, settings: Settings) -> None:
        if not settings.dagster_url:
            raise ValueError("RunQueue needs EXPORT_PIPELINE_DAGSTER_URL")
        self.settings = settings
        self.url = settings.dagster_url.rstrip("/")
        self.shown_url = _without_credentials(self.url)

    def _client(self) -> DagsterGraphQLClient:
        # One per call: the client's HTTP transport is not safe to share between threads.
        parts = urlsplit(self.url)
        return DagsterGraphQLClient(
            parts.hostname or "",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            path_prefix=parts.path.rstrip("/"),
            timeout=REQUEST_TIMEOUT_SECONDS,
        )

    def check(self) -> None:
        """Raise unless the deployment's GraphQL endpoint answers a query."""
        answer = requests.post(
            f"{self.url}/graphql", json={"query": "{ version }"}, timeout=REQUEST_TIMEOUT_SECONDS
        )
        answer.raise_for_status()
        if "data" not in answer.json():
            raise ServiceUnavailable(f"no GraphQL answer from {self.shown_url}")

    def run(self, launch: ExportLaunch, timeout: float) -> ExportRun:
        """Submit one export, wait for its run to end (queueing counts against `timeout`):
        the published export, or the error the run failed with."""
        deadline = time.monotonic() + timeout
        run_id = self._submit(launch)
        status = self._wait(run_id, deadline)
        if status is None:
            self._terminate(run_id)
            raise RunTimedOut(
                f"the export took longer than {timeout:g} s and was cancelled (run {run_id})"
            )
        instance = local_instance(self.settings)
        run = instance.get_run_by_id(run_id)
        if run is None:  # the API reads another instance than the deployment runs in
            raise ExportPipelineError(
                f"run {run_id} ended {status.value}, but this API's Dagster instance does not hold"
                " it: DAGSTER_PG_URL must name the deployment's instance"
            )
        if status == dg.DagsterRunStatus.SUCCESS:
            return self._published(run, launch)
        # A step that fails cleans up after itself; one whose process died could not.
        abandon_run(instance, run_id, self.settings)
        if status == dg.DagsterRunStatus.CANCELED:
            raise ExportPipelineError(f"the export run {run_id} was cancelled")
        failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        raise error_of_events(
            [entry.dagster_event for entry in failures if entry.dagster_event], run_id
        )

    def _submit(self, launch: ExportLaunch) -> str:
        """The new run's id; ServiceUnavailable (nothing launched) if it was not taken."""
        try:
            return self._client().submit_job_execution(
                JOB_NAME,
                repository_location_name=LOCATION,
                repository_name=REPOSITORY,
                run_config=launch.run_config,
                tags=launch.tags,
            )
        except DagsterGraphQLClientError as exc:
            reason = _reason(exc)
            log.warning("the run queue at %s did not take an export: %s", self.shown_url, reason)
            raise ServiceUnavailable(
                f"the Dagster deployment at {self.shown_url} did not take the export ({reason}):"
                " nothing was launched",
                {"dagster_url": self.shown_url},
            ) from None

    def _wait(self, run_id: str, deadline: float) -> dg.DagsterRunStatus | None:
        """The run's final status, or None at the deadline. A webserver that stops answering
        for a while is waited out: the run goes on without it."""
        while True:
            try:
                status = self._client().get_run_status(run_id)
            except DagsterGraphQLClientError as exc:
                log.warning("run %s: no status from %s: %s", run_id, self.shown_url, _reason(exc))
                status = None
            if status is not None and status in FINISHED:
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _terminate(self, run_id: str) -> None:
        """Terminate the run (a queued one is cancelled before it starts); once it has ended,
        reclaim what its export wrote."""
        try:
            self._client().terminate_run(run_id)
        except DagsterGraphQLClientError as exc:  # it may have ended meanwhile
            log.warning("run %s: termination refused: %s", run_id, _reason(exc))
        instance = local_instance(self.settings)
        deadline = time.monotonic() + TERMINATION_GRACE_SECONDS
        while True:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                break
            if time.monotonic() >= deadline:
                log.warning("run %s: still running after termination: left to the sweep", run_id)
                return
            time.sleep(POLL_SECONDS)
        if run is not None:
            abandon_run(instance, run_id, self.settings)

    def _published(self, run: dg.DagsterRun, launch: ExportLaunch) -> ExportRun:
        """A successful run's A1 response (links signed now) and manifest."""
        export_id = run.tags.get(tags.EXPORT_ID)
        if not export_id:
            raise ExportPipelineError(f"run {run.run_id} succeeded without an export id tag")
        store = Store(self.settings)
        manifest, storage = published_manifest(
            store,
            self.settings,
            launch.run_config["namespace"],
            export_id,
            launch.tags[tags.COLLECTION_ID],
        )
        response = export_response(manifest, storage, self.settings.url_ttl_seconds)
        return ExportRun(run.run_id, response, manifest)

    def close(self) -> None:
        """Nothing to stop: the deployment's processes are not the API's."""


FINISHED = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)


def _reason(exc: DagsterGraphQLClientError) -> str:
    """What a client error says, without the query and variables the client quotes in some
    messages (the run config names the broker, whose URL may hold a password)."""
    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.ConnectionError):
        return "not reachable"
    if len(exc.args) >= 2 and isinstance(exc.args[1], str):
        return f"{exc.args[0]}: {exc.args[1][:300]}"
    if len(exc.args) >= 1 and isinstance(exc.args[0], str) and "\n" not in exc.args[0]:
        return exc.args[0]
    return type(cause).__name__ if cause is not None else "an error"


def _without_credentials(url: str) -> str:
    """The URL as errors and logs show it: no user or password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()

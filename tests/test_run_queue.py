"""The API of a distributed deployment (EXPORT_PIPELINE_DAGSTER_URL): each export submitted
to the deployment's run queue over GraphQL, dequeued by a real `dagster-daemon`, its shards
run by real `export-pipeline worker` Celery processes; PostgreSQL (catalog, instance), Redis
and an S3 server (tests/services.py, conftest.py). The API runs in process (TestClient)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from celery import Celery
from deployment import INDEXES, WORKTREE, deployment_settings, doc, same_files, worker_env, workers
from fastapi.testclient import TestClient
from helpers import (
    RESPONSE_FIELDS,
    export_job,
    free_port,
    make_collection,
    stop_group,
    write_jsonl,
)
from kill_child import armed_environment
from services import LocalS3, PostgresServer, RedisServer

from export_pipeline.api.app import create_app
from export_pipeline.contract import ExportResponse
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.instance import local_instance
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Store
from export_pipeline.store import segments as segments_module

pytestmark = pytest.mark.slow  # a whole deployment: daemon, webserver, two workers


@dataclass
class Deployment:
    """The API's settings, its key, a collection of three segments and the pause marker."""

    settings: Settings
    key: str
    collection: Collection
    bucket: str
    marker: Path  # a shard pauses at its file's end once `<marker>.claimed` is removed


@contextmanager
def dagster_process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    """A Dagster command in its own process group, stopped (TERM, then KILL) afterwards."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=WORKTREE, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield
    finally:
        stop_group(process)


def wait_for_code_location(url: str, log: Path, timeout: float = 180) -> None:
    """Until the webserver has loaded the export_pipeline code location."""
    query = b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"}'  # noqa: E501
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(
                f"{url}/graphql", data=query, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                entries = json.load(answer)["data"]["workspaceOrError"]["locationEntries"]
            if [entry["loadStatus"] for entry in entries] == ["LOADED"]:
                return
        except (OSError, KeyError, TypeError):
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresServer,
    redis: RedisServer,
    s3_server: LocalS3,
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("queue")
    with pytest.MonkeyPatch.context() as env, ExitStack() as stack:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-leak",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_server.endpoint,
            "DAGSTER_PG_URL": postgres.create_database().replace(
                "postgresql://", "postgresql+psycopg2://"
            ),
            "DAGSTER_HOME": str(folder / "dagster-home"),
        }.items():
            env.setenv(name, value)
        bucket = f"queue-{os.getpid()}"
        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        port = free_port()
        settings = deployment_settings(
            folder / "api-home",
            postgres.create_database(),
            bucket,
            redis.url(),
            dagster_url=f"http://127.0.0.1:{port}",
            api_timeout_seconds=120,
        )
        # The deployment's instance, from the project's template: PostgreSQL, a run queue.
        assert isinstance(local_instance(settings).run_coordinator, dg.QueuedRunCoordinator)

        env.setattr(segments_module, "ROW_GROUP_ROWS", 10)  # three segments of small groups
        store = Store(settings)
        ns, col = make_collection(store, [doc(n) for n in range(30)], INDEXES)
        for start in (30, 60):
            docs = [doc(n) for n in range(start, start + 30)]
            store.ingest(ns.id, col.id, write_jsonl(folder / "in", docs))
        key, _ = store.keys.create([ns], "queue")

        marker = folder / "paused"
        marker.with_name("paused.claimed").touch()  # armed, but no shard pauses yet
        # Every process of the deployment gets the same environment (a home of its own).
        shared = {
            **worker_env(settings, folder / "dagster-processes-home"),
            "EXPORT_PIPELINE_EXECUTOR": "celery",
            "EXPORT_PIPELINE_SHARDS": "3",
        }
        bin_dir = Path(sys.executable).parent
        address = ["-h", "127.0.0.1", "-p", str(port)]
        webserver_log = folder / "webserver.log"
        stack.enter_context(
            dagster_process(
                [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                shared,
                folder / "daemon.log",
            )
        )
        stack.enter_context(
            dagster_process(
                [str(bin_dir / "dagster-webserver"), *address, "-w", "workspace.yaml"],
                shared,
                webserver_log,
            )
        )
        armed = armed_environment(folder, "export-writing", marker)
        stack.enter_context(
            workers(2, settings, folder, {"EXPORT_PIPELINE_EXECUTOR": "celery", **armed})
        )
        wait_for_code_location(settings.dagster_url or "", webserver_log)
        yield Deployment(settings, key, store.catalog.collection(ns, col.id), bucket, marker)


@contextmanager
def api(deployment: Deployment, **update: Any) -> Iterator[TestClient]:
    """The API in process, over the deployment, with these settings changed."""
    settings = deployment.settings.model_copy(update=update)
    with TestClient(create_app(settings)) as client:
        client.headers.update(
            {"Authorization": f"Bearer {deployment.key}", "X-Namespace": "test-ns"}
        )
        yield client


def export(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/collections/things/export", json=body)


def keys_under(deployment: Deployment, prefix: str = "") -> list[str]:
    s3 = boto3.session.Session().client("s3")
    found = s3.list_objects_v2(Bucket=deployment.bucket, Prefix=prefix).get("Contents", [])
    return [entry["Key"] for entry in found]


def test_an_export_is_queued_launched_by_the_daemon_and_sharded_on_the_workers(
    deployment: Deployment,
) -> None:
    body = {"format": "csv", "include_vectors": True}
    with api(deployment) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
        started = time.monotonic()
        response = export(client, body)
        seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert set(response.json()) == RESPONSE_FIELDS
    answer = ExportResponse.model_validate(response.json())
    assert answer.document_count == 90
    instance = local_instance(deployment.settings)
    run_id = response.headers["X-Dagster-Run-Id"]
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags[tags.TRIGGER] == "api" and tags.KEY_ID in run.tags
    assert run.tags[tags.EXPORT_ID] in answer.s3_path
    # Queued by the coordinator, then launched (this Dagster records no RUN_DEQUEUED event).
    kinds = [entry.dagster_event_type for entry in instance.all_logs(run_id)]
    assert dg.DagsterEventType.RUN_ENQUEUED in kinds and dg.DagsterEventType.RUN_STARTING in kinds
    assert kinds.index(dg.DagsterEventType.RUN_ENQUEUED) < kinds.index(
        dg.DagsterEventType.RUN_STARTING
    )
    # The shards ran in the Celery workers' pool processes.
    manifest_key = answer.s3_path.split("/", 3)[3].rsplit("/", 1)[0] + "/manifest.json"
    s3 = boto3.session.Session().client("s3")
    manifest = json.loads(s3.get_object(Bucket=deployment.bucket, Key=manifest_key)["Body"].read())
    stats = Celery(broker=deployment.settings.celery_broker).control.inspect(timeout=2).stats()
    pool_pids = {str(pid) for worker in stats.values() for pid in worker["pool"]["processes"]}
    shard_pids = {shard["worker"].rsplit(":", 1)[-1] for shard in manifest["shards"]}
    assert len(manifest["shards"]) == 3 and shard_pids <= pool_pids
    # The same files as the same export with every step in this process.
    col = deployment.collection
    alone = export_job(col.namespace_id, col.id, body, settings=deployment.settings)
    same_files(answer, alone.response, "csv", s3)
    assert not [key for key in keys_under(deployment) if "/.parts/" in key]
    print(f"queued export answered in {seconds:.1f} s")


def test_a_refused_request_answers_as_the_pool_does_and_launches_nothing(
    deployment: Deployment,
) -> None:
    instance = local_instance(deployment.settings)
    runs = instance.get_runs_count()
    bad = {"filters": {"AND": [{"field": "n", "operator": "bogus", "value": 1}]}}
    with api(deployment) as client:
        response = export(client, bad)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "ValidationError"
    assert [d["loc"] for d in error["details"]] == ["filters.AND.0.operator"]
    # A deployment that does not answer: 503 naming it, and nothing launched.
    closed = f"http://127.0.0.1:{free_port()}"
    with api(deployment, dagster_url=closed) as client:
        response = export(client, {"format": "json"})
        ready = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "ServiceUnavailableError"
    assert closed in response.json()["error"]["message"]
    assert ready.status_code == 503 and set(ready.json()["error"]["details"]) == {"run_queue"}
    assert instance.get_runs_count() == runs


def test_an_export_over_the_time_limit_is_terminated_and_leaves_nothing(
    deployment: Deployment,
) -> None:
    marker = deployment.marker
    marker.with_name("paused.claimed").unlink()  # the first shard to finish writing pauses
    try:
        with api(deployment, api_timeout_seconds=30) as client:
            response = export(client, {"format": "json", "include_vectors": True})
        assert marker.exists(), "the time limit passed before any shard paused"
    finally:
        if marker.exists():  # the paused process would otherwise hold its worker for good
            os.kill(int(marker.read_text()), signal.SIGKILL)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["type"] == "GatewayTimeout"
    run_id = error["message"].rsplit("run ", 1)[1].rstrip(")")
    run = local_instance(deployment.settings).get_run_by_id(run_id)
    assert run is not None
    assert run.status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    export_id = run.tags[tags.EXPORT_ID]
    assert not [key for key in keys_under(deployment) if export_id in key]
    s3 = boto3.session.Session().client("s3")
    assert s3.list_multipart_uploads(Bucket=deployment.bucket).get("Uploads", []) == []

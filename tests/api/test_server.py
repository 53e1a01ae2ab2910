"""The real server: `export-pipeline serve` in a subprocess on a loopback port, publishing to
a real S3-compatible server (moto), driven by a plain HTTP client as the seed's curl would be."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PEOPLE, SEED_MATCHES, SEED_REQUEST, running_server

from export_pipeline.orchestration import tags
from export_pipeline.settings import Settings
from export_pipeline.store import Store

pytestmark = pytest.mark.slow  # a server process started for the module


@dataclass
class Server:
    url: str
    settings: Settings
    key: str
    log: Path

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 120) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read()), _lower(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), _lower(error.headers)

    def export(self, collection: str, body: Any, namespace: str = "team-a") -> Any:
        headers = {"Authorization": f"Bearer {self.key}", "X-Namespace": namespace}
        return self.call("POST", f"/v1/collections/{collection}/export", body, headers)


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[Server]:
    import boto3

    root = tmp_path_factory.mktemp("server")
    env = {
        **os.environ,
        "EXPORT_PIPELINE_HOME": str(root / "home"),
        "EXPORT_PIPELINE_STORAGE": "s3://served-exports/api",
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-leak",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server.endpoint,
    }
    env.pop("DAGSTER_HOME", None)
    session = boto3.session.Session(
        aws_access_key_id="testing-key-id", aws_secret_access_key="x", region_name="us-east-1"
    )
    session.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket="served-exports")
    settings = Settings(home=root / "home")
    store = Store(settings)
    source = root / "people.jsonl"
    source.write_text("".join(json.dumps(doc) + "\n" for doc in PEOPLE))
    for name in ("team-a", "team-b"):
        ns = store.catalog.create_namespace(name)
        for collection in ("people", "staff"):
            made = store.catalog.create_collection(ns, collection, [])
            store.ingest(ns.id, made.id, source)
    key, _ = store.keys.create([store.catalog.namespace("team-a")], "server test")
    log = root / "server.log"
    with running_server(env, log) as url:
        yield Server(url, settings, key, log)


def test_seed_curl_body_returns_a_working_presigned_link(server: Server) -> None:
    status, response, headers = server.export("people", SEED_REQUEST)
    assert status == 200, response
    assert response["s3_path"].startswith("s3://served-exports/api/")
    assert "X-Amz-Signature=" in response["download_url"]
    with urllib.request.urlopen(response["download_url"], timeout=30) as download:
        table = pq.read_table(pa.BufferReader(download.read()))
    assert table.column("document_id").to_pylist() == SEED_MATCHES
    assert table.column_names == ["document_id", "metadata"]
    run = dg.DagsterInstance.from_config(str(server.settings.dagster_home)).get_run_by_id(
        headers["x-dagster-run-id"]
    )
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags[tags.TRIGGER] == "api"


def test_fresh_links_for_an_earlier_export(server: Server) -> None:
    status, first, _ = server.export("staff", {"format": "json"})
    assert status == 200, first
    export_id = first["s3_path"].split("/")[-2]
    auth = {"Authorization": f"Bearer {server.key}", "X-Namespace": "team-a"}
    status, again, _ = server.call("GET", f"/v1/collections/staff/exports/{export_id}", None, auth)
    assert status == 200, again
    with urllib.request.urlopen(again["download_url"], timeout=30) as download:
        assert len(download.read().splitlines()) == len(PEOPLE)


def test_sixteen_concurrent_exports_complete_while_health_answers(server: Server) -> None:
    bodies = [("people" if i % 2 else "staff", {"format": ["json", "csv", "parquet"][i % 3]})
              for i in range(16)]  # fmt: skip
    health: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            started = time.monotonic()
            assert server.call("GET", "/healthz", timeout=10)[0] == 200
            health.append(time.monotonic() - started)
            time.sleep(0.2)

    watcher = threading.Thread(target=poll_health)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as workers:
            results = list(workers.map(lambda job: server.export(*job), bodies))
    finally:
        done.set()
        watcher.join()
    assert [status for status, _, _ in results] == [200] * 16, [r[1] for r in results]
    assert [response["document_count"] for _, response, _ in results] == [len(PEOPLE)] * 16
    assert len({response["s3_path"] for _, response, _ in results}) == 16
    assert len(health) >= 3  # /healthz kept answering (each within its 10 s timeout)
    run_ids = {headers["x-dagster-run-id"] for _, _, headers in results}
    instance = dg.DagsterInstance.from_config(str(server.settings.dagster_home))
    assert all(instance.get_run_by_id(r).status == dg.DagsterRunStatus.SUCCESS for r in run_ids)


def test_errors_over_the_wire_use_the_envelope(server: Server) -> None:
    status, body, _ = server.call("POST", "/v1/collections/people/export", {})
    assert (status, body["error"]["type"]) == (401, "AuthenticationError")
    status, body, _ = server.export("people", {}, namespace="team-b")
    assert (status, body["error"]["type"]) == (403, "UnauthorizedError")
    status, body, _ = server.export("people", {"format": "xml"})
    assert (status, body["error"]["type"]) == (422, "ValidationError")


def test_the_server_log_holds_no_keys_and_no_signatures(server: Server) -> None:
    server.export("people", {"format": "csv"})
    log = server.log.read_text()
    assert "POST /v1/collections/people/export" in log  # the access log is on
    assert server.key not in log and "sk_" not in log
    assert "X-Amz-Signature" not in log and "testing-secret-key" not in log

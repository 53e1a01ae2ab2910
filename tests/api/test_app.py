"""The HTTP API in process (TestClient): H1-H4, A1, R1-R8 over HTTP, the error envelope.

A small warm worker pool runs the exports, as `export-pipeline serve` does; tests/api/
test_server.py runs the real server.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from helpers import (
    PEOPLE,
    RESPONSE_FIELDS,
    SEED_MATCHES,
    SEED_REQUEST,
    ids_of,
    local_path,
    quick_first,
    read_csv,
)

from export_pipeline.api.app import create_app
from export_pipeline.errors import ExportPipelineError
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.instance import local_instance
from export_pipeline.orchestration.launch import prepare
from export_pipeline.orchestration.pool import RunPool
from export_pipeline.settings import Settings
from export_pipeline.store import Store


class World:
    """Two namespaces with a collection each, a key for each, and a client."""

    def __init__(self, settings: Settings, client: TestClient) -> None:
        self.settings, self.client = settings, client
        self.store = Store(settings)

    def post(self, collection: str, body: Any = None, *, key: str | None = None,
             namespace: str | None = "team-a", **kwargs: Any) -> Any:  # fmt: skip
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if namespace is not None:
            headers["X-Namespace"] = namespace
        if body is not None:
            kwargs["json"] = body
        return self.client.post(f"/v1/collections/{collection}/export", headers=headers, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("api") / "home"
    settings = Settings(home=home, api_timeout_seconds=120)
    store = Store(settings)
    for ns_name in ("team-a", "team-b"):
        ns = store.catalog.create_namespace(ns_name)
        col = store.catalog.create_collection(ns, "people", [])
        source = home.parent / f"{ns_name}.jsonl"
        source.write_text("".join(json.dumps(doc) + "\n" for doc in PEOPLE))
        store.ingest(ns.id, col.id, source)
    pool = RunPool(settings, workers=2, per_collection=1)
    try:
        with TestClient(create_app(settings, pool)) as client:
            world = World(settings, client)
            a, b = store.catalog.namespace("team-a"), store.catalog.namespace("team-b")
            world.key_a, world.key_a_record = store.keys.create([a], "a")
            world.key_b, _ = store.keys.create([b], "b")
            world.key_ab, _ = store.keys.create([a, b], "both")
            yield world
    finally:
        pool.close()


def error_of(response: Any, status: int, type_name: str) -> dict[str, Any]:
    """H3: the envelope, every status alike."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "status", "error"}
    assert body["success"] is False and body["status"] == status
    assert set(body["error"]) == {"message", "type", "details"}
    assert body["error"]["type"] == type_name
    assert "Traceback" not in response.text
    return body["error"]


# --- A1, R1-R8: the seed's request over HTTP ------------------------------------------


@pytest.mark.parametrize("fmt", quick_first(["json", "csv", "parquet"]))
def test_A1_seed_body_verbatim_returns_the_seed_response(world: World, fmt: str) -> None:
    body = {**SEED_REQUEST, "format": fmt, "include_vectors": True}
    response = world.post("people", body, key=world.key_a)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == RESPONSE_FIELDS
    assert result["format"] == fmt and result["document_count"] == len(SEED_MATCHES)
    assert ids_of(result["download_url"], fmt) == SEED_MATCHES
    assert local_path(result["s3_path"]).stat().st_size == result["file_size_bytes"]
    assert result["vectors_download_url"] is not None  # a collection without indexes: ids only


def test_R1_body_is_optional(world: World) -> None:
    response = world.post("people", key=world.key_a)
    assert response.status_code == 200, response.text
    assert response.json()["format"] == "parquet" and response.json()["document_count"] == 5


def test_H2_namespace_from_query_when_no_header(world: World) -> None:
    ns_id = world.store.catalog.namespace("team-b").id
    response = world.post("people", {"format": "csv"}, key=world.key_b, namespace=None,
                          params={"namespace": ns_id})  # fmt: skip
    assert response.status_code == 200, response.text
    assert read_csv(response.json()["s3_path"])[0][0] == "document_id"


def test_H2_collection_addressed_by_id_or_name(world: World) -> None:
    ns = world.store.catalog.namespace("team-a")
    col = world.store.catalog.collection(ns, "people")
    for identifier in ("people", col.id):
        response = world.post(identifier, {"format": "json"}, key=world.key_a, namespace=ns.id)
        assert response.status_code == 200, response.text
        assert f"/{col.id}/" in response.json()["s3_path"]


def test_H4_each_request_is_a_tagged_dagster_run_without_the_key(world: World) -> None:
    response = world.post("people", {"format": "json"}, key=world.key_a)
    run_id = response.headers["X-Dagster-Run-Id"]
    run = local_instance(world.settings).get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags[tags.TRIGGER] == "api"
    assert run.tags[tags.KEY_ID] == world.key_a_record.key_id
    assert run.tags[tags.NAMESPACE] == "team-a" and run.tags[tags.COLLECTION] == "people"
    assert run.tags[tags.EXPORT_ID] in response.json()["s3_path"]
    assert not any(world.key_a in value for value in run.tags.values())


# --- H1, H3: every error status with its envelope -------------------------------------


def test_H1_missing_key_is_401(world: World) -> None:
    error = error_of(world.post("people", {}), 401, "AuthenticationError")
    assert "Authorization" in error["message"]


@pytest.mark.parametrize("header", ["Bearer sk_nope", "Basic abc", "Bearer", "sk_x"])
def test_H1_unknown_or_malformed_key_is_401(world: World, header: str) -> None:
    error_of(
        world.post("people", {}, headers={"Authorization": header}), 401, "AuthenticationError"
    )


def test_H1_revoked_key_is_401(world: World) -> None:
    ns = world.store.catalog.namespace("team-a")
    key, record = world.store.keys.create([ns], "soon revoked")
    assert world.post("people", {"format": "json"}, key=key).status_code == 200
    world.store.keys.revoke(record.key_id)
    error_of(world.post("people", {"format": "json"}, key=key), 401, "AuthenticationError")


def test_H2_missing_namespace_is_400(world: World) -> None:
    error_of(world.post("people", {}, key=world.key_a, namespace=None), 400, "BadRequestError")


@pytest.mark.parametrize("namespace", ["team-b", "no-such-namespace", "ns_000000000000"])
def test_H3_other_namespace_is_403_whether_or_not_it_exists(world: World, namespace: str) -> None:
    error = error_of(world.post("people", {}, key=world.key_a, namespace=namespace), 403,
                     "UnauthorizedError")  # fmt: skip
    assert error["message"] == f"this key may not use namespace {namespace!r}"


def test_H3_isolation_holds_both_ways(world: World) -> None:
    ns_a = world.store.catalog.namespace("team-a")
    error_of(world.post("people", {}, key=world.key_b, namespace=ns_a.id), 403, "UnauthorizedError")
    assert (
        world.post("people", {"format": "json"}, key=world.key_ab, namespace="team-b").status_code
        == 200
    )


def test_H3_missing_collection_is_404(world: World) -> None:
    error = error_of(world.post("nobody", {}, key=world.key_a), 404, "NotFoundError")
    assert "nobody" in error["message"]


def test_H3_invalid_request_is_422_with_locations(world: World) -> None:
    body = {
        "filters": {"AND": [{"field": "age", "operator": "bogus", "value": 1}]},
        "sample_size": 0,
    }
    error = error_of(world.post("people", body, key=world.key_a), 422, "ValidationError")
    assert {d["loc"] for d in error["details"]} == {"filters.AND.0.operator", "sample_size"}


@pytest.mark.parametrize("size", [0, 5 * 1024 * 1024 - 1, "6000000", 6e6])
def test_H3_max_file_size_bytes_out_of_range_or_not_an_integer_is_422(
    world: World, size: Any
) -> None:
    body = {"format": "json", "max_file_size_bytes": size}
    error = error_of(world.post("people", body, key=world.key_a), 422, "ValidationError")
    assert [d["loc"] for d in error["details"]] == ["max_file_size_bytes"]


def test_max_file_size_bytes_gives_parts_and_fresh_links_for_each(world: World) -> None:
    body = {"format": "csv", "include_vectors": True, "max_file_size_bytes": 5 * 1024 * 1024}
    response = world.post("people", body, key=world.key_a)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == RESPONSE_FIELDS | {"parts"}
    names = [(part["role"], part["name"]) for part in result["parts"]]
    assert names == [("documents", "documents-00000.csv"), ("vectors", "people_vectors-00000.csv")]
    assert result["s3_path"] == result["parts"][0]["s3_path"]
    assert read_csv(result["parts"][0]["download_url"])[0][0] == "document_id"
    export_id = result["s3_path"].split("/")[-2]
    headers = {"Authorization": f"Bearer {world.key_a}", "X-Namespace": "team-a"}
    again = world.client.get(f"/v1/collections/people/exports/{export_id}", headers=headers)
    assert again.status_code == 200, again.text
    assert [part["s3_path"] for part in again.json()["parts"]] == [
        part["s3_path"] for part in result["parts"]
    ]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"[1, 2]", "application/json"),
     (b'{"format": "csv"}', "text/plain"), (b'{"format": "csv"}', "")],
)  # fmt: skip
def test_H3_non_json_body_or_wrong_content_type_is_422(
    world: World, content: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = world.post("people", key=world.key_a, content=content, headers=headers)
    error_of(response, 422, "ValidationError")


DEEP = b'{"filters": ' * 10_000 + b"{}" + b"}" * 10_000  # parsed, this was a 500 and a traceback


@pytest.mark.parametrize(
    ("content", "message", "loc"),
    [
        (DEEP, "the body is nested deeper than 64 levels (at line 1, column 769)", "(body)"),
        (b"[" * 64 + b"]" * 64, "the body must be a JSON object", "(body)"),  # as deep as allowed
        (b'{"format": "c\xe9sv"}', "the body is not valid JSON: 'utf-8' codec can't", "(body)"),
        (b'{"filters": ' * 63 + b"{}" + b"}" * 63, "invalid request: filters", "filters"),
    ],
    ids=["nested 10,000 levels", "nested 64 levels", "not UTF-8", "deep filters"],
)
def test_H3_deep_or_undecodable_bodies_are_422_and_launch_nothing(
    world: World, content: bytes, message: str, loc: str
) -> None:
    runs = len(local_instance(world.settings).get_runs())
    response = world.post(
        "people", key=world.key_a, content=content, headers={"Content-Type": "application/json"}
    )
    error = error_of(response, 422, "ValidationError")
    assert error["message"].startswith(message)
    assert error["details"][0]["loc"].startswith(loc)
    assert len(local_instance(world.settings).get_runs()) == runs


def test_H3_body_over_one_mib_is_413(world: World) -> None:
    big = {"select_fields": ["document_id"], "padding": "x" * (1024 * 1024)}
    error_of(world.post("people", big, key=world.key_a), 413, "PayloadTooLargeError")


@contextmanager
def one_off(world: World, **update: Any) -> Iterator[tuple[TestClient, RunPool, Settings]]:
    """A second app over the same store with other settings, and its own one-worker pool."""
    settings = world.settings.model_copy(update=update)
    pool = RunPool(settings, workers=1, per_collection=1)
    try:
        with TestClient(create_app(settings, pool)) as client:
            client.headers.update(
                {"Authorization": f"Bearer {world.key_a}", "X-Namespace": "team-a"}
            )
            yield client, pool, settings
    finally:
        pool.close()


@pytest.mark.slow
def test_H3_failed_run_is_500_naming_what_failed_and_the_run(world: World, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with one_off(world, storage=(blocker / "x").as_uri()) as (client, _, _):
        response = client.post("/v1/collections/people/export", json={})
    error = error_of(response, 500, "InternalServerError")
    assert error["message"].startswith(
        "Not a directory in the server's exports folder: nothing was published (run "
    )
    assert str(tmp_path) not in response.text  # the server's paths stay in its log


@pytest.mark.slow
def test_H3_over_the_time_limit_is_504_and_the_run_is_cancelled(world: World) -> None:
    with one_off(world, api_timeout_seconds=0.3) as (client, pool, settings):
        # A stopped worker cannot finish in time, however fast a run of PEOPLE is.
        (worker,) = pool._workers
        os.kill(worker.process.pid, signal.SIGSTOP)
        response = client.post("/v1/collections/people/export", json={})
        error = error_of(response, 504, "GatewayTimeout")
        run_id = error["message"].rsplit("run ", 1)[1].rstrip(")")
        assert not list(settings.scratch_dir.glob("exp_*"))
        # The worker was ended and replaced: the pool runs the next export to the end.
        store = Store(settings)
        launch = prepare(store, "team-a", "people", {"format": "json"}, trigger="api")
        assert pool.run(launch, timeout=120).response.document_count == len(PEOPLE)
        run = local_instance(settings).get_run_by_id(run_id)
        assert run is None or run.status == dg.DagsterRunStatus.CANCELED  # never a success


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_run_and_is_replaced(world: World) -> None:
    with one_off(world) as (_, pool, settings):
        (worker,) = pool._workers
        worker.process.kill()  # as the OOM killer would
        worker.process.join()
        launch = prepare(Store(settings), "team-a", "people", {"format": "json"}, trigger="api")
        with pytest.raises(ExportPipelineError, match=r"worker process died \(run ") as info:
            pool.run(launch, timeout=120)
        run_id = str(info.value).rsplit("run ", 1)[1].rstrip(")")
        run = local_instance(settings).get_run_by_id(run_id)
        assert run is None or run.status == dg.DagsterRunStatus.FAILURE
        assert pool.run(launch, timeout=120).response.document_count == len(PEOPLE)


@pytest.mark.slow
def test_rate_limit_answers_429_with_retry_after(world: World) -> None:
    with one_off(world, api_rate_limit_per_minute=2) as (client, _, _):
        path = "/v1/collections/nobody/export"  # cheap: 404 after the limiter
        assert [client.post(path, json={}).status_code for _ in range(2)] == [404, 404]
        response = client.post(path, json={})
        error_of(response, 429, "RateLimitError")
        assert 1 <= int(response.headers["Retry-After"]) <= 30


# --- Fresh links, health, OpenAPI ------------------------------------------------------


def test_get_export_signs_fresh_links_within_its_collection_and_namespace(world: World) -> None:
    first = world.post("people", {"format": "csv"}, key=world.key_a).json()
    export_id = first["s3_path"].split("/")[-2]
    headers = {"Authorization": f"Bearer {world.key_a}", "X-Namespace": "team-a"}
    again = world.client.get(f"/v1/collections/people/exports/{export_id}", headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["s3_path"] == first["s3_path"]
    assert again.json()["document_count"] == 5
    error_of(
        world.client.get("/v1/collections/people/exports/exp_nope", headers=headers),
        404,
        "NotFoundError",
    )
    other = {"Authorization": f"Bearer {world.key_b}", "X-Namespace": "team-a"}
    error_of(
        world.client.get(f"/v1/collections/people/exports/{export_id}", headers=other),
        403,
        "UnauthorizedError",
    )
    cross = {"Authorization": f"Bearer {world.key_ab}", "X-Namespace": "team-b"}
    error_of(
        world.client.get(f"/v1/collections/people/exports/{export_id}", headers=cross),
        404,
        "NotFoundError",
    )


def test_health_and_readiness(world: World) -> None:
    assert world.client.get("/healthz").json() == {"status": "ok"}
    assert world.client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.slow
def test_openapi_documents_the_seed_request_errors_and_bearer(world: World) -> None:
    document = world.client.get("/openapi.json").json()
    operation = document["paths"]["/v1/collections/{collection_identifier}/export"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    assert content["example"] == SEED_REQUEST
    schema = document["components"]["schemas"]["ExportRequest"]
    for field in ("format", "include_vectors", "select_fields", "filters", "sample_size"):
        assert schema["properties"][field]["description"], field
    assert {"401", "403", "404", "422", "500"} <= set(operation["responses"])
    assert operation["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {p["name"] for p in operation["parameters"]} >= {"X-Namespace", "namespace"}
    assert world.client.get("/docs").status_code == 200


@pytest.mark.slow
def test_readiness_names_what_is_unreachable(world: World, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with one_off(world, storage=(blocker / "exports").as_uri()) as (client, _, _):
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200  # up, but not ready
    error = error_of(response, 503, "ServiceUnavailableError")
    assert set(error["details"]) == {"storage"}


def test_M5_changed_since_over_http(world: World) -> None:
    response = world.post("people", {"format": "json", "changed_since": 1}, key=world.key_a)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == RESPONSE_FIELDS | {"deletes_download_url", "deletes_s3_path",
                                             "deleted_count"}  # fmt: skip
    assert result["document_count"] == 0 and result["deleted_count"] == 0
    assert local_path(result["deletes_s3_path"]).name == "deletes.json"
    elsewhere = world.post("people", {"format": "json"}, key=world.key_b, namespace="team-b")
    other_id = local_path(elsewhere.json()["s3_path"]).parent.name
    for watermark in (99, other_id):
        refused = world.post("people", {"changed_since": watermark}, key=world.key_ab)
        error = error_of(refused, 422, "ValidationError")
        assert "run a full export" in error["message"]

"""The FastAPI app: the seed's endpoint, fresh links, health; every export a Dagster run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from export_pipeline.api import errors
from export_pipeline.api.auth import RateLimiter, caller
from export_pipeline.api.openapi import (
    ERROR_RESPONSES,
    EXPORT_BODY,
    NAMESPACE_PARAMETERS,
    install_schemas,
)
from export_pipeline.contract import ExportResponse
from export_pipeline.errors import InvalidInput
from export_pipeline.jsontext import load_json
from export_pipeline.links import ExportLinks, fresh_links
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.dead_runs import collect
from export_pipeline.orchestration.instance import local_instance
from export_pipeline.orchestration.launch import prepare
from export_pipeline.orchestration.pool import RunPool, instance_limits
from export_pipeline.orchestration.run_queue import RunQueue
from export_pipeline.settings import Settings
from export_pipeline.storage import open_storage
from export_pipeline.store import Store

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024
bearer = HTTPBearer(auto_error=False, scheme_name="An API key: Authorization: Bearer sk_...")


def create_app(settings: Settings | None = None, pool: Runner | None = None) -> FastAPI:
    """The API over the store and instance the settings point at; `pool`: what runs the
    exports (default: `runner(settings)`)."""
    settings = settings or Settings()
    limiter = RateLimiter(settings.api_rate_limit_per_minute)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What killed exports and ingests left is reclaimed, and their runs stop blocking
        # the queue, before the first request.
        await run_in_threadpool(_recover, settings)
        app.state.pool = pool or await run_in_threadpool(runner, settings)
        yield
        if pool is None:
            app.state.pool.close()

    app = FastAPI(
        title="export_pipeline",
        version="0.1.0",
        description="Export a collection's documents and vectors to json, csv or parquet.",
        lifespan=lifespan,
    )
    errors.install(app)

    @app.post(
        "/v1/collections/{collection_identifier}/export",
        summary="Export Collection",
        response_model=ExportResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=EXPORT_BODY,
    )
    async def export_collection(collection_identifier: str, request: Request) -> JSONResponse:
        """Export a collection's documents (and vectors) to a file behind a download link."""
        raw = await _body(request, settings.api_body_timeout_seconds)
        run = await run_in_threadpool(
            _export, settings, limiter, request, collection_identifier, raw, app.state.pool
        )
        body = run.response.model_dump(mode="json")
        return JSONResponse(body, headers={"X-Dagster-Run-Id": run.run_id})

    @app.get(
        "/v1/collections/{collection_identifier}/exports/{export_id}",
        summary="Get an export, with fresh download links",
        response_model=ExportLinks,
        responses=ERROR_RESPONSES,
        openapi_extra={"parameters": NAMESPACE_PARAMETERS},
    )
    def get_export(collection_identifier: str, export_id: str, request: Request) -> ExportLinks:
        """An earlier export's summary, with newly presigned links (links expire)."""
        store = Store(settings)
        _, found_ns = caller(request, store, limiter)
        _, collection = store.resolve(found_ns.id, collection_identifier)
        return fresh_links(store, settings, found_ns.id, export_id, collection.id)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        """Answers while exports run."""
        return {"status": "ok"}

    @app.get("/readyz", summary="Store, storage and Dagster instance reachable")
    def readyz() -> JSONResponse:
        """503 naming what is not reachable."""
        checks = {
            "store": lambda: Store(settings).catalog.check(),
            "storage": lambda: open_storage(settings).check(),
            "dagster": lambda: local_instance(settings).get_runs(limit=1),
        }
        if settings.dagster_url:  # exports go to the deployment's run queue
            checks["run_queue"] = RunQueue(settings).check
        failed = {}
        for name, check in checks.items():
            try:
                check()
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
        if failed:
            return errors.envelope(503, "ServiceUnavailableError", "not ready", failed)
        return JSONResponse({"status": "ready"})

    install_schemas(app, bearer)
    return app


Runner = RunPool | RunQueue


def runner(settings: Settings) -> Runner:
    """What runs the API's exports: the Dagster deployment's run queue where
    EXPORT_PIPELINE_DAGSTER_URL names one, else warm workers of this process (a request pays
    for its export, not for starting Python and Dagster) within the instance's limits."""
    if settings.dagster_url:
        return RunQueue(settings)
    return RunPool(settings, *instance_limits(settings))


def _recover(settings: Settings) -> None:
    try:
        report = collect(settings)
    except Exception as exc:  # the API serves anyway; the next start (or `gc`) tries again
        log.warning("recovery at start failed: %s", exc)
        return
    log.info("recovery at start: %s", report.as_dict())


async def _body(request: Request, timeout: float) -> bytes:
    """The raw body, refused past 1 MiB without reading the rest, and past `timeout` seconds
    (a client trickling its body would otherwise hold the request open for good)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise errors.PayloadTooLargeError(f"request body over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise errors.PayloadTooLargeError(f"request body over {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise errors.RequestTimeoutError(
            f"request body not received within {timeout:g} s ({size} bytes arrived)"
        ) from None
    return b"".join(chunks)


def _request_body(request: Request, raw: bytes) -> dict[str, Any] | None:
    """R1-R8 bodies are optional JSON objects."""
    if not raw.strip():
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise InvalidInput(
            "the body must be JSON sent as Content-Type: application/json",
            [{"loc": "(body)", "msg": f"content type {media or 'missing'}"}],
        )
    body = load_json(raw, "the body")
    if body is not None and not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object", [{"loc": "(body)", "msg": "not an object"}]
        )
    return body


def _export(
    settings: Settings,
    limiter: RateLimiter,
    request: Request,
    collection_identifier: str,
    raw: bytes,
    pool: Runner,
) -> Any:
    store = Store(settings)
    key, found_ns = caller(request, store, limiter)
    body = _request_body(request, raw)
    launch = prepare(store, found_ns.id, collection_identifier, body, trigger="api")
    launch = replace(launch, tags={**launch.tags, tags.KEY_ID: key.key_id})
    return pool.run(launch, settings.api_timeout_seconds)

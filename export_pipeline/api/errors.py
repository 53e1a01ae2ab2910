"""H3: one error envelope for every status, and the errors only HTTP has."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from export_pipeline.errors import (
    ConflictError,
    EnvironmentProblem,
    ExportPipelineError,
    InsufficientStorage,
    InvalidInput,
    NotFoundError,
    RunTimedOut,
    ServiceUnavailable,
    from_pydantic,
)

log = logging.getLogger("export_pipeline.api")


class ApiError(ExportPipelineError):
    """An error only the HTTP layer raises; `status` is its HTTP status."""

    status = 500


class AuthenticationError(ApiError):
    """No key, or a key that is unknown or revoked."""

    type_name, status = "AuthenticationError", 401


class UnauthorizedError(ApiError):
    """The key may not act in that namespace (whether or not it exists)."""

    type_name, status = "UnauthorizedError", 403


class BadRequestError(ApiError):
    """The request misses something the endpoint needs (the namespace)."""

    type_name, status = "BadRequestError", 400


class PayloadTooLargeError(ApiError):
    """The body is over the limit."""

    type_name, status = "PayloadTooLargeError", 413


class RequestTimeoutError(ApiError):
    """The client did not send the whole request in time; the connection is closed after."""

    type_name, status = "RequestTimeoutError", 408


class RateLimitError(ApiError):
    """The key made too many requests; Retry-After says when to come back."""

    type_name, status = "RateLimitError", 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after_seconds": retry_after})
        self.retry_after = retry_after


_STATUS = {
    InvalidInput: 422,
    NotFoundError: 404,
    ConflictError: 409,
    RunTimedOut: 504,
    ServiceUnavailable: 503,  # the run queue did not take the export: nothing launched
    InsufficientStorage: 507,  # a full disk: the request may succeed once space is freed
}


class ErrorBody(BaseModel):
    """What went wrong."""

    message: str
    type: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """H3: every error response."""

    success: bool = False
    status: int
    error: ErrorBody


def envelope(status: int, type_name: str, message: str, details: Any = None) -> JSONResponse:
    """The H3 envelope as a response."""
    return JSONResponse(envelope_body(status, type_name, message, details), status_code=status)


def envelope_body(status: int, type_name: str, message: str, details: Any = None) -> dict[str, Any]:
    """The H3 envelope as data (the server writes it itself where no app runs: 408)."""
    body = ErrorEnvelope(
        status=status, error=ErrorBody(message=message, type=type_name, details=details)
    )
    return body.model_dump()


def status_of(exc: ExportPipelineError) -> int:
    """The HTTP status of a core or API error."""
    if isinstance(exc, ApiError):
        return exc.status
    return next((status for cls, status in _STATUS.items() if isinstance(exc, cls)), 500)


def install(app: FastAPI) -> None:
    """Route every error through the envelope; nothing internal reaches a client."""

    @app.exception_handler(ExportPipelineError)
    async def _ours(request: Request, exc: ExportPipelineError) -> JSONResponse:
        status = status_of(exc)
        if isinstance(exc, EnvironmentProblem):
            # The operator reads the path in the log; the client learns what, not where.
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
            exc = exc.for_client()
        type_name = "InternalServerError" if status == 500 else exc.type_name
        response = envelope(status, type_name, exc.message, exc.details)
        if isinstance(exc, RateLimitError):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, RequestTimeoutError):
            # The rest of the body may still come; the connection cannot carry another request.
            response.headers["Connection"] = "close"
            log.warning("%s: %s; answered 408, connection closed", _who(request), exc.message)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = from_pydantic(exc)
        return envelope(422, error.type_name, error.message, error.details)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # A client hanging up is its own business: one line, no traceback, nothing launched
        # (the body is read before anything else happens). Nobody reads the response.
        log.info("%s: disconnected before sending the whole request", _who(request))
        return Response(status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        names = {404: "NotFoundError", 405: "MethodNotAllowedError"}
        return envelope(exc.status_code, names.get(exc.status_code, "HTTPError"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return envelope(500, "InternalServerError", "internal error: the export service failed")


def _who(request: Request) -> str:
    """`127.0.0.1:5555 - POST /path`: who asked for what, as uvicorn's lines name a client."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "client"
    return f"{client} - {request.method} {request.url.path}"

"""The OpenAPI document: the seed's request schema and example, the error envelope, bearer auth.

The export body is read by hand (size limit, optional body, the CLI's validation messages),
so its schema is declared here rather than inferred from a parameter.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer

from export_pipeline.api.errors import ErrorEnvelope
from export_pipeline.contract import SEED_REQUEST_EXAMPLE, ExportRequest

NAMESPACE_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "X-Namespace",
        "in": "header",
        "required": False,
        "description": "Namespace id (ns_...) or name. Required unless ?namespace= is given.",
        "schema": {"type": "string"},
    },
    {
        "name": "namespace",
        "in": "query",
        "required": False,
        "description": "Namespace id or name, used when the X-Namespace header is absent.",
        "schema": {"type": "string"},
    },
]

EXPORT_BODY: dict[str, Any] = {
    "parameters": NAMESPACE_PARAMETERS,
    "requestBody": {
        "required": False,
        "description": "Request model for exporting collection data. Every field is optional.",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ExportRequest"},
                "example": SEED_REQUEST_EXAMPLE,
            }
        },
    },
}

_MEANINGS = {
    400: "No namespace given",
    401: "No key, or an unknown or revoked key (AuthenticationError)",
    403: "The key may not use that namespace (UnauthorizedError)",
    404: "Namespace, collection or export not found (NotFoundError)",
    413: "Body over 1 MiB",
    422: "Invalid request; details list each problem with its location (InvalidInput)",
    429: "Too many requests for this key; see Retry-After",
    500: "The export failed; the message says what failed, with the run id",
    504: "The export ran over the time limit and was cancelled",
    507: "A disk of the server filled up (InsufficientStorageError); nothing was published",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": meaning}
    for status, meaning in _MEANINGS.items()
}


def install_schemas(app: FastAPI, bearer: HTTPBearer) -> None:
    """Add ExportRequest (and its parts) to the components, and the bearer scheme everywhere."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        request = ExportRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(request.pop("$defs", {}))
        schemas["ExportRequest"] = request
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": bearer.scheme_name}
        }
        for path, operations in document["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]

"""The error vocabulary shared by every entry point (CLI exit codes, HTTP statuses)."""

from __future__ import annotations

from typing import Any


class ExportPipelineError(Exception):
    """Base error: carries a user-facing message, a type name and optional details."""

    type_name = "InternalServerError"
    exit_code = 1

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The `{"type", "message", "details"}` object every adapter prints."""
        return {"type": self.type_name, "message": self.message, "details": self.details}


class ValidationError(ExportPipelineError):
    """The input is invalid; nothing was read or written."""

    type_name = "ValidationError"
    exit_code = 2


class NotFoundError(ExportPipelineError):
    """A namespace, collection or export does not exist."""

    type_name = "NotFoundError"
    exit_code = 3


class ConflictError(ExportPipelineError):
    """The request clashes with stored state (a name already taken)."""

    type_name = "ConflictError"
    exit_code = 1


def validation_details(exc: Any, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Turn a pydantic (or FastAPI request) validation error into
    `[{"loc": "filters.AND.0.operator", "msg": ...}]`; a problem with the whole input has loc ""."""
    details = []
    for err in exc.errors():
        loc = [*prefix, *(part for part in err["loc"] if not _is_union_tag(part))]
        msg = err["msg"].removeprefix("Value error, ")
        details.append({"loc": ".".join(str(p) for p in loc), "msg": msg})
    return details


def _is_union_tag(part: str | int) -> bool:
    # Tagged unions add their tag to the location; users think in their own keys.
    return part in ("condition", "group")


def problems(details: list[dict[str, Any]], whole: str = "(body)") -> str:
    """Details in one line, `loc: msg; loc: msg`. A problem without a location is about the
    whole input, named `whole` ("(body)", "(file)"); with `whole=""` its message stands alone."""
    return "; ".join(
        f"{d['loc'] or whole}: {d['msg']}" if d["loc"] or whole else d["msg"] for d in details
    )


def from_pydantic(exc: Any, prefix: tuple[str | int, ...] = ()) -> ValidationError:
    """A ValidationError whose message lists every problem with its location."""
    details = validation_details(exc, prefix)
    return ValidationError(f"invalid request: {problems(details)}", details)


def from_dict(error: dict[str, Any]) -> ExportPipelineError:
    """The error a `to_dict()` stands for (errors cross process and run boundaries as dicts)."""
    kinds = {cls.type_name: cls for cls in (ValidationError, NotFoundError, ConflictError)}
    cls = kinds.get(error.get("type", ""), ExportPipelineError)
    return cls(error["message"], error.get("details"))

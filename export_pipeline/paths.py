"""Field paths (docs/contract.md P1, P2): the grammar, and how a path reaches into a document."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
MAX_SEGMENTS = 10
MAX_LENGTH = 255


class _Missing:
    """The value of a path that a document does not have (P2); distinct from JSON null."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def validate_path(path: str) -> str:
    """Return `path` if it follows P1, else raise ValueError saying why."""
    if not isinstance(path, str):
        raise ValueError("a field path must be a string")
    if len(path) > MAX_LENGTH:
        raise ValueError(f"field path longer than {MAX_LENGTH} characters")
    segments = path.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"field path has more than {MAX_SEGMENTS} segments")
    for segment in segments:
        if not SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid field path {path!r}: each dot-separated segment must match "
                "[A-Za-z0-9_][A-Za-z0-9_-]*"
            )
    return path


FieldPath = Annotated[str, AfterValidator(validate_path)]


def segments(path: str) -> tuple[str, ...]:
    """The dot-separated segments of a valid path."""
    return tuple(validate_path(path).split("."))


def json_path(path: str) -> str:
    """A DuckDB JSON path for a valid P1 path: `$."a"."b"`.

    Quoted keys never index arrays, which is P2; P1 forbids quotes, so the text is safe
    to place in a SQL string literal.
    """
    return "$" + "".join(f'."{segment}"' for segment in segments(path))


def lookup(document: Any, path: str) -> Any:
    """The value at `path` in a parsed document, or MISSING (P2: objects only)."""
    value = document
    for segment in segments(path):
        if not isinstance(value, dict) or segment not in value:
            return MISSING
        value = value[segment]
    return value


def drop_covered(paths: list[str]) -> list[str]:
    """Keep the first occurrence of each path, minus those below another listed path (S2)."""
    unique = list(dict.fromkeys(paths))
    return [
        path
        for path in unique
        if not any(path.startswith(other + ".") for other in unique if other != path)
    ]

"""JSON text from outside (ingest lines, request bodies and files): nesting checked before parsing.

Parsers recurse: a document nested thousands of levels deep exhausts Python's stack (or
orjson's and simdjson's own limits) with an internal error, and one nested past 64 levels
cannot be written to parquet at all (Arrow's C data interface stops at 64). So depth is
measured on the raw bytes first, without parsing, and refused with a message that says where.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from export_pipeline.errors import InvalidInput

# A document (the line, `_vectors` included) nests objects and arrays at most this deep; the
# line itself is level 1. Every writer handles it with room to spare (parquet fails past 64),
# and it is DynamoDB's limit too.
MAX_DOCUMENT_DEPTH = 32
# A request body: the deepest valid one is 35 levels (F4 allows 16 nested groups, each an
# object and a list); anything past this is refused before the parser sees it.
MAX_REQUEST_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = (ord("{"), ord("["))
_CLOSE = (ord("}"), ord("]"))


def nesting_problem(raw: bytes, limit: int) -> str | None:
    """Why `raw` nests deeper than `limit` levels ("nested deeper than N levels at line L,
    column C"), or None. Brackets inside strings do not count."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return None  # cannot nest deeper than it has brackets: the usual case costs two scans
    # Strings blanked to quotes of the same length, so offsets still point into `raw`.
    blanked = _STRING.sub(lambda match: b'"' * len(match[0]), raw)
    codes = np.frombuffer(blanked, dtype=np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE).astype(np.int32)
    depth = np.cumsum(steps)
    deeper = np.flatnonzero(depth > limit)
    if not len(deeper):
        return None
    offset = int(deeper[0])
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return too_deep(limit, line, column)


def too_deep(limit: int, line: int, column: int) -> str:
    """The one wording of "too deep", for JSON here and for YAML (schedules) alike; line and
    column count from 1."""
    return f"nested deeper than {limit} levels (at line {line}, column {column})"


def load_json(raw: bytes | str, what: str, limit: int = MAX_REQUEST_DEPTH) -> Any:
    """Parse JSON text from a user; a InvalidInput naming `what` and the problem otherwise."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    problem = nesting_problem(data, limit)
    if problem is not None:
        raise InvalidInput(f"{what} is {problem}", [{"loc": "(body)", "msg": problem}])
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, and bytes that are not UTF-8
        raise InvalidInput(
            f"{what} is not valid JSON: {exc}", [{"loc": "(body)", "msg": str(exc)}]
        ) from None

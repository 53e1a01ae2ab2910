"""One JSONL line -> (document, vectors): simdjson for well-formed lines, exact Python otherwise.

The fast path never turns vector elements into Python floats: simdjson hands them over as
one buffer. Anything irregular (a parse error, a 19-digit number, duplicate top-level keys)
takes the exact path, which also words the error message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import simdjson

from export_pipeline.filter_models import INT64

VECTORS_KEY = "_vectors"
# Every digit becomes "0", so one substring search finds any run of 19 digits (a regex
# scan costs more than the JSON parse on vector-heavy lines).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_LONG_RUN = b"0" * 19

# The element types simdjson's Array.as_buffer accepts: float64, int64, uint64.
BufferKind = Literal["d", "i", "u"]


class LineProblem(ValueError):
    """The line is not a JSON object within the rules of D4."""


def parse(parser: simdjson.Parser, raw: bytes) -> tuple[dict[str, Any], Any]:
    """The document without `_vectors`, and the `_vectors` value (None when absent)."""
    fast = _fast(parser, raw)
    return fast if fast is not None else _exact(raw)


def _fast(parser: simdjson.Parser, raw: bytes) -> tuple[dict[str, Any], Any] | None:
    if _LONG_RUN in raw.translate(_DIGITS_TO_ZERO):
        return None  # simdjson takes 2^63..2^64 as unsigned; D4 wants them refused
    try:
        root = parser.parse(raw)
    except ValueError:
        return None
    if not isinstance(root, simdjson.Object):
        return None
    keys = _keys(root)  # lazily: items() would turn whole vectors into Python lists
    if keys is None or len(set(keys)) != len(keys):
        return None  # the exact path keeps the last of duplicate keys
    document = {key: _python(root[key]) for key in keys if key != VECTORS_KEY}
    vectors = root[VECTORS_KEY] if VECTORS_KEY in keys else None
    if vectors is not None:
        vectors = _vectors(vectors) if _flat(raw) else _python(vectors)
    # Every proxy into the parser is local, so it is free to parse the next line on return.
    return document, vectors


def _flat(raw: bytes) -> bool:
    """No array directly inside an array anywhere on the line (strings may give false alarms).

    simdjson's as_buffer flattens nested arrays, so a nested vector must be read as a list
    to fail validation as what it is.
    """
    compact = raw.translate(None, b" \t\r\n")
    return b"[[" not in compact and b",[" not in compact


def _python(node: Any) -> Any:
    if isinstance(node, simdjson.Object):
        return node.as_dict()
    if isinstance(node, simdjson.Array):
        return node.as_list()
    return node


def _keys(node: simdjson.Object) -> list[str] | None:
    """The keys to look up lazily, or None where simdjson cannot (a NUL ends its C strings)."""
    keys = list(node.keys())
    return None if any("\x00" in key for key in keys) else keys


def _vectors(node: Any) -> Any:
    names = _keys(node) if isinstance(node, simdjson.Object) else None
    if names is None:
        return _python(node)
    return {name: _vector(node[name]) for name in names}


def _vector(node: Any) -> Any:
    if isinstance(node, simdjson.Array):
        return _numbers(node, "d", np.float64)
    keys = _keys(node) if isinstance(node, simdjson.Object) else None
    if keys is None:
        return _python(node)
    kinds: dict[str, tuple[BufferKind, type]] = {
        "indices": ("i", np.int64),
        "values": ("d", np.float64),
    }
    return {
        key: _numbers(node[key], *kinds[key]) if key in kinds else _python(node[key])
        for key in keys
    }


def _numbers(node: Any, kind: BufferKind, dtype: type) -> Any:
    if not isinstance(node, simdjson.Array):
        return _python(node)
    try:
        return np.frombuffer(node.as_buffer(of_type=kind), dtype=dtype)
    except (TypeError, ValueError):  # mixed or non-numeric elements: validated as a list
        return node.as_list()


def _checked_int(text: str) -> int:
    value = int(text)
    if not INT64[0] <= value <= INT64[1]:
        raise ValueError(f"integer {text} does not fit in 64 bits")
    return value


def _checked_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range for a double")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _exact(raw: bytes) -> tuple[dict[str, Any], Any]:
    try:
        if _LONG_RUN in raw.translate(_DIGITS_TO_ZERO):
            # orjson silently turns integers beyond 64 bits into floats; check them exactly.
            document = json.loads(
                raw,
                parse_int=_checked_int,
                parse_float=_checked_float,
                parse_constant=_reject_constant,
            )
        else:
            document = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise LineProblem(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise LineProblem("a document must be a JSON object")
    return document, document.pop(VECTORS_KEY, None)


def line_of(source: Path, document_id: str, occurrence: int) -> int:
    """The line number of the n-th occurrence of a document id (error path only)."""
    seen = 0
    with open(source, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            # The id may be spelled with escapes in the file, so compare parsed values.
            if orjson.loads(raw).get("document_id") == document_id:
                seen += 1
                if seen == occurrence:
                    return number
    return 0

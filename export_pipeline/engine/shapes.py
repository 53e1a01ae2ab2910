"""JSON structures: DuckDB's `json_structure` of each document, merged here in Python.

Stores and exports group documents by their structure (in DuckDB, per batch) and keep only
the distinct structures with counts; merging those gives the columns of a csv or parquet
export. Merging structures rather than representative documents keeps the work and the
memory proportional to the distinct structures, not to the documents behind them.

The rules are DuckDB's `json_group_structure`, with one refinement: DuckDB spells an empty
object `"JSON"`, like a clash of kinds. In a single document's structure a clash can only
arise where array elements are merged, so outside arrays `"JSON"` is an empty object and
becomes `{}` here; an empty object then merges with objects that have keys (as a merge of
every row would). Inside arrays it stays a clash: an empty object there next to objects
with keys gives JSON text where a merge of every row would give a struct.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

Structure = Any  # a type name (str), an object (dict of Structure) or an array ([Structure])

CLASH = "JSON"
NULL = "NULL"
# An object with more keys than a file may have columns: it can only ever be JSON text, so
# merging stops looking into it (a key per document would make the merge itself quadratic).
WIDE = "JSON (wide)"
_INTEGERS = {"UBIGINT", "BIGINT", "HUGEINT"}


def parse(text: str | bytes) -> Structure:
    """One document's structure (`json_structure(doc)`), with empty objects as `{}`."""
    structure = orjson.loads(text)
    clashes = CLASH in text if isinstance(text, str) else CLASH.encode() in text
    return _empty_objects(structure, in_array=False) if clashes else structure


def _empty_objects(node: Structure, in_array: bool) -> Structure:
    if isinstance(node, dict):
        return {key: _empty_objects(child, in_array) for key, child in node.items()}
    if isinstance(node, list):
        return [_empty_objects(node[0], True)]
    return {} if node == CLASH and not in_array else node


def merge(a: Structure, b: Structure, max_keys: int | None = None) -> Structure:
    """The structure of documents of structures `a` and `b` (json_group_structure's rules);
    an object of more than `max_keys` keys becomes WIDE.

    Objects of `a` are updated in place and may take over parts of `b`: pass structures
    the caller does not use afterwards (merging thousands of keys one shape at a time must
    not copy the keys gathered so far each time).
    """
    if a == WIDE or b == WIDE:
        return WIDE
    if a == NULL:
        return b
    if b == NULL:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        for key, child in b.items():
            a[key] = merge(a[key], child, max_keys) if key in a else child
        return WIDE if max_keys is not None and len(a) > max_keys else a
    if isinstance(a, list) and isinstance(b, list):
        return [merge(a[0], b[0], max_keys)]
    if isinstance(a, str) and isinstance(b, str):
        return _scalar(a, b)
    return CLASH


def _scalar(a: str, b: str) -> str:
    if a == b:
        return a
    if a in _INTEGERS and b in _INTEGERS:
        return "HUGEINT"
    if {a, b} <= _INTEGERS | {"DOUBLE"}:
        return "DOUBLE"
    return CLASH


def merge_all(structures: Iterable[Structure], max_keys: int | None = None) -> Structure | None:
    """The merge of every structure, or None when there are none; WIDE as soon as the top
    level has more than `max_keys` keys."""
    merged: Structure | None = None
    for structure in structures:
        merged = structure if merged is None else merge(merged, structure, max_keys)
        if merged == WIDE:
            return WIDE
    return merged


def has_path(structure: Structure, path: str) -> bool:
    """Whether a document of this (single-document) structure has the P1 path (P2: objects
    only, arrays are never indexed)."""
    node = structure
    for segment in path.split("."):
        if not isinstance(node, dict) or segment not in node:
            return False
        node = node[segment]
    return True


def project(structure: Structure, paths: list[str]) -> Structure:
    """The structure of the document projected to `paths` (S2: parents rebuilt, missing paths
    omitted, an object left empty omitted with them), as `selection.projection_sql` does."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for segment in path.split("."):
            node = node.setdefault(segment, {})
    projected = _project(structure, tree)
    return {} if projected is None else projected


def _project(node: Structure, tree: dict[str, Any]) -> Structure | None:
    if not isinstance(node, dict):
        return None
    kept: dict[str, Structure] = {}
    for key, below in tree.items():
        if key not in node:
            continue
        if not below:
            kept[key] = node[key]
        elif (child := _project(node[key], below)) is not None:
            kept[key] = child
    return kept or None

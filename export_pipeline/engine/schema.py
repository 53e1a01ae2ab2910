"""The shape of the exported documents: parquet types (W4), csv columns (W3), warnings (S3)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from export_pipeline.engine import shapes as shapes_module
from export_pipeline.engine import width

JSON_TEXT = "JSON"
_SCALARS = {
    "VARCHAR": "VARCHAR",
    "BOOLEAN": "BOOLEAN",
    "DOUBLE": "DOUBLE",
    # Ingest keeps integers within int64 (D4), whatever width DuckDB infers.
    "BIGINT": "BIGINT",
    "UBIGINT": "BIGINT",
    "HUGEINT": "BIGINT",
    # A field that is only ever null (or an array of nulls) becomes a string column of nulls.
    "NULL": "VARCHAR",
}

Structure = dict[str, Any] | list[Any] | str
Path_ = tuple[str, ...]


@dataclass
class Shape:
    """What the writers need to know of the exported documents' structure."""

    structure: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    whole_document: bool = False  # too wide for columns: document_id plus the JSON text
    collapsed: list[str] = field(default_factory=list)  # objects made JSON text for width


def shape_of(
    shapes: Iterable[tuple[str, int]],
    select: list[str] | None,
    *,
    fmt: str,
    max_columns: int,
) -> Shape:
    """The merged structure of the exported documents (from their distinct structures and
    counts), which listed paths no document has (S3), and the width limit applied."""
    present = dict.fromkeys(select or [], 0)
    parsed = _parsed(shapes, select, present)
    # JSON lines need no columns; csv and parquet stop merging past what they could hold.
    max_keys = None if fmt == "json" else max_columns
    merged = shapes_module.merge_all(parsed, max_keys)
    for _ in parsed:  # a merge that stopped early still counts where listed paths are (S3)
        pass
    if merged is None or merged == {}:
        merged = _empty_structure(select)
    missing = [path for path, count in present.items() if not count and path != "document_id"]
    warnings = [
        f"selected field {path!r} is not present in any exported document (S3)" for path in missing
    ]
    if fmt == "json":
        return Shape(structure=merged, warnings=warnings)
    fitted = width.fit(merged, max_columns, arrays_whole=fmt == "csv")
    limit = f"EXPORT_PIPELINE_MAX_COLUMNS={max_columns:,}"
    if fitted.whole_document:
        return Shape(
            structure=fitted.structure,
            warnings=[
                *warnings,
                f"the documents have more {fmt} columns than {limit} even with their widest"
                f" objects as JSON text: written as two columns, document_id and"
                f" {width.WHOLE_DOCUMENT!r} (each document's JSON text)",
            ],
            whole_document=True,
        )
    warnings += [
        f"field {path!r} has more keys than {limit}; written as JSON text"
        for path in fitted.too_wide
    ]
    warnings += [
        f"field {path!r} has too many keys to be columns (the file would have"
        f" {fitted.columns:,}, more than {limit}); written as JSON text"
        for path in fitted.collapsed
    ]
    return Shape(
        structure=fitted.structure,
        warnings=warnings,
        collapsed=[*fitted.too_wide, *fitted.collapsed],
    )


def _parsed(
    shapes: Iterable[tuple[str, int]], select: list[str] | None, present: dict[str, int]
) -> Iterator[Structure]:
    """Each structure, projected to the listed paths; counts where each path is present."""
    for text, count in shapes:
        structure = shapes_module.parse(text)
        if select is not None:
            for path in select:
                if shapes_module.has_path(structure, path):
                    present[path] += count
            structure = shapes_module.project(structure, select)
        yield structure


def _empty_structure(select: list[str] | None) -> dict[str, Any]:
    """W5: with no documents, the columns still follow the request: document_id (+ listed)."""
    structure: dict[str, Any] = {"document_id": "VARCHAR"}
    for path in select or []:
        node = structure
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, "NULL")
    return structure


def ordered(structure: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    """Keys in a stable order: document_id first, then listed order (S2) or lexicographic."""
    if select is None:
        return _sorted_object(structure, top=True)
    rank: dict[Path_, int] = {}
    for number, path in enumerate(select):
        parts = tuple(path.split("."))
        for depth in range(1, len(parts) + 1):
            rank.setdefault(parts[:depth], number)
    return _ranked_object(structure, (), rank)


def _sorted_object(node: dict[str, Any], top: bool = False) -> dict[str, Any]:
    keys = sorted(node, key=lambda k: (not (top and k == "document_id"), k.encode()))
    return {key: _sorted(node[key]) for key in keys}


def _sorted(node: Structure) -> Structure:
    if isinstance(node, dict):
        return _sorted_object(node)
    if isinstance(node, list):
        return [_sorted(node[0])]
    return node


def _ranked(node: Structure, prefix: Path_, rank: dict[Path_, int]) -> Structure:
    return _ranked_object(node, prefix, rank) if isinstance(node, dict) else _sorted(node)


def _ranked_object(node: dict[str, Any], prefix: Path_, rank: dict[Path_, int]) -> dict[str, Any]:
    keys = sorted(node, key=lambda k: (rank.get((*prefix, k), len(rank)), k.encode()))
    return {key: _ranked(node[key], (*prefix, key), rank) for key in keys}


def parquet_structure(
    structure: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Structure], list[str]]:
    """W4: from_json structures for the typed columns, and the fields written as JSON text.

    Top-level keys that DuckDB cannot hold in one struct (the empty key, and a key equal to
    an earlier one but for letter case) come back apart, each to be read on its own.
    """
    as_text: list[str] = []
    typed: dict[str, Any] = {}
    apart: dict[str, Structure] = {}
    seen: set[str] = set()
    for key, node in structure.items():
        target = apart if key.lower() in seen or not key else typed
        seen.add(key.lower())
        target[key] = _typed(node, key, as_text)
    return typed, apart, as_text


def _typed(node: Structure, where: str, as_text: list[str]) -> Structure:
    if isinstance(node, list):
        return [_typed(node[0], where + "[]", as_text)]
    if isinstance(node, dict):
        if not _struct_fields(node):
            as_text.append(where)
            return JSON_TEXT
        return {key: _typed(child, f"{where}.{key}", as_text) for key, child in node.items()}
    if node == JSON_TEXT:
        as_text.append(where)
        return JSON_TEXT
    return _SCALARS.get(node, JSON_TEXT)


def _struct_fields(node: dict[str, Any]) -> bool:
    """Whether an object's keys can be struct fields: some keys, none empty, none equal to
    another but for letter case (DuckDB and parquet readers match fields case-insensitively)."""
    lowered = {key.lower() for key in node}
    return bool(node) and "" not in node and len(lowered) == len(node)


def json_leaves(structure: Structure) -> Any:
    """The structure with every non-object value as JSON text, but strings as VARCHAR (a
    from_json structure for csv cells), or None where an object's keys cannot be struct
    fields (empty, or equal but for letter case).

    A leaf whose merged type is VARCHAR only ever holds strings (or null): from_json
    unescapes it as `->> '$'` would, so its cell needs no further JSON work (`cell_sql`).
    """
    if not isinstance(structure, dict):
        return "VARCHAR" if structure == "VARCHAR" else JSON_TEXT
    if not structure:
        return JSON_TEXT
    if not _struct_fields(structure):
        return None
    children = {key: json_leaves(child) for key, child in structure.items()}
    return None if any(child is None for child in children.values()) else children


def leaf_paths(structure: Structure, prefix: Path_ = ()) -> list[Path_]:
    """W3: the paths to every non-object value, objects walked, arrays kept whole."""
    if not isinstance(structure, dict) or not structure:
        return [prefix]
    paths: list[Path_] = []
    for key, child in structure.items():
        paths.extend(leaf_paths(child, (*prefix, key)))
    return paths


def csv_columns(structure: dict[str, Any], select: list[str] | None) -> list[Path_]:
    """W3 columns: listed paths (objects expanded to leaves), or all leaves sorted."""
    if select is None:
        rest = sorted(
            (p for p in leaf_paths(structure) if p != ("document_id",)),
            key=lambda p: ".".join(p).encode(),
        )
        return [("document_id",), *rest]
    columns: list[Path_] = []
    for path in select:
        parts = tuple(path.split("."))
        node: Any = structure
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        columns.extend(leaf_paths(node, parts) if isinstance(node, dict) and node else [parts])
    return columns


def pointer(path: Path_) -> str:
    """A JSON pointer (RFC 6901) for any keys, including ones outside the P1 grammar."""
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in path)


def cell_sql(expression: str, kind: Structure | None) -> str:
    """W3 cell text of a value whose merged type is `kind` (None: unknown, any JSON value):
    strings as is, null/missing empty, everything else as JSON text. A typed string needs
    nothing more, and a value that is never a string (numbers, booleans, arrays: their
    JSON leaf is SQL NULL for null) is its JSON text; only a clash of kinds asks its type."""
    if kind == "VARCHAR":
        return expression
    if kind is None or kind == JSON_TEXT:
        return text_value_sql(expression)
    return f"CAST({expression} AS VARCHAR)"


def text_value_sql(expression: str) -> str:
    """W3 cell text: strings as is, null/missing empty, everything else as JSON text."""
    return (
        f"CASE json_type({expression}) WHEN 'VARCHAR' THEN {expression} ->> '$'"
        f" WHEN 'NULL' THEN NULL ELSE CAST({expression} AS VARCHAR) END"
    )

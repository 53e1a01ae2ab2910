"""What a snapshot's structures prove about the fields a filter reads.

Every segment's sidecar holds each distinct JSON structure of its documents
(`json_structure`, recorded at ingest), so together they say, for a field path, which JSON
types it ever has in the snapshot. A field that is, in every document, missing or a scalar
(never an array or object) can be filtered on its value directly (`filters.compile_filter`'s
`kinds`); any other field keeps the general form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from export_pipeline.filters import SCALAR_TYPES
from export_pipeline.paths import segments
from export_pipeline.store import Collection, Store
from export_pipeline.store.segments import shapes_file

# Structures x fields looked up when planning, at most this many or a quarter of the
# documents: each lookup is a few microseconds, each saves a few microseconds per document.
# Where nearly every document has a structure of its own, the general form stays.
MIN_LOOKUPS = 20_000
_ABSENT = ""  # a structure without the path
_OTHER = "?"  # an array, an object, or a clash of kinds (`JSON`)


def field_kinds(
    store: Store, collection: Collection, paths: list[str], copies: Path | None = None
) -> dict[str, frozenset[str]]:
    """For each of `paths` that is a scalar or missing in every document of the snapshot,
    the JSON types it holds (`SCALAR_TYPES`; empty when no document has it). Paths that
    hold an array or an object anywhere are left out, and all of them when a segment has
    no list of its structures (written by an older version) or there are too many.
    `copies`: where S3 segments are copied to (`DocumentStore.segment_files`)."""
    if not paths:
        return {}
    segments = store.documents.segment_files(collection, copies)
    sidecars = [shapes_file(segment) for segment in segments]
    rows = 0
    for sidecar in sidecars:
        if not sidecar.exists() or "shape" not in pq.read_schema(sidecar).names:
            return {}
        rows += pq.read_metadata(sidecar).num_rows
    if rows * len(paths) > max(MIN_LOOKUPS, collection.document_count // 4):
        return {}
    texts = (
        text
        for sidecar in sidecars
        for text in pq.read_table(sidecar, columns=["shape"]).column(0).to_pylist()
    )
    return scalar_kinds(texts, paths)


def scalar_kinds(structures: Any, paths: list[str]) -> dict[str, frozenset[str]]:
    """`field_kinds` over structure texts (`json_structure` of single documents)."""
    keys = [segments(path) for path in paths]
    found: list[set[str]] = [set() for _ in paths]
    for text in structures:
        structure = orjson.loads(text)
        for path, types in zip(keys, found, strict=True):
            types.add(_type_at(structure, path))
    return {
        path: frozenset(types - {_ABSENT})
        for path, types in zip(paths, found, strict=True)
        if _OTHER not in types
    }


def _type_at(structure: Any, path: tuple[str, ...]) -> str:
    node = structure
    for key in path:  # P2: only objects are entered
        if not isinstance(node, dict) or key not in node:
            return _ABSENT
        node = node[key]
    return node if isinstance(node, str) and node in SCALAR_TYPES else _OTHER

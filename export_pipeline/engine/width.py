"""How wide a csv or parquet export may get: past a number of leaf columns, JSON text.

A collection whose documents each carry keys of their own (user tags as keys, per-customer
attributes) merges into a structure with as many columns as distinct keys, and a columnar
file of N documents x K columns costs N x K cells however few values there are. So past
`max_columns` leaf columns (EXPORT_PIPELINE_MAX_COLUMNS) the widest objects, the one with
the most keys first, are written as one JSON-text column each, until the rest fit. If the
top level alone has more keys than that, the file has two columns: `document_id` and
`document`, each document's JSON text as a json export writes it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from export_pipeline.engine.shapes import CLASH, WIDE, Structure

WHOLE_DOCUMENT = "document"
_ELEMENT = "[]"

Path_ = tuple[str, ...]


@dataclass
class Fitted:
    """A structure that fits, and what had to become JSON text for it."""

    structure: dict[str, Any]
    # paths, e.g. "attrs" or "items[].x": objects of more keys than `limit` (merged as WIDE),
    # then the widest others
    too_wide: list[str] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)
    whole_document: bool = False
    columns: int = 0  # leaf columns left for the rest, before collapsing the widest others


def fit(structure: Structure, limit: int, *, arrays_whole: bool) -> Fitted:
    """Collapse the widest objects of `structure` until at most `limit` leaf columns remain.

    `arrays_whole` counts an array as one column (csv cells) rather than looking into its
    elements (parquet lists of structs). A WIDE top level (more keys than `limit`) leaves
    only the whole document.
    """
    if not isinstance(structure, dict):
        return Fitted(structure={}, whole_document=True)
    fitted = Fitted(structure=structure, too_wide=_replace_wide(structure, (), arrays_whole))
    total = fitted.columns = leaves(structure, arrays_whole)
    if total <= limit:
        return fitted
    heap = [
        (-len(node), -leaves(node, arrays_whole), label(path), path)
        for path, node in _objects(structure, (), arrays_whole)
        if len(node) > 1
    ]
    heapq.heapify(heap)
    done: set[Path_] = set()
    while total > limit and heap:
        *_, path = heapq.heappop(heap)
        if any(path[:depth] in done for depth in range(1, len(path))):
            continue  # inside an object that is already JSON text
        parent, key = _locate(structure, path)
        total -= leaves(parent[key], arrays_whole) - 1
        parent[key] = CLASH
        done.add(path)
        fitted.collapsed.append(label(path))
    fitted.whole_document = total > limit
    return fitted


def _replace_wide(node: Structure, path: Path_, arrays_whole: bool) -> list[str]:
    """Turn WIDE objects into JSON text in place; their paths."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, child in node.items():
            if child == WIDE:
                node[key] = CLASH
                found.append(label((*path, key)))
            else:
                found += _replace_wide(child, (*path, key), arrays_whole)
    elif isinstance(node, list):
        if node[0] == WIDE:
            node[0] = CLASH
            found.append(label((*path, _ELEMENT)))
        else:
            found += _replace_wide(node[0], (*path, _ELEMENT), arrays_whole)
    return found


def leaves(node: Structure, arrays_whole: bool) -> int:
    """Leaf columns under a structure node."""
    if isinstance(node, dict):
        return sum(leaves(child, arrays_whole) for child in node.values()) if node else 1
    if isinstance(node, list):
        return 1 if arrays_whole else leaves(node[0], arrays_whole)
    return 1


def label(path: Path_) -> str:
    """A path as warnings name it: `a.b`, `items[].x`."""
    text = ""
    for part in path:
        text += part if part == _ELEMENT or not text else f".{part}"
    return text


def _objects(node: Structure, path: Path_, arrays_whole: bool) -> list[tuple[Path_, dict]]:
    found: list[tuple[Path_, dict]] = []
    if isinstance(node, dict):
        if path:
            found.append((path, node))
        for key, child in node.items():
            found += _objects(child, (*path, key), arrays_whole)
    elif isinstance(node, list) and not arrays_whole:
        found += _objects(node[0], (*path, _ELEMENT), arrays_whole)
    return found


def _locate(structure: dict[str, Any], path: Path_) -> tuple[Any, Any]:
    """The container holding the node at `path`, and its key (0 for an array element)."""
    parent: Any = structure
    for part in path[:-1]:
        parent = parent[0] if part == _ELEMENT else parent[part]
    last = path[-1]
    return (parent, 0) if last == _ELEMENT else (parent, last)

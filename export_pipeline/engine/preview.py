"""The first rows of an exported documents file as a small markdown table (run metadata)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

CELL_CHARS = 60


def preview_rows(head: pa.Table | None, fmt: str) -> list[dict[str, Any]]:
    """The rows a writer kept from the start of its file, as dicts (json lines parsed)."""
    if head is None or head.num_rows == 0:
        return []
    if fmt == "json":
        return [json.loads(line) for line in head.column(0).to_pylist()]
    # Long text is cut before it becomes Python strings: a cell shows 60 characters anyway.
    columns = [
        pc.utf8_slice_codeunits(column, 0, CELL_CHARS + 1)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        else column
        for column in head.columns
    ]
    return pa.Table.from_arrays(columns, names=head.column_names).to_pylist()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of top-level fields; nested values as compact, shortened JSON."""
    if not rows:
        return "_no documents_"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        "| " + " | ".join(_escape(column) for column in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = (_cell(row[c]) if c in row else "" for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > CELL_CHARS:
        text = text[: CELL_CHARS - 1] + "…"
    return _escape(text)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")

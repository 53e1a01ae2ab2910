"""The first rows of an exported documents file as a small markdown table (run metadata)."""

from __future__ import annotations

import csv
import json
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

PREVIEW_ROWS = 10
CELL_CHARS = 60


def preview_rows(path: Path, fmt: str, rows: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    """Up to `rows` exported documents, read from the start of the file without loading it."""
    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            return []
        return next(parquet.iter_batches(batch_size=rows)).to_pylist()[:rows]
    with open(path, encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            return list(islice(csv.DictReader(handle), rows))
        return [json.loads(line) for line in islice(handle, rows)]


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

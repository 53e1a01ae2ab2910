"""The reference: the hand-written DuckDB `COPY` a person would write for each case.

It reads the same stored segment files as our engine, in a fresh DuckDB connection with
DuckDB's defaults except `threads = 2`. The document structure (`json_group_structure` over
the collection) is hand-written knowledge: it is computed once, before any timing.

- documents: `COPY (SELECT unnest(from_json(doc, <structure>)) FROM read_parquet([...])
  WHERE <hand filter> ORDER BY document_id) TO 'documents.<fmt>'`; zstd for parquet.
- csv documents: the same rows flattened to one column per leaf path, named with dots as
  our engine names them (what `unnest(..., recursive := true)` does, but with full paths);
  array leaves are written with `to_json` so they are JSON text like ours.
- vectors: `COPY (SELECT document_id, vec_<index> AS <index>, ... ORDER BY document_id)`.
- sample: `USING SAMPLE reservoir(N ROWS) REPEATABLE (seed)` on the matches. With vectors
  the sampled rows, vectors included, go into a temporary table that both COPYs read (so
  both files hold the same sample): the reservoir drags the vectors, as hand-written SQL does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.cases import HAND_FILTER_SQL, SAMPLE_SEED, Case
from export_pipeline.store import VectorIndex

COPY_OPTIONS = {
    "parquet": "FORMAT parquet, COMPRESSION zstd",
    "json": "FORMAT json",
    "csv": "FORMAT csv, HEADER true",
}


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def leaf_paths(structure: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths to every non-object value of a json_group_structure, arrays kept whole."""
    if not isinstance(structure, dict) or not structure:
        return [prefix]
    return [path for key, child in structure.items() for path in leaf_paths(child, (*prefix, key))]


def leaf_type(structure: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The structure node at `path` (a type name, or a list for arrays)."""
    node: Any = structure
    for key in path:
        node = node[key]
    return node


def csv_columns(structure: dict[str, Any]) -> list[tuple[str, ...]]:
    """Leaf paths in our engine's csv order: document_id, then dotted names by byte order."""
    rest = [p for p in leaf_paths(structure) if p != ("document_id",)]
    return [("document_id",), *sorted(rest, key=lambda p: ".".join(p).encode())]


def _csv_select(structure: dict[str, Any]) -> str:
    cells = []
    for path in csv_columns(structure):
        expression = ".".join(identifier(key) for key in path)
        if isinstance(leaf_type(structure, path), list):
            expression = f"to_json({expression})"
        cells.append(f"{expression} AS {identifier('.'.join(path))}")
    return ", ".join(cells)


def statements(
    case: Case,
    segments: list[Path],
    structure: dict[str, Any],
    indexes: list[VectorIndex],
    n: int,
    out_dir: Path,
) -> tuple[list[str], int, list[dict[str, str]]]:
    """The SQL to run in order, which statement's count is the document count, the files."""
    source = "read_parquet([" + ", ".join(literal(str(p)) for p in segments) + "])"
    where = f" WHERE {HAND_FILTER_SQL}" if case.filtered else ""
    vector_columns = ", ".join(
        f"{identifier('vec_' + index.name)} AS {identifier(index.name)}" for index in indexes
    )
    size = case.sample_size(n)
    sample = f" USING SAMPLE reservoir({size} ROWS) REPEATABLE ({SAMPLE_SEED})"
    stored_vectors = ", ".join(identifier("vec_" + index.name) for index in indexes)
    sql: list[str] = []
    if size is not None and case.vectors:
        sql.append(
            f"CREATE TEMP TABLE sampled AS SELECT * FROM (SELECT document_id, doc, {stored_vectors}"
            f" FROM {source}{where}){sample}"
        )
        documents_from = vectors_from = "sampled"
    elif size is not None:
        documents_from = f"(SELECT document_id, doc FROM {source}{where}){sample}"
        vectors_from = ""
    else:
        documents_from = f"(SELECT document_id, doc FROM {source}{where})"
        vectors_from = f"(SELECT * FROM {source}{where})"
    unnest = (
        f"SELECT unnest(from_json(doc, {literal(json.dumps(structure))})) FROM {documents_from}"
    )
    if case.fmt == "csv":
        query = f"SELECT {_csv_select(structure)} FROM ({unnest}) ORDER BY document_id"
    else:
        query = f"{unnest} ORDER BY document_id"
    documents = out_dir / f"documents.{case.fmt}"
    files = [{"role": "documents", "path": str(documents)}]
    documents_at = len(sql)
    sql.append(f"COPY ({query}) TO {literal(str(documents))} ({COPY_OPTIONS[case.fmt]})")
    if case.vectors:
        vectors = out_dir / f"vectors.{case.fmt}"
        files.append({"role": "vectors", "path": str(vectors)})
        sql.append(
            f"COPY (SELECT document_id, {vector_columns} FROM {vectors_from}"
            f" ORDER BY document_id) TO {literal(str(vectors))} ({COPY_OPTIONS[case.fmt]})"
        )
    return sql, documents_at, files

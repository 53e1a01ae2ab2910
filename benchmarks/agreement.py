"""Agreement: ours and the reference exported the same documents with the same values.

Both files are read back (parquet with pyarrow, json line by line, csv with the csv module)
and walked in lockstep, so ids must match in the same order. Values are compared after
normalising what is only representation:

- a missing key and a null value are the same (DuckDB's unnest writes every structure key;
  ours writes what the document holds), and an empty csv cell is null;
- numbers compare by value (json `1` equals `1.0`; parquet uint64 equals int64);
- the mixed-type `score` (structure type JSON) compares as a JSON value: in parquet both
  sides hold JSON text; in csv the reference writes JSON text (`"n/a"` quoted) while ours
  writes a string bare and anything else as JSON text, so a cell of ours that is not valid
  JSON is a string;
- csv cells of other leaves are converted by the structure's leaf type (DOUBLE -> float,
  integers -> int, arrays -> parsed JSON text);
- vectors compare as float32 arrays: DuckDB writes FLOAT as double-precision text in json
  and `[a, b]` / `{'indices': ..., 'values': ...}` in csv; ours writes float32's shortest
  form and JSON; parquet lists and fixed-size lists both become float32 arrays.

Samples cannot match row for row (ours ranks ids by a seeded hash, DuckDB's reservoir
draws its own), so for `sample` the check is: the same count, ids sorted and unique, ours
ids a subset of the matches, and our vectors file holding exactly our documents' ids.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from itertools import pairwise, zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.reference import csv_columns, leaf_type

Row = tuple[str, Any]
BATCH = 2048


def _normal(value: Any, node: Any, json_text: bool) -> Any:
    """A document value with representational differences removed (see module doc)."""
    if node == "JSON" and json_text and isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):
        nodes = node if isinstance(node, dict) else {}
        pairs = ((k, _normal(v, nodes.get(k), json_text)) for k, v in value.items())
        return {k: v for k, v in pairs if v is not None}
    if isinstance(value, list):
        item = node[0] if isinstance(node, list) and node else None
        return [_normal(v, item, json_text) for v in value]
    return value


def _csv_cell(cell: str, node: Any, ours: bool) -> Any:
    if cell == "":
        return None
    if isinstance(node, list):
        return json.loads(cell)
    if node == "JSON":
        try:
            return json.loads(cell)
        except ValueError:
            if ours:
                return cell  # ours writes strings bare
            raise
    if node == "DOUBLE":
        return float(cell)
    if node in ("BIGINT", "UBIGINT", "HUGEINT", "INTEGER"):
        return int(cell)
    if node == "BOOLEAN":
        return cell.lower() == "true"
    return cell


def read_documents(path: Path, fmt: str, structure: dict[str, Any], ours: bool) -> Iterator[Row]:
    """(document_id, normalised document) for each row of a documents file, in file order."""
    if fmt == "json":
        with open(path, "rb") as lines:
            for line in lines:
                doc = orjson.loads(line)
                yield doc["document_id"], _normal(doc, structure, json_text=False)
    elif fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(BATCH):
            for doc in batch.to_pylist():
                yield doc["document_id"], _normal(doc, structure, json_text=True)
    else:
        columns = csv_columns(structure)
        nodes = [leaf_type(structure, column) for column in columns]
        with open(path, newline="", encoding="utf-8") as text:
            reader = csv.reader(text)
            header = next(reader)
            expected = [".".join(column) for column in columns]
            if header != expected:
                raise AssertionError(f"csv header {header} != {expected}")
            for cells in reader:
                values = (_csv_cell(c, n, ours) for c, n in zip(cells, nodes, strict=True))
                flat = {h: v for h, v in zip(header, values, strict=True) if v is not None}
                yield cells[0], flat


def _arrow_vectors(array: pa.Array) -> list[Any]:
    if pa.types.is_struct(array.type):
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        indices, values = (child.to_numpy(zero_copy_only=False) for child in array.flatten())
        return [
            (tuple(int(i) for i in indices[r]), np.asarray(values[r], np.float32))
            if valid[r]
            else None
            for r in range(len(array))
        ]
    rows = array.to_numpy(zero_copy_only=False)
    return [None if row is None else np.asarray(row, np.float32) for row in rows]


def _text_vector(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return tuple(value["indices"]), np.asarray(value["values"], np.float32)
    return np.asarray(value, np.float32)


def read_vectors(path: Path, fmt: str, names: list[str]) -> Iterator[Row]:
    """(document_id, {index: float32 array | (indices, values) | None}) per row, in order."""
    if fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(BATCH):
            ids = batch.column("document_id").to_pylist()
            columns = [_arrow_vectors(batch.column(name)) for name in names]
            for number, document_id in enumerate(ids):
                yield document_id, {n: c[number] for n, c in zip(names, columns, strict=True)}
    elif fmt == "json":
        with open(path, "rb") as lines:
            for line in lines:
                row = orjson.loads(line)
                yield row["document_id"], {name: _text_vector(row[name]) for name in names}
    else:
        with open(path, newline="", encoding="utf-8") as text:
            reader = csv.DictReader(text)
            for row in reader:
                # DuckDB writes a struct as {'indices': [..], 'values': [..]}: JSON but quotes.
                parsed = {
                    n: orjson.loads(row[n].replace("'", '"')) if row[n] else None for n in names
                }
                yield row["document_id"], {n: _text_vector(v) for n, v in parsed.items()}


def _same_vectors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        if x is None or y is None:
            if x is not y:
                return False
        elif isinstance(x, tuple):
            if not isinstance(y, tuple) or x[0] != y[0] or not np.array_equal(x[1], y[1]):
                return False
        elif isinstance(y, tuple) or not np.array_equal(x, y):
            return False
    return True


def _show(value: Any) -> str:
    text = json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    return text if len(text) <= 800 else text[:800] + " ..."


def _differences(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        diff = {k: {"ours": a.get(k), "reference": b.get(k)} for k in keys if a.get(k) != b.get(k)}
        return _show(diff)
    return f"ours {_show(a)}\n    reference {_show(b)}"


def compare(
    ours: Iterator[Row], reference: Iterator[Row], same: Callable[[Any, Any], bool]
) -> tuple[int, str | None]:
    """Walk both in lockstep; (rows compared, first difference or None)."""
    rows = 0
    for a, b in zip_longest(ours, reference):
        if a is None or b is None:
            which = "ours" if a is None else "the reference"
            return rows, f"row {rows}: {which} has no more rows"
        if a[0] != b[0]:
            return rows, f"row {rows}: ours has document_id {a[0]!r}, the reference {b[0]!r}"
        if not same(a[1], b[1]):
            return rows, f"document {a[0]!r} differs:\n    {_differences(a[1], b[1])}"
        rows += 1
    return rows, None


def _same_documents(a: Any, b: Any) -> bool:
    return bool(a == b)


def check_rows(
    fmt: str,
    structure: dict[str, Any],
    names: list[str],
    ours: dict[str, Path],
    reference: dict[str, Path],
) -> tuple[int, str | None]:
    """Full and filter: same ids, same order, same values, documents then vectors."""
    rows, problem = compare(
        read_documents(ours["documents"], fmt, structure, ours=True),
        read_documents(reference["documents"], fmt, structure, ours=False),
        _same_documents,
    )
    if problem or "vectors" not in ours:
        return rows, problem and f"documents: {problem}"
    _, problem = compare(
        read_vectors(ours["vectors"], fmt, names),
        read_vectors(reference["vectors"], fmt, names),
        _same_vectors,
    )
    return rows, problem and f"vectors: {problem}"


def read_ids(path: Path, fmt: str) -> list[str]:
    """The document_id of every row of an output file, in order."""
    if fmt == "parquet":
        return pq.read_table(path, columns=["document_id"]).column(0).to_pylist()
    if fmt == "json":
        with open(path, "rb") as lines:
            return [orjson.loads(line)["document_id"] for line in lines]
    with open(path, newline="", encoding="utf-8") as text:
        return [row["document_id"] for row in csv.DictReader(text)]


def check_sample(
    fmt: str, ours: dict[str, Path], reference: dict[str, Path], matches: set[str], size: int
) -> tuple[int, str | None]:
    """Sample: same count, sorted unique ids, ours a subset of the matches, vectors aligned."""
    ids = read_ids(ours["documents"], fmt)
    ref_ids = read_ids(reference["documents"], fmt)
    expected = min(size, len(matches))
    if len(ids) != expected or len(ref_ids) != expected:
        return len(
            ids
        ), f"sample counts: ours {len(ids)}, reference {len(ref_ids)}, want {expected}"
    if any(a >= b for a, b in pairwise(ids)):
        return len(ids), "ours sample ids are not sorted and unique"
    outside = [i for i in ids if i not in matches]
    if outside:
        return len(ids), f"ours sampled {outside[0]!r}, which does not match the filter"
    if "vectors" in ours and read_ids(ours["vectors"], fmt) != ids:
        return len(ids), "ours vectors file does not hold the sampled documents' ids in order"
    return len(ids), None

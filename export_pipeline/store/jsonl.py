"""JSONL documents -> Arrow record batches of stored rows, validating every line (D3, D4)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import simdjson

from export_pipeline.errors import InvalidInput
from export_pipeline.jsontext import MAX_DOCUMENT_DEPTH, nesting_problem
from export_pipeline.store import lines
from export_pipeline.store.catalog import Collection, VectorIndex
from export_pipeline.store.lines import VECTORS_KEY
from export_pipeline.store.segments import internal_suffix, segment_schema, vector_type

SYSTEM_KEYS = ("collection_id", "_internal")  # set by the store, whatever the line says
BATCH_ROWS = 4096
BATCH_BYTES = 16 * 1024 * 1024  # a batch is flushed at this much document text
# A line (one document with its vectors) may hold at most this much: MongoDB's limit for a
# document. Longer lines are refused before they are read whole.
MAX_LINE_BYTES = 16 * 1024 * 1024


class LineError(InvalidInput):
    """A line of an ingest file is invalid; the whole ingest is refused."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}", {"line": line, "problem": problem})


class BatchBuilder:
    """Accumulates validated documents of one collection and emits Arrow record batches."""

    def __init__(self, collection: Collection, now: str) -> None:
        self.collection = collection
        self.indexes = {index.name: index for index in collection.vector_indexes}
        self.schema = segment_schema(collection.vector_indexes)
        self.now = now
        self.suffix = internal_suffix(now, now)
        self.cid = orjson.dumps(collection.id).decode()
        self.parser = simdjson.Parser()
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.docs: list[str] = []
        self.vectors: dict[str, list[Any]] = {name: [] for name in self.indexes}
        self.bytes = 0

    def add(self, raw: bytes, line: int) -> None:
        """Parse and validate one line and queue its document."""
        problem = nesting_problem(raw, MAX_DOCUMENT_DEPTH)
        if problem is not None:  # before any parser recurses into it
            raise LineError(line, f"the document is {problem}")
        try:
            document, vectors = lines.parse(self.parser, raw)
        except lines.LineProblem as exc:
            raise LineError(line, str(exc)) from None
        document_id = document.pop("document_id", None)
        if not isinstance(document_id, str) or not document_id:
            raise LineError(line, "document_id must be a non-empty string")
        vectors = vectors or {}
        if not isinstance(vectors, dict):
            raise LineError(line, f"{VECTORS_KEY} must be an object keyed by vector index name")
        for key in SYSTEM_KEYS:
            document.pop(key, None)
        unknown = set(vectors) - set(self.indexes)
        if unknown:
            raise LineError(line, f"unknown vector index {sorted(unknown)[0]!r}")
        for name, index in self.indexes.items():
            value = vectors.get(name)
            self.vectors[name].append(None if value is None else _vector(index, value, line))
        body = orjson.dumps(document).decode()
        head = '{"document_id":' + orjson.dumps(document_id).decode()
        tail = ',"collection_id":' + self.cid + self.suffix
        self.docs.append(head + ("," + body[1:-1] if len(body) > 2 else "") + tail)
        self.ids.append(document_id)
        self.bytes += len(raw)

    def __len__(self) -> int:
        return len(self.ids)

    def flush(self) -> pa.RecordBatch:
        """The queued documents as one record batch; the queue starts empty again."""
        columns = [
            pa.array(self.ids, pa.string()),
            pa.array([self.now] * len(self.ids), pa.string()),
            pa.array(self.docs, pa.string()),
        ]
        for name, index in self.indexes.items():
            columns.append(_vector_array(index, self.vectors[name]))
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self._reset()
        return batch


def _vector(index: VectorIndex, value: Any, line: int) -> Any:
    where = f"vector {index.name!r}"
    if index.type == "dense":
        if not isinstance(value, list | np.ndarray) or len(value) != index.dimensions:
            raise LineError(line, f"{where} must be a list of {index.dimensions} numbers")
        return _floats(value, line, where)
    if not isinstance(value, dict) or set(value) != {"indices", "values"}:
        raise LineError(line, f'{where} must be {{"indices": [...], "values": [...]}}')
    indices = _indices(value["indices"], index, line, where)
    values = value["values"]
    if not isinstance(values, list | np.ndarray) or len(indices) != len(values):
        raise LineError(line, f"{where}: indices and values must be lists of equal length")
    return {"indices": indices, "values": _floats(values, line, where)}


def _indices(indices: Any, index: VectorIndex, line: int, where: str) -> np.ndarray:
    if isinstance(indices, list):
        if not all(type(i) is int for i in indices):
            raise LineError(line, f"{where}: indices must be integers in [0, {index.dimensions})")
        indices = np.asarray(indices, dtype=np.int64)
    if not isinstance(indices, np.ndarray):
        raise LineError(line, f"{where}: indices and values must be lists of equal length")
    if len(indices) and (indices.min() < 0 or indices.max() >= index.dimensions):
        raise LineError(line, f"{where}: indices must be integers in [0, {index.dimensions})")
    if len(np.unique(indices)) != len(indices):
        raise LineError(line, f"{where}: indices must be unique")
    return indices.astype(np.int32)


def _floats(values: list[Any] | np.ndarray, line: int, where: str) -> np.ndarray:
    if isinstance(values, list):
        if any(isinstance(v, bool) for v in values):  # numpy would read true as 1.0
            raise LineError(line, f"{where} must hold numbers, not booleans")
        try:
            values = np.asarray(values)
        except (TypeError, ValueError):  # ragged nesting
            raise LineError(line, f"{where} must hold numbers") from None
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise LineError(line, f"{where} must hold numbers")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        array = values.astype(np.float32)
    if not np.isfinite(array).all():
        raise LineError(line, f"{where} must hold finite float32 numbers")
    return array


def _vector_array(index: VectorIndex, values: list[Any]) -> pa.Array:
    kind = vector_type(index)
    if index.type == "dense":
        present = [v for v in values if v is not None]
        flat = np.concatenate(present) if present else np.empty(0, np.float32)
        mask = np.array([v is None for v in values], dtype=bool)
        # A null slot still occupies `dimensions` values in a fixed-size list.
        full = np.zeros((len(values), index.dimensions), np.float32)
        if present:
            full[~mask] = flat.reshape(-1, index.dimensions)
        return pa.FixedSizeListArray.from_arrays(
            pa.array(full.reshape(-1)), index.dimensions, mask=pa.array(mask)
        )
    rows = [
        None if v is None else {"indices": v["indices"].tolist(), "values": v["values"].tolist()}
        for v in values
    ]
    return pa.array(rows, kind)


def read_lines(source: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line; a line over `max_bytes` is refused
    without being read whole."""
    for number in count(1):
        raw = source.readline(max_bytes + 2)  # room for the limit and a CRLF line end
        if not raw:
            return
        if len(raw.rstrip(b"\r\n")) > max_bytes:
            limit = f"{max_bytes:,} bytes ({max_bytes // (1024 * 1024)} MiB)"
            raise LineError(number, f"the line is longer than {limit}, the document limit")
        if raw.strip():
            yield number, raw


def batches(
    source: BinaryIO,
    collection: Collection,
    now: str,
) -> Iterator[pa.RecordBatch]:
    """Parse and validate JSONL lines into record batches of at most BATCH_ROWS documents or
    about BATCH_BYTES of text; blank lines are skipped."""
    rows, max_bytes = BATCH_ROWS, BATCH_BYTES
    builder = BatchBuilder(collection, now)
    for number, raw in read_lines(source):
        builder.add(raw, number)
        if len(builder) >= rows or builder.bytes >= max_bytes:
            yield builder.flush()
    if len(builder):
        yield builder.flush()

"""JSONL documents -> Arrow record batches of stored rows, validating every line (D3, D4)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from export_pipeline.contract import INT64
from export_pipeline.errors import ValidationError
from export_pipeline.store.catalog import Collection, VectorIndex

VECTORS_KEY = "_vectors"
SYSTEM_KEYS = ("collection_id", "_internal")  # set by the store, whatever the line says
BATCH_ROWS = 4096
# Every digit becomes "0", so one substring search finds any run of 19 digits (a regex
# scan costs more than the JSON parse on vector-heavy lines).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_LONG_RUN = b"0" * 19


def vector_column(index_name: str) -> str:
    """The segment column holding one vector index."""
    return f"vec_{index_name}"


def vector_type(index: VectorIndex) -> pa.DataType:
    """W4 vector types: dense fixed_size_list<float32>, sparse struct of lists."""
    if index.type == "dense":
        return pa.list_(pa.float32(), index.dimensions)
    return pa.struct([("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))])


def segment_schema(indexes: list[VectorIndex]) -> pa.Schema:
    """The columns of a stored segment: id, creation time, the document's JSON text, vectors."""
    fields = [
        pa.field("document_id", pa.string(), nullable=False),
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("doc", pa.string(), nullable=False),
    ]
    fields += [pa.field(vector_column(index.name), vector_type(index)) for index in indexes]
    return pa.schema(fields)


def internal_suffix(created_at: str, updated_at: str) -> str:
    """The tail of every stored document: `_internal` last, fixed width (upserts rely on it)."""
    return f',"_internal":{{"created_at":"{created_at}","updated_at":"{updated_at}"}}}}'


class LineError(ValidationError):
    """A line of an ingest file is invalid; the whole ingest is refused."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}", {"line": line, "problem": problem})


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


def parse_line(raw: bytes, line: int) -> dict[str, Any]:
    """One JSON object, integers within 64 bits (D4), no NaN or Infinity."""
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
        raise LineError(line, f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise LineError(line, "a document must be a JSON object")
    return document


class BatchBuilder:
    """Accumulates validated documents of one collection and emits Arrow record batches."""

    def __init__(self, collection: Collection, now: str) -> None:
        self.collection = collection
        self.indexes = {index.name: index for index in collection.vector_indexes}
        self.schema = segment_schema(collection.vector_indexes)
        self.now = now
        self.suffix = internal_suffix(now, now)
        self.cid = orjson.dumps(collection.id).decode()
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.docs: list[str] = []
        self.vectors: dict[str, list[Any]] = {name: [] for name in self.indexes}

    def add(self, document: dict[str, Any], line: int, raw: bytes) -> None:
        """Validate one parsed document and queue it."""
        document_id = document.pop("document_id", None)
        if not isinstance(document_id, str) or not document_id:
            raise LineError(line, "document_id must be a non-empty string")
        vectors = document.pop(VECTORS_KEY, None) or {}
        if not isinstance(vectors, dict):
            raise LineError(line, f"{VECTORS_KEY} must be an object keyed by vector index name")
        for key in SYSTEM_KEYS:
            document.pop(key, None)
        unknown = set(vectors) - set(self.indexes)
        if unknown:
            raise LineError(line, f"unknown vector index {sorted(unknown)[0]!r}")
        for name, index in self.indexes.items():
            value = vectors.get(name)
            self.vectors[name].append(
                None if value is None else _vector(index, value, line, _may_hold_bools(raw))
            )
        body = orjson.dumps(document).decode()
        head = '{"document_id":' + orjson.dumps(document_id).decode()
        tail = ',"collection_id":' + self.cid + self.suffix
        self.docs.append(head + ("," + body[1:-1] if len(body) > 2 else "") + tail)
        self.ids.append(document_id)

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


def _vector(index: VectorIndex, value: Any, line: int, may_hold_bools: bool) -> Any:
    where = f"vector {index.name!r}"
    if index.type == "dense":
        if not isinstance(value, list) or len(value) != index.dimensions:
            raise LineError(line, f"{where} must be a list of {index.dimensions} numbers")
        return _floats(value, line, where, may_hold_bools)
    if not isinstance(value, dict) or set(value) != {"indices", "values"}:
        raise LineError(line, f'{where} must be {{"indices": [...], "values": [...]}}')
    indices, values = value["indices"], value["values"]
    if not isinstance(indices, list) or not isinstance(values, list) or len(indices) != len(values):
        raise LineError(line, f"{where}: indices and values must be lists of equal length")
    if not all(type(i) is int and 0 <= i < index.dimensions for i in indices):
        raise LineError(line, f"{where}: indices must be integers in [0, {index.dimensions})")
    if len(set(indices)) != len(indices):
        raise LineError(line, f"{where}: indices must be unique")
    return {"indices": indices, "values": _floats(values, line, where, may_hold_bools)}


def _floats(values: list[Any], line: int, where: str, may_hold_bools: bool) -> np.ndarray:
    if may_hold_bools and any(isinstance(v, bool) for v in values):
        raise LineError(line, f"{where} must hold numbers, not booleans")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting
        raise LineError(line, f"{where} must hold numbers") from None
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise LineError(line, f"{where} must hold numbers")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        array = array.astype(np.float32)
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
    rows = [None if v is None else {**v, "values": v["values"].tolist()} for v in values]
    return pa.array(rows, kind)


def batches(
    lines: Iterable[bytes], collection: Collection, now: str, rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Parse and validate JSONL lines into record batches; blank lines are skipped."""
    builder = BatchBuilder(collection, now)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        builder.add(parse_line(raw, number), number, raw)
        if len(builder) >= rows:
            yield builder.flush()
    if len(builder):
        yield builder.flush()


def _may_hold_bools(raw: bytes) -> bool:
    # numpy would read true as 1.0; look element by element only when the line has a boolean.
    return b"true" in raw or b"false" in raw

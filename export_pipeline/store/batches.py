"""Arrow batches bounded in bytes, read from sorted runs and merged in document_id order.

DuckDB works on chunks of 2,048 rows whatever their size, and its JSON functions need several
times a chunk's text: with documents of 64 KB a plain filter already exceeds a 512 MB limit.
So nothing hands DuckDB a relation of stored documents directly: readers here cut the rows
into batches of at most `max_bytes` (one row alone may exceed it), and each batch is handed
to DuckDB on its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ID = "document_id"
BATCH_BYTES = 16 * 1024 * 1024
BATCH_ROWS = 16_384
# Rows one per-batch query may take (within the bytes bound): consecutive reads are gathered
# up to it, since every query costs some milliseconds of its own.
QUERY_ROWS = 65_536

Rows = pa.Table


def row_sizes(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The bytes each row holds across every column (values and offsets, roughly)."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        sizes += _sizes(column, table.num_rows)
    return sizes


def _sizes(column: pa.Array | pa.ChunkedArray, rows: int) -> np.ndarray | int:
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        return _numpy(pc.binary_length(column)) + 8
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size * max(1, kind.value_type.bit_width // 8)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        width = kind.value_type.bit_width // 8 if pa.types.is_primitive(kind.value_type) else 16
        return _numpy(pc.list_value_length(column)) * max(1, width) + 8
    if pa.types.is_struct(kind):
        total: np.ndarray | int = 0
        for index in range(kind.num_fields):
            total = total + _sizes(pc.struct_field(column, [index]), rows)
        return total
    return max(1, kind.bit_width // 8) if pa.types.is_primitive(kind) else 16


def _numpy(lengths: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return lengths.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def byte_chunks(table: pa.Table, max_bytes: int, max_rows: int) -> Iterator[pa.Table]:
    """Consecutive slices of at most `max_rows` rows and `max_bytes` bytes (a row over the
    limit gets a slice of its own)."""
    if table.num_rows == 0:
        return
    ends = np.cumsum(row_sizes(table))
    start = 0
    while start < table.num_rows:
        before = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, before + max_bytes, side="right"))
        stop = min(max(stop, start + 1), start + max_rows, table.num_rows)
        yield table.slice(start, stop - start)
        start = stop


IdRange = tuple[str | None, str | None]  # ids in [lower, upper); None: unbounded


def read_run(
    path: Path | str,
    columns: list[str] | None,
    max_bytes: int = BATCH_BYTES,
    max_rows: int = BATCH_ROWS,
    filesystem: object = None,
    ids: IdRange = (None, None),
) -> Iterator[pa.Table]:
    """A parquet file's rows, one row group at a time, cut to bounded batches; only those
    whose id is in `ids` (row groups outside the range, by their statistics, are not read)."""
    with pq.ParquetFile(path, filesystem=filesystem) as parquet:
        for group in range(parquet.metadata.num_row_groups):
            edge = _edge(parquet.metadata.row_group(group), parquet.schema_arrow.names, ids)
            if edge is None:
                continue
            rows = parquet.read_row_group(group, columns=columns)
            if edge:
                rows = rows.filter(_within(rows.column(ID), ids))
            yield from byte_chunks(rows, max_bytes, max_rows)


def _edge(group: pq.RowGroupMetaData, names: list[str], ids: IdRange) -> bool | None:
    """None: the row group holds no id of the range; False: only ids of it; True: some."""
    lower, upper = ids
    if lower is None and upper is None:
        return False
    stats = group.column(names.index(ID)).statistics
    if stats is None or not stats.has_min_max:
        return True
    first, last = (v.encode() if isinstance(v, str) else v for v in (stats.min, stats.max))
    if (upper is not None and first >= upper.encode()) or (
        lower is not None and last < lower.encode()
    ):
        return None
    return (lower is not None and first < lower.encode()) or (
        upper is not None and last >= upper.encode()
    )


def _within(column: pa.ChunkedArray, ids: IdRange) -> pa.ChunkedArray:
    """Whether each id is in the range (byte order, as the segments are sorted)."""
    lower, upper = ids
    keep = None
    if lower is not None:
        keep = pc.greater_equal(column, lower)
    if upper is not None:
        below = pc.less(column, upper)
        keep = below if keep is None else pc.and_(keep, below)
    assert keep is not None
    return keep


def merge_sorted(runs: Iterable[Iterator[pa.Table]], key: str = ID) -> Iterator[pa.Table]:
    """Merge runs each sorted by `key` (byte order) into one stream sorted by `key`.

    Everything up to the smallest last key among the runs' current batches can be emitted:
    no later batch of any run holds a smaller key. Memory: one batch per run.
    """
    iterators = [iter(run) for run in runs]
    heads: list[pa.Table | None] = [_next(it) for it in iterators]
    while True:
        live = [i for i, head in enumerate(heads) if head is not None]
        if not live:
            return
        if len(live) == 1:
            (only,) = live
            yield heads[only]
            yield from (batch for batch in iterators[only] if batch.num_rows)
            return
        bound = min(_last(heads[i]) for i in live)
        parts = []
        for i in live:
            head = heads[i]
            assert head is not None
            taken = int(pc.sum(pc.less_equal(head.column(key), bound)).as_py() or 0)
            parts.append(head.slice(0, taken))
            heads[i] = head.slice(taken) if taken < head.num_rows else _next(iterators[i])
        merged = pa.concat_tables(parts)
        yield merged.take(pc.sort_indices(merged, [(key, "ascending")]))


def _next(iterator: Iterator[pa.Table]) -> pa.Table | None:
    for batch in iterator:
        if batch.num_rows:
            return batch
    return None


def _last(table: pa.Table, key: str = ID) -> str:
    return table.column(key)[-1].as_py()


def rebatch(tables: Iterable[pa.Table], max_bytes: int, max_rows: int) -> Iterator[pa.Table]:
    """Cut a stream of tables into bounded batches (merging produces uneven sizes)."""
    for table in tables:
        yield from byte_chunks(table, max_bytes, max_rows)


def gathered(tables: Iterable[pa.Table], max_bytes: int, max_rows: int) -> Iterator[pa.Table]:
    """Consecutive tables joined up to `max_rows` rows and `max_bytes` bytes (a table over
    either limit alone goes as it is); empty tables dropped."""
    pending: list[pa.Table] = []
    rows = size = 0
    for table in tables:
        if not table.num_rows:
            continue
        if pending and (rows + table.num_rows > max_rows or size + table.nbytes > max_bytes):
            yield pa.concat_tables(pending)
            pending, rows, size = [], 0, 0
        pending.append(table)
        rows, size = rows + table.num_rows, size + table.nbytes
    if pending:
        yield pa.concat_tables(pending)


_DONE = object()


def prefetch(tables: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """The same tables, read ahead by a thread while the caller works on the last one
    (Arrow's reads release the GIL, so reading overlaps DuckDB and the writers)."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def produce() -> None:
        try:
            for table in tables:
                if not offer(table):
                    return
            offer(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            offer(exc)

    thread = threading.Thread(target=produce, daemon=True, name="prefetch")
    thread.start()
    try:
        while (item := ahead.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()

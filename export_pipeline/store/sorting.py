"""Rows of a file in document_id order, in bounded memory: sorted runs spilled, then merged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline.store.batches import ID, byte_chunks, merge_sorted, read_run

RUN_BYTES = 128 * 1024 * 1024  # sorted in memory at once (the sort holds about twice this)
# Runs are read back one row group at a time during the merge, so small row groups keep the
# merge's memory (one row group per run) small.
RUN_GROUP_BYTES = 1024 * 1024
RUN_GROUP_ROWS = 4096
FAN_IN = 64  # runs merged at once; more are first merged into longer runs


def sorted_rows(source: Path, folder: Path) -> Iterator[pa.Table]:
    """The rows of parquet file `source` sorted by document_id; runs go to `folder`, which
    the caller removes."""
    runs: list[Path] = []
    pending: list[pa.Table] = []
    size = 0
    for batch in read_run(source, columns=None):
        pending.append(batch)
        size += batch.nbytes
        if size >= RUN_BYTES:
            runs.append(_spill(_sorted(pending), folder))
            pending, size = [], 0
    if not runs:  # it all fits in one run: no spill
        if pending:
            yield from byte_chunks(_sorted(pending), RUN_GROUP_BYTES * 16, 16_384)
        return
    if pending:
        runs.append(_spill(_sorted(pending), folder))
    while len(runs) > FAN_IN:
        groups = [runs[i : i + FAN_IN] for i in range(0, len(runs), FAN_IN)]
        runs = [_spill_stream(merge_sorted(_read(group)), folder) for group in groups]
    yield from merge_sorted(_read(runs))


def _sorted(tables: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(table, [(ID, "ascending")]))


def _read(runs: list[Path]) -> list[Iterator[pa.Table]]:
    return [read_run(run, None, RUN_GROUP_BYTES, RUN_GROUP_ROWS) for run in runs]


def _spill(table: pa.Table, folder: Path) -> Path:
    return _spill_stream(iter([table]), folder)


def _spill_stream(tables: Iterator[pa.Table], folder: Path) -> Path:
    path = folder / f"run_{uuid.uuid4().hex}.parquet"
    writer: pq.ParquetWriter | None = None
    try:
        for table in tables:
            for chunk in byte_chunks(table, RUN_GROUP_BYTES, RUN_GROUP_ROWS):
                writer = writer or pq.ParquetWriter(path, chunk.schema, compression="snappy")
                writer.write_table(chunk)
    finally:
        if writer is not None:
            writer.close()
    return path

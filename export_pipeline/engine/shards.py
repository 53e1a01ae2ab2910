"""Shards: a snapshot cut into `document_id` ranges that are exported in parallel.

A shard is the half-open range `[lower, upper)` of ids (None: unbounded). The bounds are the
first ids of the store's row groups (their parquet statistics), so a shard reads whole row
groups of each sorted segment except at its two ends, and nothing is read to plan them. The
shards of one export are consecutive and cover every id, so writing them in order and
joining their parts gives the rows in id order (O3), whatever their number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel

from export_pipeline.store.batches import ID

# Below this many documents an export is one shard: a process per step would cost more than
# the second core saves (a 10k-document export must not get slower).
AUTO_MIN_DOCUMENTS = 200_000


class Shard(BaseModel):
    """One range of a snapshot's ids, `[lower, upper)`, and its position among the shards."""

    index: int
    lower: str | None = None
    upper: str | None = None

    def sql(self, column: str = ID) -> tuple[str, list[str]]:
        """The range as a SQL predicate over `column`, and its parameters."""
        conditions, params = [], []
        if self.lower is not None:
            conditions.append(f"{column} >= ?")
            params.append(self.lower)
        if self.upper is not None:
            conditions.append(f"{column} < ?")
            params.append(self.upper)
        return " AND ".join(conditions) or "TRUE", params


def shard_count(setting: str, documents: int, cores: int | None = None, threads: int = 2) -> int:
    """EXPORT_PIPELINE_SHARDS: an integer as given, or `auto`: one shard for a small
    snapshot; for a large one, as many as keep every core busy when each shard works on
    `threads` of them (DuckDB's threads, the writers' threads): one shard already keeps two
    cores busy, so a two-core machine gets one."""
    if setting != "auto":
        return int(setting)
    cores = cores or os.cpu_count() or 1
    return 1 if documents < AUTO_MIN_DOCUMENTS else max(1, cores // max(1, threads))


def shard_threads(threads: int, shards: int, cores: int | None = None) -> int:
    """DuckDB threads of each of `shards` shards running at once: their share of the cores,
    at most `threads` (so that parallel shards do not fight over them)."""
    cores = cores or os.cpu_count() or 1
    running = max(1, min(shards, cores))
    return max(1, min(threads, cores // running))


def plan_shards(segments: list[Path], count: int) -> list[Shard]:
    """`count` consecutive ranges covering every id, about equal in rows, cut at row-group
    starts; a range may be empty (more shards than row groups). A segment without id
    statistics cuts nothing (its ids then fall into whichever ranges hold them)."""
    if count <= 1:
        return [Shard(index=0)]
    starts: list[str] = []
    rows: list[int] = []
    for path in segments:
        metadata = pq.read_metadata(path)
        names = metadata.schema.to_arrow_schema().names
        if ID not in names:
            continue
        column = names.index(ID)
        for group in range(metadata.num_row_groups):
            found = metadata.row_group(group)
            stats = found.column(column).statistics
            if stats is None or not stats.has_min_max or found.num_rows == 0:
                continue
            first = stats.min
            starts.append(first.decode() if isinstance(first, bytes) else str(first))
            rows.append(found.num_rows)
    if not starts:  # nothing to cut at: the first shard takes everything
        empty = [Shard(index=i, lower="", upper="") for i in range(1, count)]
        return [Shard(index=0), *empty]
    order = sorted(range(len(starts)), key=lambda i: starts[i].encode())
    cumulative = np.cumsum([rows[i] for i in order])
    total = int(cumulative[-1])
    # shard k starts at the row group holding the first row of the k-th share of the rows
    cuts = [
        starts[order[int(np.searchsorted(cumulative, total * k // count, side="right"))]]
        for k in range(1, count)
    ]
    lowers: list[str | None] = [None, *cuts]
    uppers: list[str | None] = [*cuts, None]
    return [Shard(index=i, lower=lowers[i], upper=uppers[i]) for i in range(count)]

"""One ingest's steps: stage the file as a segment, check ids, rewrite what an upsert replaces.

Every step streams bounded batches (store/batches.py); DuckDB only ever sees ids, or one
bounded batch of documents at a time.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.store.batches import ID, read_run
from export_pipeline.store.catalog import Collection, utc_now
from export_pipeline.store.jsonl import LineError, batches
from export_pipeline.store.lines import line_of
from export_pipeline.store.operations import Operation
from export_pipeline.store.segment_files import SegmentFiles, sidecar_of
from export_pipeline.store.segments import (
    SegmentWriter,
    internal_suffix,
    segment_schema,
    shapes_file,
)
from export_pipeline.store.sorting import sorted_rows


@dataclass
class Staged:
    """The file's documents as one segment-shaped file, in file order."""

    path: Path
    count: int
    ascending: bool  # ids strictly ascending in byte order: already a sorted segment


@dataclass
class Change:
    """What an ingest changes: segments kept, added and retired, and how many it replaced."""

    keep: list[str]
    retired: list[str] = field(default_factory=list)
    replaced: int = 0
    created: list[Path] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)  # S3 URIs until the swap lists them
    record: Operation | None = None  # the ingest's record, told of each file before it exists

    def will_create(self, *paths: Path) -> None:
        """Note files about to be created (removed if the ingest fails, or after a crash)."""
        self.created += paths
        if self.record is not None:
            self.record.add(segments=[p for p in paths if not p.name.endswith(".shapes.parquet")])


def stage(
    collection: Collection, source: Path, work: Path, con: duckdb.DuckDBPyConnection
) -> Staged:
    """Validate every line into a segment-shaped file (with its shapes sidecar)."""
    path = work / "staged.parquet"
    count, order = 0, _AscendingIds()
    with (
        open(source, "rb") as lines,
        SegmentWriter(path, segment_schema(collection.vector_indexes), con) as writer,
    ):
        for batch in batches(lines, collection, utc_now()):
            writer.write(batch)
            order.update(batch.column(0))
            count += batch.num_rows
    return Staged(path, count, order.ascending)


def check_ids(
    con: duckdb.DuckDBPyConnection,
    staged: Staged,
    source: Path,
    stored: list[Path],
    upsert: bool,
) -> None:
    """D3: no id twice in the file, and (without upsert) none already stored."""
    ids = _ids_sql([staged.path])
    twice = []
    if not staged.ascending:  # strictly ascending ids cannot repeat
        twice = con.execute(
            f"SELECT document_id FROM {ids} GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 1"
        ).fetchall()
    if twice:
        document_id = twice[0][0]
        line = line_of(source, document_id, occurrence=2)
        raise LineError(line, f"duplicate document_id {document_id!r} in the file")
    if upsert or not stored:
        return
    clash = con.execute(
        f"SELECT document_id FROM {ids} SEMI JOIN {_ids_sql(stored)} USING (document_id)"
        " ORDER BY 1 LIMIT 1"
    ).fetchall()
    if clash:
        document_id = clash[0][0]
        raise LineError(
            line_of(source, document_id, occurrence=1),
            f"document_id {document_id!r} is already stored (ingest with upsert to replace)",
        )


def replace_stored(
    con: duckdb.DuckDBPyConnection,
    collection: Collection,
    stored: dict[str, Path],
    folder: Path,
    staged: Staged,
    change: Change,
) -> pa.Table:
    """Rewrite the segments holding upserted ids (`stored`: each listed segment's local file)
    without them, into `folder`; returns (document_id, created_at) of the replaced
    documents, whose created_at the new versions keep."""
    ids = _ids_sql([staged.path])
    listing = ", ".join(duck.literal(str(path)) for path in stored.values())
    replaced = con.sql(
        f"SELECT document_id, created_at FROM read_parquet([{listing}])"
        f" SEMI JOIN {ids} USING (document_id)"
    ).to_arrow_table()
    if not replaced.num_rows:
        return replaced
    gone = replaced.column(ID).combine_chunks()
    kept: list[str] = []
    for name in change.keep:
        segment = stored[name]
        hits = con.execute(
            f"SELECT count(*) FROM {_ids_sql([segment])} SEMI JOIN {ids} USING (document_id)"
        ).fetchall()[0][0]
        if not hits:
            kept.append(name)
            continue
        change.retired.append(name)
        change.replaced += hits
        if hits == pq.read_metadata(segment).num_rows:
            continue  # every document replaced (or deleted): no empty segment is listed
        rewritten = new_segment_name()
        change.will_create(folder / rewritten, shapes_file(folder / rewritten))
        with SegmentWriter(folder / rewritten, segment_schema(collection.vector_indexes), con) as w:
            for batch in read_run(segment, None):
                w.write(batch.filter(pc.invert(pc.is_in(batch.column(ID), value_set=gone))))
        kept.append(rewritten)
    change.keep = kept
    return replaced


def add_segment(
    con: duckdb.DuckDBPyConnection,
    collection: Collection,
    folder: Path,
    staged: Staged,
    replaced: pa.Table,
    change: Change,
) -> None:
    """The staged documents as a new sorted segment (created_at kept for replaced ones)."""
    name = new_segment_name()
    target = folder / name
    change.will_create(target, shapes_file(target))
    if staged.ascending and not replaced.num_rows:  # already a sorted segment: no rewrite
        staged.path.rename(target)
        shapes_file(staged.path).rename(shapes_file(target))
    else:
        rows = _rows_in_order(staged, staged.path.parent / "runs")
        schema = segment_schema(collection.vector_indexes)
        # Same documents, same structures: the staged sidecar stays valid.
        with SegmentWriter(target, schema, con, shapes=False) as writer:
            for batch in rows:
                writer.write(_keep_created_at(batch, replaced))
        shutil.copyfile(shapes_file(staged.path), shapes_file(target))
    change.keep.append(name)


def upload(files: SegmentFiles, collection: Collection, folder: Path, change: Change) -> None:
    """Put the ingest's new segments (made in `folder`) in S3; the change lists their URIs."""
    made = [name for name in change.keep if name not in collection.segments]
    uris = {name: files.uri(collection.namespace_id, collection.id, name) for name in made}
    change.uploaded += uris.values()
    if change.record is not None:  # recorded before they exist, as local segments are
        change.record.add(segments=uris.values())
    pairs = [(folder / name, uri) for name, uri in uris.items()]
    pairs += [(shapes_file(folder / name), sidecar_of(uri)) for name, uri in uris.items()]
    files.upload(pairs)
    change.keep = [uris.get(name, name) for name in change.keep]


def _rows_in_order(staged: Staged, runs: Path) -> Iterator[pa.Table]:
    if staged.ascending:
        return read_run(staged.path, None)
    runs.mkdir(exist_ok=True)
    return sorted_rows(staged.path, runs)


def _keep_created_at(batch: pa.Table, replaced: pa.Table) -> pa.Table:
    """Upserted documents keep the created_at of the documents they replace; the fixed-width
    `_internal` tail of the document text says so too."""
    if not replaced.num_rows:
        return batch
    found = pc.index_in(batch.column(ID), value_set=replaced.column(ID))
    if found.null_count == len(found):
        return batch
    old = pc.take(replaced.column("created_at"), found)
    now = batch.column("created_at")
    tail = len(internal_suffix("0" * 27, "0" * 27).encode())
    docs = batch.column("doc").cast(pa.binary())
    head = pc.binary_slice(docs, 0, -tail)
    ends = pc.binary_join_element_wise(
        ',"_internal":{"created_at":"', old, '","updated_at":"', now, '"}}', ""
    )
    rewritten = pc.binary_join_element_wise(head, ends.cast(pa.binary()), b"")
    keep = pc.is_valid(found)
    doc = pc.if_else(keep, rewritten, docs).cast(pa.string())
    created = pc.if_else(keep, old, now)
    batch = batch.set_column(batch.schema.get_field_index("created_at"), "created_at", created)
    return batch.set_column(batch.schema.get_field_index("doc"), "doc", doc)


def new_segment_name() -> str:
    """A fresh segment file name."""
    return f"seg_{uuid.uuid4().hex}.parquet"


def _ids_sql(files: list[Path]) -> str:
    """The document_id column of parquet files (DuckDB reads only that column)."""
    listing = ", ".join(duck.literal(str(path)) for path in files)
    return f"(SELECT document_id FROM read_parquet([{listing}]))"


class _AscendingIds:
    """Whether the ids seen so far, batch after batch, are strictly ascending (byte order)."""

    def __init__(self) -> None:
        self.ascending = True
        self.last: str | None = None

    def update(self, ids: pa.Array) -> None:
        """Take the next batch's ids."""
        if not self.ascending or len(ids) == 0:
            return
        # Python compares str by code point, which is DuckDB's byte order for UTF-8 text.
        if self.last is not None and not self.last < ids[0].as_py():
            self.ascending = False
        elif len(ids) > 1:
            self.ascending = pc.all(pc.greater(ids[1:], ids[:-1])).as_py()
        self.last = ids[-1].as_py()

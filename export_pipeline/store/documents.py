"""Documents on disk: immutable parquet segments per collection, swapped in atomically."""

from __future__ import annotations

import fcntl
import itertools
import logging
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.settings import Settings
from export_pipeline.store import ingest as steps
from export_pipeline.store import pins
from export_pipeline.store.batches import (
    BATCH_BYTES,
    BATCH_ROWS,
    IdRange,
    merge_sorted,
    prefetch,
    read_run,
    rebatch,
)
from export_pipeline.store.catalog import Catalog, Collection
from export_pipeline.store.history import UPSERT, write_history
from export_pipeline.store.operations import Operations
from export_pipeline.store.segment_files import SegmentFiles, is_remote
from export_pipeline.store.segments import SHAPE_ID, numbered, shapes_file
from export_pipeline.store.versions import listed_files, swap

log = logging.getLogger(__name__)


def _sidecar_rows(segment: Path) -> int:
    return pq.read_metadata(shapes_file(segment)).num_rows


def _shifted(run: Iterator[pa.Table], offset: int) -> Iterator[pa.Table]:
    """A segment's SHAPE_IDs made snapshot-wide: after the structures of earlier segments."""
    for batch in run:
        if offset:
            at = batch.schema.get_field_index(SHAPE_ID)
            shifted = pc.add(batch.column(at), pa.scalar(offset, pa.int32()))
            batch = batch.set_column(at, batch.schema.field(at), shifted)
        yield batch


def _utf8(value: str | bytes) -> bytes:
    """An id bound as bytes: ids are ordered by their UTF-8 bytes (O3)."""
    return value.encode() if isinstance(value, str) else bytes(value)


# What a change works with: the collection's current version, its staging folder, its
# segments kept, added and retired, and its DuckDB connection.
Changing = tuple[Collection, Path, steps.Change, duckdb.DuckDBPyConnection]

_NO_REPLACED = pa.schema([("document_id", pa.string()), ("created_at", pa.string())])


@dataclass(frozen=True)
class IngestResult:
    """What an ingest changed."""

    ingested: int
    replaced: int
    document_count: int
    version: int


class DocumentStore:
    """Ingest JSONL into a collection, and read the documents of a snapshot in id order."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.files = SegmentFiles(settings)

    def collection_dir(self, collection: Collection) -> Path:
        """Where a collection's segments, staging files and lock live."""
        return self.catalog.home / "collections" / collection.namespace_id / collection.id

    def segment_paths(self, collection: Collection) -> list[str]:
        """The segments of the snapshot `collection` was read at: local paths, S3 URIs."""
        folder = self.collection_dir(collection) / "segments"
        return [s if is_remote(s) else str(folder / s) for s in collection.segments]

    def segment_files(self, collection: Collection, copies: Path | None = None) -> list[Path]:
        """The segment files of the snapshot `collection` was read at, as local files: S3
        segments (EXPORT_PIPELINE_SEGMENTS) are downloaded into `copies` first."""
        return self.files.local_copies(self.segment_paths(collection), copies)

    def rows(
        self,
        collection: Collection,
        columns: list[str],
        max_bytes: int = BATCH_BYTES,
        max_rows: int = BATCH_ROWS,
        ids: IdRange = (None, None),
        *,
        copies: Path | None = None,
    ) -> Iterator[pa.Table]:
        """The snapshot's rows in document_id order (O3), in batches of at most `max_rows`
        rows and about `max_bytes` bytes, only those with an id in `ids` (a shard's range):
        segments are sorted, so they are merged, not sorted.

        A SHAPE_ID column (only where `numbered`) holds snapshot-wide numbers: the position of
        the document's structure in `shapes()`. `copies`: see `segment_files` (as for every
        reader below).
        """
        files = self.segment_files(collection, copies)
        runs = [read_run(path, columns, max_bytes, max_rows, ids=ids) for path in files]
        if SHAPE_ID in columns:
            offsets = np.cumsum([0] + [_sidecar_rows(path) for path in files])
            runs = [_shifted(run, int(offset)) for run, offset in zip(runs, offsets, strict=False)]
        if len(runs) == 1:
            return prefetch(runs[0])
        return prefetch(rebatch(merge_sorted(runs), max_bytes, max_rows))

    def scan_source(
        self, collection: Collection, max_bytes: int, *, copies: Path | None = None
    ) -> str | None:
        """A DuckDB FROM-clause source of the snapshot's rows in document_id order (O3), for
        a query that reads them all with `preserve_insertion_order` on; None where DuckDB
        must not read the segments itself (`scan_files`)."""
        files = self.scan_files(collection, max_bytes, copies=copies)
        return None if files is None else duck.parquet_source(files)

    def scan_files(
        self, collection: Collection, max_bytes: int, *, copies: Path | None = None
    ) -> list[Path] | None:
        """The snapshot's segment files in the order `scan_source` reads them; None where
        DuckDB must not read them itself.

        It may where its reads stay as bounded as `rows()`'s batches: no row group holds
        more than `max_bytes` of documents (a chunk of DuckDB's is part of one row group),
        and the segments' id ranges do not overlap, so reading them one after the other in
        the order of their first ids is already in id order (nothing is merged or sorted).
        """
        ranges: list[tuple[bytes, bytes, Path]] = []
        for path in self.segment_files(collection, copies):
            metadata = pq.read_metadata(path)
            if metadata.num_rows == 0:
                continue
            names = metadata.schema.to_arrow_schema().names
            if "doc" not in names or "document_id" not in names:
                return None
            doc, key = names.index("doc"), names.index("document_id")
            groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
            if any(group.column(doc).total_uncompressed_size > max_bytes for group in groups):
                return None
            first = groups[0].column(key).statistics
            last = groups[-1].column(key).statistics
            if first is None or last is None or not (first.has_min_max and last.has_min_max):
                return None
            ranges.append((_utf8(first.min), _utf8(last.max), path))  # bounds, maybe widened
        if not ranges:
            return None
        ranges.sort(key=lambda found: found[0])
        if any(end >= start for (_, end, _), (start, _, _) in itertools.pairwise(ranges)):
            return None
        return [path for _, _, path in ranges]

    def shape_id_sql(
        self, collection: Collection, files: list[Path], *, copies: Path | None = None
    ) -> tuple[str, list[Any]]:
        """A row's snapshot-wide SHAPE_ID (as `rows()` gives it) in a query over
        `duck.parquet_source(files)` (`scan_files`), and its parameters: each segment numbers
        its own structures, shifted by the sidecar rows of the segments before it."""
        segments = self.segment_files(collection, copies)
        offsets = np.cumsum([0] + [_sidecar_rows(path) for path in segments])
        shift = dict(zip(segments, offsets.tolist(), strict=False))
        shifts = [int(shift[path]) for path in files]
        if not any(shifts):
            return f"{SHAPE_ID}::INTEGER AS {SHAPE_ID}", []
        # DuckDB's file_index is the row's position in the list of files read (an integer:
        # cheaper than comparing each row's file name).
        return f"({SHAPE_ID} + (?::INTEGER[])[file_index::BIGINT + 1])::INTEGER AS {SHAPE_ID}", [
            shifts
        ]

    def shapes(
        self, collection: Collection, *, copies: Path | None = None
    ) -> list[tuple[str, int]] | None:
        """Every distinct JSON structure of the snapshot's documents with its count, from the
        segments' sidecars; None where a segment has none (written by an older version)."""
        found: list[tuple[str, int]] = []
        for segment in self.segment_files(collection, copies):
            sidecar = shapes_file(segment)
            if not sidecar.exists():
                return None
            table = pq.read_table(sidecar)
            if "shape" not in table.column_names:
                return None  # an older sidecar of representative documents
            found += zip(
                table.column("shape").to_pylist(), table.column("n").to_pylist(), strict=True
            )
        return found

    def structures(self, collection: Collection, *, copies: Path | None = None) -> pa.ChunkedArray:
        """The snapshot's structures as SHAPE_ID numbers them (where `numbered`): the
        sidecars' texts one after the other, left in Arrow (there may be one per document)."""
        files = [shapes_file(segment) for segment in self.segment_files(collection, copies)]
        chunks = [pq.read_table(path, columns=["shape"]).column(0) for path in files]
        return pa.chunked_array([c for chunk in chunks for c in chunk.chunks], pa.string())

    def numbered(self, collection: Collection, *, copies: Path | None = None) -> bool:
        """Whether every segment numbers its documents' structures (SHAPE_ID); segments
        written by older versions do not."""
        for segment in self.segment_files(collection, copies):
            sidecar = shapes_file(segment)
            if not sidecar.exists() or not numbered(pq.read_schema(sidecar)):
                return False
        return True

    def ingest(self, collection: Collection, source: Path, *, upsert: bool = False) -> IngestResult:
        """Add (or with `upsert`, replace) the documents of a JSONL file, all or nothing."""
        with self.changing(collection) as (fresh, work, change, con):
            return self._ingest(con, fresh, source, work, upsert, change)

    @contextmanager
    def changing(self, collection: Collection) -> Iterator[Changing]:
        """One change of the collection (an ingest, a delete) under its lock, over its current
        version: a staging folder, the change's record, a DuckDB connection; whatever the
        change created is removed if it fails."""
        with self._locked(collection):
            current = self.catalog.namespace(collection.namespace_id)
            fresh = self.catalog.collection(current, collection.id)
            work = self.collection_dir(fresh) / "staging" / f"stg_{uuid.uuid4().hex}"
            # Recorded before anything is created: a killed ingest leaves a record that the
            # next sweep reclaims its staging folder and new segments by.
            record = Operations(self.catalog).begin("ingest", work.name, paths=[work])
            change = steps.Change(keep=list(fresh.segments), record=record)
            forget = True
            try:
                work.mkdir(parents=True)
                with self._duckdb(work) as con:
                    yield fresh, work, change, con
            except BaseException:
                for path in change.created:  # a failed ingest changes nothing
                    path.unlink(missing_ok=True)
                try:
                    self.files.remove(change.uploaded)
                except Exception:
                    forget = False  # the record keeps them: the sweep's, once this process ends
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
                if forget:
                    record.end()

    def _ingest(
        self,
        con: duckdb.DuckDBPyConnection,
        collection: Collection,
        source: Path,
        work: Path,
        upsert: bool,
        change: steps.Change,
    ) -> IngestResult:
        staged = steps.stage(collection, source, work, con)
        if staged.count == 0:
            return IngestResult(0, 0, collection.document_count, collection.version)
        stored = self.segment_files(collection, work / "stored")
        steps.check_ids(con, staged, source, stored, upsert)
        # New segments for S3 are made in the ingest's own folder, then uploaded.
        folder = work / "new" if self.files.remote else self.collection_dir(collection) / "segments"
        folder.mkdir(parents=True, exist_ok=True)
        replaced = _NO_REPLACED.empty_table()
        if upsert and stored:
            files = dict(zip(collection.segments, stored, strict=True))
            replaced = steps.replace_stored(con, collection, files, folder, staged, change)
        # every staged id is inserted or replaced (before add_segment may move the file)
        upserted = f"read_parquet({duck.literal(str(staged.path))})"
        history = self.write_history(con, collection, work, upserted, UPSERT, change)
        steps.add_segment(con, collection, folder, staged, replaced, change)
        if self.files.remote:
            steps.upload(self.files, collection, folder, change)
        count = collection.document_count - change.replaced + staged.count
        self.commit(collection, change, count, history)
        return IngestResult(staged.count, change.replaced, count, collection.version + 1)

    def write_history(
        self,
        con: duckdb.DuckDBPyConnection,
        collection: Collection,
        work: Path,
        ids_sql: str,
        kind: str,
        change: steps.Change,
    ) -> str:
        """The history file of the version `change` makes (M1), beside the segments."""
        folder = work / "history" if self.files.remote else self.collection_dir(collection)
        if not self.files.remote:
            folder = folder / "history"
        return write_history(con, self.files, collection, folder, ids_sql, kind, change)

    def commit(
        self, collection: Collection, change: steps.Change, count: int, history: str
    ) -> None:
        """List the change's segments and history file as the collection's next version."""
        retired_at = self._swap(collection, change, count, history)
        change.uploaded = []  # listed now: nothing after this may remove them
        # Those this change retired carry `retired_at` itself: even with no retention, the
        # next change (or sweep) removes them, not this one.
        self._expire(retired_at)

    def _swap(
        self, collection: Collection, change: steps.Change, count: int, history: str
    ) -> float:
        """The catalog swap (`versions.swap`): the last step a failure can undo; when the
        replaced segments were retired."""
        folder = self.collection_dir(collection) / "segments"
        return swap(self.catalog, self.settings, folder, collection, change, count, history)

    def _expire(self, now: float) -> None:
        """Remove retired files past retention that no running export pins (D5); never
        raises: the change that retired them has succeeded, and the next one tries again."""
        try:
            pins.expire_retired(self.catalog, self.files, self.settings, now)
        except Exception as exc:
            log.warning("retired segments were not removed: %s", exc)

    def listed_segments(self) -> tuple[set[str], set[str]]:
        """The segment (and history) files every collection's current version lists, and the
        replaced ones still kept (retention, pins), as absolute paths (one catalog snapshot)."""
        return listed_files(self.catalog)

    @contextmanager
    def _locked(self, collection: Collection) -> Iterator[None]:
        folder = self.collection_dir(collection)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per collection; readers never wait
            # and in PostgreSQL, one across hosts too (a flock is this host's only)
            with self.catalog.database.collection_lock(collection.id):
                yield

    @contextmanager
    def _duckdb(self, work: Path) -> Iterator[duckdb.DuckDBPyConnection]:
        con = duck.connect(
            temp_dir=work / "duckdb_tmp",
            memory_limit=self.settings.ingest_memory_limit,
            threads=self.settings.duckdb_threads,
        )
        try:
            yield con
        finally:
            con.close()

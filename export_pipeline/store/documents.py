"""Documents on disk: immutable parquet segments per collection, swapped in atomically."""

from __future__ import annotations

import fcntl
import logging
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from export_pipeline import duck
from export_pipeline.store import ingest as steps
from export_pipeline.store import pins
from export_pipeline.store.catalog import Collection
from export_pipeline.store.history import UPSERT, write_history
from export_pipeline.store.operations import Operations
from export_pipeline.store.snapshots import SnapshotReader
from export_pipeline.store.versions import listed_files, swap

log = logging.getLogger(__name__)


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


class DocumentStore(SnapshotReader):
    """Ingest into and delete from a collection, as new versions; read its snapshots
    (SnapshotReader)."""

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
        self.expire(retired_at)

    def _swap(
        self, collection: Collection, change: steps.Change, count: int, history: str
    ) -> float:
        """The catalog swap (`versions.swap`): the last step a failure can undo; when the
        replaced segments were retired."""
        folder = self.collection_dir(collection) / "segments"
        return swap(self.catalog, self.settings, folder, collection, change, count, history)

    def expire(self, now: float) -> None:
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

"""Documents on disk: immutable parquet segments per collection, swapped in atomically."""

from __future__ import annotations

import fcntl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.errors import ConflictError
from export_pipeline.settings import Settings
from export_pipeline.store.catalog import Catalog, Collection, utc_now
from export_pipeline.store.jsonl import (
    LineError,
    batches,
    internal_suffix,
    segment_schema,
    vector_column,
)
from export_pipeline.store.lines import line_of

SEGMENT_COMPRESSION = "snappy"  # cheap to write and read; exports recompress as asked
SEGMENT_BATCH_ROWS = 16_384


@dataclass(frozen=True)
class IngestResult:
    """What an ingest changed."""

    ingested: int
    replaced: int
    document_count: int
    version: int


class DocumentStore:
    """Ingest JSONL into a collection, and list the segment files of its current snapshot."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings

    def collection_dir(self, collection: Collection) -> Path:
        """Where a collection's segments, staging files and lock live."""
        return self.catalog.home / "collections" / collection.namespace_id / collection.id

    def segment_files(self, collection: Collection) -> list[Path]:
        """The segment files of the snapshot `collection` was read at."""
        folder = self.collection_dir(collection) / "segments"
        return [folder / name for name in collection.segments]

    def scan_sql(self, collection: Collection) -> str:
        """A FROM-clause source of the snapshot's rows, typed even when it has no segments."""
        columns = _typed_columns(collection)
        files = self.segment_files(collection)
        if not files:
            nulls = ", ".join(f"NULL::{kind} AS {name}" for name, kind in columns)
            return f"(SELECT {nulls} WHERE false)"
        select = ", ".join(f"CAST({name} AS {kind}) AS {name}" for name, kind in columns)
        return f"(SELECT {select} FROM {duck.parquet_source(files)})"

    def shapes_sql(self, collection: Collection) -> str | None:
        """A (doc, n) source of the snapshot's document shapes, from the segments' sidecars."""
        files = [shapes_file(path) for path in self.segment_files(collection)]
        if not files or not all(file.exists() for file in files):
            return None  # segments written before sidecars existed: shapes come from a pass
        return duck.parquet_source(files)

    def ingest(self, collection: Collection, source: Path, *, upsert: bool = False) -> IngestResult:
        """Add (or with `upsert`, replace) the documents of a JSONL file, all or nothing."""
        with self._locked(collection):
            current = self.catalog.namespace(collection.namespace_id)
            fresh = self.catalog.collection(current, collection.id)
            staging = self.collection_dir(fresh) / "staging" / f"stg_{uuid.uuid4().hex}.parquet"
            staging.parent.mkdir(parents=True, exist_ok=True)
            created: list[Path] = []
            try:
                count, ascending = self._write_staging(fresh, source, staging)
                if count == 0:
                    return IngestResult(0, 0, fresh.document_count, fresh.version)
                with self._duckdb(fresh) as con:
                    self._check_duplicates(con, fresh, source, staging, upsert, ascending)
                    return self._commit(con, fresh, staging, count, upsert, ascending, created)
            except BaseException:
                for path in created:  # a failed ingest changes nothing
                    path.unlink(missing_ok=True)
                raise
            finally:
                staging.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, collection: Collection) -> Iterator[None]:
        folder = self.collection_dir(collection)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per collection; readers never wait
            yield

    @contextmanager
    def _duckdb(self, collection: Collection) -> Iterator[duckdb.DuckDBPyConnection]:
        con = duck.connect(
            temp_dir=self.collection_dir(collection) / "staging" / "duckdb_tmp",
            memory_limit=self.settings.ingest_memory_limit,
            threads=self.settings.duckdb_threads,
        )
        try:
            yield con
        finally:
            con.close()

    def _write_staging(
        self, collection: Collection, source: Path, staging: Path
    ) -> tuple[int, bool]:
        """Stream the file into a staging segment: (documents, ids strictly ascending)."""
        count, order = 0, _AscendingIds()
        schema = segment_schema(collection.vector_indexes)
        with (
            open(source, "rb") as lines,
            pq.ParquetWriter(staging, schema, compression=SEGMENT_COMPRESSION) as writer,
        ):
            for batch in batches(lines, collection, utc_now(), rows=SEGMENT_BATCH_ROWS):
                writer.write_batch(batch)
                order.update(batch.column(0))
                count += batch.num_rows
        return count, order.ascending

    def _check_duplicates(
        self,
        con: duckdb.DuckDBPyConnection,
        collection: Collection,
        source: Path,
        staging: Path,
        upsert: bool,
        ascending: bool,
    ) -> None:
        staged = duck.parquet_source([staging])
        twice = []
        if not ascending:  # strictly ascending ids cannot repeat
            twice = con.execute(
                f"SELECT document_id FROM {staged} GROUP BY 1 HAVING count(*) > 1"
                " ORDER BY 1 LIMIT 1"
            ).fetchall()
        if twice:
            document_id = twice[0][0]
            line = line_of(source, document_id, occurrence=2)
            raise LineError(line, f"duplicate document_id {document_id!r} in the file")
        if upsert or not collection.segments:
            return
        clash = con.execute(
            f"SELECT s.document_id FROM {staged} s SEMI JOIN {self.scan_sql(collection)} e"
            " USING (document_id) ORDER BY 1 LIMIT 1"
        ).fetchall()
        if clash:
            document_id = clash[0][0]
            raise LineError(
                line_of(source, document_id, occurrence=1),
                f"document_id {document_id!r} is already stored (ingest with upsert to replace)",
            )

    def _commit(
        self,
        con: duckdb.DuckDBPyConnection,
        collection: Collection,
        staging: Path,
        count: int,
        upsert: bool,
        ascending: bool,
        created: list[Path],
    ) -> IngestResult:
        folder = self.collection_dir(collection) / "segments"
        folder.mkdir(parents=True, exist_ok=True)
        keep, replaced_files, replaced = list(collection.segments), [], 0
        if upsert and collection.segments:
            keep, replaced_files, replaced = self._replace(con, collection, staging, created)
        new_name = f"seg_{uuid.uuid4().hex}.parquet"
        created += [folder / new_name, shapes_file(folder / new_name)]
        if replaced:
            _copy(con, collection, self._keep_created_at(collection, staging), folder / new_name)
        elif ascending:  # already a sorted segment (re-ingesting an export, say): no sort
            staging.rename(folder / new_name)
            _write_shapes(con, folder / new_name)
        else:
            _copy(
                con,
                collection,
                f"SELECT * FROM {duck.parquet_source([staging])}",
                folder / new_name,
            )
        segments = [*keep, new_name]
        document_count = collection.document_count - replaced + count
        self._swap(collection, segments, document_count, replaced_files)
        return IngestResult(count, replaced, document_count, collection.version + 1)

    def _replace(
        self,
        con: duckdb.DuckDBPyConnection,
        collection: Collection,
        staging: Path,
        created: list[Path],
    ) -> tuple[list[str], list[str], int]:
        """Rewrite the segments holding upserted ids without them."""
        staged = duck.parquet_source([staging])
        folder = self.collection_dir(collection) / "segments"
        keep, retired, replaced = [], [], 0
        for name in collection.segments:
            source = duck.parquet_source([folder / name])
            hits = con.execute(
                f"SELECT count(*) FROM {source} SEMI JOIN {staged} USING (document_id)"
            ).fetchall()[0][0]
            if not hits:
                keep.append(name)
                continue
            replaced += hits
            retired.append(name)
            rewritten = f"seg_{uuid.uuid4().hex}.parquet"
            created += [folder / rewritten, shapes_file(folder / rewritten)]
            single = collection.model_copy(update={"segments": [name]})
            _copy(
                con,
                collection,
                f"SELECT * FROM {self.scan_sql(single)} ANTI JOIN {staged} USING (document_id)",
                folder / rewritten,
            )
            keep.append(rewritten)
        return keep, retired, replaced

    def _swap(
        self, collection: Collection, segments: list[str], count: int, retired: list[str]
    ) -> None:
        folder = self.collection_dir(collection) / "segments"
        now = time.time()
        with self.catalog.transaction() as db:
            changed = db.execute(
                "UPDATE collections SET version = version + 1, segments = ?,"
                " document_count = ?, updated_at = ? WHERE id = ? AND version = ?",
                (
                    orjson.dumps(segments).decode(),
                    count,
                    utc_now(),
                    collection.id,
                    collection.version,
                ),
            ).rowcount
            if changed != 1:
                raise ConflictError(f"collection {collection.name!r} changed during the ingest")
            db.executemany(
                "INSERT OR REPLACE INTO retired_segments VALUES (?, ?)",
                [(str(folder / name), now) for name in retired],
            )
            expired = db.execute(
                "SELECT path FROM retired_segments WHERE retired_at < ?",
                (now - self.settings.segment_retention_seconds,),
            ).fetchall()
            db.executemany("DELETE FROM retired_segments WHERE path = ?", expired)
        for (path,) in expired:
            # Exports reading an older snapshot had the retention period to finish.
            Path(path).unlink(missing_ok=True)
            shapes_file(Path(path)).unlink(missing_ok=True)

    def _keep_created_at(self, collection: Collection, staging: Path) -> str:
        """Upserted documents keep the created_at of the documents they replace."""
        probe = internal_suffix("0" * 27, "0" * 27)
        tail = len(probe)
        vectors = "".join(
            f", s.{duck.identifier(vector_column(index.name))}"
            for index in collection.vector_indexes
        )
        return (
            "SELECT s.document_id, coalesce(o.created_at, s.created_at) AS created_at,"
            " CASE WHEN o.created_at IS NULL THEN s.doc ELSE"
            f" left(s.doc, length(s.doc) - {tail}) || replace(right(s.doc, {tail}),"
            ' \'"created_at":"\' || s.created_at, \'"created_at":"\' || o.created_at) END AS doc'
            f"{vectors} FROM {duck.parquet_source([staging])} s LEFT JOIN"
            f" (SELECT document_id, created_at FROM {self.scan_sql(collection)}) o"
            " USING (document_id)"
        )


def _typed_columns(collection: Collection) -> list[tuple[str, str]]:
    columns = [("document_id", "VARCHAR"), ("created_at", "VARCHAR"), ("doc", "VARCHAR")]
    for index in collection.vector_indexes:
        kind = (
            f"FLOAT[{index.dimensions}]"
            if index.type == "dense"
            else "STRUCT(indices INTEGER[], values FLOAT[])"
        )
        columns.append((duck.identifier(vector_column(index.name)), kind))
    return columns


def _copy(con: duckdb.DuckDBPyConnection, collection: Collection, sql: str, target: Path) -> None:
    """Stream a query into a segment file with the segment schema (fixed-size vectors kept).

    Every segment is sorted by document_id, so an export of a one-segment snapshot reads
    its rows in output order (O3) without sorting vectors again.
    """
    schema = segment_schema(collection.vector_indexes)
    typed = ", ".join(f"CAST({name} AS {kind})" for name, kind in _typed_columns(collection))
    query = f"SELECT {typed} FROM ({sql}) q ORDER BY document_id"
    reader = con.sql(query).to_arrow_reader(SEGMENT_BATCH_ROWS)
    with pq.ParquetWriter(target, schema, compression=SEGMENT_COMPRESSION) as writer:
        for batch in reader:
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
    _write_shapes(con, target)


def _write_shapes(con: duckdb.DuckDBPyConnection, segment: Path) -> None:
    """The sidecar of a segment's distinct document shapes, one representative each.

    With it, an export of whole segments knows the columns to write without reading every
    document first.
    """
    con.execute(
        f"COPY (SELECT min(doc) AS doc, count(*) AS n FROM {duck.parquet_source([segment])}"
        f" GROUP BY json_structure(doc)) TO {duck.literal(str(shapes_file(segment)))}"
        " (FORMAT parquet)"
    )


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


def shapes_file(segment: Path) -> Path:
    """The file beside a segment holding one representative document per shape, with counts."""
    return segment.with_suffix(".shapes.parquet")

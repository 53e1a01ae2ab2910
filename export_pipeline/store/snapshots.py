"""Reading a snapshot of a collection: its segments in document_id order, as Arrow batches
or a DuckDB source, and the JSON structures their sidecars record (store/segments.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline import duck
from export_pipeline.settings import Settings
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
from export_pipeline.store.segment_files import SegmentFiles, is_remote
from export_pipeline.store.segments import SHAPE_ID, numbered, shapes_file


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


class SnapshotReader:
    """The documents of a collection's snapshot (one version's segments), in id order."""

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

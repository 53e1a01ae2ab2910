"""Whole exports without vectors: DuckDB reads the segments itself, in one streaming query,
where its reads stay bounded; the files are the same as those of the batch by batch path."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import export_job, ids_of, local_path, make_collection, write_jsonl

from export_pipeline import duck
from export_pipeline.engine import parts as parts_module
from export_pipeline.engine.sinks import TableWriter, csv_sink
from export_pipeline.errors import ExportPipelineError
from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.store import Collection, DocumentStore, Store, VectorIndex

FORMATS = ["json", "csv", "parquet"]

# Ids in byte order across three ingests, the later ones first: three segments whose id
# ranges do not overlap, listed in the catalog out of id order.
PARTS = [
    [f"m{n:02d}" for n in range(10)],
    ["10", "9", "A", "B", "a-b", "a.b", "a_b"],
    ["x", "é", "€", "😀"],
]


def _doc(number: int, key: str) -> dict[str, Any]:
    """Documents of varying, clashing and nested shapes (W3/W4 rules all apply)."""
    doc: dict[str, Any] = {"document_id": key, "n": number}
    if number % 2:
        doc["mixed"] = [1, "two", {"three": 3}][number % 3]
        doc["nested"] = {"t": f"v{number}", "l": [number, 2.5], "deep": {"x": None}}
    else:
        doc["mixed"] = number * 1.5
        doc["tags"] = ["a", "b"][: number % 3]
        doc["Name"], doc["name"] = "upper", "lower"
        doc[""] = "empty key"
    if number % 5 == 0:
        doc["text"] = 'quotes " and , commas\r\nand lines ünï 😀'
    return doc


def _collection(store: Store, parts: list[list[str]], name: str = "things") -> Collection:
    counter = iter(range(1000))
    ns, col = make_collection(store, [_doc(next(counter), key) for key in parts[0]], name=name)
    for ids in parts[1:]:
        docs = [_doc(next(counter), key) for key in ids]
        store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", docs))
    return store.catalog.collection(ns, col.id)


def _run(store: Store, col: Collection, request: dict[str, Any]) -> ExportRun:
    return export_job(col.namespace_id, col.id, request, settings=store.settings)


def _sources(monkeypatch: pytest.MonkeyPatch) -> list[list[Path] | None]:
    """What each export's scan_files answered (None: batch by batch)."""
    answers: list[list[Path] | None] = []
    real = DocumentStore.scan_files

    def spy(
        self: DocumentStore, collection: Collection, max_bytes: int, **kwargs: Any
    ) -> list[Path] | None:
        answers.append(real(self, collection, max_bytes, **kwargs))
        return answers[-1]

    monkeypatch.setattr(DocumentStore, "scan_files", spy)
    return answers


def _batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DocumentStore, "scan_files", lambda *args, **kwargs: None)


def _same_file(a: ExportRun, b: ExportRun, fmt: str) -> None:
    pa_path, pb_path = local_path(a.response.s3_path), local_path(b.response.s3_path)
    if fmt == "parquet":
        ta, tb = pq.read_table(pa_path), pq.read_table(pb_path)
        assert ta.schema.equals(tb.schema) and ta.equals(tb)
    else:
        assert pa_path.read_bytes() == pb_path.read_bytes()
    for key in ("document_count", "warnings"):
        assert a.manifest[key] == b.manifest[key]
    assert a.manifest["files"][0]["columns"] == b.manifest["files"][0]["columns"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("select", [None, ["nested.t", "mixed", "name", "Name", "n"]])
def test_O3_whole_export_reads_segments_in_id_order_and_writes_the_same_file(
    store: Store, monkeypatch: pytest.MonkeyPatch, fmt: str, select: list[str] | None
) -> None:
    col = _collection(store, PARTS)
    assert len(col.segments) == 3
    request: dict[str, Any] = {"format": fmt}
    if select:
        request["select_fields"] = select
    answers = _sources(monkeypatch)
    streamed = _run(store, col, request)
    assert answers and answers[-1] is not None  # DuckDB read the segments
    expected = sorted((key for part in PARTS for key in part), key=str.encode)
    assert ids_of(streamed.response.s3_path, fmt) == expected
    _batch_by_batch(monkeypatch)
    _same_file(streamed, _run(store, col, request), fmt)


def test_scan_source_only_where_reads_stay_bounded_and_in_order(store: Store) -> None:
    documents = store.documents
    apart = _collection(store, PARTS, name="apart")
    assert documents.scan_source(apart, 16 << 20) is not None
    # A row group holding more documents than one batch may: read batch by batch.
    assert documents.scan_source(apart, 100) is None
    # Overlapping id ranges need a merge.
    overlapping = _collection(store, [["a1", "a3"], ["a2", "a4"]], name="overlapping")
    assert len(overlapping.segments) == 2
    assert documents.scan_source(overlapping, 16 << 20) is None
    _, empty = make_collection(store, [], name="empty")
    assert documents.scan_source(empty, 16 << 20) is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_O3_overlapping_segments_still_export_in_id_order(
    store: Store, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    col = _collection(store, [["a1", "a3", "a5"], ["a0", "a2", "a4"]])
    answers = _sources(monkeypatch)
    result = _run(store, col, {"format": fmt})
    assert answers == [None]
    assert ids_of(result.response.s3_path, fmt) == ["a0", "a1", "a2", "a3", "a4", "a5"]


def test_vectors_keep_the_batch_path(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, col = make_collection(
        store,
        [{"document_id": f"d{n}", "_vectors": {"v": [n, 1.0]}} for n in range(5)],
        [VectorIndex(name="v", dimensions=2)],
    )
    answers = _sources(monkeypatch)
    result = _run(store, col, {"format": "parquet", "include_vectors": True})
    assert answers == [] and result.response.document_count == 5


def _no_writer_threads() -> bool:
    return not any(t.name == "table-writer" and t.is_alive() for t in threading.enumerate())


def _nothing_left(store: Store) -> None:
    scratch = store.settings.scratch_dir
    assert not scratch.exists() or list(scratch.iterdir()) == []
    exports = store.settings.home_dir / "exports"
    assert not list(exports.glob("*/exports/*/*"))
    assert _no_writer_threads()


@pytest.mark.parametrize("streamed", [True, False])
def test_W7_a_sink_failing_on_its_thread_fails_the_export(
    store: Store, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    col = _collection(store, PARTS)
    if not streamed:
        _batch_by_batch(monkeypatch)

    def broken(self: Any, table: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", broken)
    with pytest.raises(ExportPipelineError, match=r"No space left on device at .*nothing was"):
        _run(store, col, {"format": "parquet"})
    _nothing_left(store)


@pytest.mark.parametrize("streamed", [True, False])
def test_W7_an_interrupt_between_batches_stops_the_writer_and_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    col = _collection(store, PARTS)
    if not streamed:
        _batch_by_batch(monkeypatch)
    monkeypatch.setattr(parts_module, "batch_rows", lambda shape, fmt: 2)
    real_write = TableWriter.write
    written: list[int] = []

    def write_then_interrupt(self: TableWriter, table: pa.Table) -> None:
        if written:
            raise KeyboardInterrupt  # as SIGINT would, between two batches
        written.append(table.num_rows)
        real_write(self, table)

    monkeypatch.setattr(TableWriter, "write", write_then_interrupt)
    with pytest.raises(ExportPipelineError, match="KeyboardInterrupt"):  # the step's failure
        _run(store, col, {"format": "csv"})
    assert written == [2]
    _nothing_left(store)


def test_abort_waits_for_the_table_being_written_and_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    writer = TableWriter(path, csv_sink(path))
    writer.write(pa.table({"a": ["x", "y"]}))
    writer.abort()
    assert _no_writer_threads()
    assert path.read_bytes() == b'"a"\r\n"x"\r\n"y"\r\n'


def test_an_error_in_a_streamed_query_is_raised_as_duckdbs() -> None:
    con = duckdb.connect()
    query = "SELECT CASE WHEN i > 5000 THEN error('boom') END AS x FROM range(10000) t(i)"
    with pytest.raises(duckdb.InvalidInputException, match="boom"):
        for _ in duck.streamed(con, query, None, 1000):
            pass
    assert sum(b.num_rows for b in duck.streamed(con, "FROM range(?)", [2500], 1000)) == 2500

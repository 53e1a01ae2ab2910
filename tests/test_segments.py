"""Segments on disk: bounded row groups, sorted runs merged, sidecars old and new (O3)."""

from __future__ import annotations

import json
import random
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import export_job, files_under, make_collection, read_csv, read_json_lines, write_jsonl

from export_pipeline.store import Store, VectorIndex
from export_pipeline.store.batches import byte_chunks, merge_sorted
from export_pipeline.store.segments import ROW_GROUP_BYTES, shapes_file


def ids_in(store: Store, collection: Any) -> list[str]:
    (segment,) = store.documents.segment_files(collection)
    return pq.read_table(segment, columns=["document_id"]).column(0).to_pylist()


def test_O3_unsorted_file_sorted_through_spilled_runs_and_merges(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs of a few kilobytes and a fan-in of 3: many runs, merged in two levels.
    monkeypatch.setattr("export_pipeline.store.sorting.RUN_BYTES", 4_000)
    monkeypatch.setattr("export_pipeline.store.sorting.FAN_IN", 3)
    monkeypatch.setattr("export_pipeline.store.sorting.RUN_GROUP_ROWS", 7)
    monkeypatch.setattr("export_pipeline.store.jsonl.BATCH_ROWS", 10)
    ids = [f"id-{n:04d}-{'é' if n % 3 else 'Z'}" for n in range(600)]
    random.Random(5).shuffle(ids)
    docs = [{"document_id": i, "n": n, "_vectors": {"v": [n, 1.0]}} for n, i in enumerate(ids)]
    ns, col = make_collection(store, docs, [VectorIndex(name="v", dimensions=2)])
    expected = sorted(ids, key=lambda i: i.encode())
    assert ids_in(store, col) == expected
    result = export_job(
        ns.id, col.id, {"format": "json", "include_vectors": True}, settings=store.settings
    )
    lines = read_json_lines(result.response.s3_path)
    vectors = read_json_lines(result.response.vectors_download_url)
    assert [line["document_id"] for line in lines] == expected
    by_id = {doc["document_id"]: doc for doc in docs}
    assert [v["v"] for v in vectors] == [by_id[i]["_vectors"]["v"] for i in expected]
    staging = store.documents.collection_dir(col) / "staging"
    assert files_under(staging) == []  # runs and staged files are gone


def test_O3_upserts_across_segments_merge_in_id_order(store: Store) -> None:
    ns, col = make_collection(
        store, [{"document_id": f"a{n:02d}", "v": 0} for n in range(0, 40, 2)]
    )
    for start in (1, 3):
        docs = [{"document_id": f"a{n:02d}", "v": start} for n in range(start, 40, 4)]
        store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", docs))
    col = store.catalog.collection(ns, col.id)
    assert len(col.segments) == 3
    result = export_job(ns.id, col.id, {"format": "csv"}, settings=store.settings)
    _, *rows = read_csv(result.response.s3_path)
    assert [row[0] for row in rows] == [f"a{n:02d}" for n in range(40)]


@pytest.mark.slow
def test_segment_row_groups_are_bounded_in_bytes(store: Store) -> None:
    docs = [{"document_id": f"d{n:03d}", "text": "x" * 1_000_000} for n in range(100)]
    _, col = make_collection(store, docs)
    (segment,) = store.documents.segment_files(col)
    meta = pq.ParquetFile(segment).metadata
    assert meta.num_row_groups > 1
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    assert max(sizes) <= ROW_GROUP_BYTES * 1.1


@pytest.mark.parametrize("sidecar", ["missing", "representatives"])
def test_segments_from_older_versions_still_export(store: Store, sidecar: str) -> None:
    docs = [{"document_id": f"d{n}", "a": n, "b": {"c": str(n)}} for n in range(5)]
    ns, col = make_collection(store, docs)
    (segment,) = store.documents.segment_files(col)
    if sidecar == "missing":
        shapes_file(segment).unlink()
    else:  # the first sidecars held one representative document per shape
        table = pq.read_table(segment, columns=["doc"]).slice(0, 1)
        pq.write_table(table.append_column("n", pa.array([5])), shapes_file(segment))
    result = export_job(ns.id, col.id, {"format": "csv"}, settings=store.settings)
    header, *rows = read_csv(result.response.s3_path)
    assert "b.c" in header and len(rows) == 5


def test_byte_chunks_bound_bytes_and_rows_and_keep_order() -> None:
    table = pa.table(
        {"document_id": [str(n) for n in range(10)], "doc": ["x" * n * 10 for n in range(10)]}
    )
    chunks = list(byte_chunks(table, max_bytes=150, max_rows=3))
    assert pa.concat_tables(chunks).equals(table)
    assert all(chunk.num_rows <= 3 for chunk in chunks)
    assert all(chunk.num_rows == 1 or chunk.nbytes <= 400 for chunk in chunks)


def test_merge_sorted_interleaves_runs_by_byte_order() -> None:
    def run(ids: list[str], size: int) -> list[pa.Table]:
        table = pa.table({"document_id": ids, "n": list(range(len(ids)))})
        return [table.slice(i, size) for i in range(0, len(ids), size)]

    left = sorted(["a", "c", "e", "Z", "é", "ä"], key=str.encode)
    right = sorted(["b", "d", "f", "ü", "A"], key=str.encode)
    merged = pa.concat_tables(merge_sorted([iter(run(left, 2)), iter(run(right, 3)), iter([])]))
    assert merged.column("document_id").to_pylist() == sorted(left + right, key=str.encode)


def _unnumbered(segment: Any) -> None:
    """Make a segment look written before structures were numbered: no shape_id column, a
    sidecar of (shape, n) without the marker."""
    table = pq.read_table(segment)
    pq.write_table(table.drop_columns(["shape_id"]), segment)
    sidecar = pq.read_table(shapes_file(segment))
    pq.write_table(sidecar.replace_schema_metadata(None), shapes_file(segment))


_MIXED = [
    {"document_id": f"d{n:02d}", "kind": "a" if n % 3 else "b", "n": n}
    | ({"only_b": {"x": n}} if n % 3 == 0 else {"only_a": str(n)})
    for n in range(30)
]
_SELECTIONS = [
    {"filters": {"AND": [{"field": "kind", "operator": "eq", "value": "b"}]}},
    {"sample_size": 7, "sample_seed": 11},
    {
        "filters": {"AND": [{"field": "kind", "operator": "eq", "value": "a"}]},
        "sample_size": 4,
        "sample_seed": 2,
    },
]


def _exported(store: Store, ns: Any, col: Any, body: dict[str, Any]) -> tuple[Any, Any]:
    result = export_job(ns.id, col.id, body, settings=store.settings)
    if body["format"] == "json":
        lines = read_json_lines(result.response.s3_path)
        return lines, [c["name"] for c in result.manifest["files"][0]["columns"]]
    header, *rows = read_csv(result.response.s3_path)
    return rows, header


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("body", _SELECTIONS)
def test_selections_of_old_and_new_segments_export_the_same(
    store: Store, fmt: str, body: dict[str, Any]
) -> None:
    """Numbered structures (shape_id) and structures derived at export agree, over several
    segments (numbers are per segment, offset across the snapshot)."""
    ns, new = make_collection(store, _MIXED[:10], name="new")
    _, old = make_collection(store, _MIXED[:10], name="old")
    for part in (_MIXED[10:20], _MIXED[20:]):
        for col in (new, old):
            store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", part))
    new, old = store.catalog.collection(ns, new.id), store.catalog.collection(ns, old.id)
    assert len(old.segments) == 3 and store.documents.numbered(new)
    for segment in store.documents.segment_files(old):
        _unnumbered(segment)
    assert not store.documents.numbered(old)
    rows_new, columns_new = _exported(store, ns, new, {"format": fmt, **body})
    rows_old, columns_old = _exported(store, ns, old, {"format": fmt, **body})
    assert columns_new == columns_old
    system = ("collection_id", "_internal")  # differ between the two collections
    if fmt == "json":
        assert set(columns_new) == {key for doc in rows_new for key in doc}
        rows_new = [{k: v for k, v in d.items() if k not in system} for d in rows_new]
        rows_old = [{k: v for k, v in d.items() if k not in system} for d in rows_old]
    else:
        user = [i for i, name in enumerate(columns_new) if not name.startswith(system)]
        rows_new = [[row[i] for i in user] for row in rows_new]
        rows_old = [[row[i] for i in user] for row in rows_old]
    assert rows_new == rows_old and rows_new
    if "sample_size" not in body:
        kinds = {doc["kind"] for doc in rows_new} if fmt == "json" else None
        assert kinds in ({"b"}, None)
        assert ("only_a" in columns_new) is False and ("only_b.x" in columns_new) == (fmt == "csv")


def test_segment_numbers_each_documents_structure(store: Store) -> None:
    _, col = make_collection(store, _MIXED)
    (segment,) = store.documents.segment_files(col)
    numbers = pq.read_table(segment, columns=["shape_id"]).column(0).to_pylist()
    sidecar = pq.read_table(shapes_file(segment))
    assert sidecar.column("n").to_pylist() == [numbers.count(i) for i in range(sidecar.num_rows)]
    shapes = sidecar.column("shape").to_pylist()
    docs = pq.read_table(segment, columns=["doc"]).column(0).to_pylist()
    for doc, number in zip(docs, numbers, strict=True):
        assert set(json.loads(shapes[number])) == set(json.loads(doc))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_a_snapshot_of_older_and_newer_segments_exports_its_chosen_shapes(
    store: Store, fmt: str
) -> None:
    """One unnumbered segment is enough for the whole export to derive structures."""
    ns, col = make_collection(store, _MIXED[:15])
    (old,) = store.documents.segment_files(col)
    _unnumbered(old)
    store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", _MIXED[15:]))
    col = store.catalog.collection(ns, col.id)
    assert len(col.segments) == 2 and not store.documents.numbered(col)
    body = {"format": fmt, "filters": _SELECTIONS[0]["filters"]}
    result = export_job(ns.id, col.id, body, settings=store.settings)
    names = [c["name"] for c in result.manifest["files"][0]["columns"]]
    assert "only_a" not in names and result.response.document_count == 10
    # upserting into the older segment rewrites it numbered
    changed = [{**_MIXED[0], "n": -1}]
    store.ingest(
        ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", changed), upsert=True
    )
    assert store.documents.numbered(store.catalog.collection(ns, col.id))
    again = export_job(ns.id, col.id, body, settings=store.settings)
    assert [c["name"] for c in again.manifest["files"][0]["columns"]] == names

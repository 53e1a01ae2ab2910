"""The embedded store: namespaces and collections (D1, D2), ingest (D3), all-or-nothing errors."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import (
    export_job,
    files_under,
    make_collection,
    quick_first,
    read_json_lines,
    write_jsonl,
)

from export_pipeline.errors import ConflictError, InvalidInput, NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store, VectorIndex
from export_pipeline.store.segments import shapes_file

INDEXES = [
    VectorIndex(name="dense", dimensions=3),
    VectorIndex(name="sparse", dimensions=100, type="sparse"),
]


@pytest.fixture
def settings(catalog_settings: Settings) -> Settings:
    """Every test here runs with the catalog in SQLite and in PostgreSQL."""
    return catalog_settings


# Parsing, validating and writing documents happen before the catalog is touched, whichever
# it is: those tests run on SQLite; what the catalog keeps (ids, names, versions, segment
# lists, a refused ingest leaving them as they were) is tested on both.
ON_SQLITE = pytest.mark.parametrize("catalog_settings", ["sqlite"], indirect=True)


def export_json(store: Store, ns: Namespace, col: Collection, **request: Any) -> list[dict]:
    result = export_job(ns.id, col.id, {"format": "json", **request}, settings=store.settings)
    return read_json_lines(result.response.s3_path)


# --- D1, D2 ----------------------------------------------------------------------------


def test_D1_namespace_id_shape_and_lookup_by_id_or_name(store: Store) -> None:
    ns = store.catalog.create_namespace("production")
    assert re.fullmatch(r"ns_[a-z0-9]{12}", ns.id)
    assert store.catalog.namespace(ns.id) == ns
    assert store.catalog.namespace("production") == ns


def test_D1_namespace_ids_are_distinct(store: Store) -> None:
    ids = {store.catalog.create_namespace(f"space-{i}").id for i in range(20)}
    assert len(ids) == 20


def test_D1_namespace_name_unique(store: Store) -> None:
    store.catalog.create_namespace("my-namespace")
    with pytest.raises(ConflictError):
        store.catalog.create_namespace("my-namespace")


@ON_SQLITE
@pytest.mark.parametrize("name", ["ab", "a b", "x" * 101, "ns.one", "", "näme", "a/b"])
def test_D1_namespace_name_grammar(store: Store, name: str) -> None:
    with pytest.raises(InvalidInput):
        store.catalog.create_namespace(name)


@pytest.mark.parametrize("name", ["abc", "A_b-9", "x" * 100])
def test_D1_namespace_name_grammar_accepts(store: Store, name: str) -> None:
    assert store.catalog.create_namespace(name).name == name


def test_D1_unknown_namespace_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.catalog.namespace("nope-nope")
    with pytest.raises(NotFoundError):
        store.catalog.namespace("ns_000000000000")


def test_D2_collection_id_shape_and_lookup_by_id_or_name(store: Store) -> None:
    ns = store.catalog.create_namespace("space")
    col = store.catalog.create_collection(ns, "articles", INDEXES)
    assert re.fullmatch(r"col_[a-z0-9]{10}", col.id)
    assert col.vector_indexes == INDEXES
    assert all(index.datatype == "float32" for index in col.vector_indexes)
    assert store.catalog.collection(ns, col.id).id == col.id
    assert store.catalog.collection(ns, "articles").id == col.id
    for ns_key in (ns.id, ns.name):
        for col_key in (col.id, col.name):
            assert store.resolve(ns_key, col_key) == (ns, store.catalog.collection(ns, col.id))


def test_D2_collection_name_unique_within_namespace_only(store: Store) -> None:
    one = store.catalog.create_namespace("one")
    two = store.catalog.create_namespace("two")
    a = store.catalog.create_collection(one, "shared-name", [])
    with pytest.raises(ConflictError):
        store.catalog.create_collection(one, "shared-name", [])
    b = store.catalog.create_collection(two, "shared-name", [])
    assert a.id != b.id
    assert store.resolve("one", "shared-name")[1].id == a.id
    assert store.resolve("two", "shared-name")[1].id == b.id


@ON_SQLITE
@pytest.mark.parametrize("name", ["ab", "has space", "x" * 101, "dot.ted"])
def test_D2_collection_name_grammar(store: Store, name: str) -> None:
    ns = store.catalog.create_namespace("space")
    with pytest.raises(InvalidInput):
        store.catalog.create_collection(ns, name, [])


def test_D1_D2_collection_invisible_from_another_namespace(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": "a"}], namespace="owner")
    other = store.catalog.create_namespace("stranger")
    for key in (col.id, col.name):
        with pytest.raises(NotFoundError):
            store.catalog.collection(other, key)
        with pytest.raises(NotFoundError):
            store.resolve(other.id, key)
        with pytest.raises(NotFoundError):
            store.ingest(other.name, key, write_jsonl(store.settings.home_dir / "x", []))
        with pytest.raises(NotFoundError):
            export_job(other.id, key, {}, settings=store.settings)
    assert store.catalog.collections(other) == []
    assert store.catalog.collection(ns, col.id).document_count == 1


def test_D2_duplicate_vector_index_names_rejected(store: Store) -> None:
    ns = store.catalog.create_namespace("space")
    with pytest.raises(InvalidInput):
        store.catalog.create_collection(
            ns, "twice", [VectorIndex(name="v", dimensions=2), VectorIndex(name="v", dimensions=3)]
        )


# --- D3 --------------------------------------------------------------------------------


@ON_SQLITE
def test_D3_documents_of_different_shapes_and_types_ingest(store: Store) -> None:
    docs = [
        {"document_id": "a", "value": 1, "meta": {"title": "x"}},
        {"document_id": "b", "value": "one", "meta": "flat"},
        {"document_id": "c", "value": [1, "two", None, {"k": True}], "meta": None},
        {"document_id": "d", "value": {"nested": {"deeper": [[]]}}},
        {"document_id": "e"},
        {"document_id": "f", "value": 2.5, "other": False},
    ]
    ns, col = make_collection(store, docs)
    assert col.document_count == 6
    exported = {doc["document_id"]: doc for doc in export_json(store, ns, col)}
    for doc in docs:
        got = exported[doc["document_id"]]
        assert got["collection_id"] == col.id
        assert {k: v for k, v in got.items() if k not in ("collection_id", "_internal")} == doc


@ON_SQLITE
def test_D3_store_overwrites_collection_id_and_internal(store: Store) -> None:
    doc = {"document_id": "a", "collection_id": "col_fake000000", "_internal": {"x": 1}, "v": 1}
    ns, col = make_collection(store, [doc])
    (got,) = export_json(store, ns, col)
    assert got["collection_id"] == col.id
    assert set(got["_internal"]) == {"created_at", "updated_at"}
    iso_utc = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)"
    assert re.fullmatch(iso_utc, got["_internal"]["created_at"])
    assert re.fullmatch(iso_utc, got["_internal"]["updated_at"])


@ON_SQLITE
def test_D3_ingest_result_counts_and_blank_lines_skipped(store: Store) -> None:
    ns, col = make_collection(store, [])
    source = write_jsonl(store.settings.home_dir / "in", ['{"document_id":"a"}', "", "  "])
    result = store.ingest(ns.id, col.id, source)
    assert (result.ingested, result.replaced, result.document_count) == (1, 0, 1)
    assert result.version == col.version + 1


@ON_SQLITE
def test_D3_vectors_are_not_document_fields(store: Store) -> None:
    doc = {"document_id": "a", "x": 1, "_vectors": {"dense": [1, 2, 3]}}
    ns, col = make_collection(store, [doc], INDEXES)
    (got,) = export_json(store, ns, col)
    assert "_vectors" not in got and "dense" not in got


# --- ingest errors: all or nothing -----------------------------------------------------

GOOD = '{"document_id": "fresh", "x": 1}'
BAD_LINES = {
    "malformed": ('{"document_id": "b", "x": ', 2),
    "truncated_object": ('{"document_id": "b"', 2),
    "not_an_object": ("[1, 2, 3]", 2),
    "nan_literal": ('{"document_id": "b", "x": NaN}', 2),
    "infinity_literal": ('{"document_id": "b", "x": Infinity}', 2),
    "missing_document_id": ('{"x": 1}', 2),
    "empty_document_id": ('{"document_id": ""}', 2),
    "numeric_document_id": ('{"document_id": 7}', 2),
    "null_document_id": ('{"document_id": null}', 2),
    "int_above_int64": ('{"document_id": "b", "n": 9223372036854775808}', 2),
    "int_below_int64": ('{"document_id": "b", "n": [{"m": -9223372036854775809}]}', 2),
    "huge_float": ('{"document_id": "b", "x": 1e400}', 2),
    "unknown_vector_index": ('{"document_id": "b", "_vectors": {"nope": [1, 2, 3]}}', 2),
    "vectors_not_object": ('{"document_id": "b", "_vectors": [1, 2, 3]}', 2),
    "dense_too_short": ('{"document_id": "b", "_vectors": {"dense": [1, 2]}}', 2),
    "dense_too_long": ('{"document_id": "b", "_vectors": {"dense": [1, 2, 3, 4]}}', 2),
    "dense_float32_overflow": ('{"document_id": "b", "_vectors": {"dense": [1e39, 0, 0]}}', 2),
    "dense_double_overflow": ('{"document_id": "b", "_vectors": {"dense": [1e400, 0, 0]}}', 2),
    "dense_bool": ('{"document_id": "b", "_vectors": {"dense": [true, 0, 0]}}', 2),
    "dense_null": ('{"document_id": "b", "_vectors": {"dense": [null, 0, 0]}}', 2),
    "dense_nested": ('{"document_id": "b", "_vectors": {"dense": [[1], [2], [3]]}}', 2),
    "dense_not_list": ('{"document_id": "b", "_vectors": {"dense": 5}}', 2),
    "sparse_bad_shape": ('{"document_id": "b", "_vectors": {"sparse": [1, 2]}}', 2),
    "sparse_length_mismatch": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [1, 2], "values": [0.5]}}}',
        2,
    ),
    "sparse_index_out_of_range": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [100], "values": [0.5]}}}',
        2,
    ),
    "sparse_negative_index": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [-1], "values": [0.5]}}}',
        2,
    ),
    "sparse_float_index": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [1.5], "values": [0.5]}}}',
        2,
    ),
    "sparse_bool_value": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [1], "values": [true]}}}',
        2,
    ),
    "sparse_overflow_value": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [1], "values": [1e39]}}}',
        2,
    ),
    "sparse_extra_key": (
        '{"document_id": "b", "_vectors": {"sparse": {"indices": [], "values": [], "x": 1}}}',
        2,
    ),
}


@pytest.fixture
def filled(store: Store) -> tuple[Namespace, Collection]:
    """A collection holding one document, `keep`, with vectors."""
    doc = {"document_id": "keep", "v": 1, "_vectors": {"dense": [1, 2, 3]}}
    return make_collection(store, [doc], INDEXES)


def assert_refused(
    store: Store, ns: Namespace, col: Collection, lines: list[str], line: int, upsert: bool = False
) -> None:
    """Ingesting `lines` fails naming `line`, and the collection is exactly as before."""
    folder = store.documents.collection_dir(col)
    segments_before = files_under(folder / "segments")
    before = store.catalog.collection(ns, col.id)
    source = write_jsonl(store.settings.home_dir.parent / "bad", lines)
    with pytest.raises(InvalidInput) as info:
        store.ingest(ns.id, col.id, source, upsert=upsert)
    assert info.value.message.startswith(f"line {line}:"), info.value.message
    after = store.catalog.collection(ns, col.id)
    assert (after.document_count, after.version, after.segments) == (
        before.document_count,
        before.version,
        before.segments,
    )
    assert files_under(folder / "segments") == segments_before
    assert files_under(folder / "staging") == []


# Each bad line on SQLite, and the first few on PostgreSQL too: the refusal happens before
# the catalog is touched, whichever it is.
@pytest.mark.parametrize(
    ("catalog_settings", "case"),
    quick_first([("sqlite", case) for case in sorted(BAD_LINES)])
    + [("postgres", case) for case in sorted(BAD_LINES)[:3]],
    indirect=["catalog_settings"],
)
def test_D3_D4_ingest_error_refuses_whole_file(
    store: Store, filled: tuple[Namespace, Collection], case: str
) -> None:
    ns, col = filled
    bad, line = BAD_LINES[case]
    assert_refused(store, ns, col, [GOOD, bad, '{"document_id": "later"}'], line)
    # the good line was not half-applied: it ingests cleanly now
    result = store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "ok", [GOOD]))
    assert result.document_count == 2


def test_D3_refused_ingest_leaves_exports_unchanged(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    before = export_json(store, ns, col)
    assert_refused(store, ns, col, [GOOD, '{"document_id": "keep"}'], 2)
    assert export_json(store, ns, col) == before


@pytest.mark.parametrize("case", ["malformed", "dense_too_short", "int_above_int64"])
def test_D3_upsert_error_refuses_whole_file(
    store: Store, filled: tuple[Namespace, Collection], case: str
) -> None:
    ns, col = filled
    bad, line = BAD_LINES[case]
    assert_refused(store, ns, col, ['{"document_id": "keep", "v": 2}', bad], line, upsert=True)
    (doc,) = export_json(store, ns, col)
    assert doc["v"] == 1


@ON_SQLITE
def test_D3_duplicate_id_in_file_names_second_occurrence(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    lines = ['{"document_id": "n1"}', '{"document_id": "n2"}', "", '{"document_id": "n1"}']
    assert_refused(store, ns, col, lines, 4)


@ON_SQLITE
def test_D3_duplicate_id_in_file_refused_even_with_upsert(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    lines = ['{"document_id": "keep"}', '{"document_id": "keep", "v": 3}']
    assert_refused(store, ns, col, lines, 2, upsert=True)


@ON_SQLITE
def test_D3_already_stored_id_refused_without_upsert(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    assert_refused(store, ns, col, [GOOD, '{"document_id": "other"}', '{"document_id": "keep"}'], 3)


@ON_SQLITE
def test_D3_duplicate_id_written_with_escapes_names_its_line(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    assert_refused(store, ns, col, ['{"document_id": "\\u00e4"}', '{"document_id": "ä"}'], 2)


@ON_SQLITE
def test_D3_stored_id_written_with_escapes_names_its_line(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    assert_refused(store, ns, col, [GOOD, '{"document_id": "k\\u0065ep"}'], 2)


@ON_SQLITE
def test_D4_huge_float_beside_long_integer_refused(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    line = '{"document_id": "b", "x": 1e400, "n": 1234567890123456789}'
    assert_refused(store, ns, col, [GOOD, line], 2)


@ON_SQLITE
@pytest.mark.parametrize(
    "vectors",
    [{"dense": ["1", "2", "3"]}, {"sparse": {"indices": [1], "values": ["0.5"]}}],
    ids=["dense", "sparse"],
)
def test_D3_string_in_vector_refused(
    store: Store, filled: tuple[Namespace, Collection], vectors: dict
) -> None:
    ns, col = filled
    line = json.dumps({"document_id": "b", "_vectors": vectors})
    assert_refused(store, ns, col, [GOOD, line], 2)


# --- upsert ----------------------------------------------------------------------------


def test_D3_upsert_replaces_values_and_keeps_created_at(store: Store) -> None:
    docs = [
        {"document_id": "a", "v": 1, "_vectors": {"dense": [1, 1, 1]}},
        {"document_id": "b", "v": 2},
    ]
    ns, col = make_collection(store, docs, INDEXES)
    before = {d["document_id"]: d for d in export_json(store, ns, col)}
    source = write_jsonl(
        store.settings.home_dir.parent / "up",
        [{"document_id": "a", "w": "new", "_vectors": {"dense": [2, 2, 2]}}],
    )
    result = store.ingest(ns.id, col.id, source, upsert=True)
    assert (result.ingested, result.replaced, result.document_count) == (1, 1, 2)
    col = store.catalog.collection(ns, col.id)
    assert col.document_count == 2
    run = export_job(
        ns.id, col.id, {"format": "json", "include_vectors": True}, settings=store.settings
    )
    after = {d["document_id"]: d for d in read_json_lines(run.response.s3_path)}
    vectors = {d["document_id"]: d for d in read_json_lines(run.response.vectors_s3_path)}
    assert after["a"]["w"] == "new" and "v" not in after["a"]
    assert vectors["a"]["dense"] == [2.0, 2.0, 2.0]
    assert after["a"]["_internal"]["created_at"] == before["a"]["_internal"]["created_at"]
    assert after["a"]["_internal"]["updated_at"] != before["a"]["_internal"]["updated_at"]
    assert after["a"]["_internal"]["updated_at"] > before["a"]["_internal"]["created_at"]
    assert after["b"] == before["b"]


@ON_SQLITE
def test_D3_upsert_mixes_new_and_replaced_documents(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": "a", "v": 1}, {"document_id": "b"}])
    lines = [{"document_id": "b", "v": 9}, {"document_id": "c", "v": 3}]
    result = store.ingest(
        ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "up", lines), upsert=True
    )
    assert (result.ingested, result.replaced, result.document_count) == (2, 1, 3)
    got = {d["document_id"]: d.get("v") for d in export_json(store, ns, col)}
    assert got == {"a": 1, "b": 9, "c": 3}


@ON_SQLITE
def test_D3_upsert_into_empty_collection_is_plain_ingest(store: Store) -> None:
    ns, col = make_collection(store, [])
    source = write_jsonl(store.settings.home_dir.parent / "up", [{"document_id": "a"}])
    result = store.ingest(ns.id, col.id, source, upsert=True)
    assert (result.ingested, result.replaced, result.document_count) == (1, 0, 1)


# --- persistence -----------------------------------------------------------------------


def test_D1_D2_D3_store_persists_across_instances(store: Store, settings: Settings) -> None:
    docs = [{"document_id": "a", "x": [1, {"y": "z"}]}, {"document_id": "b", "x": 2.5}]
    ns, col = make_collection(store, docs, INDEXES)
    original = export_json(store, ns, col)
    fresh = Store(Settings(home=settings.home, catalog=settings.catalog))  # what a new process sees
    ns2, col2 = fresh.resolve(ns.name, col.name)
    assert ns2 == ns
    assert (col2.id, col2.document_count, col2.version) == (col.id, 2, col.version)
    assert col2.vector_indexes == INDEXES
    assert export_json(fresh, ns2, col2) == original
    result = export_job(
        ns.name,
        col.name,
        {"format": "json"},
        settings=Settings(home=settings.home, catalog=settings.catalog),
    )
    assert read_json_lines(result.response.s3_path) == original


# --- Segment order: every segment is sorted by document_id (O3 relies on it) -------------


@ON_SQLITE
@pytest.mark.parametrize(
    "ids",
    [
        ["a", "b", "c", "d", "e"],  # already sorted: the staging file becomes the segment
        ["e", "d", "c", "b", "a"],
        ["a", "c", "b", "d", "e"],  # sorted within each batch of 2, not across the boundary
        ["a", "b", "b0", "Z", "é", "ä"],  # byte order: "Z" < "a", "ä" < "é"
    ],
)
def test_O3_ingest_writes_segments_sorted_by_id_whatever_the_file_order(
    store: Store, monkeypatch: pytest.MonkeyPatch, ids: list[str]
) -> None:
    monkeypatch.setattr("export_pipeline.store.jsonl.BATCH_ROWS", 2)
    ns, col = make_collection(store, [{"document_id": i, "n": n} for n, i in enumerate(ids)])
    (segment,) = store.documents.segment_files(col)
    stored = pq.read_table(segment, columns=["document_id"]).column(0).to_pylist()
    expected = sorted(ids, key=lambda i: i.encode())
    assert stored == expected
    assert [d["document_id"] for d in export_json(store, ns, col)] == expected
    shapes = pq.read_table(shapes_file(segment)).to_pylist()
    assert sum(row["n"] for row in shapes) == len(ids)


@ON_SQLITE
def test_D3_sorted_file_with_an_already_stored_id_is_refused(
    store: Store, filled: tuple[Namespace, Collection]
) -> None:
    ns, col = filled
    before = files_under(store.documents.collection_dir(col))
    assert_refused(store, ns, col, ['{"document_id": "a"}', '{"document_id": "keep"}'], 2)
    assert files_under(store.documents.collection_dir(col)) == before

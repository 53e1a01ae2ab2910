"""Messy collections: every document ingest accepts exports in every format, in bounded memory.

Deep, wide, long, unicode, empty keys, mixed kinds; documents of megabytes; thousands of
distinct keys. Ingest refuses exactly what no export could write: nesting past
MAX_DOCUMENT_DEPTH and lines past MAX_LINE_BYTES, naming the line.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from helpers import (
    export_job,
    files_under,
    local_path,
    make_collection,
    read_csv,
    read_json_lines,
    read_parquet,
    same_json,
    write_jsonl,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export_pipeline.engine import shapes
from export_pipeline.engine.shapes import CLASH
from export_pipeline.errors import InvalidInput
from export_pipeline.jsontext import MAX_DOCUMENT_DEPTH
from export_pipeline.settings import Settings
from export_pipeline.store import Store
from export_pipeline.store.jsonl import MAX_LINE_BYTES

FORMATS = ["json", "csv", "parquet"]


def nested(depth: int, leaf: Any = 1, kind: str = "object") -> Any:
    """A value `depth` levels deep (an object or array at each level, alternating for mixed)."""
    value = leaf
    for level in range(depth):
        use_object = kind == "object" or (kind == "mixed" and level % 2 == 0)
        value = {"k": value} if use_object else [value]
    return value


def export(store: Store, collection: str, **request: Any) -> Any:
    return export_job("test-ns", collection, request, settings=store.settings)


# --- depth ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["object", "array", "mixed"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_D3_deepest_accepted_document_exports_in_every_format(
    store: Store, kind: str, fmt: str
) -> None:
    # The line is level 1, so its value may nest MAX_DOCUMENT_DEPTH - 1 levels more.
    doc = {"document_id": "deep", "v": nested(MAX_DOCUMENT_DEPTH - 1, "bottom", kind)}
    make_collection(store, [doc, {"document_id": "flat", "v": 1}])
    result = export(store, "things", format=fmt)
    assert result.response.document_count == 2
    if fmt == "json":
        assert read_json_lines(result.response.s3_path)[0]["v"] == doc["v"]
    elif fmt == "parquet":
        assert read_parquet(result.response.s3_path).num_rows == 2
    else:
        assert len(read_csv(result.response.s3_path)) == 3


@pytest.mark.parametrize("kind", ["object", "array", "mixed"])
def test_D3_document_nested_past_the_limit_is_refused_with_its_line(
    store: Store, kind: str
) -> None:
    deep = {"document_id": "deep", "v": nested(MAX_DOCUMENT_DEPTH, 1, kind)}
    ns, col = make_collection(store, [{"document_id": "ok"}])
    path = write_jsonl(store.settings.home_dir.parent / "in", [{"document_id": "a"}, deep])
    before = files_under(store.documents.collection_dir(col))
    with pytest.raises(InvalidInput) as info:
        store.ingest(ns.id, col.id, path)
    assert info.value.message.startswith(
        f"line 2: the document is nested deeper than {MAX_DOCUMENT_DEPTH} levels"
    )
    assert info.value.details["line"] == 2
    assert files_under(store.documents.collection_dir(col)) == before


def test_D3_thousands_of_levels_are_refused_without_recursing(store: Store) -> None:
    ns, col = make_collection(store, [])
    path = store.settings.home_dir.parent / "deep.jsonl"
    path.write_text('{"document_id": "x", "v": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InvalidInput, match="line 1: the document is nested deeper"):
        store.ingest(ns.id, col.id, path)


def test_D3_brackets_inside_strings_do_not_count_as_depth(store: Store) -> None:
    doc = {"document_id": "s", "text": "[" * 500 + "{" * 500 + '\\"[{'}
    make_collection(store, [doc])
    (line,) = read_json_lines(export(store, "things", format="json").response.s3_path)
    assert line["text"] == doc["text"]


# --- size -------------------------------------------------------------------------------


def test_D3_line_over_the_limit_is_refused_before_it_is_read(store: Store) -> None:
    ns, col = make_collection(store, [])
    path = store.settings.home_dir.parent / "huge.jsonl"
    with open(path, "w") as handle:
        handle.write('{"document_id": "small"}\n')
        handle.write('{"document_id": "huge", "text": "' + "x" * MAX_LINE_BYTES + '"}\n')
    with pytest.raises(InvalidInput) as info:
        store.ingest(ns.id, col.id, path)
    assert info.value.message == (
        "line 2: the line is longer than 16,777,216 bytes (16 MiB), the document limit"
    )
    assert store.catalog.collection(ns, col.id).document_count == 0


def test_D3_line_at_the_limit_is_accepted(store: Store) -> None:
    head = '{"document_id": "big", "text": "'
    doc = head + "y" * (MAX_LINE_BYTES - len(head) - 2) + '"}'
    assert len(doc) == MAX_LINE_BYTES
    ns, col = make_collection(store, [doc + "\r"])  # a CRLF line end is not counted
    assert store.catalog.collection(ns, col.id).document_count == 1


@pytest.mark.slow
def test_documents_of_megabytes_export_within_a_small_duckdb_memory_limit(tmp_path: Any) -> None:
    # 24 documents of 2 MB in an unsorted file, under a 64 MB DuckDB limit: DuckDB could not
    # even filter them if it saw them 2,048 rows at a time.
    settings = Settings(
        home=tmp_path / "home", duckdb_memory_limit="64MB", ingest_memory_limit="64MB"
    )
    store = Store(settings)
    docs = [
        {"document_id": f"d{(i * 7) % 24:02d}", "text": "ü" * 1_000_000, "m": {"i": i}}
        for i in range(24)
    ]
    make_collection(store, docs)
    for fmt in FORMATS:
        full = export_job("test-ns", "things", {"format": fmt}, settings=settings)
        assert full.response.document_count == 24
        some = export_job(
            "test-ns", "things", {"format": fmt, "filters": {"m.i": 5}}, settings=settings
        )
        assert some.response.document_count == 1
        sample = {"format": fmt, "sample_size": 3, "sample_seed": 1}
        assert (
            export_job("test-ns", "things", sample, settings=settings).response.document_count == 3
        )


def test_csv_export_with_a_long_string_in_the_first_rows(store: Store) -> None:
    # csv.DictReader's field limit (131,072) once failed the preview after the file was written.
    make_collection(store, [{"document_id": "a", "text": "z" * 300_000}])
    result = export(store, "things", format="csv")
    assert read_csv(result.response.s3_path)[1][-1] == "z" * 300_000


# --- width ------------------------------------------------------------------------------


@pytest.fixture
def narrow_settings(tmp_path: Any) -> Settings:
    return Settings(home=tmp_path / "home", max_columns=20)


def test_wide_object_becomes_one_json_text_column(narrow_settings: Settings) -> None:
    store = Store(narrow_settings)
    docs = [
        {"document_id": f"d{i:03d}", "title": f"t{i}", "attrs": {f"key_{i}": i, "shared": True}}
        for i in range(40)
    ]
    make_collection(store, docs)
    for fmt in ["csv", "parquet"]:
        result = export_job("test-ns", "things", {"format": fmt}, settings=narrow_settings)
        warnings = result.manifest["warnings"]
        assert [w for w in warnings if w.startswith("field 'attrs' has more keys than")] == [
            "field 'attrs' has more keys than EXPORT_PIPELINE_MAX_COLUMNS=20; written as JSON text"
        ]
        if fmt == "parquet":
            table = read_parquet(result.response.s3_path)
            attrs = [json.loads(value) for value in table.column("attrs").to_pylist()]
            assert table.column("title").to_pylist()[:2] == ["t0", "t1"]
        else:
            header, *rows = read_csv(result.response.s3_path)
            attrs = [json.loads(row[header.index("attrs")]) for row in rows]
            assert "title" in header and len(header) < 20
        assert attrs == [doc["attrs"] for doc in docs]


def test_top_level_too_wide_becomes_document_id_and_document(narrow_settings: Settings) -> None:
    store = Store(narrow_settings)
    docs = [{"document_id": f"d{i:03d}", f"tag_{i}": i} for i in range(60)]
    make_collection(store, docs)
    json_lines = read_json_lines(
        export_job(
            "test-ns", "things", {"format": "json"}, settings=narrow_settings
        ).response.s3_path
    )
    for fmt in ["csv", "parquet"]:
        result = export_job("test-ns", "things", {"format": fmt}, settings=narrow_settings)
        assert any("written as two columns" in warning for warning in result.manifest["warnings"])
        if fmt == "parquet":
            table = read_parquet(result.response.s3_path)
            assert table.column_names == ["document_id", "document"]
            texts = table.column("document").to_pylist()
        else:
            header, *rows = read_csv(result.response.s3_path)
            assert header == ["document_id", "document"]
            texts = [row[1] for row in rows]
        assert [json.loads(text) for text in texts] == json_lines  # as json writes each line


@pytest.mark.slow
def test_width_limit_collapses_the_widest_object_first_then_the_whole_document(
    tmp_path: Any,
) -> None:
    docs = [{"document_id": f"d{i}", **{f"k{j}": j for j in range(9)}} for i in range(3)]
    # document_id, collection_id, _internal's two fields and 9 keys: 13 csv columns
    nine = [f"k{j}" for j in range(9)]
    expected = {
        13: ["document_id", "_internal.created_at", "_internal.updated_at", "collection_id", *nine],
        12: ["document_id", "_internal", "collection_id", *nine],  # the only object, 2 keys
        11: ["document_id", "document"],  # the top level alone has 12 keys
    }
    for limit, header in expected.items():
        settings = Settings(home=tmp_path / f"home{limit}", max_columns=limit)
        make_collection(Store(settings), docs)
        result = export_job("test-ns", "things", {"format": "csv"}, settings=settings)
        assert read_csv(result.response.s3_path)[0] == header


@pytest.mark.slow
def test_many_distinct_keys_export_in_linear_time_and_bounded_memory(store: Store) -> None:
    # 20,000 documents with a key each, at the top level and inside an object: no export may
    # build a column per key (each used to take minutes or run out of memory).
    docs = [
        {"document_id": f"d{i:05d}", f"top_{i}": i, "inner": {f"k_{i}": str(i)}}
        for i in range(20_000)
    ]
    make_collection(store, docs)
    for fmt in FORMATS:
        result = export(
            store,
            "things",
            format=fmt,
            filters={
                "inner.k_7": "7",
                "OR": [
                    {"field": "document_id", "operator": "starts_with", "value": "d0000"},
                    {"field": "document_id", "operator": "eq", "value": "d00007"},
                ],
            },
        )
        assert result.response.document_count == 1
        result = export(store, "things", format=fmt)
        assert result.response.document_count == 20_000
        if fmt == "parquet":
            assert pq.ParquetFile(local_path(result.response.s3_path)).schema_arrow.names == [
                "document_id",
                "document",
            ]


# --- every accepted document exports ----------------------------------------------------

_keys = st.one_of(
    st.sampled_from(["", "a", "A", "a.b", "ключ", "😀", "n", "x y", "_internal2", "tags"]),
    st.text(min_size=0, max_size=8),
).filter(lambda key: key not in ("document_id", "_vectors", "collection_id", "_internal"))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just("x" * 5000),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=30,
)
_documents = st.lists(st.dictionaries(_keys, _values, max_size=6), min_size=1, max_size=8)


@pytest.mark.slow
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bodies=_documents, depth=st.integers(min_value=1, max_value=MAX_DOCUMENT_DEPTH - 1))
def test_every_accepted_document_exports_in_every_format(
    tmp_path_factory: Any, bodies: list[dict[str, Any]], depth: int
) -> None:
    settings_ = Settings(home=tmp_path_factory.mktemp("messy") / "home")
    store = Store(settings_)
    docs = [{"document_id": f"doc-{i}", **body} for i, body in enumerate(bodies)]
    docs.append({"document_id": "deep", "v": nested(depth, "leaf", "mixed")})
    make_collection(store, docs)
    stored = {doc["document_id"]: doc for doc in docs}
    for fmt in FORMATS:
        result = export_job("test-ns", "things", {"format": fmt}, settings=settings_)
        assert result.response.document_count == len(docs)
        path = result.response.s3_path
        if fmt == "json":
            for line in read_json_lines(path):
                expected = stored[line["document_id"]]
                assert all(same_json(line[key], value) for key, value in expected.items())
        elif fmt == "csv":
            assert len(read_csv(path)) == len(docs) + 1
        else:
            assert read_parquet(path).num_rows == len(docs)


# --- structures -------------------------------------------------------------------------

_plain_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 2**64 - 1),
        st.floats(-1e3, 1e3),
        st.text(max_size=2),
    ),
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.sampled_from("abc"), inner, min_size=1, max_size=3)
    ),
    max_leaves=10,
)


_CON = duckdb.connect()


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    docs=st.lists(st.dictionaries(st.sampled_from("abcd"), _plain_values), min_size=1, max_size=5)
)
def test_merged_structures_equal_duckdbs_merge_of_every_document(docs: list[dict]) -> None:
    texts = [json.dumps(doc) for doc in docs]
    with _CON.cursor() as con:
        one_by_one = [
            con.execute("SELECT json_structure(?::JSON)", [t]).fetchall()[0][0] for t in texts
        ]
        (expected,) = con.execute(
            "SELECT json_group_structure(j::JSON) FROM unnest(?::VARCHAR[]) t(j)", [texts]
        ).fetchall()[0]
    merged = shapes.merge_all(shapes.parse(text) for text in one_by_one)
    # DuckDB spells an object that never had a key "JSON"; here it stays an empty object.
    assert (CLASH if merged == {} else merged) == json.loads(expected)

"""Filters specialised by the snapshot's structures (docs/architecture.md: How a filter runs), end
to end.

An export plans its filter from the structures its snapshot's sidecars list: a field that
is only ever a scalar is compared directly. The files are the same as the general form's;
a field that is an array or object in some document, or a snapshot without the lists of
structures, keeps the general form. A filter without a sample is read, filtered and written
in one pass where DuckDB may read the segments itself, and gives the files the survey-then-
write path gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    export_job,
    make_collection,
    quick_first,
    read_csv,
    read_json_lines,
    read_parquet,
    write_jsonl,
)

from export_pipeline.engine import kinds, plan
from export_pipeline.engine.kinds import field_kinds, scalar_kinds
from export_pipeline.engine.plan import plan_export
from export_pipeline.export import ExportLifecycle
from export_pipeline.filters import uses_macros
from export_pipeline.store import Store, VectorIndex
from export_pipeline.store.segments import shapes_file

DOCS = [
    {
        "document_id": f"d{n:02d}",
        "rating": round(n * 0.05, 2) if n % 7 else None,
        "views": n * 10,
        "title": f"Title {n}",
        "flag": n % 2 == 0,
        "meta": {"day": f"2024-01-{n % 28 + 1:02d}"},
        "tags": ["a", "b"][: n % 3],
        **({"sometimes": n} if n % 4 else {}),
    }
    for n in range(40)
]
RATING = {"AND": [{"field": "rating", "operator": "lt", "value": 0.75}]}
FILTERS = [
    RATING,
    {"title": "title 3"},
    {"OR": [{"field": "views", "operator": "gte", "value": 300}, {"field": "tags", "value": "b"}]},
    {
        "AND": [{"field": "meta.day", "operator": "gt", "value": "2024-01-20"}],
        "NOT": {"flag": True},
    },
    {"AND": [{"field": "sometimes", "operator": "exists", "value": False}]},
    {
        "AND": [
            {"field": "rating", "operator": "is_null"},
            {"field": "nowhere", "operator": "ne", "value": 1},
        ]
    },
    {"AND": [{"field": "title", "operator": "text", "value": "TITLE 1"}]},
]


def _rows(result: Any, fmt: str) -> Any:
    uri = result.response.s3_path
    if fmt == "json":
        return read_json_lines(uri)
    if fmt == "csv":
        return read_csv(uri)
    return read_parquet(uri).to_pylist()


def test_plan_compares_scalar_fields_directly(store: Store) -> None:
    ns, col = make_collection(store, DOCS)
    planned = plan_export(store, ns.id, col.id, {"format": "csv", "filters": RATING})
    assert "json_extract_string" in planned.filter_sql
    assert "_r." not in planned.filter_sql and not uses_macros(planned.filter_sql)
    found = field_kinds(store, col, ["rating", "views", "title", "tags", "meta", "meta.day", "x"])
    assert found == {
        "rating": {"DOUBLE", "NULL"},
        "views": {"UBIGINT"},
        "title": {"VARCHAR"},
        "meta.day": {"VARCHAR"},
        "x": set(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
@pytest.mark.parametrize("filters", quick_first(FILTERS))
def test_specialised_exports_equal_the_general_form(
    store: Store, monkeypatch: pytest.MonkeyPatch, fmt: str, filters: dict[str, Any]
) -> None:
    ns, col = make_collection(store, DOCS)
    body = {"format": fmt, "filters": filters}
    specialised = export_job(ns.id, col.id, body, settings=store.settings)
    monkeypatch.setattr(plan, "field_kinds", lambda *args: {})  # the general form
    general = export_job(ns.id, col.id, body, settings=store.settings)
    assert specialised.response.document_count == general.response.document_count
    assert _rows(specialised, fmt) == _rows(general, fmt)
    columns = [file["columns"] for file in general.manifest["files"]]
    assert [file["columns"] for file in specialised.manifest["files"]] == columns


def test_a_field_that_is_sometimes_a_list_falls_back_to_the_general_form(store: Store) -> None:
    ns, col = make_collection(store, DOCS)
    body = {"format": "json", "filters": RATING}
    assert "json_extract_string" in plan_export(store, ns.id, col.id, body).filter_sql
    before = export_job(ns.id, col.id, body, settings=store.settings)
    expected = [doc["document_id"] for doc in read_json_lines(before.response.s3_path)]
    # a later ingest: one rating is a list (one element matches), one a string (never does)
    later = [{"document_id": "e1", "rating": [5, 0.5]}, {"document_id": "e2", "rating": "0.1"}]
    store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", later))
    planned = plan_export(store, ns.id, col.id, body)
    assert "json_extract_string" not in planned.filter_sql and "_r." in planned.filter_sql
    after = export_job(ns.id, col.id, body, settings=store.settings)
    assert [doc["document_id"] for doc in read_json_lines(after.response.s3_path)] == [
        *expected,
        "e1",
    ]
    # upserting a scalar back over the list makes the field scalar again
    store.ingest(
        ns.id,
        col.id,
        write_jsonl(store.settings.home_dir.parent / "in", [{"document_id": "e1", "rating": 2}]),
        upsert=True,
    )
    planned = plan_export(store, ns.id, col.id, body)
    assert "json_extract_string" not in planned.filter_sql  # "0.1" is a string: mixed kinds
    assert field_kinds(store, planned.collection, ["rating"]) == {
        "rating": {"DOUBLE", "NULL", "UBIGINT", "VARCHAR"}
    }


def test_without_lists_of_structures_or_with_too_many_the_general_form_stays(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as many structures as documents: looking them up would cost about what it saves
    wide = [{"document_id": f"w{n}", "rating": n, f"key{n}": n} for n in range(40)]
    _, distinct = make_collection(store, wide, name="wide")
    assert field_kinds(store, distinct, ["rating"]) == {"rating": {"UBIGINT"}}
    monkeypatch.setattr(kinds, "MIN_LOOKUPS", 3)
    assert field_kinds(store, distinct, ["rating"]) == {}
    ns, col = make_collection(store, DOCS)
    assert field_kinds(store, col, ["rating"]) != {}  # fewer structures than a quarter
    (segment,) = store.documents.segment_files(col)
    shapes_file(segment).unlink()  # a segment of an older version
    assert field_kinds(store, col, ["rating"]) == {}
    result = export_job(
        ns.id, col.id, {"format": "csv", "filters": RATING}, settings=store.settings
    )
    assert result.response.document_count == sum(
        1 for doc in DOCS if doc["rating"] is not None and doc["rating"] < 0.75
    )


def test_scalar_kinds_reads_structures_as_json_structure_writes_them() -> None:
    structures = [
        '{"a":"UBIGINT","b":{"c":"VARCHAR"},"d":["VARCHAR"],"e":"JSON","f":"NULL"}',
        '{"a":"DOUBLE","b":"VARCHAR","d":"BOOLEAN","f":"BIGINT"}',
        '"JSON"',  # an empty document
    ]
    found = scalar_kinds(structures, ["a", "b", "b.c", "d", "e", "f", "g", "a.x"])
    assert found == {
        "a": {"UBIGINT", "DOUBLE"},
        "b.c": {"VARCHAR"},  # b is a string in the second: the path is missing there
        "f": {"NULL", "BIGINT"},
        "g": set(),
        "a.x": set(),
    }


def _written(store: Store, ns: str, col: str, body: dict[str, Any], *, streamed: bool) -> Any:
    """The rows and warnings of an export taken step by step (one shard), and whether the
    survey was skipped as `streamed` says."""
    lifecycle = ExportLifecycle(store.settings, store)
    planned = lifecycle.plan(ns, col, body, shards=1)
    try:
        selection = lifecycle.select(planned)
        assert selection.streamed == streamed and selection.surveyed != streamed
        with pytest.MonkeyPatch.context() as patch:
            if streamed:  # no batch of the snapshot is read with Arrow
                patch.setattr(store.documents, "rows", None)
            parts = [lifecycle.write_shard(planned, selection, s) for s in planned.shards]
            outputs = lifecycle.assemble(planned, selection, parts)
        return _file_rows(outputs.files[0].path, body["format"]), outputs.warnings
    finally:
        lifecycle.cleanup(planned)


def _two_passes(store: Store, ns: str, col: str, body: dict[str, Any]) -> Any:
    """The export as the survey-then-write path writes it: the oracle of the one-pass path,
    used where DuckDB may not read the segments itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.documents, "scan_files", lambda *_, **__: None)
        return _written(store, ns, col, body, streamed=False)


def _one_pass(store: Store, ns: str, col: str, body: dict[str, Any]) -> Any:
    return _written(store, ns, col, body, streamed=True)


def _file_rows(path: Any, fmt: str) -> Any:
    if fmt == "csv":
        return read_csv(path.as_uri())
    if fmt == "parquet":
        table = read_parquet(path.as_uri())
        return table.schema.names, [str(t) for t in table.schema.types], table.to_pylist()
    return read_json_lines(path.as_uri())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_filter_is_read_filtered_and_written_in_one_pass(store: Store, fmt: str) -> None:
    ns, col = make_collection(store, DOCS)
    for extra in (DOCS[:0], [{**DOCS[0], "document_id": "z", "rating": 0.1, "new": {"k": 1}}]):
        if extra:  # a second segment, with a structure of its own: numbers are shifted
            store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", extra))
        for body in (
            {"format": fmt, "filters": RATING},
            {"format": fmt, "filters": {"document_id": "z"}},
            {"format": fmt, "filters": {"title": "nothing"}},
        ):
            assert _one_pass(store, ns.id, col.id, body) == _two_passes(store, ns.id, col.id, body)


MIXED = [
    {"document_id": "a1", "kind": "obj", "x": {"a": 1, "b": "u"}, "n": 1},
    {"document_id": "a2", "kind": "str", "x": "text", "n": "one", "only_str": True},
    {"document_id": "a3", "kind": "obj", "x": {"a": 2}, "n": 2},
    {"document_id": "a4", "kind": "str", "x": "more", "n": "two"},
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
@pytest.mark.parametrize("kind", ["obj", "str", "none"])
def test_matches_lacking_some_structures_get_their_own_columns_and_types(
    store: Store, fmt: str, kind: str
) -> None:
    """The snapshot's shape merges objects with strings (x) and numbers with strings (n);
    the matches of one kind are written with their own columns and types, as a survey of
    them would give, and listed fields no match has are warned about (S3)."""
    ns, col = make_collection(store, MIXED)
    body: dict[str, Any] = {"format": fmt, "filters": {"kind": kind}}
    if fmt == "json":
        body["select_fields"] = ["x", "n", "only_str"]
    found = _one_pass(store, ns.id, col.id, body)
    assert found == _two_passes(store, ns.id, col.id, body)
    if fmt == "csv" and kind == "obj":
        columns = [name for name in found[0][0] if not name.startswith("_")]
        assert columns == ["document_id", "collection_id", "kind", "n", "x.a", "x.b"]
    if fmt == "parquet" and kind == "obj":
        names, types = found[0][0], found[0][1]
        assert types[names.index("n")] == "int64" and types[names.index("x")].startswith("struct")
    if fmt == "json" and kind == "obj":
        assert any("only_str" in warning for warning in found[1])


@pytest.mark.parametrize(
    "body",
    [
        {"format": "csv", "filters": RATING, "include_vectors": True},
        {"format": "csv", "filters": RATING, "sample_size": 3, "sample_seed": 1},
    ],
)
def test_samples_and_vectors_are_surveyed_before_the_shards_write(
    store: Store, body: dict[str, Any]
) -> None:
    docs = [{**doc, "_vectors": {"v": [1.0, float(n)]}} for n, doc in enumerate(DOCS)]
    ns, col = make_collection(store, docs, [VectorIndex(name="v", dimensions=2)])
    lifecycle = ExportLifecycle(store.settings, store)
    planned = lifecycle.plan(ns.id, col.id, body)
    try:
        selection = lifecycle.select(planned)
        assert selection.surveyed and not selection.streamed
        assert selection.matched == (3 if "sample_size" in body else 12)
    finally:
        lifecycle.cleanup(planned)
    result = export_job(ns.id, col.id, body, settings=store.settings)
    assert result.response.document_count == (3 if "sample_size" in body else 12)

"""Which fields an export holds (S1-S3): all stored ones, or the listed paths in their order."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from exports import FORMATS, run
from helpers import (
    DENSE,
    local_path,
    make_collection,
    read_csv,
    read_json_lines,
    read_parquet,
)

from export_pipeline.store import Collection, Namespace, Store


def test_S1_no_select_exports_all_stored_fields_but_no_vectors(store: Store) -> None:
    doc = {"document_id": "a", "x": 1, "m": {"t": "x"}, "_vectors": {"emb": [1, 2, 3]}}
    ns, col = make_collection(store, [doc], [DENSE])
    (row,) = read_json_lines(run(store, ns, col, {"format": "json"}).response.s3_path)
    assert set(row) == {"document_id", "collection_id", "_internal", "x", "m"}
    assert next(iter(row)) == "document_id"
    header = read_csv(run(store, ns, col, {"format": "csv"}).response.s3_path)[0]
    assert header[0] == "document_id"
    assert not any("emb" in column or "vector" in column for column in header)
    names = read_parquet(run(store, ns, col, {}).response.s3_path).column_names
    assert set(names) == {"document_id", "collection_id", "_internal", "x", "m"}


SELECT_DOCS = [
    {"document_id": "a", "b": 1, "a": "x", "m": {"t": "title-a", "u": 5}, "z": 0},
    {"document_id": "b", "a": "y", "m": {"t": "title-b"}},
    {"document_id": "c", "b": 3},
]


SELECT = ["b", "document_id", "a", "b", "m.t", "m", "m.u"]


@pytest.fixture
def selectable(store: Store) -> tuple[Namespace, Collection]:
    return make_collection(store, SELECT_DOCS, name="selectable")


def test_S2_json_order_duplicates_covered_and_missing_omitted(
    store: Store, selectable: tuple[Namespace, Collection]
) -> None:
    ns, col = selectable
    rows = read_json_lines(
        run(store, ns, col, {"format": "json", "select_fields": SELECT}).response.s3_path
    )
    assert [list(row) for row in rows] == [
        ["document_id", "b", "a", "m"],
        ["document_id", "a", "m"],
        ["document_id", "b"],
    ]
    assert rows[0] == {"document_id": "a", "b": 1, "a": "x", "m": {"t": "title-a", "u": 5}}
    assert rows[1] == {"document_id": "b", "a": "y", "m": {"t": "title-b"}}
    assert rows[2] == {"document_id": "c", "b": 3}


def test_S2_W3_csv_columns_and_missing_empty(
    store: Store, selectable: tuple[Namespace, Collection]
) -> None:
    ns, col = selectable
    rows = read_csv(
        run(store, ns, col, {"format": "csv", "select_fields": SELECT}).response.s3_path
    )
    assert rows[0] == ["document_id", "b", "a", "m.t", "m.u"]
    assert rows[1:] == [
        ["a", "1", "x", "title-a", "5"],
        ["b", "", "y", "title-b", ""],
        ["c", "3", "", "", ""],
    ]


def test_S2_W4_parquet_columns_and_missing_null(
    store: Store, selectable: tuple[Namespace, Collection]
) -> None:
    ns, col = selectable
    table = read_parquet(run(store, ns, col, {"select_fields": SELECT}).response.s3_path)
    assert table.column_names == ["document_id", "b", "a", "m"]
    assert table.schema.field("b").type == pa.int64()
    assert table.to_pylist() == [
        {"document_id": "a", "b": 1, "a": "x", "m": {"t": "title-a", "u": 5}},
        {"document_id": "b", "b": None, "a": "y", "m": {"t": "title-b", "u": None}},
        {"document_id": "c", "b": 3, "a": None, "m": None},
    ]


def test_S2_nested_paths_keep_listed_order(
    store: Store, selectable: tuple[Namespace, Collection]
) -> None:
    ns, col = selectable
    select = ["m.u", "a", "m.t"]
    rows = read_json_lines(
        run(store, ns, col, {"format": "json", "select_fields": select}).response.s3_path
    )
    assert rows[0] == {"document_id": "a", "m": {"u": 5, "t": "title-a"}, "a": "x"}
    assert list(rows[0]["m"]) == ["u", "t"]
    header = read_csv(
        run(store, ns, col, {"format": "csv", "select_fields": select}).response.s3_path
    )[0]
    assert header == ["document_id", "m.u", "a", "m.t"]


def test_S2_P2_paths_never_index_arrays_or_scalars(store: Store) -> None:
    docs = [
        {"document_id": "a", "m": [{"t": 1}], "s": "text"},
        {"document_id": "b", "m": {"t": 2}, "s": {"t": 3}},
    ]
    ns, col = make_collection(store, docs)
    rows = read_json_lines(
        run(store, ns, col, {"format": "json", "select_fields": ["m.t", "s.t"]}).response.s3_path
    )
    assert rows == [{"document_id": "a"}, {"document_id": "b", "m": {"t": 2}, "s": {"t": 3}}]


@pytest.mark.parametrize("fmt", FORMATS)
def test_S3_listed_path_in_no_document_is_a_warning(
    store: Store, selectable: tuple[Namespace, Collection], fmt: str
) -> None:
    ns, col = selectable
    result = run(store, ns, col, {"format": fmt, "select_fields": ["a", "nowhere.at_all"]})
    assert result.response.document_count == 3
    warnings = [w for w in result.manifest["warnings"] if "nowhere.at_all" in w]
    assert len(warnings) == 1
    assert not any("'a'" in w for w in result.manifest["warnings"])
    published = json.loads(
        local_path(result.response.s3_path).with_name("manifest.json").read_text()
    )
    assert published["warnings"] == result.manifest["warnings"]

"""The files' formats: the vectors file (W1), json lines (W2), csv (W3), parquet (W4), no documents
(W5)."""

from __future__ import annotations

import json
from typing import Any

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
    same_json,
)

from export_pipeline.store import Collection, Namespace, Store


@pytest.mark.parametrize("fmt", FORMATS)
def test_W1_vectors_file_name_and_location(
    store: Store, vectored: tuple[Namespace, Collection], fmt: str
) -> None:
    ns, col = vectored
    result = run(store, ns, col, {"format": fmt, "include_vectors": True})
    docs_file = local_path(result.response.s3_path)
    vectors_file = local_path(result.response.vectors_s3_path)
    assert docs_file.name == f"documents.{fmt}"
    assert vectors_file.name == f"my_vec-col_vectors.{fmt}"
    assert vectors_file.parent == docs_file.parent
    assert result.response.vectors_download_url is not None
    assert local_path(result.response.vectors_download_url) == vectors_file


# The `vectored` collection's vectors, in document_id order (W1, O3).
VECTOR_ROWS = [
    {
        "document_id": "both",
        "emb": [0.5, -1.0, 2.0],
        "bag": {"indices": [7, 3], "values": [0.25, 1.0]},
    },
    {"document_id": "dense-only", "emb": [1.0, 2.0, 3.0], "bag": None},
    {"document_id": "none", "emb": None, "bag": None},
    {"document_id": "sparse-empty", "emb": None, "bag": {"indices": [], "values": []}},
]


def test_W1_W4_parquet_vector_types_and_nulls(
    store: Store, vectored: tuple[Namespace, Collection]
) -> None:
    ns, col = vectored
    result = run(store, ns, col, {"include_vectors": True})
    table = read_parquet(result.response.vectors_s3_path)
    assert table.column_names == ["document_id", "emb", "bag"]
    assert table.schema.field("emb").type == pa.list_(pa.float32(), 3)
    assert table.schema.field("bag").type == pa.struct(
        [("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))]
    )
    assert table.to_pylist() == VECTOR_ROWS


def test_W1_json_vectors_file(store: Store, vectored: tuple[Namespace, Collection]) -> None:
    ns, col = vectored
    result = run(store, ns, col, {"format": "json", "include_vectors": True})
    assert read_json_lines(result.response.vectors_s3_path) == VECTOR_ROWS


def test_W1_W3_csv_vectors_file(store: Store, vectored: tuple[Namespace, Collection]) -> None:
    ns, col = vectored
    result = run(store, ns, col, {"format": "csv", "include_vectors": True})
    header, *rows = read_csv(result.response.vectors_s3_path)
    assert header == ["document_id", "emb", "bag"]
    parsed = [[r[0], *(json.loads(c) if c else None for c in r[1:])] for r in rows]
    assert parsed == [
        ["both", [0.5, -1.0, 2.0], {"indices": [7, 3], "values": [0.25, 1.0]}],
        ["dense-only", [1.0, 2.0, 3.0], None],
        ["none", None, None],
        ["sparse-empty", None, {"indices": [], "values": []}],
    ]


def test_W1_float32_values_exported_as_stored(store: Store) -> None:
    doc = {"document_id": "a", "_vectors": {"emb": [0.1, 1e-3, 3.4028234663852886e38]}}
    ns, col = make_collection(store, [doc], [DENSE])
    result = run(store, ns, col, {"format": "json", "include_vectors": True})
    (row,) = read_json_lines(result.response.vectors_s3_path)
    stored = pa.array([0.1, 1e-3, 3.4028234663852886e38], pa.float32()).to_pylist()
    assert [pa.scalar(v, pa.float32()).as_py() for v in row["emb"]] == stored


def test_W2_json_lines_utf8_and_nested_rebuild(store: Store) -> None:
    docs = [
        {"document_id": "a", "metadata": {"title": "Ünïcode ☃", "category": "x", "skip": 1}},
        {"document_id": "b", "metadata": {"category": "y"}},
        {"document_id": "c", "metadata": "flat"},
    ]
    ns, col = make_collection(store, docs)
    result = run(store, ns, col, {"format": "json", "select_fields": ["metadata.title"]})
    raw = local_path(result.response.s3_path).read_bytes()
    assert raw.count(b"\n") == 3 and b"\r" not in raw and raw.endswith(b"\n")
    assert "Ünïcode ☃".encode() in raw or b"\\u00dc" in raw
    assert read_json_lines(result.response.s3_path) == [
        {"document_id": "a", "metadata": {"title": "Ünïcode ☃"}},
        {"document_id": "b"},
        {"document_id": "c"},
    ]


def test_W2_strings_with_newlines_stay_on_one_line(store: Store) -> None:
    docs = [{"document_id": "a\nb", "text": "line1\nline2\r\n\u2028end"}]
    ns, col = make_collection(store, docs)
    for request in ({"format": "json"}, {"format": "json", "select_fields": ["text"]}):
        rows = read_json_lines(run(store, ns, col, request).response.s3_path)
        assert len(rows) == 1 and rows[0]["text"] == docs[0]["text"]
        assert rows[0]["document_id"] == "a\nb"


@pytest.mark.slow
@pytest.mark.parametrize(
    "value",
    [1.0, 0.1, 1e300, -0.0, 2**63 - 1, -(2**63), "ünï 😀", True, None, [1.0, {"a": []}], {}],
)
def test_W2_D4_selected_values_keep_their_json_kind(store: Store, value: Any) -> None:
    ns, col = make_collection(store, [{"document_id": "a", "v": value, "w": 1}])
    rows = read_json_lines(
        run(store, ns, col, {"format": "json", "select_fields": ["v"]}).response.s3_path
    )
    assert same_json(rows, [{"document_id": "a", "v": value}])


CSV_DOCS = [
    {
        "document_id": "a",
        "s": 'has, comma "quote"\nnewline',
        "i": 42,
        "f": 2.5,
        "big": 1e300,
        "one": 1.0,
        "t": True,
        "fa": False,
        "n": None,
        "arr": [1, "x", None],
        "m": {"k": "v", "deep": {"x": 1}},
        "Zeta": "upper",
    },
    {"document_id": "b", "s": "", "i": -7, "m": {"k": "w"}},
]


def test_W3_csv_without_select_cell_rendering(store: Store) -> None:
    ns, col = make_collection(store, CSV_DOCS)
    result = run(store, ns, col, {"format": "csv"})
    header, *rows = read_csv(result.response.s3_path)
    leaves = [
        "_internal.created_at",
        "_internal.updated_at",
        "arr",
        "big",
        "collection_id",
        "f",
        "fa",
        "i",
        "m.deep.x",
        "m.k",
        "n",
        "one",
        "s",
        "t",
        "Zeta",
    ]
    assert header == ["document_id", *sorted(leaves)]
    assert header[1] == "Zeta"  # byte order: uppercase before "_" before lowercase
    cells = [dict(zip(header, row, strict=True)) for row in rows]
    a, b = cells
    assert a["s"] == CSV_DOCS[0]["s"]
    assert (a["i"], a["f"], a["one"], a["t"], a["fa"], a["n"]) == (
        "42",
        "2.5",
        "1.0",
        "true",
        "false",
        "",
    )
    assert float(a["big"]) == 1e300 and json.loads(a["big"]) == 1e300
    assert json.loads(a["arr"]) == [1, "x", None]
    assert (a["m.k"], a["m.deep.x"], a["Zeta"]) == ("v", "1", "upper")
    assert a["collection_id"] == col.id
    assert (b["s"], b["i"], b["f"], b["t"], b["m.deep.x"], b["arr"]) == ("", "-7", "", "", "", "")


def test_W3_csv_is_rfc4180_crlf_utf8(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": "ä", "s": "x,y"}])
    raw = local_path(run(store, ns, col, {"format": "csv"}).response.s3_path).read_bytes()
    raw.decode("utf-8")
    assert raw.endswith(b"\r\n")
    assert raw.count(b"\r\n") == 2 and b"\n" not in raw.replace(b"\r\n", b"")


def test_W3_csv_listed_object_path_expanded_to_leaves(store: Store) -> None:
    ns, col = make_collection(store, CSV_DOCS)
    result = run(store, ns, col, {"format": "csv", "select_fields": ["m", "i"]})
    header, *rows = read_csv(result.response.s3_path)
    assert header[0] == "document_id" and header[-1] == "i"
    assert sorted(header[1:-1]) == ["m.deep.x", "m.k"]
    assert [dict(zip(header, r, strict=True)) for r in rows] == [
        {"document_id": "a", "m.deep.x": "1", "m.k": "v", "i": "42"},
        {"document_id": "b", "m.deep.x": "", "m.k": "w", "i": "-7"},
    ]


def test_W3_D3_csv_export_with_empty_top_level_key(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": "a", "": 1, "x": 2}])
    header, row = read_csv(run(store, ns, col, {"format": "csv"}).response.s3_path)
    assert dict(zip(header, row, strict=True))[""] == "1"


def test_W4_parquet_types(store: Store) -> None:
    docs = [
        {
            "document_id": "a",
            "s": "x",
            "i": 1,
            "num": 1,
            "b": True,
            "m": {"t": "x", "n": 1},
            "l": [1, 2],
            "ls": ["a"],
            "mixed": 1,
        },
        {
            "document_id": "b",
            "s": "y",
            "i": 2,
            "num": 2.5,
            "b": False,
            "m": {"t": "y"},
            "l": [],
            "mixed": "one",
        },
        {"document_id": "c", "num": 3, "mixed": {"k": 1}},
    ]
    ns, col = make_collection(store, docs)
    result = run(store, ns, col, {"format": "parquet"})
    table = read_parquet(result.response.s3_path)
    schema = table.schema
    assert schema.field("s").type == pa.string()
    assert schema.field("i").type == pa.int64()
    assert schema.field("num").type == pa.float64()
    assert schema.field("b").type == pa.bool_()
    assert pa.types.is_struct(schema.field("m").type)
    m_type = schema.field("m").type
    assert {m_type.field(i).name: m_type.field(i).type for i in range(m_type.num_fields)} == {
        "t": pa.string(),
        "n": pa.int64(),
    }
    assert (
        pa.types.is_list(schema.field("l").type) and schema.field("l").type.value_type == pa.int64()
    )
    assert schema.field("ls").type.value_type == pa.string()
    assert schema.field("mixed").type == pa.string()
    rows = table.to_pylist()
    assert [r["num"] for r in rows] == [1.0, 2.5, 3.0]
    assert [json.loads(r["mixed"]) for r in rows] == [1, "one", {"k": 1}]
    assert [r["m"] for r in rows] == [{"t": "x", "n": 1}, {"t": "y", "n": None}, None]
    assert [r["l"] for r in rows] == [[1, 2], [], None]
    warnings = result.manifest["warnings"]
    assert any("'mixed'" in w for w in warnings)
    assert not any(f"'{name}'" in w for w in warnings for name in ("s", "i", "num", "b", "m", "l"))


def test_W4_int_and_float_widen_inside_arrays_and_structs(store: Store) -> None:
    docs = [
        {"document_id": "a", "l": [1, 2.5], "m": {"x": 1}},
        {"document_id": "b", "l": [3], "m": {"x": 0.5}},
    ]
    ns, col = make_collection(store, docs)
    result = run(store, ns, col, {})
    table = read_parquet(result.response.s3_path)
    assert table.schema.field("l").type.value_type == pa.float64()
    assert table.schema.field("m").type.field("x").type == pa.float64()
    assert table.column("l").to_pylist() == [[1.0, 2.5], [3.0]]
    assert result.manifest["warnings"] == []


def test_W4_S2_parquet_keys_differing_in_case_keep_their_names(store: Store) -> None:
    ns, col = make_collection(store, [{"document_id": "a", "Name": "x", "name": "y"}])
    table = read_parquet(run(store, ns, col, {"select_fields": ["Name", "name"]}).response.s3_path)
    assert table.column_names == ["document_id", "Name", "name"]
    assert table.to_pylist() == [{"document_id": "a", "Name": "x", "name": "y"}]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["empty-collection", "no-match"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_W5_zero_documents(store: Store, fmt: str, source: str) -> None:
    docs = [] if source == "empty-collection" else [{"document_id": "a", "x": 1}]
    ns, col = make_collection(store, docs, [DENSE])
    request = {"format": fmt, "include_vectors": True, "filters": {"x": 999}}
    result = run(store, ns, col, request)
    assert result.response.document_count == 0
    assert result.manifest["document_count"] == 0
    documents = local_path(result.response.s3_path)
    vectors = local_path(result.response.vectors_s3_path)
    assert result.response.file_size_bytes == documents.stat().st_size
    if fmt == "json":
        assert documents.read_bytes() == b"" and vectors.read_bytes() == b""
    elif fmt == "csv":
        assert read_csv(result.response.s3_path) == [["document_id"]]
        assert read_csv(result.response.vectors_s3_path) == [["document_id", "emb"]]
    else:
        table = read_parquet(result.response.s3_path)
        assert table.num_rows == 0 and "document_id" in table.column_names
        vtable = read_parquet(result.response.vectors_s3_path)
        assert vtable.num_rows == 0
        assert vtable.schema.field("emb").type == pa.list_(pa.float32(), 3)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_W5_zero_documents_with_select_keeps_listed_columns(store: Store, fmt: str) -> None:
    ns, col = make_collection(store, [])
    result = run(store, ns, col, {"format": fmt, "select_fields": ["m.t", "x"]})
    if fmt == "csv":
        assert read_csv(result.response.s3_path) == [["document_id", "m.t", "x"]]
    else:
        table = read_parquet(result.response.s3_path)
        assert table.num_rows == 0 and table.column_names[0] == "document_id"


def test_W3_csv_cells_where_the_struct_cannot_reach(store: Store) -> None:
    """Cells come from the parsed struct, or from the text where keys or shapes forbid it."""
    docs = [
        {"document_id": "a", "m": {"x": 1, "X": "big"}, "k": {"y": [1, 2]}},
        {"document_id": "b", "m": "plain", "k": {"y": None}},
    ]
    ns, col = make_collection(store, docs)
    result = run(store, ns, col, {"format": "csv", "select_fields": ["m.x", "k.y", "m.X"]})
    header, *rows = read_csv(result.response.s3_path)
    assert header == ["document_id", "m.x", "k.y", "m.X"]
    assert rows == [["a", "1", "[1,2]", "big"], ["b", "", "", ""]]

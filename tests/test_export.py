"""End to end through run_export: what a user finds in the published files (D4, O*, S*, W*, A1)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import export_job, make_collection, write_jsonl
from helpers import (
    SEED_REQUEST,
    SEED_RESPONSE_FIELDS,
    ids_of,
    local_path,
    quick_first,
    read_csv,
    read_json_lines,
    read_parquet,
    same_json,
)

from export_pipeline.engine.vectors_writer import VectorsWriter
from export_pipeline.errors import (
    EnvironmentProblem,
    ExportPipelineError,
    InvalidInput,
    NotFoundError,
)
from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.settings import Settings
from export_pipeline.storage import local as local_storage
from export_pipeline.store import Collection, Namespace, Store, VectorIndex

FORMATS = ["json", "csv", "parquet"]
DENSE = VectorIndex(name="emb", dimensions=3)
SPARSE = VectorIndex(name="bag", dimensions=1000, type="sparse")


def run(store: Store, ns: Namespace, col: Collection, request: Any = None) -> ExportRun:
    return export_job(ns.id, col.id, request, settings=store.settings)


def scratch_leftovers(settings: Settings) -> list[Path]:
    folder = settings.scratch_dir
    return list(folder.iterdir()) if folder.exists() else []


def export_dirs(settings: Settings) -> list[Path]:
    root = settings.home_dir / "exports"
    return sorted(p for p in root.glob("*/exports/*/*") if p.is_dir())


# --- D4 --------------------------------------------------------------------------------

ROUND_TRIP_DOCS: list[dict[str, Any]] = [
    {
        "document_id": "big-ints",  # 19+ digit integers take the exact-integer parse path
        "max": 2**63 - 1,
        "min": -(2**63),
        "ints": [0, -1, 2**53 + 1, 10**18],
        "floats": [1.0, 0.1, 1e300, -0.0, 5e-324, 1.7976931348623157e308, 1e16, 2.5e-5],
    },
    {
        "document_id": "floats",
        "one": 1.0,
        "tenth": 0.1,
        "huge": 1e300,
        "tiny": 1e-300,
        "neg": -2.5,
        "int": 7,
        "zero": 0,
        "fzero": 0.0,
    },
    {
        "document_id": "unicode-ä-😀",
        "ключ": "значение",
        "emoji 😀": ["😀", "ünï", "中文", "\u2028", 'a"b\\c', "\n\t\u0001", "</script>"],
        "": "empty key",
        "a.b": "dotted key",
        "nested": {"deeper": {"deepest": [[1, [2, {"z": None}]], {"q": [True, False]}]}},
    },
    {
        "document_id": "empties",
        "obj": {},
        "arr": [],
        "null": None,
        "str": "",
        "t": True,
        "f": False,
        "mixed": [1, "two", 3.0, None, {"four": 4}, [5]],
    },
    {"document_id": "bare"},
]


def test_D4_json_export_round_trips_every_document(store: Store) -> None:
    ns, col = make_collection(store, ROUND_TRIP_DOCS)
    result = run(store, ns, col, {"format": "json"})
    lines = read_json_lines(result.response.s3_path)
    assert len(lines) == len(ROUND_TRIP_DOCS) == result.response.document_count
    got = {line["document_id"]: line for line in lines}
    for doc in ROUND_TRIP_DOCS:
        line = dict(got[doc["document_id"]])
        assert line.pop("collection_id") == col.id
        internal = line.pop("_internal")
        assert set(internal) == {"created_at", "updated_at"}
        assert same_json(line, doc), (line, doc)


def test_D4_json_export_keeps_integer_and_float_kinds(store: Store) -> None:
    ns, col = make_collection(store, ROUND_TRIP_DOCS[:2])
    rows = {
        r["document_id"]: r
        for r in read_json_lines(run(store, ns, col, {"format": "json"}).response.s3_path)
    }
    assert type(rows["big-ints"]["max"]) is int and rows["big-ints"]["max"] == 2**63 - 1
    assert type(rows["big-ints"]["min"]) is int and rows["big-ints"]["min"] == -(2**63)
    assert type(rows["floats"]["one"]) is float and rows["floats"]["one"] == 1.0
    assert type(rows["floats"]["fzero"]) is float
    assert type(rows["floats"]["int"]) is int


# --- O1, O2 ----------------------------------------------------------------------------

PEOPLE = [{"document_id": f"p{i:02d}", "n": i, "even": i % 2 == 0} for i in range(40)]


@pytest.fixture
def people(store: Store) -> tuple[Namespace, Collection]:
    return make_collection(store, PEOPLE, [DENSE], name="people")


def test_O1_without_sample_every_match_exported(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    all_ids = ids_of(run(store, ns, col, {"format": "json"}).response.s3_path, "json")
    assert all_ids == [d["document_id"] for d in PEOPLE]
    evens = run(store, ns, col, {"format": "json", "filters": {"even": True}})
    assert ids_of(evens.response.s3_path, "json") == [f"p{i:02d}" for i in range(0, 40, 2)]
    assert evens.response.document_count == 20


@pytest.mark.parametrize("fmt", FORMATS)
def test_O2_sample_exactly_n_reproducible_with_seed(
    store: Store, people: tuple[Namespace, Collection], fmt: str
) -> None:
    ns, col = people
    request = {"format": fmt, "sample_size": 7, "sample_seed": 12345}
    first, second = run(store, ns, col, request), run(store, ns, col, request)
    ids = ids_of(first.response.s3_path, fmt)
    assert len(ids) == len(set(ids)) == 7 == first.response.document_count
    assert set(ids) <= {d["document_id"] for d in PEOPLE}
    assert ids_of(second.response.s3_path, fmt) == ids
    assert first.manifest["sample_seed"] == 12345


def test_O2_different_seeds_choose_differently(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    chosen = {
        tuple(
            ids_of(
                run(
                    store, ns, col, {"format": "json", "sample_size": 10, "sample_seed": s}
                ).response.s3_path,
                "json",
            )
        )
        for s in range(5)
    }
    assert len(chosen) >= 2


def test_O2_without_seed_one_is_drawn_reported_and_reproduces(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    first = run(store, ns, col, {"format": "json", "sample_size": 5})
    seed = first.manifest["sample_seed"]
    assert type(seed) is int
    published = json.loads(
        local_path(first.response.s3_path).with_name("manifest.json").read_text()
    )
    assert published["sample_seed"] == seed
    again = run(store, ns, col, {"format": "json", "sample_size": 5, "sample_seed": seed})
    assert ids_of(again.response.s3_path, "json") == ids_of(first.response.s3_path, "json")


def test_O2_sample_draws_from_matches_only(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    result = run(
        store,
        ns,
        col,
        {"format": "json", "filters": {"even": True}, "sample_size": 5, "sample_seed": 3},
    )
    rows = read_json_lines(result.response.s3_path)
    assert len(rows) == 5 and all(row["even"] is True for row in rows)


@pytest.mark.parametrize("size", [40, 41, 1_000_000])
def test_O2_sample_at_least_matches_returns_all(
    store: Store, people: tuple[Namespace, Collection], size: int
) -> None:
    ns, col = people
    result = run(store, ns, col, {"format": "json", "sample_size": size, "sample_seed": 1})
    assert ids_of(result.response.s3_path, "json") == [d["document_id"] for d in PEOPLE]


@pytest.mark.slow  # 15 exports
def test_O2_sample_subsets_are_uniform(store: Store) -> None:
    docs = [{"document_id": f"doc{i:03d}"} for i in range(20)]
    ns, col = make_collection(store, docs, name="urn")
    subsets = set()
    for seed in range(15):
        result = run(store, ns, col, {"format": "json", "sample_size": 5, "sample_seed": seed})
        subsets.add(tuple(ids_of(result.response.s3_path, "json")))
    # uniform: 15 draws of 5 of 20 (15,504 subsets) repeat one with probability ~0.7%
    assert len(subsets) >= 14


# --- O3 --------------------------------------------------------------------------------

TRICKY_IDS = [
    "ä",
    "a",
    "B",
    "b",
    "Z",
    "_x",
    "10",
    "9",
    "a-b",
    "a_b",
    "a.b",
    "é",
    "€",
    "😀",
    "~",
    "A",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_O3_rows_in_document_id_byte_order(store: Store, fmt: str) -> None:
    docs = [
        {"document_id": i, "k": n, "_vectors": {"emb": [n, 0, 0]}} for n, i in enumerate(TRICKY_IDS)
    ]
    ns, col = make_collection(store, docs, [DENSE, SPARSE])
    result = run(store, ns, col, {"format": fmt, "include_vectors": True})
    expected = sorted(TRICKY_IDS, key=lambda s: s.encode("utf-8"))
    assert expected[:3] == ["10", "9", "A"] and expected.index("B") < expected.index("a")
    assert ids_of(result.response.s3_path, fmt) == expected
    assert ids_of(result.response.vectors_s3_path, fmt) == expected


def test_O3_vectors_line_up_with_documents_under_filter_select_and_sample(store: Store) -> None:
    docs = [
        {"document_id": i, "k": n, "keep": n % 3 != 0, "_vectors": {"emb": [n, n, n]}}
        for n, i in enumerate(TRICKY_IDS)
    ]
    ns, col = make_collection(store, docs, [DENSE])
    request = {
        "format": "json",
        "include_vectors": True,
        "select_fields": ["k"],
        "filters": {"keep": True},
        "sample_size": 6,
        "sample_seed": 9,
    }
    result = run(store, ns, col, request)
    rows = read_json_lines(result.response.s3_path)
    vectors = read_json_lines(result.response.vectors_s3_path)
    assert len(rows) == len(vectors) == 6
    for row, vector in zip(rows, vectors, strict=True):
        assert row["document_id"] == vector["document_id"]
        assert vector["emb"] == [float(row["k"])] * 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_O3_two_exports_of_same_data_are_byte_identical(store: Store, fmt: str) -> None:
    docs = [ROUND_TRIP_DOCS[0], ROUND_TRIP_DOCS[1], *ROUND_TRIP_DOCS[3:]]
    ns, col = make_collection(store, docs)
    request = {"format": fmt, "sample_size": 3, "sample_seed": 5}
    a, b = run(store, ns, col, request), run(store, ns, col, request)
    assert (
        local_path(a.response.s3_path).read_bytes() == local_path(b.response.s3_path).read_bytes()
    )


# --- S1, S2, S3 ------------------------------------------------------------------------


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


# --- W1 --------------------------------------------------------------------------------

VECTOR_DOCS = [
    {
        "document_id": "both",
        "_vectors": {"emb": [0.5, -1, 2], "bag": {"indices": [7, 3], "values": [0.25, 1]}},
    },
    {"document_id": "dense-only", "_vectors": {"emb": [1, 2, 3]}},
    {"document_id": "none"},
    {"document_id": "sparse-empty", "_vectors": {"bag": {"indices": [], "values": []}}},
]


@pytest.fixture
def vectored(store: Store) -> tuple[Namespace, Collection]:
    return make_collection(store, VECTOR_DOCS, [DENSE, SPARSE], name="my_vec-col")


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


# --- W2 --------------------------------------------------------------------------------


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


# --- W3 --------------------------------------------------------------------------------

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


# --- W4 --------------------------------------------------------------------------------


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


# --- W5 --------------------------------------------------------------------------------


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


# --- W6 --------------------------------------------------------------------------------


def test_W6_export_id_folder_and_manifest(
    store: Store, vectored: tuple[Namespace, Collection]
) -> None:
    ns, col = vectored
    request = {
        "format": "csv",
        "include_vectors": True,
        "select_fields": ["nothing"],
        "sample_size": 3,
    }
    before = datetime.now(UTC).replace(microsecond=0)
    result = run(store, ns, col, request)
    folder = local_path(result.response.s3_path).parent
    export_id = folder.name
    assert re.fullmatch(r"exp_[a-z0-9]{16}", export_id)
    assert folder == store.settings.home_dir / "exports" / ns.id / "exports" / col.id / export_id
    assert sorted(p.name for p in folder.iterdir()) == [
        "documents.csv",
        "manifest.json",
        "my_vec-col_vectors.csv",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["export_id"] == export_id
    assert manifest["request"] == request
    assert manifest["document_count"] == 3
    assert type(manifest["sample_seed"]) is int
    assert any("nothing" in w for w in manifest["warnings"])
    by_name = {f["name"]: f for f in manifest["files"]}
    assert set(by_name) == {"documents.csv", "my_vec-col_vectors.csv"}
    for name, entry in by_name.items():
        data = (folder / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == 3
        assert entry["columns"]
    for key in ("planned_at", "exported_at"):
        stamp = datetime.fromisoformat(manifest[key])
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
        assert before <= stamp <= datetime.now(UTC)
    assert datetime.fromisoformat(manifest["exported_at"]) == result.response.exported_at


def test_W6_exports_never_overwrite_each_other(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    first = run(store, ns, col, {"format": "json"})
    first_bytes = {
        p.name: p.read_bytes() for p in local_path(first.response.s3_path).parent.iterdir()
    }
    second = run(store, ns, col, {"format": "json"})
    third = run(store, ns, col, {"format": "json", "sample_size": 1})
    folders = {local_path(r.response.s3_path).parent for r in (first, second, third)}
    assert len(folders) == 3
    assert export_dirs(store.settings) == sorted(folders)
    assert {
        p.name: p.read_bytes() for p in local_path(first.response.s3_path).parent.iterdir()
    } == first_bytes


def test_W6_W7_no_scratch_left_after_success(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    run(store, ns, col, {"include_vectors": True})
    assert scratch_leftovers(store.settings) == []
    staging = store.settings.home_dir / "exports" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


# --- W7 --------------------------------------------------------------------------------


def assert_nothing_published(settings: Settings) -> None:
    assert export_dirs(settings) == []
    assert scratch_leftovers(settings) == []
    staging = settings.home_dir / "exports" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_W7_failed_publish_rename_leaves_nothing(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people

    def broken_rename(src: Any, dst: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(local_storage.os, "rename", broken_rename)
    with pytest.raises(ExportPipelineError, match="OSError: disk on fire"):
        run(store, ns, col, {"format": "csv", "include_vectors": True})
    assert_nothing_published(store.settings)


def test_W7_failure_after_first_file_copied_leaves_nothing(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people
    real_move = local_storage.shutil.move
    calls: list[Any] = []

    def move_then_fail(src: Any, dst: Any) -> Any:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("no space left")
        return real_move(src, dst)

    monkeypatch.setattr(local_storage.shutil, "move", move_then_fail)
    with pytest.raises(ExportPipelineError, match="OSError: no space left"):
        run(store, ns, col, {"format": "json", "include_vectors": True})
    assert len(calls) == 2
    assert_nothing_published(store.settings)


def test_W7_failed_write_step_leaves_nothing(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people

    def broken_write(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("writer crashed")

    monkeypatch.setattr(VectorsWriter, "write", broken_write)
    with pytest.raises(ExportPipelineError, match="RuntimeError: writer crashed"):
        run(store, ns, col, {"format": "parquet", "include_vectors": True})
    assert_nothing_published(store.settings)


def test_W7_unwritable_storage_root_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage root should be")
    settings = Settings(home=tmp_path / "home", storage=blocker.as_uri())
    store = Store(settings)
    ns, col = make_collection(store, PEOPLE[:3])
    with pytest.raises(EnvironmentProblem, match=r"^Not a directory at .*nothing was published$"):
        export_job(ns.id, col.id, {"format": "json"}, settings=settings)
    assert scratch_leftovers(settings) == []
    assert blocker.read_text() == "a file where the storage root should be"


def test_W7_existing_export_folder_is_not_overwritten(
    store: Store, people: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns, col = people
    first = run(store, ns, col, {"format": "json"})
    folder = local_path(first.response.s3_path).parent
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr("export_pipeline.engine.plan.new_id", lambda prefix, n: folder.name)
    with pytest.raises(ExportPipelineError, match="already exists"):
        run(store, ns, col, {"format": "json", "sample_size": 1})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == original
    assert scratch_leftovers(store.settings) == []


# --- A1 --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("include_vectors", [False, True])
def test_A1_response_fields(
    store: Store, vectored: tuple[Namespace, Collection], fmt: str, include_vectors: bool
) -> None:
    ns, col = vectored
    before = datetime.now(UTC).replace(microsecond=0)
    result = run(store, ns, col, {"format": fmt, "include_vectors": include_vectors})
    response = result.response
    after = datetime.now(UTC)
    assert set(response.model_dump()) == SEED_RESPONSE_FIELDS
    assert set(json.loads(response.model_dump_json())) == SEED_RESPONSE_FIELDS
    assert response.format == fmt
    assert response.document_count == len(VECTOR_DOCS)
    documents = local_path(response.s3_path)
    assert response.s3_path.startswith("file://")
    assert local_path(response.download_url) == documents
    assert response.file_size_bytes == documents.stat().st_size == os.path.getsize(documents)
    assert response.exported_at.utcoffset() is not None
    assert response.exported_at.utcoffset().total_seconds() == 0
    assert before <= response.exported_at <= after
    if include_vectors:
        assert local_path(response.vectors_s3_path).exists()
        assert response.file_size_bytes != local_path(response.vectors_s3_path).stat().st_size
    else:
        assert response.vectors_s3_path is None and response.vectors_download_url is None
        assert not list(documents.parent.glob("*_vectors.*"))


def test_R1_A1_empty_request_exports_parquet_without_vectors(
    store: Store, vectored: tuple[Namespace, Collection]
) -> None:
    ns, col = vectored
    for request in (None, {}):
        result = run(store, ns, col, request)
        assert result.response.format == "parquet"
        assert local_path(result.response.s3_path).name == "documents.parquet"
        assert result.response.vectors_s3_path is None
        assert read_parquet(result.response.s3_path).num_rows == len(VECTOR_DOCS)


def test_D2_A1_collection_addressed_by_id_or_name(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    for ns_key in (ns.id, ns.name):
        for col_key in (col.id, col.name):
            result = export_job(ns_key, col_key, {"format": "json"}, settings=store.settings)
            assert result.response.document_count == len(PEOPLE)
            assert f"/{ns.id}/exports/{col.id}/" in result.response.s3_path


# --- the seed's example request, through the engine ------------------------------------

SEED_PEOPLE = [
    # (id, name, age, status, role, department, location) -> matches the seed filter?
    ("j01", "John", 35, "active", "user", "Eng", "office", True),
    ("j02", "John", 30, "inactive", "admin", "Sales", "office", True),
    ("j03", "john", 40, "active", "user", "Eng", "office", False),  # case_sensitive
    ("j04", "John", 29, "active", "user", "Eng", "office", False),  # age
    ("j05", "John", 50, "inactive", "user", "Eng", "office", False),  # OR fails
    ("j06", "John", 45, "active", "user", "HR", "office", False),  # NOT department
    ("j07", "John", 45, "active", "user", "Eng", "remote", False),  # NOT location
    ("j08", "John", 45, "active", "user", "Eng", "Remote", True),  # case_sensitive
    ("j09", "John", "45", "active", "user", "Eng", "office", False),  # F6: no coercion
    ("j10", "John", None, "active", "admin", "Eng", "office", False),  # null age
    ("j11", "John", 31.5, "retired", "admin", None, "office", True),  # null department
    ("j12", "Jane", 33, "active", "admin", "Eng", "office", False),
    ("j13", "John", 60, "ACTIVE", "user", "Eng", "office", False),  # case_sensitive OR
    ("j14", "John", 30.0, "active", "user", "hr", "office", True),  # case_sensitive NOT
]


def test_R_F_seed_example_request_runs_verbatim(store: Store) -> None:
    docs = []
    for doc_id, name, age, status, role, department, location, _ in SEED_PEOPLE:
        doc = {
            "document_id": doc_id,
            "name": name,
            "status": status,
            "role": role,
            "location": location,
            "metadata": {"title": f"T-{doc_id}", "category": "c", "x": 1},
        }
        if age is not None:
            doc["age"] = age
        if department is not None:
            doc["department"] = department
        docs.append(doc)
    ns, col = make_collection(store, docs, name="people")
    result = export_job(
        ns.name, col.name, json.loads(json.dumps(SEED_REQUEST)), settings=store.settings
    )
    expected = [row[0] for row in SEED_PEOPLE if row[-1]]
    assert result.response.format == "parquet"
    assert result.response.document_count == len(expected)
    assert result.response.vectors_s3_path is None
    table = read_parquet(result.response.s3_path)
    assert table.column_names == ["document_id", "metadata"]
    assert table.to_pylist() == [
        {"document_id": i, "metadata": {"title": f"T-{i}", "category": "c"}} for i in expected
    ]


# --- validation happens before any data is read ----------------------------------------


@pytest.mark.parametrize(
    ("namespace", "collection", "request_body", "error"),
    [
        ("test-ns", "people", {"format": "xml"}, InvalidInput),
        ("test-ns", "people", {"sample_size": 0}, InvalidInput),
        (
            "test-ns",
            "people",
            {"filters": {"AND": [{"field": "a", "operator": "regex", "value": "("}]}},
            InvalidInput,
        ),
        (
            "test-ns",
            "people",
            {"filters": {"AND": [{"field": "a", "operator": "nope", "value": 1}]}},
            InvalidInput,
        ),
        ("test-ns", "people", {"select_fields": ["a..b"]}, InvalidInput),
        ("test-ns", "people", {"unknown": 1}, InvalidInput),
        ("test-ns", "nobody", {}, NotFoundError),
        ("test-ns", "col_0000000000", {}, NotFoundError),
        ("no-such-ns", "people", {}, NotFoundError),
    ],
)
def test_F4_R7_invalid_request_or_unknown_collection_fails_before_reading(
    store: Store,
    people: tuple[Namespace, Collection],
    monkeypatch: pytest.MonkeyPatch,
    namespace: str,
    collection: str,
    request_body: dict[str, Any],
    error: type[Exception],
) -> None:
    def must_not_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("documents were read before the request was validated")

    monkeypatch.setattr(type(store.documents), "rows", must_not_read)
    with pytest.raises(error) as info:
        export_job(namespace, collection, request_body, settings=store.settings)
    if error is InvalidInput:
        assert info.value.details and all("loc" in d for d in info.value.details)
    assert not store.settings.scratch_dir.exists() or scratch_leftovers(store.settings) == []
    assert export_dirs(store.settings) == []


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
@pytest.mark.parametrize("segments", quick_first([1, 3]))
def test_O3_W1_vectors_line_up_with_documents(store: Store, fmt: str, segments: int) -> None:
    """One segment is read in file order, several are merged by sorting; both line up."""
    docs = [
        {"document_id": f"id-{(n * 7919) % 1000:04d}", "n": n, "_vectors": {"emb": [n, -n]}}
        for n in range(1000)
    ]
    ns, col = make_collection(store, [], [VectorIndex(name="emb", dimensions=2)])
    for part in range(segments):
        chunk = docs[part::segments]
        store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / f"p{part}", chunk))
    col = store.catalog.collection(ns, col.id)
    assert len(col.segments) == segments
    request = {"format": fmt, "include_vectors": True, "filters": {"AND": [
        {"field": "n", "operator": "lt", "value": 700}]}}  # fmt: skip
    result = run(store, ns, col, request)
    if fmt == "parquet":
        documents = read_parquet(result.response.s3_path).to_pylist()
        vectors = read_parquet(result.response.vectors_s3_path).to_pylist()
    elif fmt == "json":
        documents = read_json_lines(result.response.s3_path)
        vectors = read_json_lines(result.response.vectors_s3_path)
    else:
        header, *rows = read_csv(result.response.s3_path)
        documents = [dict(zip(header, row, strict=True)) for row in rows]
        _, *vrows = read_csv(result.response.vectors_s3_path)
        vectors = [{"document_id": row[0], "emb": json.loads(row[1])} for row in vrows]
    ids = [d["document_id"] for d in documents]
    assert ids == sorted(ids, key=str.encode) and len(ids) == 700
    assert [v["document_id"] for v in vectors] == ids
    for document, vector in zip(documents, vectors, strict=True):
        n = int(document["n"])
        assert vector["emb"] == [float(n), float(-n)]


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


@pytest.mark.parametrize(
    "body",
    [
        {"filters": {"AND": [{"field": "kind", "operator": "eq", "value": "a"}]}},
        {"sample_size": 2, "sample_seed": 3},
        {},
    ],
)
def test_W6_json_manifest_lists_the_top_level_keys_of_the_exported_documents(
    store: Store, body: dict[str, Any]
) -> None:
    """The keys of the documents in the file, document_id first, then byte order."""
    docs = [
        {"document_id": "d1", "kind": "a", "zeta": 1, "Alpha": {"x": 1}},
        {"document_id": "d2", "kind": "b", "only_b": True},
        {"document_id": "d3", "kind": "a", "beta": None},
        {"document_id": "d4", "kind": "b", "zeta": "z"},
    ]
    ns, col = make_collection(store, docs, name="keyed")
    result = run(store, ns, col, {"format": "json", **body})
    exported = read_json_lines(result.response.s3_path)
    keys = {key for doc in exported for key in doc}
    expected = ["document_id", *sorted(keys - {"document_id"}, key=str.encode)]
    (entry,) = result.manifest["files"]
    assert [column["name"] for column in entry["columns"]] == expected

"""What a user finds in the published files: values kept exactly (D4), which documents and in which
order (O1-O3)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from exports import FORMATS, run
from helpers import (
    DENSE,
    NUMBERED,
    SPARSE,
    ids_of,
    local_path,
    make_collection,
    quick_first,
    read_csv,
    read_json_lines,
    read_parquet,
    same_json,
    write_jsonl,
)

from export_pipeline.store import Collection, Namespace, Store, VectorIndex

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


def test_O1_without_sample_every_match_exported(
    store: Store, people: tuple[Namespace, Collection]
) -> None:
    ns, col = people
    all_ids = ids_of(run(store, ns, col, {"format": "json"}).response.s3_path, "json")
    assert all_ids == [d["document_id"] for d in NUMBERED]
    evens = run(store, ns, col, {"format": "json", "filters": {"even": True}})
    assert ids_of(evens.response.s3_path, "json") == [f"p{i:02d}" for i in range(0, 40, 2)]
    assert evens.response.document_count == 20


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_O2_sample_exactly_n_reproducible_with_seed(
    store: Store, people: tuple[Namespace, Collection], fmt: str
) -> None:
    ns, col = people
    request = {"format": fmt, "sample_size": 7, "sample_seed": 12345}
    first, second = run(store, ns, col, request), run(store, ns, col, request)
    ids = ids_of(first.response.s3_path, fmt)
    assert len(ids) == len(set(ids)) == 7 == first.response.document_count
    assert set(ids) <= {d["document_id"] for d in NUMBERED}
    assert ids_of(second.response.s3_path, fmt) == ids
    assert first.manifest["sample_seed"] == 12345


@pytest.mark.slow
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
    assert ids_of(result.response.s3_path, "json") == [d["document_id"] for d in NUMBERED]


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

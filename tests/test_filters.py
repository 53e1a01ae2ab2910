"""The filter compiler against docs/contract.md F1-F7/P2: examples per rule, properties, security.

Every example and property is checked twice: in the general form, and specialised for the
fields the documents' structures prove scalar (as an export plans it from the snapshot).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import matches

from export_pipeline.engine.kinds import scalar_kinds
from export_pipeline.filter_models import LogicalOperator
from export_pipeline.filters import (
    CompiledFilter,
    compile_filter,
    filter_fields,
    install_macros,
    iso_micros,
)

ABSENT: Any = object()  # a document without the key, or a condition without a value


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    install_macros(connection)
    connection.execute("CREATE TABLE docs(doc VARCHAR)")
    yield connection
    connection.close()


def run(
    con: duckdb.DuckDBPyConnection,
    docs: list[dict[str, Any]],
    filters: Any,
    specialised: bool = False,
) -> tuple[set[str], set[str]]:
    """Matching ids by the compiled SQL and by the reference evaluator; `specialised`
    compiles the SQL for the fields the documents' structures prove scalar."""
    model = None if filters is None else LogicalOperator.model_validate(filters)
    con.execute("DELETE FROM docs")
    con.execute(
        "INSERT INTO docs SELECT unnest(CAST(? AS VARCHAR[]))", [[json.dumps(d) for d in docs]]
    )
    compiled = compile_filter(model, kinds=kinds_of(con, model) if specialised else None)
    assert compiled.sql.count("?") == len(compiled.params)
    rows = con.execute(
        f"SELECT doc->>'$.document_id' FROM docs WHERE {compiled.sql}", compiled.params
    ).fetchall()
    return {row[0] for row in rows}, {d["document_id"] for d in docs if matches(d, model)}


def kinds_of(
    con: duckdb.DuckDBPyConnection, model: LogicalOperator | None
) -> dict[str, frozenset[str]]:
    """What the structures of the documents in `docs` prove about the filter's fields, as
    the sidecars of a snapshot holding exactly these documents would."""
    rows = con.execute("SELECT DISTINCT json_structure(doc)::VARCHAR FROM docs").fetchall()
    return scalar_kinds([text for (text,) in rows], filter_fields(model))


def both(
    con: duckdb.DuckDBPyConnection, docs: list[dict[str, Any]], filters: Any
) -> tuple[set[str], set[str], set[str]]:
    """Matching ids by the general SQL, the specialised SQL and the reference evaluator."""
    general, reference = run(con, docs, filters)
    specialised, _ = run(con, docs, filters, specialised=True)
    return general, specialised, reference


def docs_with(*values: Any, key: str = "a") -> list[dict[str, Any]]:
    """Documents d0, d1, ... with `key` set to each value (left out for ABSENT)."""
    return [
        {"document_id": f"d{i}", **({} if value is ABSENT else {key: value})}
        for i, value in enumerate(values)
    ]


def where(field: str, operator: str, value: Any = ABSENT, **group: Any) -> dict[str, Any]:
    condition = {"field": field, "operator": operator}
    if value is not ABSENT:
        condition["value"] = value
    return {"AND": [condition], **group}


def check(
    con: duckdb.DuckDBPyConnection, docs: list[dict[str, Any]], filters: Any, ids: str
) -> None:
    """The SQL (general and specialised) and the reference select exactly `ids`."""
    got_sql, got_specialised, got_ref = both(con, docs, filters)
    expected = set(ids.split())
    assert got_sql == expected, ("sql", filters)
    assert got_specialised == expected, ("specialised sql", filters)
    assert got_ref == expected, ("reference", filters)


# F1 / F2: groups and shorthand


def test_F1_and_or_not(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(1, 2, 3, 4)
    one_or_two = [{"field": "a", "value": 1}, {"field": "a", "value": 2}]
    check(con, docs, {"OR": one_or_two}, "d0 d1")
    check(con, docs, {"NOT": one_or_two}, "d2 d3")
    check(
        con, docs, {"AND": [{"field": "a", "operator": "gt", "value": 1}], "OR": one_or_two}, "d1"
    )


def test_F1_empty_null_and_absent_groups_match_everything(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(1, ABSENT)
    for filters in (None, {}, {"AND": [], "OR": [], "NOT": []}, {"AND": None, "OR": None}):
        check(con, docs, filters, "d0 d1")
    assert compile_filter(None) == CompiledFilter("TRUE", [])
    assert compile_filter({}) == CompiledFilter("TRUE", [])
    assert compile_filter(LogicalOperator()) == CompiledFilter("TRUE", [])


def test_F1_not_accepts_a_single_item(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(1, 2, ABSENT)
    check(con, docs, {"NOT": {"field": "a", "value": 1}}, "d1 d2")
    check(con, docs, {"NOT": {"OR": [{"field": "a", "value": 1}, {"a": 2}]}}, "d2")


def test_F1_nested_groups(con: duckdb.DuckDBPyConnection) -> None:
    docs = [
        {"document_id": "d0", "a": 1, "b": "x"},
        {"document_id": "d1", "a": 1, "b": "y"},
        {"document_id": "d2", "a": 2, "b": "x"},
    ]
    filters = {"OR": [{"AND": [{"a": 1}, {"NOT": [{"b": "x"}]}]}, {"a": 2}]}
    check(con, docs, filters, "d1 d2")


def test_F2_shorthand_is_anded_eq(con: duckdb.DuckDBPyConnection) -> None:
    docs = [
        {"document_id": "d0", "metadata": {"title": "X"}, "n": 1},
        {"document_id": "d1", "metadata": {"title": "x"}, "n": 2},
        {"document_id": "d2", "metadata": {"title": "y"}, "n": 1},
    ]
    check(con, docs, {"metadata.title": "x"}, "d0 d1")
    check(con, docs, {"metadata.title": "x", "n": 1}, "d0")
    check(con, docs, {"metadata.title": "x", "AND": [{"field": "n", "value": 2}]}, "d1")
    check(con, docs, {"metadata.title": None}, "")


# F3: case sensitivity


def test_F3_string_matching_is_case_insensitive_by_default(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("Hello World", "hello", "HELLO", ["HeLLo", "x"], "other")
    check(con, docs, where("a", "eq", "hello"), "d1 d2 d3")
    check(con, docs, where("a", "ne", "hello"), "d0 d4")
    check(con, docs, where("a", "in", ["HELLO WORLD", "zzz"]), "d0")
    check(con, docs, where("a", "nin", ["HELLO WORLD", "HELLO"]), "d4")
    check(con, docs, where("a", "contains", "LO W"), "d0")
    check(con, docs, where("a", "contains", "hello"), "d0 d1 d2 d3")
    check(con, docs, where("a", "starts_with", "HEL"), "d0 d1 d2 d3")
    check(con, docs, where("a", "ends_with", "WORLD"), "d0")
    check(con, docs, where("a", "regex", "^hel+o$"), "d1 d2 d3")


def test_F3_case_sensitive_true(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("Hello World", "hello", "HELLO", ["HeLLo", "x"], "other")
    cs = {"case_sensitive": True}
    check(con, docs, where("a", "eq", "hello", **cs), "d1")
    check(con, docs, where("a", "ne", "hello", **cs), "d0 d2 d3 d4")
    check(con, docs, where("a", "in", ["HELLO", "HeLLo"], **cs), "d2 d3")
    check(con, docs, where("a", "nin", ["HELLO", "HeLLo"], **cs), "d0 d1 d4")
    check(con, docs, where("a", "contains", "lo W", **cs), "d0")
    check(con, docs, where("a", "contains", "hello", **cs), "d1")
    check(con, docs, where("a", "starts_with", "HEL", **cs), "d2")
    check(con, docs, where("a", "ends_with", "World", **cs), "d0")
    check(con, docs, where("a", "regex", "^hel+o$", **cs), "d1")


def test_F3_nested_group_inherits_case_sensitivity(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("abc", "ABC")
    inner = {"OR": [{"field": "a", "value": "abc"}]}
    check(con, docs, {"case_sensitive": True, "AND": [inner]}, "d0")
    check(con, docs, {"case_sensitive": True, "AND": [{"AND": [inner]}]}, "d0")
    check(con, docs, {"AND": [inner]}, "d0 d1")
    # a nested group's own setting wins over its parent's
    check(con, docs, {"case_sensitive": True, "AND": [{**inner, "case_sensitive": False}]}, "d0 d1")
    check(con, docs, {"case_sensitive": False, "NOT": {**inner, "case_sensitive": True}}, "d1")


def test_F3_ordering_and_text_ignore_case_sensitivity(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("B", "a", "b")
    # code point order: "B" < "a" < "b", whatever case_sensitive says
    for cs in (True, False):
        check(con, docs, where("a", "gt", "B", case_sensitive=cs), "d1 d2")
        check(con, docs, where("a", "lt", "a", case_sensitive=cs), "d0")
    docs = docs_with("Quick Brown", "quick")
    check(con, docs, where("a", "text", "QUICK brown", case_sensitive=True), "d0")


# F5: arrays


def test_F5_array_any_element_eq(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(["a", 1], [2, "b"], [], "a", [None])
    check(con, docs, where("a", "eq", "a"), "d0 d3")
    check(con, docs, where("a", "eq", 2), "d1")
    check(con, docs, where("a", "eq", None), "d4")
    check(con, docs, where("a", "in", [1, "b"]), "d0 d1")
    check(con, docs, where("a", "gte", 2), "d1")
    check(con, docs, where("a", "starts_with", "b"), "d1")


def test_F5_array_rule_is_one_level_only(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with([[1]], [{"x": 1}], [[1], 1])
    check(con, docs, where("a", "eq", 1), "d2")
    check(con, docs, where("a", "gt", 0), "d2")
    check(con, docs, where("a", "contains", 1), "d2")
    check(con, docs, where("a", "ne", 1), "d0 d1")


def test_F5_ne_and_nin_negate_the_array_rule(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with([1, 2], [3], [], 1)
    check(con, docs, where("a", "ne", 1), "d1 d2")
    check(con, docs, where("a", "nin", [2, 3]), "d2 d3")


def test_F5_contains_array_element_or_substring(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(["red", "Blue"], "bluebird", ["bluebird"], 12, [1, 2], "12", [True])
    check(con, docs, where("a", "contains", "blue"), "d0 d1")
    check(con, docs, where("a", "contains", "blue", case_sensitive=True), "d1")
    check(con, docs, where("a", "contains", 1), "d4")
    check(con, docs, where("a", "contains", "1"), "d5")
    check(con, docs, where("a", "contains", True), "d6")


# F6: kinds never coerce


def test_F6_number_equals_number(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(1, 1.0, "1", True, [1.0], 1.5)
    check(con, docs, where("a", "eq", 1), "d0 d1 d4")
    check(con, docs, where("a", "eq", 1.0), "d0 d1 d4")
    check(con, docs, where("a", "in", [1.5, 7]), "d5")
    check(con, docs, where("a", "lte", 1.2), "d0 d1 d4")


def test_F6_string_and_boolean_are_not_numbers(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(1, "1", True, False, 0, "true")
    check(con, docs, where("a", "eq", "1"), "d1")
    check(con, docs, where("a", "eq", True), "d2")
    check(con, docs, where("a", "eq", False), "d3")
    check(con, docs, where("a", "ne", 1), "d1 d2 d3 d4 d5")
    check(con, docs, where("a", "in", [True, 0]), "d2 d4")
    check(con, docs, where("a", "gt", "0"), "d1 d5")
    check(con, docs, where("a", "gte", 0), "d0 d4")


def test_F6_big_integers_compare_exactly(con: duckdb.DuckDBPyConnection) -> None:
    big = 2**63 - 1
    docs = docs_with(big, big - 1, 2**64 - 1, -(2**63), 2**53 + 1)
    check(con, docs, where("a", "eq", big), "d0")
    check(con, docs, where("a", "gt", big - 1), "d0 d2")
    check(con, docs, where("a", "lt", -(2**63) + 1), "d3")
    check(con, docs, where("a", "in", [big - 1, 2**53]), "d1")
    check(con, docs, where("a", "eq", 2**53), "")


# F7: missing and null


def test_F7_missing_and_null_fail_every_operator_but_a_few(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(ABSENT, None)
    for operator, value in [
        ("eq", 1),
        ("eq", "x"),
        ("gt", 0),
        ("lt", "z"),
        ("in", [1, "x"]),
        ("contains", "x"),
        ("starts_with", ""),
        ("ends_with", ""),
        ("regex", ".*"),
        ("text", "x"),
    ]:
        check(con, docs, where("a", operator, value), "")
    check(con, docs, where("a", "in", [1, None]), "d0 d1")
    check(con, docs, where("a", "nin", [1, None]), "")


def test_F7_missing_ne_is_true(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(ABSENT, None, 1)
    check(con, docs, where("a", "ne", 1), "d0 d1")
    check(con, docs, where("a", "nin", [1, "x"]), "d0 d1")
    check(con, docs, where("a", "ne", None), "d2")


def test_F7_eq_null_holds_for_missing_or_null(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(ABSENT, None, 0, "", False, [])
    check(con, docs, where("a", "eq", None), "d0 d1")
    check(con, docs, {"a": None}, "d0 d1")


def test_exists_is_true_for_present_null(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(ABSENT, None, 0, [])
    check(con, docs, where("a", "exists"), "d1 d2 d3")
    check(con, docs, where("a", "exists", True), "d1 d2 d3")
    check(con, docs, where("a", "exists", False), "d0")


def test_is_null_is_missing_or_null(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(ABSENT, None, 0, [None])
    check(con, docs, where("a", "is_null"), "d0 d1")
    check(con, docs, where("a", "is_null", False), "d2 d3")


# P2: paths


def test_P2_path_through_an_array_is_missing(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with({"x": 1}, [{"x": 1}], {"0": 1}, [1], 5)
    check(con, docs, where("a.x", "eq", 1), "d0")
    check(con, docs, where("a.x", "exists"), "d0")
    check(con, docs, where("a.0", "exists"), "d2")
    check(con, docs, where("a.x", "is_null"), "d1 d2 d3 d4")


def test_P2_nested_paths_and_special_key_characters(con: duckdb.DuckDBPyConnection) -> None:
    docs = [
        {"document_id": "d0", "m": {"k-1": {"_z": "v"}}},
        {"document_id": "d1", "m": {"k-1": "v"}},
    ]
    check(con, docs, where("m.k-1._z", "eq", "v"), "d0")
    check(con, docs, where("m.k-1", "eq", "v"), "d1")


# ordering operators


def test_ordering_numbers_and_code_points(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(-1, 0, 2.5, 10, "10", "9", "é", "z", "\U0001d538", "\uffff")
    check(con, docs, where("a", "gt", 0), "d2 d3")
    check(con, docs, where("a", "gte", 0), "d1 d2 d3")
    check(con, docs, where("a", "lt", 2.5), "d0 d1")
    check(con, docs, where("a", "lte", -1), "d0")
    # strings by code point: "10" < "9" < "z" < "é" < U+FFFF < U+1D538 (not UTF-16 order)
    check(con, docs, where("a", "gt", "9"), "d6 d7 d8 d9")
    check(con, docs, where("a", "lt", "9"), "d4")
    check(con, docs, where("a", "gt", "\uffff"), "d8")


def test_ordering_iso8601_is_chronological(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(
        "2024-01-02T03:00:00+01:00",  # 02:00Z
        "2024-01-02T02:30:00Z",
        "2024-01-02 01:00:00",  # no offset: UTC
        "2024-01-02",  # midnight UTC
        "2024-01-01T23:30:00-01:00",  # 2024-01-02 00:30Z
        "2024-01-02T02:00:00.0000009Z",  # fraction truncated to microseconds
    )
    check(con, docs, where("a", "gt", "2024-01-02T02:00:00Z"), "d1")
    check(con, docs, where("a", "gte", "2024-01-02T02:00:00Z"), "d0 d1 d5")
    check(con, docs, where("a", "lt", "2024-01-02T01:00:00+00:00"), "d3 d4")
    check(con, docs, where("a", "lte", "2024-01-02"), "d3")
    check(con, docs, where("a", "gt", "2024-01-02T01:59:59.999999Z"), "d0 d1 d5")


def test_ordering_non_iso_strings_compare_by_code_point(con: duckdb.DuckDBPyConnection) -> None:
    # Feb 30, hour 24, "2024-1-5" and a " UTC" suffix are not ISO-8601: compared as text
    docs = docs_with(
        "2024-02-30",
        "2024-03-01",
        "2024-01-01T24:00:00",
        "2024-1-5",
        "2024-01-01T20:00:00Z",
        "2024-01-01T20:00:00 UTC",
    )
    check(con, docs, where("a", "gt", "2024-02-29"), "d0 d1 d3")
    check(con, docs, where("a", "lt", "2024-02-30"), "d2 d4 d5")
    # 2024-01-01T19:00Z: later in time for d4, smaller by code point for d5
    check(con, docs, where("a", "gt", "2024-01-02T00:00:00+05:00"), "d0 d1 d3 d4")


def test_ordering_iso8601_extreme_years_and_offsets(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("0001-01-01T00:30:00+01:00", "0001-01-01", "9999-12-31T23:59:59-23:59")
    check(con, docs, where("a", "lt", "0001-01-01T00:00:00Z"), "d0")
    check(con, docs, where("a", "gt", "9999-12-31T23:59:59Z"), "d2")
    check(con, docs, where("a", "gte", "0000-12-31"), "d0 d1 d2")


def test_iso_micros_python_and_sql_agree(con: duckdb.DuckDBPyConnection) -> None:
    samples = [
        "1970-01-01",
        "1969-12-31T23:59:59.999999Z",
        "0099-05-06",
        "2024-02-29",
        "2023-02-29",
        "2024-01-02T03:04:05.123456789+05:30",
        "2024-01-02 03:04:05-00:01",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999999-23:59",
        "2024-01-02T03:04:05z",
        "2024-01-02T24:00:00",
        "2024-01-02T03:04:60",
        "2024-01-02T03:04:05+24:00",
        "2024-01-02T03:04",
        "0000-01-01",
        "2024-01-02\n",
    ]
    for text in samples:
        (got,) = con.execute("SELECT xf_ts(?)", [text]).fetchone()
        assert got == iso_micros(text), text
    assert iso_micros("1970-01-01T00:00:01+00:01") == -59_000_000
    assert iso_micros("2023-02-29") is None


# string operators


def test_regex_is_a_search_not_a_full_match(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("xx abc yy", "abc", "ABC", ["q", "zabcz"], 5)
    check(con, docs, where("a", "regex", "abc"), "d0 d1 d2 d3")
    check(con, docs, where("a", "regex", "^abc$"), "d1 d2")
    check(con, docs, where("a", "regex", "b.", case_sensitive=True), "d0 d1 d3")
    check(con, docs, where("a", "regex", r"\d"), "")


def test_starts_with_and_ends_with_are_string_only(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("prefix-x", 123, ["a", "prefix"], "x-prefix")
    check(con, docs, where("a", "starts_with", "prefix"), "d0 d2")
    check(con, docs, where("a", "ends_with", "prefix"), "d2 d3")
    check(con, docs, where("a", "starts_with", "12"), "")


def test_text_matches_every_word(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(
        "The quick, brown fox!", "quickbrown fox", "Brown-quick", ["fox", "brown quick"], "Café 42"
    )
    check(con, docs, where("a", "text", "quick brown"), "d0 d2 d3")
    check(con, docs, where("a", "text", "BROWN"), "d0 d2 d3")
    check(con, docs, where("a", "text", "fox quick"), "d0")
    check(con, docs, where("a", "text", "café"), "d4")
    check(con, docs, where("a", "text", "42!"), "d4")
    check(con, docs, where("a", "text", "qui"), "")


def test_in_mixes_kinds_and_null(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with("A", 1, 2.5, True, None, ABSENT, "1", [False, "z"])
    values = ["a", 1, 2.5, True, None]
    check(con, docs, where("a", "in", values), "d0 d1 d2 d3 d4 d5")
    check(con, docs, where("a", "nin", values), "d6 d7")
    check(con, docs, where("a", "in", [False]), "d7")


def test_long_in_lists_of_every_kind(con: duckdb.DuckDBPyConnection) -> None:
    filler = [f"zz{i}" for i in range(100)] + list(range(1000, 1100))
    docs = docs_with("A", 1, 2.0, True, None, ABSENT, "1", [False, "z"], ["q", "zZ7"], 1.5)
    values = ["a", 1, True, None, 1.5, *filler]
    check(con, docs, where("a", "in", values), "d0 d1 d3 d4 d5 d8 d9")
    check(con, docs, where("a", "nin", values), "d2 d6 d7")
    check(con, docs, where("a", "in", values, case_sensitive=True), "d1 d3 d4 d5 d9")
    check(con, docs, where("a", "in", [*filler, False, "Z"]), "d7 d8")


def test_eq_and_in_on_one_field_in_an_or_act_as_one_in(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(1, "X", None, ABSENT, [2, "y"], 3.0, "x")
    a = [
        {"field": "a", "value": 1},
        {"field": "a", "operator": "in", "value": ["x", 3]},
        {"field": "a", "operator": "eq", "value": None},
        {"field": "a", "operator": "gt", "value": 1},
    ]
    check(con, docs, {"OR": a}, "d0 d1 d2 d3 d4 d5 d6")
    check(con, docs, {"OR": a[:3]}, "d0 d1 d2 d3 d5 d6")
    check(con, docs, {"OR": a[:2], "case_sensitive": True}, "d0 d5 d6")
    check(con, docs, {"NOT": a[:2]}, "d2 d3 d4")
    check(con, docs, {"AND": a[:2]}, "")
    ne = [
        {"field": "a", "operator": "ne", "value": 1},
        {"field": "a", "operator": "nin", "value": ["x"]},
    ]
    check(con, docs, {"AND": ne}, "d2 d3 d4 d5")
    check(con, docs, {"a": 2, "AND": ne}, "d4")
    check(con, docs, {"OR": ne}, "d0 d1 d2 d3 d4 d5 d6")


def test_case_folding_is_duckdbs_lower_on_both_sides(con: duckdb.DuckDBPyConnection) -> None:
    # DuckDB lowers U+0130 to "i"; Python to "i" + U+0307. Values are folded by DuckDB too
    # (when the filter is compiled), so both sides agree with each other, not with Python.
    docs = docs_with("i", "\u0130", "i\u0307", ["x", "\u0130"])
    for op, ids in [("eq", "d0 d1 d3"), ("ends_with", "d0 d1 d3"), ("starts_with", "d0 d1 d2 d3")]:
        assert run(con, docs, where("a", op, "\u0130"))[0] == set(ids.split()), op
    assert run(con, docs, where("a", "in", ["\u0130", "q"]))[0] == {"d0", "d1", "d3"}
    assert run(con, docs, where("a", "nin", ["\u0130", "q"]))[0] == {"d2"}
    scalars = docs[:3]  # strings only: the specialised form folds the same way
    for op, ids in [("eq", "d0 d1"), ("ends_with", "d0 d1"), ("starts_with", "d0 d1 d2")]:
        assert run(con, scalars, where("a", op, "\u0130"), True)[0] == set(ids.split()), op
    assert run(con, scalars, where("a", "in", ["\u0130", "q"]), True)[0] == {"d0", "d1"}
    assert run(con, scalars, where("a", "nin", ["\u0130", "q"]), True)[0] == {"d2"}


# security: values are always bound


HOSTILE = [
    "'",
    '"',
    "--",
    "'; DROP TABLE docs; --",
    "\\",
    "\\'",
    'O\'Brien "x" -- \\n',
    "$.a",
    "%_",
    "?",
    "{}",
]


def test_values_are_bound_parameters_never_sql_text(con: duckdb.DuckDBPyConnection) -> None:
    docs = docs_with(*HOSTILE, key="s")
    for i, value in enumerate(HOSTILE):
        for operator in ("eq", "ne", "in", "contains", "starts_with", "ends_with", "gt", "text"):
            if operator == "text" and not any(c.isalnum() for c in value):
                continue
            wrap = (lambda v: [v, "zz"]) if operator == "in" else (lambda v: v)
            compiled = compile_filter(where("s", operator, wrap(value)))
            # the SQL text does not depend on the value at all; the value is a parameter
            # (lowered when case-insensitive, `text` split into words, as the filter is compiled)
            assert compiled.sql == compile_filter(where("s", operator, wrap("x"))).sql
            words = re.findall(r"[^\W_]+", value.lower())
            bound = (wrap(value), value, wrap(value.lower()), value.lower(), words)
            assert any(form in compiled.params for form in bound)
        check(con, docs, where("s", "eq", value, case_sensitive=True), f"d{i}")
        check(con, docs, where("s", "in", [value, "zz"], case_sensitive=True), f"d{i}")
        for operator in ("starts_with", "ends_with", "contains"):
            got_sql, got_specialised, got_ref = both(con, docs, where("s", operator, value))
            assert f"d{i}" in got_sql
            assert got_sql == got_specialised == got_ref
    assert con.execute("SELECT count(*) FROM docs").fetchone() == (len(HOSTILE),)


def test_column_name_is_validated_and_quoted() -> None:
    assert '"t"."doc"' in compile_filter({"a": 1}, column="t.doc").sql
    for bad in ('doc"; DROP TABLE docs; --', "doc doc", "", "1doc"):
        with pytest.raises(ValueError):
            compile_filter({"a": 1}, column=bad)


def test_install_macros_is_repeatable_and_refuses_a_nocase_collation() -> None:
    with duckdb.connect() as connection:
        install_macros(connection)
        install_macros(connection)
        connection.execute("SET default_collation = 'nocase'")
        with pytest.raises(ValueError, match="collation"):
            install_macros(connection)


# property: the SQL agrees with the reference evaluator

FIELDS = ["a", "a", "a", "b", "m", "m.x", "m.x", "tags", "tags", "tags.x", "nope"]
ISO_SAMPLES = [
    "2024-01-02",
    "2024-01-02T03:04:05+01:00",
    "2024-01-02T02:04:05Z",
    "2024-01-02 03:04:05",
    "2024-01-01T23:00:00-02:00",
    "2024-01-02T02:04:05.5Z",
    "2024-02-30",
]
REGEXES = ["a", "^a", "b$", "A.b", "[0-9]", "a|B", "^$", " ", "1+", "^[ab]+$", "B+a"]
WORDS = ["", "a", "A", "ab", "aB", "Ab b", "b a", "B1", "1", "a.b"]

# ASCII only, so Python's and DuckDB's lower() agree; the simplest branch comes first because
# hypothesis draws it most
strings = st.one_of(
    st.sampled_from(WORDS), st.text(alphabet="aAbB1 .", max_size=3), st.sampled_from(ISO_SAMPLES)
)
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([1.0, 2.5, -0.5, 0.0]))
scalars = st.one_of(strings, numbers, st.none(), st.booleans())
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2)
    ),
    max_leaves=6,
)
documents = st.lists(
    st.fixed_dictionaries(
        {"a": st.one_of(json_values, st.just(ABSENT))},
        optional={
            "b": scalars,
            "m": st.one_of(json_values, st.fixed_dictionaries({"x": json_values})),
            "tags": st.lists(scalars, max_size=3),
        },
    ).map(lambda doc: {k: v for k, v in doc.items() if v is not ABSENT}),
    min_size=4,
    max_size=8,
)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _leaves(item)
    else:
        yield value


def _pick(pool: list[Any], fallback: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly values the documents hold, so conditions often split them."""
    return st.one_of(st.sampled_from(pool), fallback) if pool else fallback


def _condition(field: str, operator: str, value: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"field": field}
    if operator != "eq" or value is None:  # eq is also the default operator
        raw["operator"] = operator
    if value is not ABSENT:
        raw["value"] = value
    return raw


def conditions(pool: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    texts = [v for v in pool if isinstance(v, str)]
    any_ = _pick(pool, scalars)
    text = _pick(texts, strings)
    number = _pick(
        [v for v in pool if isinstance(v, int | float) and not isinstance(v, bool)], numbers
    )
    words = _pick(
        [v for v in texts if any(c.isalnum() for c in v)],
        st.text(alphabet="aAbB1 .", min_size=1, max_size=4).filter(
            lambda v: any(c.isalnum() for c in v)
        ),
    )
    flag = st.one_of(st.booleans(), st.just(ABSENT))
    values: dict[str, st.SearchStrategy[Any]] = {
        "eq": any_,
        "ne": any_,
        "in": st.lists(any_, min_size=1, max_size=4),
        "nin": st.lists(any_, min_size=1, max_size=4),
        "contains": st.one_of(text, number, st.booleans()),
        **dict.fromkeys(["gt", "gte", "lt", "lte"], st.one_of(text, number)),
        **dict.fromkeys(["starts_with", "ends_with"], text),
        "regex": st.sampled_from(REGEXES),
        "text": words,
        "exists": flag,
        "is_null": flag,
    }
    return st.sampled_from(list(values)).flatmap(
        lambda op: st.builds(_condition, st.sampled_from(FIELDS), st.just(op), values[op])
    )


def groups(pool: list[Any], depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """LogicalOperators `depth` levels deep at most below this one."""
    item = conditions(pool)
    if depth:
        item = st.one_of(item, groups(pool, depth - 1))
    maybe = st.one_of(st.just(ABSENT), st.none(), st.lists(item, max_size=2))
    return st.builds(
        lambda and_, or_, not_, cs, short: {
            k: v
            for k, v in {"AND": and_, "OR": or_, "NOT": not_, "case_sensitive": cs, **short}.items()
            if v is not ABSENT
        },
        maybe,
        maybe,
        st.one_of(maybe, item),
        st.sampled_from([ABSENT, None, True, False]),
        st.dictionaries(st.sampled_from(FIELDS), _pick(pool, scalars), max_size=1),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], Any]:
    docs = [{"document_id": f"d{i}", **doc} for i, doc in enumerate(draw(documents))]
    pool = [
        leaf
        for doc in docs
        for key, value in doc.items()
        if key != "document_id"
        for leaf in _leaves(value)
    ]
    single = st.builds(
        lambda c, cs: {"AND": [c], "case_sensitive": cs}, conditions(pool), st.booleans()
    )
    return docs, draw(st.one_of(single, groups(pool, 2), st.none()))


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_property_sql_agrees_with_reference(
    con: duckdb.DuckDBPyConnection, case: tuple[list[dict[str, Any]], Any]
) -> None:
    docs, filters = case
    got_sql, got_specialised, got_ref = both(con, docs, filters)
    assert got_sql == got_ref
    assert got_specialised == got_ref


# property: fields of one kind of scalar (or of a few), compiled for what they hold

SCALAR_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "integers": st.one_of(st.integers(-3, 3), st.sampled_from([2**63 - 1, 2**64 - 1, -(2**63)])),
    "floats": st.sampled_from([1.0, 2.5, -0.5, 0.0, -3.0, 1e300]),
    "numbers": numbers,
    "strings": strings,
    "booleans": st.booleans(),
    "nulls": st.none(),
    "strings and numbers": st.one_of(strings, numbers),
    "any scalar": scalars,
}


@st.composite
def scalar_cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], Any]:
    """Documents whose fields `a`, `b` and `m.x` each hold one kind of scalar (drawn per
    example), maybe null, maybe missing; `tags` stays an array (the general form)."""
    values = {}
    for field in ("a", "b", "m.x"):
        kind = SCALAR_KINDS[draw(st.sampled_from(list(SCALAR_KINDS)))]
        extra = [st.none()] if draw(st.booleans()) else []
        if draw(st.booleans()):
            extra.append(st.just(ABSENT))
        values[field] = st.one_of(kind, *extra)
    docs = []
    for number in range(draw(st.integers(4, 8))):
        doc: dict[str, Any] = {"document_id": f"d{number}"}
        for field, value in values.items():
            drawn = draw(value)
            if drawn is not ABSENT:
                head, _, tail = field.partition(".")
                doc.setdefault(head, {})
                if tail:
                    doc[head][tail] = drawn
                else:
                    doc[head] = drawn
        if draw(st.booleans()):
            doc["tags"] = draw(st.lists(scalars, max_size=3))
        docs.append(doc)
    pool = [  # filter values are signed 64-bit integers; documents may hold 2^64 - 1
        leaf
        for doc in docs
        for key, v in doc.items()
        if key != "document_id"
        for leaf in _leaves(v)
        if not isinstance(leaf, int) or -(2**63) <= leaf < 2**63
    ]
    single = st.builds(
        lambda c, cs: {"AND": [c], "case_sensitive": cs}, conditions(pool), st.booleans()
    )
    return docs, draw(st.one_of(single, groups(pool, 2)))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scalar_cases())
def test_property_scalar_fields_specialised_agree_with_reference(
    con: duckdb.DuckDBPyConnection, case: tuple[list[dict[str, Any]], Any]
) -> None:
    docs, filters = case
    got_sql, got_specialised, got_ref = both(con, docs, filters)
    assert got_specialised == got_ref
    assert got_sql == got_ref


# the specialised form: when it applies, and when the general form stays


def compiled_for(
    con: duckdb.DuckDBPyConnection, docs: list[dict[str, Any]], filters: Any
) -> CompiledFilter:
    run(con, docs, filters)  # loads the documents
    model = LogicalOperator.model_validate(filters)
    return compile_filter(model, kinds=kinds_of(con, model))


@pytest.mark.parametrize(
    ("values", "filters", "ids"),
    [
        ([0.5, 1.0, 2.25, None, ABSENT], where("a", "lt", 1), "d0"),
        ([0.5, 1.0, 2.25, None, ABSENT], where("a", "gte", 1.0), "d1 d2"),
        ([1, 2, 3, -(2**63), 2**64 - 1], where("a", "gt", 2), "d2 d4"),
        ([1, 2, 3, None], where("a", "eq", 3), "d2"),
        ([1.5, 3.0, None], where("a", "eq", 3), "d1"),
        ([1.5, 3.0, None], where("a", "in", [3, 1.5, "x"]), "d0 d1"),
        (["x", "Y", None, ABSENT], where("a", "in", ["y", "z", None]), "d1 d2 d3"),
        (["x", "Y", None, ABSENT], where("a", "ne", "x"), "d1 d2 d3"),
        (
            ["2024-01-02", "2023-12-31T23:00:00-02:00", "x"],
            where("a", "gt", "2024-01-01"),
            "d0 d1 d2",
        ),
        (["quick brown", "Brown", ABSENT], where("a", "text", "brown"), "d0 d1"),
        ([True, False, None, ABSENT], where("a", "eq", False), "d1"),
        ([True, False, None, ABSENT], where("a", "is_null"), "d2 d3"),
        ([True, False, ABSENT], where("a", "exists"), "d0 d1"),
        ([1, 2, ABSENT], where("a", "exists", False), "d2"),
        ([None, None, ABSENT], where("a", "eq", None), "d0 d1 d2"),
        ([ABSENT, ABSENT], where("a", "nin", [1, "x"]), "d0 d1"),
    ],
)
def test_scalar_fields_are_compared_directly(
    con: duckdb.DuckDBPyConnection, values: list[Any], filters: Any, ids: str
) -> None:
    docs = docs_with(*values)
    check(con, docs, filters, ids)
    compiled = compiled_for(con, docs, filters)
    assert "_r." not in compiled.sql  # no general feature
    if any(value is not ABSENT for value in values):
        assert "json_extract_string" in compiled.sql
    else:  # a field no document has: the conditions are constants
        assert "json_extract" not in compiled.sql


def test_the_benchmark_filter_is_one_comparison(con: duckdb.DuckDBPyConnection) -> None:
    docs = [{"document_id": f"d{i}", "metadata": {"rating": i / 4}} for i in range(8)]
    filters = {"AND": [{"field": "metadata.rating", "operator": "lt", "value": 0.75}]}
    check(con, docs, filters, "d0 d1 d2")
    compiled = compiled_for(con, docs, filters)
    assert compiled.sql == (
        '(coalesce((TRY_CAST(json_extract_string("doc", \'$."metadata"."rating"\')'
        " AS DOUBLE)) < ?, false))"
    )
    assert compiled.params == [0.75]


@pytest.mark.parametrize(
    "values",
    [
        [1, 2, [0, 5]],  # sometimes a list
        [1, {"x": 0}, 3],  # sometimes an object
        [1, {}, 3],  # an empty object
        [1, [], 3],  # an empty list
    ],
)
def test_a_field_that_is_not_always_a_scalar_keeps_the_general_form(
    con: duckdb.DuckDBPyConnection, values: list[Any]
) -> None:
    docs = docs_with(*values)
    filters = where("a", "lt", 1)
    compiled = compiled_for(con, docs, filters)
    assert "json_extract_string" not in compiled.sql
    assert compiled.sql == compile_filter(filters).sql
    check(con, docs, filters, "d2" if values[2] == [0, 5] else "")


def test_fields_of_mixed_kinds_are_direct_where_the_kinds_allow(
    con: duckdb.DuckDBPyConnection,
) -> None:
    numbers = docs_with(1, 2.5, None, ABSENT)
    # a float is compared with every number as a double: direct, integers and floats alike
    assert "_r." not in compiled_for(con, numbers, where("a", "lt", 2.6)).sql
    check(con, numbers, where("a", "lt", 2.6), "d0 d1")
    # an integer compares exactly with integers and as a double with floats: which one is
    # the value's own type, so the general features decide
    assert "_r." in compiled_for(con, numbers, where("a", "lt", 3)).sql
    check(con, numbers, where("a", "lt", 3), "d0 d1")
    # exists tells null from missing, which the text of a field does not
    assert "_r.e[" in compiled_for(con, numbers, where("a", "exists")).sql
    check(con, numbers, where("a", "exists"), "d0 d1 d2")
    docs = docs_with(1, 2.5, "3", None, ABSENT, True)
    # a string "3" is not a number: comparing numbers needs each value's type
    assert "_r." in compiled_for(con, docs, where("a", "lt", 3.5)).sql
    check(con, docs, where("a", "lt", 3.5), "d0 d1")
    # a boolean is never a number or string: the only boolean test is direct
    assert (
        "_r." not in compiled_for(con, docs_with(True, False, ABSENT), where("a", "eq", True)).sql
    )
    check(con, docs, where("a", "eq", True), "d5")
    check(con, docs, where("a", "contains", "3"), "d2")


def test_many_reads_of_scalar_fields_share_one_extraction(
    con: duckdb.DuckDBPyConnection,
) -> None:
    docs = [{"document_id": f"d{i}", "a": i, "b": f"v{i}", "tags": ["x"] * i} for i in range(6)]
    one_field = {"OR": [{"field": "a", "operator": op, "value": 4} for op in ("gt", "lt")]}
    assert compiled_for(con, docs, one_field).sql.count("json_extract_string") == 2
    check(con, docs, one_field, "d0 d1 d2 d3 d5")
    many = {
        "OR": [{"field": "a", "value": i} for i in range(3)]
        + [{"field": "a", "operator": "gt", "value": i} for i in range(4, 8)]
    }
    assert compiled_for(con, docs, many).sql.count("json_extract_string") == 1
    check(con, docs, many, "d0 d1 d2 d5")
    two_fields = {"OR": [{"field": "a", "value": 1}, {"field": "b", "value": "V2"}]}
    assert compiled_for(con, docs, two_fields).sql.count("json_extract_string") == 1
    check(con, docs, two_fields, "d1 d2")
    with_general = {**two_fields, "AND": [{"field": "tags", "operator": "eq", "value": "x"}]}
    assert "_r.t[" in compiled_for(con, docs, with_general).sql
    check(con, docs, with_general, "d1 d2")

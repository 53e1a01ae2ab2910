"""Compile a LogicalOperator (CONTRACT F1-F7) into one boolean DuckDB SQL expression.

The expression reads a column holding each document as JSON text. Filter values only
ever travel as bound `?` parameters; the SQL text is built from fixed snippets, the
P1-validated field paths (via `paths.json_path`) and the quoted column name. Per-kind
JSON handling lives in temporary macros (`install_macros`) so each operator stays short.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb

from export_pipeline.contract import (
    FilterCondition,
    FilterOperator,
    LogicalOperator,
    check_filter_size,
)
from export_pipeline.paths import json_path

Op = FilterOperator

# The contract's ISO-8601 grammar (gt/gte/lt/lte), shared verbatim by Python and RE2.
# Groups: date, time, fraction, offset sign, offset hours, offset minutes.
ISO_PATTERN = (
    r"((?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(?:0[1-9]|1[0-2])"
    r"-(?:0[1-9]|[12][0-9]|3[01]))"
    r"(?:[T ]((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9])(?:\.([0-9]+))?"
    r"(?:Z|([+-])((?:[01][0-9]|2[0-3])):([0-5][0-9]))?)?"
)
_ISO = re.compile(ISO_PATTERN)
_EPOCH = datetime(1970, 1, 1)
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

# Temporary (connection-local) macros. `e` is a JSON value or SQL NULL (missing); a macro
# yields NULL when `e` is not of its kind, which every caller treats as "does not hold".
_MACROS: dict[str, str] = {
    "xf_sign(a, b)": "CASE WHEN a < b THEN -1 WHEN a > b THEN 1 WHEN a = b THEN 0 END",
    # F5/P2: the value itself, or an array's elements (one level); a missing value is [NULL]
    "xf_elems(j)": (
        "CAST(CASE WHEN json_type(j) = 'ARRAY' THEN json_extract(j, '$[*]') ELSE [j] END AS JSON[])"
    ),
    "xf_arr(j)": "CASE WHEN json_type(j) = 'ARRAY' THEN json_extract(j, '$[*]') END",
    "xf_str(e)": "CASE WHEN json_type(e) = 'VARCHAR' THEN e ->> '$' END",
    "xf_bool(e)": "CASE WHEN json_type(e) = 'BOOLEAN' THEN TRY_CAST(e AS BOOLEAN) END",
    # UBIGINT covers 2^63..2^64-1, so integers compare as HUGEINT to stay exact
    "xf_int(e)": "CASE WHEN json_type(e) IN ('UBIGINT', 'BIGINT') THEN TRY_CAST(e AS HUGEINT) END",
    "xf_dbl(e)": "CASE WHEN json_type(e) = 'DOUBLE' THEN TRY_CAST(e AS DOUBLE) END",
    "xf_num(e)": (
        "CASE WHEN json_type(e) IN ('UBIGINT', 'BIGINT', 'DOUBLE') THEN TRY_CAST(e AS DOUBLE) END"
    ),
    "xf_cmp_int(e, n)": "coalesce(xf_sign(xf_int(e), n), xf_sign(xf_dbl(e), CAST(n AS DOUBLE)))",
    "xf_cmp_dbl(e, n)": "xf_sign(xf_num(e), n)",
    # `in`: e's folded string s, or e itself, is in c's list of its kind (c from _in_lists)
    "xf_in(e, s, c)": (
        "list_contains(c.s, s) OR list_contains(c.i, xf_int(e)) OR list_contains(c.d, xf_dbl(e))"
        " OR list_contains(c.f, xf_num(e)) OR list_contains(c.b, xf_bool(e))"
        " OR (c.n AND (e IS NULL OR json_type(e) = 'NULL'))"
    ),
    # epoch microseconds of an ISO-8601 string, NULL when it is not one (e.g. Feb 30)
    "xf_iso(p)": (
        "epoch_us(TRY_CAST(nullif(p.d, '') || ' ' || coalesce(nullif(p.t, ''), '00:00:00')"
        " AS TIMESTAMP)) + CAST(rpad(left(p.f, 6), 6, '0') AS BIGINT)"
        " - CASE p.sg WHEN '-' THEN -1 ELSE 1 END * (coalesce(TRY_CAST(p.oh AS BIGINT), 0)"
        " * 3600 + coalesce(TRY_CAST(p.om AS BIGINT), 0) * 60) * 1000000"
    ),
    "xf_ts(s)": f"xf_iso(regexp_extract(s, '^{ISO_PATTERN}$', ['d', 't', 'f', 'sg', 'oh', 'om']))",
    "xf_cmp_str(e, s, us)": (
        "CASE WHEN json_type(e) = 'VARCHAR'"
        " THEN coalesce(xf_sign(xf_ts(e ->> '$'), us), xf_sign(e ->> '$', s)) END"
    ),
    "xf_words(s)": r"regexp_extract_all(lower(s), '[\pL\pN]+')",
}


@dataclass(frozen=True)
class CompiledFilter:
    """A boolean SQL expression and the values of its positional `?` placeholders, in order."""

    sql: str
    params: list[Any]


_TRUE = CompiledFilter("TRUE", [])
# the string value of `_e`, the value or array element an element predicate tests
_ELEMENT_STR = CompiledFilter("xf_str(_e)", [])


def compile_filter(
    filters: LogicalOperator | Mapping[str, Any] | None, column: str = "doc"
) -> CompiledFilter:
    """SQL that is TRUE exactly for documents in `column` matching `filters` (never NULL).

    A plain mapping is validated as a LogicalOperator first; None and `{}` give TRUE.
    """
    if not _COLUMN.fullmatch(column):
        raise ValueError(f"invalid column name {column!r}")
    if isinstance(filters, Mapping):
        check_filter_size(filters)
        filters = LogicalOperator.model_validate(filters)
    if filters is None:
        return _TRUE
    quoted = ".".join(f'"{part}"' for part in column.split("."))
    return _group(filters, False, quoted)


def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create the `xf_*` TEMP macros compiled filters call; nothing else is changed.

    TEMP macros belong to one connection (a `con.cursor()` needs its own call).
    """
    # a collation such as NOCASE would silently change =, <, starts_with and list_contains
    (collation,) = con.execute("SELECT current_setting('default_collation')").fetchone() or ("",)
    if collation.lower() not in ("", "binary"):
        raise ValueError(f"filters need the binary collation, not {collation!r}")
    for signature, body in _MACROS.items():
        con.execute(f"CREATE OR REPLACE TEMP MACRO {signature} AS {body}")


def iso_micros(text: str) -> int | None:
    """Epoch microseconds of a contract ISO-8601 string (UTC unless offset), else None."""
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    date, time, fraction, sign, off_h, off_m = match.groups()
    try:  # the grammar allows Feb 30; the calendar does not, and then it is not ISO
        naive = datetime.fromisoformat(f"{date}T{time or '00:00:00'}")
    except ValueError:
        return None
    offset = (int(off_h or 0) * 3600 + int(off_m or 0) * 60) * (-1 if sign == "-" else 1)
    micros = (naive - _EPOCH) // timedelta(microseconds=1)
    return micros + int((fraction or "")[:6].ljust(6, "0")) - offset * 1_000_000


def _sql(template: str, *parts: CompiledFilter) -> CompiledFilter:
    """Fill the `{}` slots of a fixed template; params follow the slots, so text order holds."""
    return CompiledFilter(
        template.format(*(part.sql for part in parts)),
        [value for part in parts for value in part.params],
    )


def _raw(sql: str) -> CompiledFilter:
    return CompiledFilter(sql, [])


def _param(value: Any, sql_type: str) -> CompiledFilter:
    return CompiledFilter(f"CAST(? AS {sql_type})", [value])


def _join(separator: str, parts: list[CompiledFilter]) -> CompiledFilter:
    return _sql("(" + separator.join(["{}"] * len(parts)) + ")", *parts)


def _fold(part: CompiledFilter, case_sensitive: bool) -> CompiledFilter:
    # F3: lower both sides in SQL so field and value share one Unicode case mapping
    return part if case_sensitive else _sql("lower({})", part)


def _group(group: LogicalOperator, inherited: bool, column: str) -> CompiledFilter:
    """F1/F2: shorthand and AND items all hold, some OR item holds, no NOT item holds."""
    cs = inherited if group.case_sensitive is None else group.case_sensitive

    def items(entries: list[Any] | None) -> list[CompiledFilter]:
        return [_item(entry, cs, column) for entry in entries or []]

    clauses = items(group.shorthand) + items(group.AND)
    if group.OR:
        clauses.append(_join(" OR ", items(group.OR)))
    if group.NOT:
        clauses.append(_sql("(NOT {})", _join(" OR ", items(group.NOT))))
    return _join(" AND ", clauses) if clauses else _TRUE


def _item(item: FilterCondition | LogicalOperator, cs: bool, column: str) -> CompiledFilter:
    if isinstance(item, LogicalOperator):
        return _group(item, cs, column)
    # Bind the extracted value once: each mention of it in the condition would otherwise
    # parse the whole document again.
    extract = f"json_extract({column}, '{json_path(item.field)}')"
    condition = _condition(_raw("_v"), item.operator, item.value, cs)
    return _sql(f"list_transform([{extract}], lambda _v: {{}})[1]", condition)


def _condition(field: CompiledFilter, op: Op, value: Any, cs: bool) -> CompiledFilter:
    """One condition on `field` (JSON, or NULL when missing); TRUE or FALSE, never NULL."""
    if op in _NEGATIONS:  # F5: ne and nin are exact negations, array rule included
        return _sql("(NOT {})", _condition(field, _NEGATIONS[op], value, cs))
    if op in _WHOLE_VALUE:
        return _WHOLE_VALUE[op](field, value, cs)
    # F5: holds for the value, or for at least one element of an array value
    return _sql(
        "coalesce(list_bool_or(list_transform(xf_elems({}), lambda _e: {})), false)",
        field,
        _PREDICATES[op](value, cs),
    )


def _exists(field: CompiledFilter, value: bool, cs: bool) -> CompiledFilter:
    return _sql("(({} IS NOT NULL) = {})", field, _param(value, "BOOLEAN"))


def _is_null(field: CompiledFilter, value: bool, cs: bool) -> CompiledFilter:
    return _sql(
        "(({} IS NULL OR json_type({}) = 'NULL') = {})", field, field, _param(value, "BOOLEAN")
    )


def _contains(field: CompiledFilter, value: Any, cs: bool) -> CompiledFilter:
    # an array asks for an element eq to the value, a string for a substring
    parts = [_sql("list_bool_or(list_transform(xf_arr({}), lambda _e: {}))", field, _eq(value, cs))]
    if isinstance(value, str):
        text = _fold(_sql("xf_str({})", field), cs)
        parts.append(_sql("contains({}, {})", text, _fold(_param(value, "VARCHAR"), cs)))
    return _sql("coalesce(" + "{}, " * len(parts) + "false)", *parts)


def _in(field: CompiledFilter, values: list[Any], cs: bool) -> CompiledFilter:
    # list_transform([lists], lambda _c: ...) binds the lists once per query: written inside
    # the element lambda, DuckDB would rebuild (re-lower) them for every element
    return _sql(
        "coalesce(list_transform([{}], lambda _c: list_bool_or(list_transform("
        "xf_elems({}), lambda _e: xf_in(_e, {}, _c))))[1], false)",
        _in_lists(values, cs),
        field,
        _fold(_ELEMENT_STR, cs),
    )


def _eq(value: Any, cs: bool) -> CompiledFilter:
    """F6: same JSON kind and equal; `eq null` holds for missing or null."""
    if value is None:
        return _raw("(_e IS NULL OR json_type(_e) = 'NULL')")
    if isinstance(value, bool):
        return _sql("(xf_bool(_e) = {})", _param(value, "BOOLEAN"))
    if isinstance(value, str):
        return _sql("({} = {})", _fold(_ELEMENT_STR, cs), _fold(_param(value, "VARCHAR"), cs))
    return _sql("({} = 0)", _compare_number(value))


def _compare_number(value: int | float) -> CompiledFilter:
    # two integers compare exactly; an integer and a float compare as doubles
    if isinstance(value, int):
        return _sql("xf_cmp_int(_e, {})", _param(value, "HUGEINT"))
    return _sql("xf_cmp_dbl(_e, {})", _param(value, "DOUBLE"))


def _in_lists(values: list[Any], cs: bool) -> CompiledFilter:
    """The `in` list split by JSON kind into one struct of typed lists (see xf_in)."""
    strings = [v for v in values if isinstance(v, str)]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    floats = [v for v in values if isinstance(v, float)]
    bools = [v for v in values if isinstance(v, bool)]
    listed = _param(strings, "VARCHAR[]")
    return _sql(
        "{{'s': {}, 'i': {}, 'd': CAST({} AS DOUBLE[]), 'f': {}, 'b': {}, 'n': {}}}",
        listed if cs else _sql("list_transform({}, lambda _s: lower(_s))", listed),
        _param(ints, "HUGEINT[]"),
        _param(ints, "HUGEINT[]"),
        _param(floats, "DOUBLE[]"),
        _param(bools, "BOOLEAN[]"),
        _param(any(v is None for v in values), "BOOLEAN"),
    )


def _ordering(symbol: str) -> Callable[[Any, bool], CompiledFilter]:
    def build(value: Any, cs: bool) -> CompiledFilter:
        # ordering ignores F3: numbers numerically, strings by ISO-8601 time or code point
        if isinstance(value, str):
            cmp = _sql(
                "xf_cmp_str(_e, {}, {})",
                _param(value, "VARCHAR"),
                _param(iso_micros(value), "BIGINT"),
            )
        else:
            cmp = _compare_number(value)
        return _sql(f"({{}} {symbol} 0)", cmp)

    return build


def _string_function(function: str) -> Callable[[Any, bool], CompiledFilter]:
    def build(value: str, cs: bool) -> CompiledFilter:
        text, wanted = _fold(_ELEMENT_STR, cs), _fold(_param(value, "VARCHAR"), cs)
        return _sql(function + "({}, {})", text, wanted)

    return build


def _regex(value: str, cs: bool) -> CompiledFilter:
    # a search, not a full match; RE2's own case folding for the pattern
    return _sql(
        "regexp_matches(xf_str(_e), {}, " + ("'c')" if cs else "'i')"), _param(value, "VARCHAR")
    )


def _text(value: str, cs: bool) -> CompiledFilter:
    # words are compared case-insensitively whatever F3 says (operator table)
    return _sql("list_has_all(xf_words(xf_str(_e)), xf_words({}))", _param(value, "VARCHAR"))


_NEGATIONS = {Op.ne: Op.eq, Op.nin: Op.in_}
# operators with their own shape: exists, is_null and contains ignore the F5 array rule;
# in applies it but first binds its lists once (see _in)
_WHOLE_VALUE: dict[Op, Callable[[CompiledFilter, Any, bool], CompiledFilter]] = {
    Op.exists: _exists,
    Op.is_null: _is_null,
    Op.contains: _contains,
    Op.in_: _in,
}
_PREDICATES: dict[Op, Callable[[Any, bool], CompiledFilter]] = {
    Op.eq: _eq,
    Op.gt: _ordering(">"),
    Op.gte: _ordering(">="),
    Op.lt: _ordering("<"),
    Op.lte: _ordering("<="),
    Op.starts_with: _string_function("starts_with"),
    Op.ends_with: _string_function("ends_with"),
    Op.regex: _regex,
    Op.text: _text,
}

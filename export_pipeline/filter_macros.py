"""The TEMP macros compiled filters call, and the contract's ISO-8601 reading (F3, F6).

A compiled filter builds, once per document, the "features" its conditions test: for each
field a condition names, typed lists of its elements and their extremes. Conditions test
them with plain functions. The macros here build the features, so a filter's SQL stays
short; `fold_values` computes what SQL derives from bound values alone.

Where the snapshot's structures prove that a field only ever holds scalars, a feature of
it is one value instead of a list (`SCALARS`): the field's text read once, then cast.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import duckdb

from export_pipeline.duck import shared_connection

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

_STRING = ("VARCHAR",)
_INTEGER = ("BIGINT", "UBIGINT")
_NUMBER = ("BIGINT", "UBIGINT", "DOUBLE")

# The kinds of element a feature keeps: feature -> (their JSON types, their SQL value from
# their text `_p.x`). UBIGINT covers 2^63..2^64-1, so integers compare as HUGEINT, exactly.
_KINDS = {
    "s": (_STRING, "_p.x"),
    "l": (_STRING, "lower(_p.x)"),
    "i": (_INTEGER, "TRY_CAST(_p.x AS HUGEINT)"),
    "d": (("DOUBLE",), "TRY_CAST(_p.x AS DOUBLE)"),
    "n": (_NUMBER, "TRY_CAST(_p.x AS DOUBLE)"),
    "b": (("BOOLEAN",), "_p.x = 'true'"),
}


def _among(types: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{name}'" for name in types) + ")"


# The JSON types a document's structure (json_structure) records for a scalar value.
SCALAR_TYPES = frozenset(("VARCHAR", "BIGINT", "UBIGINT", "DOUBLE", "BOOLEAN", "NULL"))
# A feature of a field that only ever holds scalars (or is missing), as one value: feature
# -> (the JSON types it keeps, its SQL from the field's text `{t}`, `json_extract_string`:
# NULL when the field is missing or null). It is the single element of the general
# feature's list, NULL when the list is empty: so each test of a list (some element passes)
# is the test of that value, coalesced to false. The `a` features (elements of an array
# value) keep no scalar at all. Strings as times (`u`), the other strings (`x`) and words
# (`w`) are kept from strings.
SCALARS: dict[str, tuple[frozenset[str], str]] = {
    **{
        kind: (frozenset(types), value.replace("_p.x", "{t}"))
        for kind, (types, value) in _KINDS.items()
    },
    **{f"{kind}a": (frozenset(), "NULL") for kind in _KINDS},
    "u": (frozenset(_STRING), "xf_ts({t})"),
    "x": (frozenset(_STRING), "CASE WHEN xf_ts({t}) IS NULL THEN {t} END"),
    "w": (frozenset(_STRING), "xf_words({t})"),
}

# Temporary (connection-local) macros. `xf_<feature>(v)` builds one feature of a field whose
# value `v` is JSON, or SQL NULL when the document lacks the path. Conditions test features
# with plain functions and never parse JSON themselves.
MACROS: dict[str, str] = {
    # F5: the elements a test applies to, as (t: json_type, x: text) pairs: the value itself,
    # or an array's elements (one level; one parse for the types, one for the texts); a
    # missing value is one NULL element
    "xf_pairs(v)": (
        "CASE WHEN json_type(v) = 'ARRAY' THEN CAST(list_zip(json_type(v, '$[*]'),"
        " json_extract_string(v, '$[*]')) AS STRUCT(t VARCHAR, x VARCHAR)[])"
        " ELSE [{'t': json_type(v), 'x': v ->> '$'}] END"
    ),
    # the elements of one kind (xf_s, xf_i, ...), and of an array value only (for contains)
    **{
        f"xf_{kind}(v)": f"[{value} for _p in xf_pairs(v) if _p.t IN {_among(types)}]"
        for kind, (types, value) in _KINDS.items()
    },
    **{
        f"xf_{kind}a(v)": f"CASE WHEN json_type(v) = 'ARRAY' THEN xf_{kind}(v) ELSE [] END"
        for kind in _KINDS
    },
    # a scalar field's text, as `json_extract_string` reads it (see SCALARS)
    "xf_t(v)": "v ->> '$'",
    # exists: the path is there; is_null: it is missing or null
    "xf_e(v)": "v IS NOT NULL",
    "xf_nul(v)": "coalesce(json_type(v), 'NULL') = 'NULL'",
    # a string value itself (for contains), as is and lowered
    "xf_sv(v)": "CASE WHEN json_type(v) = 'VARCHAR' THEN v ->> '$' END",
    "xf_lv(v)": "lower(xf_sv(v))",
    # eq null: the value is missing or null, or an array holds a null
    "xf_z(v)": (
        "coalesce(json_type(v), 'NULL') = 'NULL'"
        " OR (json_type(v) = 'ARRAY' AND list_contains(json_type(v, '$[*]'), 'NULL'))"
    ),
    "xf_words(s)": r"regexp_extract_all(lower(s), '[\pL\pN]+')",
    "xf_w(v)": "list_transform(xf_s(v), lambda _s: xf_words(_s))",
    # epoch microseconds of an ISO-8601 string, NULL when it is not one (e.g. Feb 30)
    "xf_iso(p)": (
        "epoch_us(TRY_CAST(nullif(p.d, '') || ' ' || coalesce(nullif(p.t, ''), '00:00:00')"
        " AS TIMESTAMP)) + CAST(rpad(left(p.f, 6), 6, '0') AS BIGINT)"
        " - CASE p.sg WHEN '-' THEN -1 ELSE 1 END * (coalesce(TRY_CAST(p.oh AS BIGINT), 0)"
        " * 3600 + coalesce(TRY_CAST(p.om AS BIGINT), 0) * 60) * 1000000"
    ),
    "xf_ts(s)": f"xf_iso(regexp_extract(s, '^{ISO_PATTERN}$', ['d', 't', 'f', 'sg', 'oh', 'om']))",
    # ISO-8601 strings (as epoch microseconds) and the other strings, for ordering
    # (list_max and list_min skip the NULLs of the strings that are not ISO-8601)
    "xf_u(v)": "list_transform(xf_s(v), lambda _s: xf_ts(_s))",
    "xf_x(v)": "list_filter(xf_s(v), lambda _s: xf_ts(_s) IS NULL)",
    # the largest and smallest element of a kind (ordering: some element is above the value
    # iff the largest is)
    **{
        f"xf_{kind}{extreme}(v)": f"list_{extreme}(xf_{kind}(v))"
        for kind in "idnsux"
        for extreme in ("max", "min")
    },
}
# The features conditions may ask for.
FEATURES = [sig[3:-3] for sig in MACROS if sig.endswith("(v)") and sig != "xf_pairs(v)"]


def uses_macros(sql: str) -> bool:
    """Whether a compiled filter calls the macros (a filter of scalar fields alone may not)."""
    return "xf_" in sql


def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create the `xf_*` TEMP macros compiled filters call; nothing else is changed.

    TEMP macros belong to one connection (a `con.cursor()` needs its own call).
    """
    # a collation such as NOCASE would silently change =, <, starts_with and list_contains
    (collation,) = con.execute("SELECT current_setting('default_collation')").fetchone() or ("",)
    if collation.lower() not in ("", "binary"):
        raise ValueError(f"filters need the binary collation, not {collation!r}")
    for signature, body in MACROS.items():
        con.execute(f"CREATE OR REPLACE TEMP MACRO {signature} AS {body}")


# What a bound value may be folded into before the query runs: the SQL type of the inputs
# and the function of `_s` that folds one input.
FOLDS: dict[str, tuple[str, str]] = {
    "lower": ("VARCHAR", "lower(_s)"),
    "words": ("VARCHAR", "xf_words(_s)"),
    "double": ("HUGEINT", "CAST(_s AS DOUBLE)"),
}
# The shared connections holding the macros, by id; held here so that a closed one's id is
# never reused by a new connection that lacks them.
_prepared: dict[int, duckdb.DuckDBPyConnection] = {}


def fold_values(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Each kind's inputs folded by DuckDB (see FOLDS), in one query of one list per kind.

    The query's own functions, so a folded value is exactly what the query would compute
    from the value for every document (lower() is not Python's str.lower()).
    """
    kinds = [kind for kind in FOLDS if inputs.get(kind)]
    if not kinds:
        return {}
    columns = ", ".join(
        f"list_transform(CAST(? AS {FOLDS[kind][0]}[]), lambda _s: {FOLDS[kind][1]})"
        for kind in kinds
    )
    with shared_connection() as con:
        if id(con) not in _prepared:
            install_macros(con)
            _prepared[id(con)] = con
        (row,) = con.execute(f"SELECT {columns}", [inputs[kind] for kind in kinds]).fetchall()
    return dict(zip(kinds, row, strict=True))


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

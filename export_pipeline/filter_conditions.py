"""One FilterCondition -> SQL over its field's features (CONTRACT F3, F5-F7, operator table).

A condition never reads JSON itself: it tests the features `filters.compile_filter` built
once per document and field (`filter_macros`), through a `Field`. Values travel as bound
`?` parameters; what SQL would derive from a value alone (its lower case, the words of
`text`, an integer as a double) is derived by DuckDB when the filter is compiled
(`Field.fold`), since a query derives it again for every document.

Each condition is kept to a few plain function calls: a filter may hold 1,000 conditions,
and DuckDB plans each lambda or CASE in about a millisecond. Only `in` and the string tests
other than equality (starts_with, ends_with, regex, text) loop over a field's elements
with a lambda.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from export_pipeline.contract import FilterOperator
from export_pipeline.filter_macros import FEATURES, iso_micros

Op = FilterOperator


@dataclass(frozen=True)
class CompiledFilter:
    """A boolean SQL expression and the values of its positional `?` placeholders, in order."""

    sql: str
    params: list[Any]


class Field(Protocol):
    """What a condition may read: its field's features, and values folded by DuckDB."""

    def feature(self, name: str) -> str:
        """SQL for one feature of this condition's field in the current document."""
        ...

    def fold(self, kind: str, value: Any) -> Any:
        """A parameter value standing for `value` folded by `filter_macros.FOLDS[kind]`."""
        ...


def sql(template: str, *parts: CompiledFilter) -> CompiledFilter:
    """Fill the `{}` slots of a fixed template; params follow the slots, so text order holds."""
    return CompiledFilter(
        template.format(*(part.sql for part in parts)),
        [value for part in parts for value in part.params],
    )


def join(separator: str, parts: list[CompiledFilter]) -> CompiledFilter:
    """The parts joined by a SQL operator, in parentheses."""
    return sql("(" + separator.join(["{}"] * len(parts)) + ")", *parts)


def condition(field: Field, op: Op, value: Any, cs: bool) -> CompiledFilter:
    """One condition on `field`: TRUE or FALSE, never NULL."""
    if op in _NEGATIONS:  # F5: ne and nin are exact negations, array rule included
        return sql("(NOT {})", condition(field, _NEGATIONS[op], value, cs))
    return _BUILDERS[op](field, value, cs)


def _test(template: str, field: Field, *params: Any) -> CompiledFilter:
    """`template` with `{name}` replaced by the field's features and `?` bound to `params`."""
    names = {name: field.feature(name) for name in FEATURES if "{" + name + "}" in template}
    return CompiledFilter(template.format(**names), list(params))


def _fold(field: Field, value: str, cs: bool) -> Any:
    # F3: lower both sides with DuckDB's lower(), so field and value share one case mapping
    return value if cs else field.fold("lower", value)


def _exists(field: Field, value: bool, cs: bool) -> CompiledFilter:
    return _test("({e} = ?)", field, value)


def _is_null(field: Field, value: bool, cs: bool) -> CompiledFilter:
    return _test("({nul} = ?)", field, value)


def _eq(field: Field, value: Any, cs: bool, of: str = "") -> CompiledFilter:
    """F6: an element of the same JSON kind is equal; `eq null` holds for missing or null.

    `of="a"` tests the elements of an array value only (features `sa`, `ia`, ...).
    """
    if value is None:
        return _test("{z}", field)
    if isinstance(value, bool):
        return _test(f"list_contains({{b{of}}}, ?)", field, value)
    if isinstance(value, str):
        strings = ("s" if cs else "l") + of
        return _test(f"list_contains({{{strings}}}, ?)", field, _fold(field, value, cs))
    if isinstance(value, int):  # two integers compare exactly, an integer and a float as doubles
        as_double = field.fold("double", value)
        template = f"(list_contains({{i{of}}}, ?) OR list_contains({{d{of}}}, ?))"
        return _test(template, field, value, as_double)
    return _test(f"list_contains({{n{of}}}, ?)", field, value)


def _in(field: Field, values: list[Any], cs: bool) -> CompiledFilter:
    """Some element is eq to some value: each kind's elements against that kind's values."""
    strings = [v for v in values if isinstance(v, str)]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    floats = [v for v in values if isinstance(v, float)]
    bools = [v for v in values if isinstance(v, bool)]

    def member(feature: str, listed: list[Any]) -> CompiledFilter:
        if len(listed) == 1:  # one value of a kind is eq, without a lambda (and its memory)
            return _test(f"list_contains({{{feature}}}, ?)", field, listed[0])
        # scanning the list for each element beats list_has_any, which hashes the list for
        # every document: 1,000 lists of 3 values took 0.8 s on 10,000 documents against
        # 2.3 s, of 64 values 1.1 s against 13.9 s
        return _any(field, feature, "list_contains(?, _x)", listed)

    parts = []
    if strings:
        parts.append(member("s" if cs else "l", [_fold(field, v, cs) for v in strings]))
    if ints:
        parts.append(member("i", ints))
        parts.append(member("d", [field.fold("double", v) for v in ints]))
    if floats:
        parts.append(member("n", floats))
    if bools:
        parts.append(member("b", bools))
    if any(v is None for v in values):
        parts.append(_test("{z}", field))
    return join(" OR ", parts)


def _contains(field: Field, value: Any, cs: bool) -> CompiledFilter:
    # an array asks for an element eq to the value, a string for a substring
    in_array = _eq(field, value, cs, of="a")
    if not isinstance(value, str):
        return in_array
    string = "sv" if cs else "lv"
    within = f"coalesce(contains({{{string}}}, ?), false)"
    return sql("({} OR {})", in_array, _test(within, field, _fold(field, value, cs)))


def _ordering(symbol: str) -> Callable[[Field, Any, bool], CompiledFilter]:
    # some element is above (below) the value iff the largest (smallest) one is, so each
    # field keeps the extremes of its elements of each kind
    extreme = "max" if symbol.startswith(">") else "min"

    def compare(field: Field, kind: str, value: Any) -> CompiledFilter:
        return _test(f"coalesce({{{kind}{extreme}}} {symbol} ?, false)", field, value)

    def build(field: Field, value: Any, cs: bool) -> CompiledFilter:
        # ordering ignores F3: numbers numerically, strings by ISO-8601 time or code point
        if isinstance(value, str):
            micros = iso_micros(value)
            if micros is None:  # then every string compares by code point
                return compare(field, "s", value)
            # ISO-8601 strings compare by time, the others by code point
            return sql("({} OR {})", compare(field, "u", micros), compare(field, "x", value))
        if isinstance(value, int):
            as_double = field.fold("double", value)
            return sql("({} OR {})", compare(field, "i", value), compare(field, "d", as_double))
        return compare(field, "n", value)

    return build


def _any(field: Field, feature: str, test: str, value: Any) -> CompiledFilter:
    """Some element `_x` of the feature's list passes `test`, with `?` bound to `value`."""
    return _test(
        f"list_contains(list_transform({{{feature}}}, lambda _x: {test}), true)", field, value
    )


def _string_function(function: str) -> Callable[[Field, str, bool], CompiledFilter]:
    def build(field: Field, value: str, cs: bool) -> CompiledFilter:
        return _any(field, "s" if cs else "l", f"{function}(_x, ?)", _fold(field, value, cs))

    return build


def _regex(field: Field, value: str, cs: bool) -> CompiledFilter:
    # a search, not a full match; RE2's own case folding for the pattern
    flags = "'c'" if cs else "'i'"
    return _any(field, "s", f"regexp_matches(_x, ?, {flags})", value)


def _text(field: Field, value: str, cs: bool) -> CompiledFilter:
    # words are compared case-insensitively whatever F3 says (operator table)
    return _any(field, "w", "list_has_all(_x, ?)", field.fold("words", value))


_NEGATIONS = {Op.ne: Op.eq, Op.nin: Op.in_}
_BUILDERS: dict[Op, Callable[[Field, Any, bool], CompiledFilter]] = {
    Op.exists: _exists,
    Op.is_null: _is_null,
    Op.eq: _eq,
    Op.in_: _in,
    Op.contains: _contains,
    Op.gt: _ordering(">"),
    Op.gte: _ordering(">="),
    Op.lt: _ordering("<"),
    Op.lte: _ordering("<="),
    Op.starts_with: _string_function("starts_with"),
    Op.ends_with: _string_function("ends_with"),
    Op.regex: _regex,
    Op.text: _text,
}

"""One FilterCondition -> SQL over its field's features (docs/contract.md F3, F5-F7, operators).

A condition never reads JSON itself: it tests the features `filters.compile_filter` built
once per document and field (`filter_macros`), through a `Field`. Values travel as bound
`?` parameters; what SQL would derive from a value alone (its lower case, the words of
`text`, an integer as a double) is derived by DuckDB when the filter is compiled
(`Field.fold`), since a query derives it again for every document.

Each condition is kept to a few plain function calls: a filter may hold 1,000 conditions,
and DuckDB plans each lambda or CASE in about a millisecond. Only `in` and the string tests
other than equality (starts_with, ends_with, regex, text) loop over a field's elements
with a lambda.

Every test of a feature is "some element of this kind passes": `_part` writes it for the
feature's list, or, where the field is known to hold scalars only (`Field.scalar`), for its
one value (a list of at most one element passes iff its element does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from export_pipeline.filter_macros import FEATURES, iso_micros
from export_pipeline.filter_models import FilterOperator

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

    def scalar(self, name: str) -> str | Literal[False] | None:
        """Where the field is known to hold scalars only: SQL for feature `name` as one
        value (NULL in a document without one), or False when no document has one; None
        when the general feature is needed."""
        ...

    def missing(self) -> str | None:
        """SQL for "missing or null" where the field is known to hold scalars only."""
        ...

    def present(self) -> str | None:
        """SQL for "the path is there" where the field is known to hold non-null scalars."""
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


def _part(field: Field, name: str, general: str, test: str, *params: Any) -> CompiledFilter:
    """Some element of feature `name` passes: `general` tests the feature's list (`{name}`),
    `test` one element (`_x`), which is all a field known to hold scalars needs."""
    value = field.scalar(name)
    if value is None:
        return _test(general, field, *params)
    if value is False:  # no document holds a value of this kind
        return CompiledFilter("false", [])
    return CompiledFilter(f"coalesce({test.replace('_x', value)}, false)", list(params))


def _fold(field: Field, value: str, cs: bool) -> Any:
    # F3: lower both sides with DuckDB's lower(), so field and value share one case mapping
    return value if cs else field.fold("lower", value)


def _exists(field: Field, value: bool, cs: bool) -> CompiledFilter:
    present = field.present()
    if present is not None:
        return CompiledFilter(f"({present} = ?)", [value])
    return _test("({e} = ?)", field, value)


def _is_null(field: Field, value: bool, cs: bool) -> CompiledFilter:
    missing = field.missing()
    if missing is not None:
        return CompiledFilter(f"({missing} = ?)", [value])
    return _test("({nul} = ?)", field, value)


def _null(field: Field) -> CompiledFilter:
    """eq null: missing or null, or an array holding a null."""
    missing = field.missing()
    return CompiledFilter(missing, []) if missing is not None else _test("{z}", field)


def _eq(field: Field, value: Any, cs: bool, of: str = "") -> CompiledFilter:
    """F6: an element of the same JSON kind is equal; `eq null` holds for missing or null.

    `of="a"` tests the elements of an array value only (features `sa`, `ia`, ...).
    """
    if value is None:
        return _null(field)

    def has(kind: str, value: Any) -> CompiledFilter:
        name = kind + of
        return _part(field, name, f"list_contains({{{name}}}, ?)", "_x = ?", value)

    if isinstance(value, bool):
        return has("b", value)
    if isinstance(value, str):
        return has("s" if cs else "l", _fold(field, value, cs))
    if isinstance(value, int):  # two integers compare exactly, an integer and a float as doubles
        return sql("({} OR {})", has("i", value), has("d", field.fold("double", value)))
    return has("n", value)


def _in(field: Field, values: list[Any], cs: bool) -> CompiledFilter:
    """Some element is eq to some value: each kind's elements against that kind's values."""
    strings = [v for v in values if isinstance(v, str)]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    floats = [v for v in values if isinstance(v, float)]
    bools = [v for v in values if isinstance(v, bool)]

    def member(feature: str, listed: list[Any]) -> CompiledFilter:
        if len(listed) == 1:  # one value of a kind is eq, without a lambda (and its memory)
            return _part(field, feature, f"list_contains({{{feature}}}, ?)", "_x = ?", listed[0])
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
        parts.append(_null(field))
    return join(" OR ", parts)


def _contains(field: Field, value: Any, cs: bool) -> CompiledFilter:
    # an array asks for an element eq to the value, a string for a substring
    in_array = _eq(field, value, cs, of="a")
    if not isinstance(value, str):
        return in_array
    # the string value itself (not an array's): for scalars, the one string element
    string, element = ("sv", "s") if cs else ("lv", "l")
    general = f"coalesce(contains({{{string}}}, ?), false)"
    within = _part(field, element, general, "contains(_x, ?)", _fold(field, value, cs))
    return sql("({} OR {})", in_array, within)


def _ordering(symbol: str) -> Callable[[Field, Any, bool], CompiledFilter]:
    # some element is above (below) the value iff the largest (smallest) one is, so each
    # field keeps the extremes of its elements of each kind
    extreme = "max" if symbol.startswith(">") else "min"

    def compare(field: Field, kind: str, value: Any) -> CompiledFilter:
        general = f"coalesce({{{kind}{extreme}}} {symbol} ?, false)"
        return _part(field, kind, general, f"_x {symbol} ?", value)

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
    general = f"list_contains(list_transform({{{feature}}}, lambda _x: {test}), true)"
    return _part(field, feature, general, test, value)


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

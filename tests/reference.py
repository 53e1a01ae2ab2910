"""A plain-Python evaluator of docs/contract.md F1-F7, written from the rules, to check the SQL."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from export_pipeline.filter_models import FilterCondition, FilterOperator, LogicalOperator
from export_pipeline.paths import MISSING, lookup

Op = FilterOperator
_ISO_SHAPE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-5][0-9])?)?"
)
_EPOCH = datetime(1970, 1, 1)


def matches(doc: dict[str, Any], filters: LogicalOperator | None) -> bool:
    """Whether `doc` matches `filters` (None matches everything)."""
    return filters is None or _group(doc, filters, False)


def _group(doc: dict[str, Any], group: LogicalOperator, inherited: bool) -> bool:
    cs = inherited if group.case_sensitive is None else group.case_sensitive

    def item(entry: FilterCondition | LogicalOperator) -> bool:
        if isinstance(entry, LogicalOperator):
            return _group(doc, entry, cs)
        return _condition(lookup(doc, entry.field), entry.operator, entry.value, cs)

    return (
        all(item(entry) for entry in [*group.shorthand, *(group.AND or [])])
        and (not group.OR or any(item(entry) for entry in group.OR))
        and not any(item(entry) for entry in group.NOT or [])
    )


def _condition(v: Any, op: Op, value: Any, cs: bool) -> bool:
    if op is Op.exists:
        return (v is not MISSING) == value
    if op is Op.is_null:
        return (v is MISSING or v is None) == value
    if op is Op.ne:
        return not _condition(v, Op.eq, value, cs)
    if op is Op.nin:
        return not _condition(v, Op.in_, value, cs)
    if op is Op.contains:
        if isinstance(v, list):
            return any(_eq(e, value, cs) for e in v)
        return isinstance(v, str) and isinstance(value, str) and _fold(value, cs) in _fold(v, cs)
    if isinstance(v, list):  # F5, one level
        return any(_scalar(e, op, value, cs) for e in v)
    return _scalar(v, op, value, cs)


def _scalar(v: Any, op: Op, value: Any, cs: bool) -> bool:
    if op is Op.eq:
        return _eq(v, value, cs)
    if op is Op.in_:
        return any(_eq(v, item, cs) for item in value)
    if op in (Op.gt, Op.gte, Op.lt, Op.lte):
        sign = _compare(v, value)
        if sign is None:
            return False
        return {Op.gt: sign > 0, Op.gte: sign >= 0, Op.lt: sign < 0, Op.lte: sign <= 0}[op]
    if not isinstance(v, str):
        return False
    if op is Op.starts_with:
        return _fold(v, cs).startswith(_fold(value, cs))
    if op is Op.ends_with:
        return _fold(v, cs).endswith(_fold(value, cs))
    if op is Op.regex:
        return re.search(value, v, 0 if cs else re.IGNORECASE) is not None
    if op is Op.text:
        return set(_words(value)) <= set(_words(v))
    raise AssertionError(op)


def _kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return None


def _eq(v: Any, value: Any, cs: bool) -> bool:
    if value is None:
        return v is MISSING or v is None
    if _kind(v) != _kind(value) or _kind(v) is None:
        return False
    if isinstance(v, str):
        return _fold(v, cs) == _fold(value, cs)
    if isinstance(v, bool):
        return v == value
    return _compare(v, value) == 0


def _compare(v: Any, value: Any) -> int | None:
    """-1/0/1 for comparable kinds (numbers; strings as ISO-8601 times or code points)."""
    if _kind(v) == _kind(value) == "number":
        # an integer and a float compare as doubles (docs/contract.md F6)
        a, b = (
            (v, value)
            if isinstance(v, int) and isinstance(value, int)
            else (float(v), float(value))
        )
    elif _kind(v) == _kind(value) == "string":
        a, b = _iso(v), _iso(value)
        if a is None or b is None:
            a, b = v, value
    else:
        return None
    return (a > b) - (a < b)


def _iso(text: str) -> timedelta | None:
    """Time since the epoch of an ISO-8601 string per the contract, else None."""
    if not _ISO_SHAPE.fullmatch(text):
        return None
    try:  # rejects impossible dates and times, and offsets of 24 hours or more
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # naive arithmetic, so year 1 with a positive offset does not overflow
    return moment.replace(tzinfo=None) - _EPOCH - (moment.utcoffset() or timedelta())


def _fold(text: str, cs: bool) -> str:
    return text if cs else text.lower()


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())

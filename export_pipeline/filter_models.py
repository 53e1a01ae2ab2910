"""Filter models (F1-F7): conditions, logical groups and their limits, validated before
any data is read; `filters` compiles them to SQL."""

from __future__ import annotations

import functools
import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from export_pipeline.paths import FieldPath, validate_path

_ABSENT: Any = object()  # a FilterCondition whose "value" key was not given
MAX_DEPTH = 16  # F4
MAX_CONDITIONS = 1_000  # F4
MAX_IN_VALUES = 10_000
# Every document is compared with every in/nin value (a hash per document would cost more),
# so the values of a whole filter are bounded too: 100,000 cost about as much as 300
# conditions and keep a filter's parameters near 1 MiB.
MAX_FILTER_IN_VALUES = 100_000
INT64 = (-(2**63), 2**63 - 1)


class FilterOperator(StrEnum):
    """The operators of a FilterCondition (docs/contract.md, the operator table)."""

    eq = "eq"
    ne = "ne"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    in_ = "in"
    nin = "nin"
    contains = "contains"
    starts_with = "starts_with"
    ends_with = "ends_with"
    regex = "regex"
    exists = "exists"
    is_null = "is_null"
    text = "text"


ORDERING = {FilterOperator.gt, FilterOperator.gte, FilterOperator.lt, FilterOperator.lte}
STRING_ONLY = {FilterOperator.starts_with, FilterOperator.ends_with, FilterOperator.regex}
BOOL_VALUED = {FilterOperator.exists, FilterOperator.is_null}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool) or _is_number(value)


def _check_number(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise ValueError("integers must fit in 64 bits")


@functools.lru_cache(maxsize=4096)
def re2_problem(pattern: str) -> str | None:
    """Why DuckDB's RE2, which evaluates the regex operator, rejects `pattern`, or None.

    DuckDB is imported here, not with the models: only a request with a regex needs it.
    """
    from export_pipeline.duck import regex_problem

    return regex_problem(pattern)


class FilterCondition(BaseModel):
    """One condition: `{"field": path, "operator": op, "value": any}`."""

    model_config = ConfigDict(extra="forbid")

    field: FieldPath = Field(description="Dot-notation path of the document field to test.")
    operator: FilterOperator = Field(
        FilterOperator.eq, description="Comparison operator (default eq)."
    )
    value: Any = Field(
        _ABSENT,
        validate_default=True,
        description="Value to compare against; its kind depends on the operator.",
    )

    @field_validator("value", mode="after")
    @classmethod
    def _value_fits_operator(cls, value: Any, info: ValidationInfo) -> Any:
        """F4: a value of the wrong kind for its operator is a validation error."""
        op = info.data.get("operator")
        if op is None:  # the operator itself was invalid and is reported on its own
            return value
        if op in BOOL_VALUED:
            if value is _ABSENT:
                return True
            if not isinstance(value, bool):
                raise ValueError(f"operator {op.value} takes true or false")
            return value
        if value is _ABSENT:
            raise ValueError(f"operator {op.value} needs a value")
        if op in (FilterOperator.in_, FilterOperator.nin):
            _check_list(value)
        elif op in (FilterOperator.eq, FilterOperator.ne):
            _check_scalar(value, allow_null=True)
        elif op in ORDERING:
            if not (isinstance(value, str) or _is_number(value)):
                raise ValueError(f"operator {op.value} takes a number or a string")
            _check_number(value)
        elif op is FilterOperator.contains:
            _check_scalar(value, allow_null=False)
        else:
            _check_string(op, value)
        return value


def _check_scalar(value: Any, *, allow_null: bool) -> None:
    if not _is_scalar(value) or (value is None and not allow_null):
        kinds = "a string, number, boolean" + (" or null" if allow_null else "")
        raise ValueError(f"value must be {kinds}, not {type(value).__name__}")
    _check_number(value)


def _check_list(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError("operators in and nin take a non-empty list of scalars")
    if len(value) > MAX_IN_VALUES:
        raise ValueError(f"operators in and nin take at most {MAX_IN_VALUES} values")
    for item in value:
        _check_scalar(item, allow_null=True)


def _check_string(op: FilterOperator, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"operator {op.value} takes a string")
    if op is FilterOperator.regex and (problem := re2_problem(value)) is not None:
        raise ValueError(f"invalid regular expression: {problem}")
    if op is FilterOperator.text and not any(ch.isalnum() for ch in value):
        raise ValueError("operator text takes a string with at least one word")


def _item_kind(value: Any) -> str:
    if isinstance(value, FilterCondition) or (isinstance(value, dict) and "field" in value):
        return "condition"
    return "group"


FilterItem = Annotated[
    Annotated[FilterCondition, Tag("condition")] | Annotated["LogicalOperator", Tag("group")],
    Discriminator(_item_kind),
]


class LogicalOperator(BaseModel):
    """AND / OR / NOT groups of conditions (F1-F4); other keys are `eq` shorthand (F2)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Any] = Field(init=False)

    AND: list[FilterItem] | None = Field(None, description="Every item must match.")
    OR: list[FilterItem] | None = Field(None, description="At least one item must match.")
    NOT: list[FilterItem] | None = Field(
        None, description="No item may match; a single item is accepted too."
    )
    case_sensitive: StrictBool | None = Field(
        None,
        description="String matching is case-insensitive unless true; nested groups inherit.",
    )

    @field_validator("NOT", mode="before")
    @classmethod
    def _single_not(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict | BaseModel) else value

    @model_validator(mode="after")
    def _shorthand_paths(self) -> LogicalOperator:
        for key, value in (self.__pydantic_extra__ or {}).items():
            try:
                validate_path(key)
            except ValueError as exc:
                raise ValueError(f"unknown filter key {key!r}: {exc}") from None
            try:
                _check_scalar(value, allow_null=True)
            except ValueError as exc:
                raise ValueError(f"shorthand condition {key!r}: {exc}") from None
        return self

    @property
    def shorthand(self) -> list[FilterCondition]:
        """F2: the `{"path": value}` keys as eq conditions."""
        return [
            FilterCondition(field=key, operator=FilterOperator.eq, value=value)
            for key, value in (self.__pydantic_extra__ or {}).items()
        ]


def check_filter_size(raw: Any) -> None:
    """F4 limits on the raw JSON, before deep nesting can strain the model validator."""
    stack, conditions, in_values = [(raw, 1)], 0, 0
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if "field" in node:
            conditions += 1
            if node.get("operator") in ("in", "nin") and isinstance(node.get("value"), list):
                in_values += len(node["value"])
                if in_values > MAX_FILTER_IN_VALUES:
                    raise ValueError(
                        f"filters hold more than {MAX_FILTER_IN_VALUES} in/nin values in all"
                    )
        elif depth > MAX_DEPTH:
            raise ValueError(f"filters nest deeper than {MAX_DEPTH} levels")
        else:
            for key, value in node.items():
                if key in ("AND", "OR", "NOT"):
                    items = value if isinstance(value, list) else [value]
                    stack.extend((item, depth + 1) for item in items)
                elif key != "case_sensitive":
                    conditions += 1
        if conditions > MAX_CONDITIONS:
            raise ValueError(f"filters hold more than {MAX_CONDITIONS} conditions")


LogicalOperator.model_rebuild()

"""Compile a LogicalOperator (docs/contract.md F1-F7) into one boolean DuckDB SQL expression.

The expression reads a column holding each document as JSON text. Filter values only
ever travel as bound `?` parameters; the SQL text is built from fixed snippets, the
P1-validated field paths (via `paths.json_path`) and the quoted column name.

Cost is linear in conditions x documents, in memory that does not grow with them:
- A condition never parses the document. One that did kept DuckDB's JSON buffers for every
  condition, about 1 KB per document and condition: 300 conditions ran out of 512 MB on
  1,000 documents.
- Instead each feature the filter needs (`filter_macros`: a field's strings, its integers,
  its largest number, ...) is built once per document, for all the fields that need it, by
  one multi-path `json_extract` (or `json_type`); the conditions (`filter_conditions`) are
  plain tests of the features. `list_transform([features], lambda _r: conditions)[1]`
  evaluates the features once per row and keeps the filter one expression. The conditions
  sit one lambda deep: DuckDB's planning time multiplies with every lambda around them.
- eq/in conditions on one field in an OR (ne/nin in an AND) are one `in` (`nin`) condition.

The general features hold for any document: a field may be missing, null, a scalar of any
kind, an array of anything. Where the snapshot's structures prove more (`kinds`: a field
only ever holds scalars of the listed JSON types, or is missing), its conditions test its
value directly (`filter_macros.SCALARS`): `metadata.rating lt 0.75` on a field that is only
ever a number is `coalesce(TRY_CAST(json_extract_string(doc, '$."metadata"."rating"') AS
DOUBLE) < ?, false)`, exactly what the general form computes for such documents, at about
the cost of a hand-written comparison. A field read this way is read once per document, by
itself when it is the only one the filter reads, else with the others in one
`json_extract_string` (or with the general features' `json_extract`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from export_pipeline.filter_conditions import CompiledFilter, condition, join, sql
from export_pipeline.filter_macros import (
    ISO_PATTERN,
    SCALAR_TYPES,
    SCALARS,
    fold_values,
    install_macros,
    iso_micros,
    uses_macros,
)
from export_pipeline.filter_models import (
    FilterCondition,
    FilterOperator,
    LogicalOperator,
    check_filter_size,
)
from export_pipeline.paths import json_path

__all__ = [
    "ISO_PATTERN",
    "SCALAR_TYPES",
    "CompiledFilter",
    "compile_filter",
    "filter_fields",
    "install_macros",
    "iso_micros",
    "uses_macros",
]

Op = FilterOperator
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_TRUE = CompiledFilter("TRUE", [])
# A filter reading one scalar field reads it in place up to this many times (DuckDB reads
# the same expression once per row); more, and it is read once into a list.
_INLINE_READS = 4


def compile_filter(
    filters: LogicalOperator | Mapping[str, Any] | None,
    column: str = "doc",
    kinds: Mapping[str, frozenset[str]] | None = None,
) -> CompiledFilter:
    """SQL that is TRUE exactly for documents in `column` matching `filters` (never NULL).

    A plain mapping is validated as a LogicalOperator first; None and `{}` give TRUE. The
    SQL is one expression (any relation with `column` can evaluate it, in SELECT or WHERE)
    calling the macros of `install_macros`.

    `kinds` maps a field path to the JSON types (`SCALAR_TYPES`, as `json_structure` names
    them) it holds in every document the SQL will see, where it never holds an array or
    object: such a field is missing, null or a scalar of those types. It is the caller's
    promise (the snapshot's structures); its conditions are then compiled for scalars only.
    """
    if not _COLUMN.fullmatch(column):
        raise ValueError(f"invalid column name {column!r}")
    if isinstance(filters, Mapping):
        check_filter_size(filters)
        filters = LogicalOperator.model_validate(filters)
    if filters is None:
        return _TRUE
    document = _Document(".".join(f'"{part}"' for part in column.split(".")), kinds or {})
    body = _group(filters, False, document)
    return document.bind(body)


def filter_fields(filters: LogicalOperator | None) -> list[str]:
    """The distinct field paths a filter's conditions name, in order of appearance."""
    return list(dict.fromkeys(condition.field for condition in _conditions(filters)))


def _conditions(group: LogicalOperator | None) -> Iterator[FilterCondition]:
    if group is None:
        return
    for item in [*group.shorthand, *(group.AND or []), *(group.OR or []), *(group.NOT or [])]:
        if isinstance(item, LogicalOperator):
            yield from _conditions(item)
        else:
            yield item


@dataclass(frozen=True)
class _Folded:
    """A parameter standing for `_Document.folds[kind][index]` until DuckDB folds it."""

    kind: str
    index: int


class _Document:
    """The fields and features one filter reads per document, and the values it folds.

    Positions are handed out as conditions ask for them and never change, so a condition's
    SQL is final when it is built.
    """

    def __init__(self, column: str, kinds: Mapping[str, frozenset[str]]) -> None:
        self.column = column
        self.kinds = kinds  # field -> its JSON types, where it only ever holds scalars
        self.paths: list[str] = []  # distinct fields, in the order json_extract reads them
        self.features: dict[str, list[str]] = {}  # feature -> the fields it is built for
        self.texts: list[str] = []  # the scalar fields whose text conditions test
        self.folds: dict[str, list[Any]] = {}  # kind -> the values to fold

    def feature(self, name: str, path: str) -> str:
        _position(self.paths, path)
        return f"_r.{name}[{_position(self.features.setdefault(name, []), path)}]"

    def scalar(self, name: str, path: str) -> str | Literal[False] | None:
        """Feature `name` of a field known to hold scalars only, as one value (NULL where
        the document's value is of another kind): False when no document holds a value of
        that kind, None when not known (the field, or this kind, needs the general feature).
        """
        types = self.kinds.get(path)
        if types is None or not types <= SCALAR_TYPES:
            return None
        kept, value = SCALARS[name]
        held = types - {"NULL"}
        if not held & kept:
            return False
        if not held <= kept:  # only the value's own JSON type would tell
            return None
        return "(" + value.format(t=self._text(path)) + ")"

    def missing(self, path: str) -> str | None:
        """Missing or null, for a field known to hold scalars only."""
        types = self.kinds.get(path)
        if types is None or not types <= SCALAR_TYPES:
            return None
        return f"({self._text(path)} IS NULL)"

    def present(self, path: str) -> str | None:
        """The path is there, for a field known to hold scalars, never null."""
        types = self.kinds.get(path)
        if types is None or not types <= SCALAR_TYPES - {"NULL"}:
            return None
        return f"({self._text(path)} IS NOT NULL)"

    def _text(self, path: str) -> str:
        # a mark, replaced once every field is known (`bind` decides how texts are read)
        return f"\0{_position(self.texts, path)}\0"

    def fold(self, kind: str, value: Any) -> _Folded:
        inputs = self.folds.setdefault(kind, [])
        inputs.append(value)
        return _Folded(kind, len(inputs) - 1)

    def bind(self, body: CompiledFilter) -> CompiledFilter:
        """`body` with `_r` bound to the features, and the folded values filled in."""
        folded = fold_values(self.folds)

        def fill(value: Any) -> Any:
            if isinstance(value, _Folded):
                return folded[value.kind][value.index]
            return [fill(item) for item in value] if isinstance(value, list) else value

        params = [fill(value) for value in body.params]
        text = self._read_texts(body.sql)
        if not self.paths:
            return CompiledFilter(text, params)
        head, tail = self._features().split("\0")
        return CompiledFilter(head + text + tail, params)

    def _read_texts(self, sql: str) -> str:
        """`sql` with each scalar field's mark replaced by how its text is read: by itself
        (one field, a few tests), from one list of every such field's text, or beside the
        general features."""
        if not self.texts:
            return sql
        marks = sql.count("\0") // 2
        if not self.paths and len(self.texts) == 1 and marks <= _INLINE_READS:
            path = json_path(self.texts[0])
            reads = [f"json_extract_string({self.column}, '{path}')"]
        elif not self.paths:
            texts = f"json_extract_string({self.column}, {_listed(self.texts)})"
            head, tail = _let("_t", texts, "\0").split("\0")
            sql = head + sql + tail
            reads = [f"_t[{number}]" for number in range(1, len(self.texts) + 1)]
        else:
            reads = [self.feature("t", path) for path in self.texts]
        return re.sub("\0([0-9]+)\0", lambda mark: reads[int(mark[1]) - 1], sql)

    def _features(self) -> str:
        """`_r` bound to the features around a NUL mark where the conditions go."""
        values = f"json_extract({self.column}, {_listed(self.paths)})"
        # One json_extract for all features: the same call twice in a projection sets off
        # DuckDB's common-subexpression pass, which took seconds on a large filter.
        source = "_j" if len(self.features) > 1 else values
        features = []
        for name, paths in self.features.items():
            chosen = _select(source, self.paths, paths)
            features.append(f"'{name}': list_transform({chosen}, lambda _v: xf_{name}(_v))")
        built = "{" + ", ".join(features) + "}"
        if source == "_j":
            built = _let("_j", values, built)
        # the conditions sit one lambda deep: DuckDB's planning time multiplies with every
        # lambda around them
        return _let("_r", built, "\0")


class _FieldOf:
    """One field of a `_Document`, as `filter_conditions.Field`."""

    def __init__(self, document: _Document, path: str) -> None:
        self.document = document
        self.path = path

    def feature(self, name: str) -> str:
        return self.document.feature(name, self.path)

    def fold(self, kind: str, value: Any) -> Any:
        return self.document.fold(kind, value)

    def scalar(self, name: str) -> str | Literal[False] | None:
        return self.document.scalar(name, self.path)

    def missing(self) -> str | None:
        return self.document.missing(self.path)

    def present(self) -> str | None:
        return self.document.present(self.path)


def _position(items: list[str], item: str) -> int:
    """1-based position of `item`, appended when new."""
    if item not in items:
        items.append(item)
    return items.index(item) + 1


def _listed(paths: list[str]) -> str:
    """A SQL list of the JSON paths of P1-valid field paths (no quote can occur in them)."""
    return "[" + ", ".join(f"'{json_path(path)}'" for path in paths) + "]"


def _select(source: str, available: list[str], wanted: list[str]) -> str:
    """SQL for the items of list `source` (holding `available`) that are `wanted`, in order."""
    if wanted == available:
        return source
    positions = ", ".join(str(available.index(item) + 1) for item in wanted)
    return f"list_select({source}, [{positions}])"


def _let(name: str, value: str, body: str) -> str:
    """`body` with `name` bound to `value`, which DuckDB evaluates once per row."""
    return f"list_transform([{value}], lambda {name}: {body})[1]"


def _group(group: LogicalOperator, inherited: bool, document: _Document) -> CompiledFilter:
    """F1/F2: shorthand and AND items all hold, some OR item holds, no NOT item holds."""
    cs = inherited if group.case_sensitive is None else group.case_sensitive

    def items(entries: list[Any], any_of: bool) -> list[CompiledFilter]:
        return [_item(entry, cs, document) for entry in _merged(entries, any_of)]

    clauses = items([*group.shorthand, *(group.AND or [])], False)
    if group.OR:
        clauses.append(join(" OR ", items(group.OR, True)))
    if group.NOT:
        clauses.append(sql("(NOT {})", join(" OR ", items(group.NOT, True))))
    return join(" AND ", clauses) if clauses else _TRUE


def _merged(entries: list[Any], any_of: bool) -> list[Any]:
    """The entries with the eq/in conditions on one field (any_of) or its ne/nin conditions
    (all of) as one in/nin condition: `a eq 1 OR a in [2, 3]` is `a in [1, 2, 3]` (F5, F6)."""
    single, listed = (Op.eq, Op.in_) if any_of else (Op.ne, Op.nin)
    values: dict[str, list[Any]] = {}
    for entry in entries:
        if isinstance(entry, FilterCondition) and entry.operator in (single, listed):
            values.setdefault(entry.field, []).append(entry)
    merged: list[Any] = []
    for entry in entries:
        same = values.get(entry.field) if isinstance(entry, FilterCondition) else None
        if same is None or len(same) < 2 or not any(entry is other for other in same):
            merged.append(entry)
        elif entry is same[0]:  # the first condition on the field stands for them all
            listing = [v for c in same for v in ([c.value] if c.operator is single else c.value)]
            merged.append(
                FilterCondition.model_construct(field=entry.field, operator=listed, value=listing)
            )
    return merged


def _item(item: FilterCondition | LogicalOperator, cs: bool, document: _Document) -> CompiledFilter:
    if isinstance(item, LogicalOperator):
        return _group(item, cs, document)
    return condition(_FieldOf(document, item.field), item.operator, item.value, cs)

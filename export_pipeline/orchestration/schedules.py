"""Scheduled exports, declared in the YAML file EXPORT_PIPELINE_SCHEDULES names.

The file is a list of entries::

    - name: nightly_articles        # a Dagster name, unique in the file
      cron: "0 2 * * *"             # optional when on_change is true
      timezone: Europe/Berlin       # IANA name, default UTC
      namespace: demo
      collection: articles
      request: {format: parquet}    # the HTTP request body, checked against the contract
      on_change: false              # also export when the collection changes (sensors.py)
      incremental: false            # each run exports the changes since the entry's last
                                    # successful export (orchestration/chains.py, M7)
      default_status: stopped       # the schedule's status until someone toggles it in the UI

An entry with a cron becomes a schedule of the export job; an entry with `on_change: true`
and no cron is change-only (the `collection_change_exports` sensor launches it, no schedule);
an entry needs at least one of the two. The collection is resolved on every tick, not at load,
so a schedule of a collection created later loads fine and one whose collection is gone skips.
A malformed file fails loading with one message naming the file, the entry and the problem.
"""

# No `from __future__ import annotations`: Dagster reads the evaluation functions' annotations.
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic import ValidationError as PydanticError

from export_pipeline.engine.plan import parse_request
from export_pipeline.errors import (
    ExportPipelineError,
    InvalidInput,
    NotFoundError,
    problems,
    validation_details,
)
from export_pipeline.jsontext import MAX_REQUEST_DEPTH, too_deep
from export_pipeline.orchestration.chains import entry_run_request
from export_pipeline.orchestration.dagster_internals import is_valid_cron_string, is_valid_name
from export_pipeline.orchestration.job import export_collection
from export_pipeline.settings import Settings
from export_pipeline.store import Store

# The sensors' names: Dagster refuses a schedule and a sensor sharing a name.
RESERVED_NAMES = frozenset({"export_request_drop", "collection_change_exports"})


class ScheduleEntry(BaseModel):
    """One scheduled (and/or on-change) export of a collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cron: str | None = None
    timezone: str = "UTC"
    namespace: str
    collection: str
    request: dict[str, Any] = {}
    on_change: bool = False
    incremental: bool = False
    default_status: Literal["running", "stopped"] = "stopped"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError(f"{value!r} is not a valid Dagster name ([A-Za-z0-9_]+)")
        if value in RESERVED_NAMES:
            raise ValueError(f"{value!r} is taken by a sensor of export_pipeline")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_cron_string(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @model_validator(mode="after")
    def _request_valid(self) -> Self:
        try:
            parse_request(self.request)  # the contract's own problems, as the CLI and API say
        except ExportPipelineError as exc:
            # Located inside the entry (request.filters.AND.0.operator), as every other key.
            located = [
                {**d, "loc": f"request.{d['loc']}" if d["loc"] else "request"}
                for d in exc.details or []
            ]
            raise ValueError(problems(located) if located else exc.message) from None
        return self

    @model_validator(mode="after")
    def _chained(self) -> Self:
        if self.incremental and "changed_since" in self.request:
            raise ValueError("an incremental entry chains from its own exports: no changed_since")
        return self

    @model_validator(mode="after")
    def _triggered(self) -> Self:
        if self.cron is None and not self.on_change:
            raise ValueError("an entry needs a cron, on_change: true, or both")
        if self.cron is None and "default_status" in self.model_fields_set:
            raise ValueError("default_status applies to the cron schedule; this entry has none")
        return self

    @property
    def format(self) -> str:
        """The export's file format."""
        return parse_request(self.request).format


def load_schedules(path: Path) -> list[ScheduleEntry]:
    """The file's entries; a InvalidInput naming file, entry and problem otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the schedules file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None
    try:
        problem = _nesting_problem(text, MAX_REQUEST_DEPTH)
        if problem is not None:
            raise InvalidInput(f"{path}: {problem}")
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if raw is None:  # an empty file declares no schedules
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"{path}: the top level must be a list of entries, got {_kind(raw)}")
    entries: list[ScheduleEntry] = []
    first_seen: dict[str, int] = {}
    for number, item in enumerate(raw, start=1):
        where = f"{path}: {_entry_label(item, number)}"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: an entry must be a mapping, got {_kind(item)}")
        try:
            entry = ScheduleEntry.model_validate(item)
        except PydanticError as exc:
            # A problem of the whole entry (no cron nor on_change) says so in its own words.
            summary = problems(validation_details(exc), whole="")
            raise InvalidInput(f"{where}: {summary}") from None
        if entry.name in first_seen:
            raise InvalidInput(
                f"{where}: name {entry.name!r} is already used by entry #{first_seen[entry.name]}"
            )
        first_seen[entry.name] = number
        entries.append(entry)
    return entries


def _nesting_problem(text: str, limit: int) -> str | None:
    """Where the YAML nests deeper than `limit` (as jsontext says it of JSON), or None.

    PyYAML builds nodes and objects recursively, so a deep file ends in RecursionError; its
    parser is a state machine, so the events can be counted first at any depth."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limit:
                mark = event.start_mark  # the parser marks every event it makes
                line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
                return too_deep(limit, line, column)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _entry_label(item: object, number: int) -> str:
    # Entries are counted from 1, as a reader counts the items of a YAML list.
    name = item.get("name") if isinstance(item, dict) else None
    return f"entry {name!r} (#{number})" if isinstance(name, str) else f"entry #{number}"


_KINDS: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc)


def build_schedule(entry: ScheduleEntry, settings: Settings) -> dg.ScheduleDefinition:
    """The entry's schedule: each tick resolves the collection and requests one export run."""
    assert entry.cron is not None

    def evaluate(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        try:
            return entry_run_request(Store(settings), context, entry, "schedule")
        except NotFoundError as exc:
            # The collection may come back; a failed tick would only add noise until then.
            return dg.SkipReason(f"{entry.name}: {exc.message}")

    status = (
        dg.DefaultScheduleStatus.RUNNING
        if entry.default_status == "running"
        else dg.DefaultScheduleStatus.STOPPED
    )
    return dg.ScheduleDefinition(
        name=entry.name,
        cron_schedule=entry.cron,
        execution_timezone=entry.timezone,
        job=export_collection,
        execution_fn=evaluate,
        default_status=status,
        description=(
            f"Export {entry.namespace}/{entry.collection} as {entry.format}"
            f" on {entry.cron!r} ({entry.timezone})."
        ),
    )


def build_schedules(
    entries: list[ScheduleEntry], settings: Settings
) -> list[dg.ScheduleDefinition]:
    """One schedule per entry with a cron (change-only entries have none)."""
    return [build_schedule(entry, settings) for entry in entries if entry.cron is not None]

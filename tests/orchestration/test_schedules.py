"""Scheduled exports (README: Schedules and sensors): the schedules file, its error messages, ticks,
and a real run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import pytest
from helpers import make_collection

from export_pipeline.definitions import build_definitions
from export_pipeline.errors import InvalidInput
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.resources import resources_from
from export_pipeline.orchestration.schedules import (
    ScheduleEntry,
    build_schedule,
    build_schedules,
    load_schedules,
)
from export_pipeline.settings import Settings
from export_pipeline.store import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "schedules.yaml"
DOCS = [
    {"document_id": f"d{i}", "metadata": {"n": i, "kind": "odd" if i % 2 else "even"}}
    for i in range(10)
]
ODD = {"AND": [{"field": "metadata.kind", "operator": "eq", "value": "odd"}]}
GOOD = """\
- name: first
  cron: "0 2 * * *"
  namespace: test-ns
  collection: things
  request: {format: csv}
"""


def write_file(folder: Path, text: str, name: str = "schedules.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def entry(**fields: object) -> ScheduleEntry:
    base = {"name": "nightly", "cron": "0 2 * * *", "namespace": "test-ns", "collection": "things"}
    return ScheduleEntry.model_validate({**base, **fields})


def tick(schedule: dg.ScheduleDefinition) -> dg.ScheduleExecutionData:
    with dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral()) as context:
        return schedule.evaluate_tick(context)


# --- The file ---------------------------------------------------------------------------


def test_example_file_loads_and_references_the_demo_collection() -> None:
    entries = load_schedules(EXAMPLE)
    assert [e.name for e in entries] == [
        "nightly_articles",
        "weekly_science_sample",
        "travel_on_change",
        "hourly_articles_changes",
    ]
    assert {(e.namespace, e.collection) for e in entries} == {("demo", "articles")}
    assert [e.cron is not None for e in entries] == [True, True, False, True]
    assert [e.on_change for e in entries] == [False, True, True, False]
    assert [e.incremental for e in entries] == [False, False, False, True]


def test_entry_defaults_utc_stopped_not_on_change_empty_request(tmp_path: Path) -> None:
    (only,) = load_schedules(write_file(tmp_path, GOOD.replace("  request: {format: csv}\n", "")))
    assert (only.timezone, only.default_status, only.on_change, only.request) == (
        "UTC",
        "stopped",
        False,
        {},
    )


def test_an_empty_file_declares_no_schedules(tmp_path: Path) -> None:
    assert load_schedules(write_file(tmp_path, "# nothing yet\n")) == []


BAD_FILES = {
    "invalid YAML": ("- name: [unclosed\n", ["not valid YAML", "line 2"]),
    "top level not a list": ("name: x\ncron: '@daily'\n", ["top level must be a list", "mapping"]),
    "entry not a mapping": (GOOD + "- just a string\n", ["entry #2: an entry must be a mapping"]),
    "bad cron": (
        GOOD + "- {name: nightly, cron: bad cron, namespace: n, collection: c}\n",
        ["entry 'nightly' (#2): cron: 'bad cron' is not a valid cron expression"],
    ),
    "seconds cron": (
        "- {name: fast, cron: '* * * * * *', namespace: n, collection: c}\n",
        ["entry 'fast' (#1): cron: '* * * * * *' is not a valid cron expression"],
    ),
    "bad timezone": (
        "- {name: a, cron: '@daily', timezone: Mars/Olympus, namespace: n, collection: c}\n",
        ["entry 'a' (#1): timezone: 'Mars/Olympus' is not an IANA time zone"],
    ),
    "invalid Dagster name": (
        "- {name: my export, cron: '@daily', namespace: n, collection: c}\n",
        ["entry 'my export' (#1): name: 'my export' is not a valid Dagster name"],
    ),
    "name of a sensor": (
        "- {name: export_request_drop, cron: '@daily', namespace: n, collection: c}\n",
        ["name: 'export_request_drop' is taken by a sensor"],
    ),
    "duplicate names": (
        GOOD + GOOD.replace("0 2", "0 3"),
        ["entry 'first' (#2): name 'first' is already used by entry #1"],
    ),
    "missing keys": (
        "- {name: a, cron: '@daily'}\n",
        ["entry 'a' (#1)", "namespace: Field required", "collection: Field required"],
    ),
    "unknown key": (
        "- {name: a, crn: '@daily', on_change: true, namespace: n, collection: c}\n",
        ["entry 'a' (#1): crn: Extra inputs are not permitted"],
    ),
    "no name": ("- {cron: '@daily', namespace: n, collection: c}\n", ["entry #1: name: Field"]),
    "bad filter operator": (
        GOOD.replace(
            "{format: csv}", "{filters: {AND: [{field: metadata.n, operator: like, value: 1}]}}"
        ),
        ["entry 'first' (#1): request.filters.AND.0.operator:"],
    ),
    "bad format": (
        GOOD.replace("format: csv", "format: xlsx"),
        ["entry 'first' (#1): request.format:"],
    ),
    "request not a mapping": (
        GOOD.replace("request: {format: csv}", "request: csv"),
        ["entry 'first' (#1): request: Input should be a valid dictionary"],
    ),
    "neither cron nor on_change": (
        "- {name: a, namespace: n, collection: c}\n",
        ["entry 'a' (#1): an entry needs a cron, on_change: true, or both"],
    ),
    "default_status without cron": (
        "- {name: a, on_change: true, default_status: running, namespace: n, collection: c}\n",
        ["default_status applies to the cron schedule"],
    ),
    # PyYAML builds nested nodes recursively: these ended in RecursionError, a traceback.
    "nested 10,000 levels, flow style": (
        GOOD.replace("{format: csv}", "[" * 10_000 + "]" * 10_000),
        ["schedules.yaml: nested deeper than 64 levels (at line 5, column 74)"],
    ),
    "nested 10,000 levels, block style": (
        GOOD.replace("{format: csv}", "")
        + "".join(f"{'  ' * depth}a:\n" for depth in range(2, 10_002)),
        ["schedules.yaml: nested deeper than 64 levels (at line 68, column 129)"],
    ),
    "unknown default_status": (
        GOOD + "  default_status: paused\n",
        ["entry 'first' (#1): default_status: Input should be 'running' or 'stopped'"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("text, fragments", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_malformed_file_fails_with_one_message_naming_file_entry_and_problem(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write_file(tmp_path, text)
    with pytest.raises(InvalidInput) as caught:
        load_schedules(path)
    message = caught.value.message
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_file_that_is_not_utf8_is_named_with_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_bytes(GOOD.replace("first", "caf\xe9").encode("latin-1"))
    with pytest.raises(InvalidInput) as caught:
        load_schedules(path)
    assert caught.value.message == (f"{path}: not UTF-8 text (byte 11): invalid continuation byte")


def test_a_missing_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read the schedules file"):
        load_schedules(tmp_path / "nope.yaml")


# --- Schedule definitions and ticks ----------------------------------------------------


def test_entry_becomes_a_schedule_of_the_export_job_with_its_cron_timezone_and_status(
    settings: Settings,
) -> None:
    schedule = build_schedule(entry(timezone="Europe/Berlin", default_status="running"), settings)
    assert schedule.name == "nightly"
    assert schedule.job_name == export_collection.name
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert build_schedule(entry(), settings).default_status == dg.DefaultScheduleStatus.STOPPED


def test_change_only_entries_make_no_schedule(settings: Settings) -> None:
    entries = [entry(), entry(name="changes", cron=None, on_change=True)]
    assert [s.name for s in build_schedules(entries, settings)] == ["nightly"]


def test_tick_resolves_the_collection_and_requests_a_tagged_run(store: Store) -> None:
    _, col = make_collection(store, DOCS)
    body = {"format": "csv", "filters": ODD}
    data = tick(build_schedule(entry(request=body), store.settings))
    (request,) = data.run_requests
    assert request.run_config == {
        "namespace": "test-ns",
        "collection": "things",
        "include_vectors": False,
        **body,
        "shards": 1,
        "executor": "local",
        "celery_broker": None,
    }
    assert request.tags[tags.TRIGGER] == "schedule"
    assert request.tags[tags.COLLECTION_ID] == col.id
    assert request.tags[tags.FORMAT] == "csv"


def test_tick_of_a_collection_created_after_loading_finds_it(settings: Settings) -> None:
    schedule = build_schedule(entry(), settings)  # resolved per tick, not at load
    assert tick(schedule).skip_message
    make_collection(Store(settings), DOCS)
    assert len(tick(schedule).run_requests) == 1


def test_tick_of_a_missing_collection_skips_naming_it(store: Store) -> None:
    make_collection(store, DOCS)
    data = tick(build_schedule(entry(collection="gone"), store.settings))
    assert data.run_requests == []
    assert data.skip_message == "nightly: collection 'gone' not found in namespace 'test-ns'"
    data = tick(build_schedule(entry(namespace="nowhere"), store.settings))
    assert data.skip_message == "nightly: namespace 'nowhere' not found"


def test_a_scheduled_run_request_executes_the_export(store: Store) -> None:
    make_collection(store, DOCS)
    body = {"format": "json", "filters": ODD}
    (request,) = tick(build_schedule(entry(request=body), store.settings)).run_requests
    result = export_collection.execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        instance=dg.DagsterInstance.ephemeral(),
        resources=resources_from(store.settings),
    )
    assert result.success
    assert result.output_for_node("report_export")["document_count"] == 5
    assert result.dagster_run.tags[tags.TRIGGER] == "schedule"


# --- Definitions ------------------------------------------------------------------------


def test_definitions_load_with_the_example_schedules_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EXPORT_PIPELINE_SCHEDULES", str(EXAMPLE))
    defs = build_definitions(Settings())
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {s.name for s in repository.schedule_defs} == {
        "nightly_articles",
        "weekly_science_sample",
        "hourly_articles_changes",
    }
    assert {s.name for s in repository.sensor_defs} == {
        "export_request_drop",
        "collection_change_exports",
    }


def test_definitions_without_a_schedules_file_have_only_the_drop_sensor(
    settings: Settings,
) -> None:
    repository = build_definitions(settings.model_copy(update={"schedules": None}))
    assert repository.get_repository_def().schedule_defs == []
    assert [s.name for s in repository.get_repository_def().sensor_defs] == ["export_request_drop"]


def test_definitions_fail_to_load_with_a_malformed_schedules_file(
    settings: Settings, tmp_path: Path
) -> None:
    path = write_file(tmp_path, GOOD.replace("0 2 * * *", "bad cron"))
    with pytest.raises(InvalidInput, match=r"entry 'first' \(#1\): cron: 'bad cron'"):
        build_definitions(settings.model_copy(update={"schedules": path}))

"""Incremental chains (docs/contract.md M7): schedule entries and the change sensor with
`incremental: true` export what changed since the entry's last successful export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from helpers import make_collection, read_json_lines, write_jsonl

from export_pipeline.orchestration import tags
from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.resources import resources_from
from export_pipeline.orchestration.schedules import ScheduleEntry, build_schedule
from export_pipeline.orchestration.sensors import build_change_sensor
from export_pipeline.settings import Settings
from export_pipeline.store import Store

DOCS = [{"document_id": f"d{i}", "metadata": {"n": i}} for i in range(6)]


def entry(**fields: Any) -> ScheduleEntry:
    base = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "namespace": "test-ns",
        "collection": "things",
        "request": {"format": "json"},
        "incremental": True,
    }
    return ScheduleEntry.model_validate({**base, **fields})


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An instance with a reference, as the daemon's: a tick reads the chain's runs in it."""
    with dg.instance_for_test() as found:
        yield found


def tick(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance) -> dg.RunRequest:
    with dg.build_schedule_context(instance=instance) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    return request


def execute(
    request: dg.RunRequest, instance: dg.DagsterInstance, settings: Settings
) -> dg.ExecuteInProcessResult:
    """What the daemon does with a run request: a run of the job in the instance."""
    return export_collection.execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        instance=instance,
        resources=resources_from(settings),
        raise_on_error=False,
    )


def change(store: Store, upserts: list[dict[str, Any]], deletes: list[str]) -> None:
    folder = store.settings.home_dir.parent / "changes"
    if upserts:
        store.ingest("test-ns", "things", write_jsonl(folder, upserts), upsert=True)
    if deletes:
        store.delete("test-ns", "things", ids=deletes)


def ids_in(response: dict[str, Any], key: str) -> list[str]:
    return [row["document_id"] for row in read_json_lines(response[key])]


def test_M7_a_schedules_runs_chain_and_a_failed_run_does_not_advance_it(
    store: Store, instance: dg.DagsterInstance
) -> None:
    make_collection(store, DOCS)
    schedule = build_schedule(entry(), store.settings)

    first = tick(schedule, instance)
    assert "changed_since" not in first.run_config  # the first run of a chain is full
    assert first.tags[tags.CHAIN] == "nightly"
    full = execute(first, instance, store.settings)
    assert full.success
    full_id = full.dagster_run.tags[tags.EXPORT_ID]
    assert full.output_for_node("report_export")["document_count"] == len(DOCS)

    change(store, [{"document_id": "d1", "metadata": {"n": 100}}, {"document_id": "d9"}], ["d2"])
    second = tick(schedule, instance)
    assert second.run_config["changed_since"] == full_id
    delta = execute(second, instance, store.settings)
    assert delta.success
    response = delta.output_for_node("report_export")
    assert ids_in(response, "s3_path") == ["d1", "d9"]
    assert ids_in(response, "deletes_s3_path") == ["d2"]
    delta_id = delta.dagster_run.tags[tags.EXPORT_ID]

    # A run that fails (its storage refused) is not a link of the chain.
    change(store, [{"document_id": "d3", "metadata": {"n": 300}}], [])
    third = tick(schedule, instance)
    assert third.run_config["changed_since"] == delta_id
    broken = store.settings.model_copy(update={"storage": "ftp://nowhere/exports"})
    assert not execute(third, instance, broken).success
    retried = tick(schedule, instance)
    assert retried.run_config["changed_since"] == delta_id
    response = execute(retried, instance, store.settings).output_for_node("report_export")
    assert ids_in(response, "s3_path") == ["d3"]


def test_M7_a_chain_past_the_retained_history_starts_again_with_a_full_export(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    store = Store(settings.model_copy(update={"history_retention_seconds": 0}))
    make_collection(store, DOCS)
    schedule = build_schedule(entry(), store.settings)
    assert execute(tick(schedule, instance), instance, store.settings).success
    change(store, [{"document_id": "d9"}], [])
    change(store, [{"document_id": "d10"}], [])  # the history of the export's version is gone
    request = tick(schedule, instance)
    assert "changed_since" not in request.run_config
    response = execute(request, instance, store.settings).output_for_node("report_export")
    assert response["document_count"] == len(DOCS) + 2


def test_M7_the_change_sensor_chains_an_incremental_entry(
    store: Store, instance: dg.DagsterInstance
) -> None:
    make_collection(store, DOCS)
    sensor = build_change_sensor([entry(cron=None, on_change=True)], store.settings)

    def evaluate(cursor: str | None) -> dg.SensorExecutionData:
        return sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor, instance=instance))

    baseline = evaluate(None)
    change(store, [{"document_id": "d9"}], [])
    ticked = evaluate(baseline.cursor)
    (first,) = ticked.run_requests
    assert "changed_since" not in first.run_config
    full = execute(first, instance, store.settings)
    assert full.output_for_node("report_export")["document_count"] == len(DOCS) + 1

    change(store, [], ["d0"])
    (second,) = evaluate(ticked.cursor).run_requests
    assert second.run_config["changed_since"] == full.dagster_run.tags[tags.EXPORT_ID]
    response = execute(second, instance, store.settings).output_for_node("report_export")
    assert response["document_count"] == 0 and response["deleted_count"] == 1


def test_M7_an_incremental_entry_names_no_watermark_of_its_own() -> None:
    with pytest.raises(ValueError, match="chains from its own exports"):
        entry(request={"format": "json", "changed_since": 3})
    assert json.loads(entry().model_dump_json())["incremental"] is True

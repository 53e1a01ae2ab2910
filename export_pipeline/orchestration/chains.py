"""Incremental chains (docs/contract.md M7): the runs of a schedule entry with `incremental:
true` each export what changed since the entry's last successful export.

A run of an entry (from its cron schedule or the change sensor) carries the entry's name in
the CHAIN tag. The next run looks up the newest successful run with that tag for the same
collection and asks for `changed_since` its export id: a failed or cancelled run is never
found, so it does not advance the chain, and the first run (none found) is a full export. A
chain whose last export is past the retained history starts again with a full export rather
than failing on every tick.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from export_pipeline.engine.changes import resolve_since
from export_pipeline.errors import InvalidInput
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.job import JOB_NAME
from export_pipeline.orchestration.launch import prepare
from export_pipeline.store import Collection, Namespace, Store


def last_export(instance: dg.DagsterInstance, chain: str, collection: Collection) -> str | None:
    """The export id of the newest successful run of `chain` for `collection`, if any."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=JOB_NAME,
            statuses=[dg.DagsterRunStatus.SUCCESS],
            tags={tags.CHAIN: chain, tags.COLLECTION_ID: collection.id},
        ),
        limit=1,
    )
    return records[0].dagster_run.tags.get(tags.EXPORT_ID) if records else None


def chained_request(
    store: Store,
    instance: dg.DagsterInstance,
    chain: str,
    found: tuple[Namespace, Collection],
    request: dict[str, Any],
    log: Any,
) -> dict[str, Any]:
    """`request` asking for what changed since the chain's last successful export; as it is
    for the chain's first run, or where history no longer reaches back to that export."""
    namespace, collection = found
    last = last_export(instance, chain, collection)
    if last is None:
        log.info(f"{chain}: no successful export yet, a full export starts the chain")
        return request
    try:
        resolve_since(store, namespace, collection, last)
    except InvalidInput as exc:
        log.warning(f"{chain}: a full export instead of changes since {last}: {exc.message}")
        return request
    return {**request, "changed_since": last}


def entry_run_request(
    store: Store,
    context: dg.ScheduleEvaluationContext | dg.SensorEvaluationContext,
    entry: Any,
    trigger: tags.Trigger,
    run_key: str | None = None,
) -> dg.RunRequest:
    """The run of a schedule entry (`schedules.ScheduleEntry`), tagged with its chain and,
    where the entry is incremental, exporting the changes since the chain's last export."""
    request = entry.request
    if entry.incremental:  # only then is the instance read
        found = store.resolve(entry.namespace, entry.collection)
        request = chained_request(store, context.instance, entry.name, found, request, context.log)
    launch = prepare(store, entry.namespace, entry.collection, request, trigger)
    return dg.RunRequest(
        run_key=run_key, run_config=launch.run_config, tags={**launch.tags, tags.CHAIN: entry.name}
    )

"""Sensors of the export job: a drop folder of request files, and exports on collection change.

`export_request_drop` watches EXPORT_PIPELINE_DROP_DIR: a local folder (default
<home>/requests) or, given `s3://bucket/prefix`, that S3 prefix (drops.py: the same rules for
both, file for object). Each `<name>.json` holds `{"namespace", "collection", "request"}` and
becomes one run per file content (run_key = sha256 of its bytes, so identical bytes never run
twice). An accepted file leaves the folder only once its run exists (a later tick moves it into
accepted/; until then each tick requests the same run_key again, which launches nothing new),
so a daemon crash between the tick and the run's submission loses no request; on S3 the move
happens only while the object is the one read (its ETag). A rejected file moves at once into
rejected/ beside
`<name>.error.txt` saying why, so a bad file is never retried. Only names ending in `.json`
and not starting with a dot are read: writers write to a temporary name and rename, so no
half-written file is read. It is RUNNING by default: it creates a local folder when missing
and an empty folder is a skip; a folder or prefix it cannot list (unreachable endpoint,
missing bucket) is a skip saying why, and nothing is moved.

`collection_change_exports` launches the schedules file's `on_change: true` entries again when
their collection's version moves (ingest, upsert), once per version seen: run_key is
`<entry>:<collection id>:v<version>`. Its cursor maps entry -> last version seen; an entry the
cursor does not know yet records the current version as its baseline and launches nothing,
so turning the sensor on never exports every collection at once. Several changes between two
evaluations make one export, of the latest version. It is STOPPED by default: exporting
whenever data changes is an operator's decision.

`export_step_outputs_cleanup` exists with the celery executor, whose steps pass their outputs
(plans, part lists) through the export storage (`.dagster-io/storage/<run_id>/`). The
launcher removes its own runs' outputs when they end; runs the daemon launched (the
launchpad, schedules, sensors, the API's run queue) have no launcher waiting, so this sensor
removes the outputs of every export run that ended since its last evaluation.
"""

# No `from __future__ import annotations`: Dagster reads the evaluation functions' annotations.
import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from export_pipeline.errors import NotFoundError
from export_pipeline.orchestration.chains import entry_run_request
from export_pipeline.orchestration.drops import (
    MAX_FILES_PER_TICK,
    DropUnavailable,
    decide,
    drop_source,
)
from export_pipeline.orchestration.job import JOB_NAME, export_collection
from export_pipeline.orchestration.resources import step_outputs_of_run
from export_pipeline.orchestration.schedules import ScheduleEntry
from export_pipeline.settings import Settings
from export_pipeline.storage import open_storage
from export_pipeline.store import Store

__all__ = [
    "CHANGE_SENSOR",
    "DROP_SENSOR",
    "MAX_FILES_PER_TICK",
    "STEP_OUTPUTS_SENSOR",
    "build_change_sensor",
    "build_drop_sensor",
    "build_sensors",
    "build_step_outputs_sensor",
]

DROP_SENSOR = "export_request_drop"
CHANGE_SENSOR = "collection_change_exports"
STEP_OUTPUTS_SENSOR = "export_step_outputs_cleanup"
ENDED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
RUNS_PER_TICK = 100
RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster's sensor daemon puts a run's run_key in


def build_drop_sensor(settings: Settings) -> dg.SensorDefinition:
    """`export_request_drop`: one run per request file dropped into the folder or prefix."""
    where = drop_source(settings).where
    how = "" if where.startswith("s3://") else " (write to a temporary name, then rename)"

    @dg.sensor(
        name=DROP_SENSOR,
        job=export_collection,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Export requests dropped as *.json files into {where}{how}.",
    )
    def export_request_drop(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        source = drop_source(settings)
        try:
            names = source.pending()
        except DropUnavailable as exc:  # skipped, nothing moved; the next tick tries again
            return dg.SensorResult(skip_reason=f"cannot list {source.where}: {exc}")
        if not names:
            return dg.SensorResult(skip_reason=f"no request files in {source.where}")
        store = Store(settings)
        decisions = []
        for name in names:
            try:
                decisions.append(decide(store, name, source.read(name)))
            except FileNotFoundError:  # taken by someone else; the run_key covers a re-drop
                continue
            except OSError as exc:  # unreadable: left in place, and said so every tick
                context.log.warning(f"{name}: cannot read it: {exc}")
        # An accepted file stays until its run exists: the daemon submits the run after the
        # tick, and a crash in between must not lose the request. Until then every tick
        # requests it again under the same run_key, which Dagster launches once.
        launched = runs_exist(context.instance, {d.run_key for d in decisions if d.run_request})
        requests: dict[str, dg.RunRequest] = {}
        filed = rejected = 0
        for decision in decisions:
            if decision.run_request is not None and decision.run_key not in launched:
                requests.setdefault(decision.run_key, decision.run_request)
                context.log.info(f"{decision.name} accepted, run_key {decision.run_key}")
                continue
            try:  # one that cannot be moved (or changed since read) is read again next tick
                target = source.file_away(decision)
            except OSError as exc:
                context.log.warning(f"{decision.name}: could not move it: {exc}")
                target = decision.name
            if decision.run_request is None:
                rejected += 1
                context.log.warning(f"{decision.name} rejected ({target}): {decision.error}")
            else:
                filed += 1
                context.log.info(f"{decision.name} filed ({target}): its run exists")
        if not requests:
            said = [f"filed {filed} request file(s) whose run exists"] if filed else []
            said += [f"rejected {rejected} request file(s)"] if rejected else []
            return dg.SensorResult(skip_reason="; ".join(said) or "nothing read")
        return dg.SensorResult(run_requests=list(requests.values()))

    return export_request_drop


def runs_exist(instance: dg.DagsterInstance, run_keys: set[str]) -> set[str]:
    """The run keys among `run_keys` that some run of the instance has."""
    if not run_keys:
        return set()
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: sorted(run_keys)}))
    return {run.tags[RUN_KEY_TAG] for run in runs} & run_keys


def build_change_sensor(entries: list[ScheduleEntry], settings: Settings) -> dg.SensorDefinition:
    """`collection_change_exports`: the on_change entries, once per collection version."""
    watched = [entry for entry in entries if entry.on_change]

    @dg.sensor(
        name=CHANGE_SENSOR,
        job=export_collection,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Export again when a collection of an on_change schedule entry changes: "
        + (", ".join(entry.name for entry in watched) or "none"),
    )
    def collection_change_exports(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        store = Store(settings)
        cursor: dict[str, int] = {}
        requests: list[dg.RunRequest] = []
        for entry in watched:
            try:
                _, found = store.resolve(entry.namespace, entry.collection)
            except NotFoundError as exc:
                context.log.warning(f"{entry.name}: skipped, {exc.message}")
                if entry.name in seen:  # keep the baseline until the collection is back
                    cursor[entry.name] = seen[entry.name]
                continue
            cursor[entry.name] = found.version
            if entry.name not in seen:
                context.log.info(f"{entry.name}: baseline version {found.version}")
            elif seen[entry.name] != found.version:
                run_key = f"{entry.name}:{found.id}:v{found.version}"
                try:
                    requests.append(entry_run_request(store, context, entry, "sensor", run_key))
                except NotFoundError as exc:  # gone since it was resolved: next tick
                    context.log.warning(f"{entry.name}: skipped, {exc.message}")
                    cursor[entry.name] = seen[entry.name]
        # Entries no longer in the file drop out of the cursor.
        new_cursor = json.dumps(cursor, sort_keys=True)
        if not requests:
            return dg.SensorResult(cursor=new_cursor, skip_reason="no collection changed")
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return collection_change_exports


def build_step_outputs_sensor(settings: Settings) -> dg.SensorDefinition:
    """`export_step_outputs_cleanup`: ended export runs' step outputs removed from storage."""

    @dg.sensor(
        name=STEP_OUTPUTS_SENSOR,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Remove the step outputs (plans, part lists) that ended export runs left on"
        " the export storage, which the celery executor passes them through.",
    )
    def export_step_outputs_cleanup(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # The cursor is the last end seen; a run recorded at that same instant after the
        # evaluation read is taken next time (removing twice is harmless).
        since = datetime.fromisoformat(context.cursor) if context.cursor else None
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=JOB_NAME,
                statuses=ENDED,
                updated_after=since - timedelta(microseconds=1) if since else None,
            ),
            limit=RUNS_PER_TICK,
            order_by="update_timestamp",
            ascending=True,
        )
        storage = open_storage(settings)
        for record in records:
            storage.discard(step_outputs_of_run(record.dagster_run.run_id))
        stamps = [record.update_timestamp for record in records]
        newest = max(stamps, default=since)
        cursor = newest.astimezone(UTC).isoformat() if newest else None
        return dg.SensorResult(
            cursor=cursor, skip_reason=f"step outputs of {len(records)} ended runs removed"
        )

    return export_step_outputs_cleanup


def build_sensors(entries: list[ScheduleEntry], settings: Settings) -> list[dg.SensorDefinition]:
    """The drop sensor, the change sensor when some entry has on_change: true, and the step
    outputs' cleanup with the celery executor."""
    sensors = [build_drop_sensor(settings)]
    if any(entry.on_change for entry in entries):
        sensors.append(build_change_sensor(entries, settings))
    if settings.executor == "celery":
        sensors.append(build_step_outputs_sensor(settings))
    return sensors

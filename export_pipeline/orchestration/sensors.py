"""Sensors of the export job: a drop folder of request files, and exports on collection change.

`export_request_drop` watches `Settings.drop_folder` (EXPORT_PIPELINE_DROP_DIR, default
<home>/requests). Each `<name>.json` holds `{"namespace", "collection", "request"}` and becomes
one run per file content (run_key = sha256 of its bytes, so identical bytes never run twice).
Handled files leave the folder: into accepted/, or into rejected/ beside `<name>.error.txt`
saying why, so a bad file is never retried. Only names ending in `.json` and not starting with
a dot are read: writers write to a temporary name and rename, so no half-written file is read.
It is RUNNING by default: it creates the folder when missing and an empty folder is a skip.

`collection_change_exports` launches the schedules file's `on_change: true` entries again when
their collection's version moves (ingest, upsert), once per version seen: run_key is
`<entry>:<collection id>:v<version>`. Its cursor maps entry -> last version seen; an entry the
cursor does not know yet records the current version as its baseline and launches nothing,
so turning the sensor on never exports every collection at once. Several changes between two
evaluations make one export, of the latest version. It is STOPPED by default: exporting
whenever data changes is an operator's decision.
"""

# No `from __future__ import annotations`: Dagster reads the evaluation functions' annotations.
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticError

from export_pipeline.errors import ExportPipelineError, NotFoundError, ValidationError
from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.launch import prepare
from export_pipeline.orchestration.schedules import ScheduleEntry
from export_pipeline.settings import Settings
from export_pipeline.store import Store

DROP_SENSOR = "export_request_drop"
CHANGE_SENSOR = "collection_change_exports"
MAX_FILES_PER_TICK = 50  # the rest wait for the next tick, oldest first
ACCEPTED = "accepted"
REJECTED = "rejected"


class DroppedRequest(BaseModel):
    """The content of one request file."""

    model_config = ConfigDict(extra="forbid")

    namespace: str
    collection: str
    request: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """What to do with one request file: launch it (accepted) or reject it with a reason."""

    path: Path
    run_key: str
    run_request: dg.RunRequest | None
    error: str | None = None


def pending_files(folder: Path, limit: int = MAX_FILES_PER_TICK) -> list[Path]:
    """The request files to handle now, oldest first (temporary and hidden names skipped)."""
    found = []
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.name.endswith(".json"):
            continue
        try:
            if path.is_file():
                found.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:  # taken away while we looked
            continue
    return [path for _, _, path in sorted(found)[:limit]]


def decide(store: Store, path: Path) -> Decision:
    """Read and check one request file; no side effect."""
    data = path.read_bytes()
    run_key = hashlib.sha256(data).hexdigest()
    try:
        dropped = _parse(data)
        launch = prepare(
            store, dropped.namespace, dropped.collection, dropped.request, trigger="sensor"
        )
    except ExportPipelineError as exc:
        return Decision(path, run_key, None, f"{exc.type_name}: {exc.message}")
    return Decision(path, run_key, launch.run_request(run_key))


def _parse(data: bytes) -> DroppedRequest:
    try:
        raw = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and undecodable bytes alike
        raise ValidationError(f"not valid JSON: {exc}") from None
    try:
        return DroppedRequest.model_validate(raw)
    except PydanticError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ValidationError(
            f'invalid request file: {problems} (expected {{"namespace", "collection",'
            ' "request"}})'
        ) from None


def file_away(decision: Decision, folder: Path) -> Path:
    """Move the file into accepted/ or rejected/ (with its error note); returns where it went."""
    target_dir = folder / (ACCEPTED if decision.error is None else REJECTED)
    target_dir.mkdir(exist_ok=True)
    target = target_dir / decision.path.name
    if target.exists():  # keep earlier files of the same name
        target = target_dir / f"{decision.path.stem}.{decision.run_key[:12]}.json"
    if decision.error is not None:
        # The note first: a file in rejected/ always has its reason beside it.
        target.with_suffix(".error.txt").write_text(decision.error + "\n", encoding="utf-8")
    os.replace(decision.path, target)
    return target


def build_drop_sensor(settings: Settings) -> dg.SensorDefinition:
    """`export_request_drop`: one run per request file dropped into the folder."""

    @dg.sensor(
        name=DROP_SENSOR,
        job=export_collection,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Export requests dropped as *.json files into {settings.drop_folder}"
            " (write to a temporary name, then rename)."
        ),
    )
    def export_request_drop(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        folder = settings.drop_folder
        folder.mkdir(parents=True, exist_ok=True)
        paths = pending_files(folder)
        if not paths:
            return dg.SensorResult(skip_reason=f"no request files in {folder}")
        store = Store(settings)
        decisions = []
        for path in paths:
            try:
                decisions.append(decide(store, path))
            except FileNotFoundError:  # taken by someone else; the run_key covers a re-drop
                continue
            except OSError as exc:  # unreadable: left in place, and said so every tick
                context.log.warning(f"{path.name}: cannot read it: {exc}")
        # Every file decided, now file them away; a file that cannot be moved is read again
        # next tick, and its run_key keeps that from launching a second run.
        requests: dict[str, dg.RunRequest] = {}
        for decision in decisions:
            try:
                target = file_away(decision, folder)
            except OSError as exc:
                context.log.warning(f"{decision.path.name}: could not move it: {exc}")
                target = decision.path
            if decision.run_request is None:
                context.log.warning(f"{decision.path.name} rejected ({target}): {decision.error}")
            else:
                requests.setdefault(decision.run_key, decision.run_request)
                context.log.info(f"{decision.path.name} accepted, run_key {decision.run_key}")
        if not requests:
            reason = f"rejected {len(decisions)} request file(s)" if decisions else "nothing read"
            return dg.SensorResult(skip_reason=reason)
        return dg.SensorResult(run_requests=list(requests.values()))

    return export_request_drop


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
                launch = prepare(store, entry.namespace, entry.collection, entry.request, "sensor")
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
                requests.append(launch.run_request(run_key))
        # Entries no longer in the file drop out of the cursor.
        new_cursor = json.dumps(cursor, sort_keys=True)
        if not requests:
            return dg.SensorResult(cursor=new_cursor, skip_reason="no collection changed")
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return collection_change_exports


def build_sensors(entries: list[ScheduleEntry], settings: Settings) -> list[dg.SensorDefinition]:
    """The drop sensor, and the change sensor when some entry has on_change: true."""
    sensors = [build_drop_sensor(settings)]
    if any(entry.on_change for entry in entries):
        sensors.append(build_change_sensor(entries, settings))
    return sensors

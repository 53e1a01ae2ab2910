"""Run tags: what an export run is about and who started it (filters in the UI, queue limits)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from export_pipeline.store import Collection, Namespace
from export_pipeline.store.operations import Owner

PREFIX = "export_pipeline"
JOB = f"{PREFIX}/job"  # static on every export run: the global concurrency limit keys on it
NAMESPACE = f"{PREFIX}/namespace"
COLLECTION = f"{PREFIX}/collection"
COLLECTION_ID = f"{PREFIX}/collection_id"  # the per-collection limit keys on it
EXPORT_ID = f"{PREFIX}/export_id"
FORMAT = f"{PREFIX}/format"
TRIGGER = f"{PREFIX}/trigger"
CHAIN = f"{PREFIX}/chain"  # the schedule entry whose runs chain (orchestration/chains.py)
KEY_ID = f"{PREFIX}/key_id"  # the API key that asked (its id, never the key)
# The process running a run in itself (execute_in_process): a run whose process is gone is
# marked failed by orchestration/dead_runs.py instead of blocking the queue for good.
HOST = f"{PREFIX}/host"
PID = f"{PREFIX}/pid"
PID_STARTED = f"{PREFIX}/pid_started"

Trigger = Literal["ui", "schedule", "sensor", "api", "cli"]
TRIGGERS: tuple[Trigger, ...] = get_args(Trigger)


def export_tags(
    namespace: Namespace, collection: Collection, fmt: str, trigger: Trigger
) -> dict[str, str]:
    """The tags a launcher puts on a run it submits (the export id is added when it starts)."""
    return {
        NAMESPACE: namespace.name,
        COLLECTION: collection.name,
        COLLECTION_ID: collection.id,
        FORMAT: fmt,
        TRIGGER: trigger,
    }


def trigger_of(run_tags: Mapping[str, str]) -> Trigger:
    """Who started a run, from its tags; a run without a known trigger was launched from the
    UI (or straight through GraphQL)."""
    found = run_tags.get(TRIGGER)
    # Tags are free text (anyone can set them in the launchpad): only a known value counts.
    return next((trigger for trigger in TRIGGERS if trigger == found), "ui")


def owner_tags(owner: Owner | None = None) -> dict[str, str]:
    """The tags naming the process that runs a run (default: this one)."""
    owner = owner or Owner.current()
    return {HOST: owner.host, PID: str(owner.pid), PID_STARTED: owner.started}


def owner_of(run_tags: Mapping[str, str]) -> Owner | None:
    """The process a run's owner tags name; None for a run without them."""
    if HOST not in run_tags or not run_tags.get(PID, "").isdigit():
        return None
    return Owner(run_tags[HOST], int(run_tags[PID]), run_tags.get(PID_STARTED, ""))

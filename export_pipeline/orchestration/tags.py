"""Run tags: what an export run is about and who started it (filters in the UI, queue limits)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from export_pipeline.store import Collection, Namespace

PREFIX = "export_pipeline"
JOB = f"{PREFIX}/job"  # static on every export run: the global concurrency limit keys on it
NAMESPACE = f"{PREFIX}/namespace"
COLLECTION = f"{PREFIX}/collection"
COLLECTION_ID = f"{PREFIX}/collection_id"  # the per-collection limit keys on it
EXPORT_ID = f"{PREFIX}/export_id"
FORMAT = f"{PREFIX}/format"
TRIGGER = f"{PREFIX}/trigger"
KEY_ID = f"{PREFIX}/key_id"  # the API key that asked (its id, never the key)

Trigger = Literal["ui", "schedule", "sensor", "api", "cli"]


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
    found = run_tags.get(TRIGGER, "ui")
    return found if found in get_args(Trigger) else "ui"  # type: ignore[return-value]

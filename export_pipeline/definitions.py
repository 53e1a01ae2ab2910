"""The one Dagster `Definitions` of export_pipeline (workspace.yaml and pyproject point here)."""

from __future__ import annotations

import dagster as dg

from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.resources import resources_from, step_outputs_of
from export_pipeline.orchestration.schedules import build_schedules, load_schedules
from export_pipeline.orchestration.sensors import build_sensors
from export_pipeline.settings import Settings


def build_definitions(settings: Settings) -> dg.Definitions:
    """The job, its schedules (EXPORT_PIPELINE_SCHEDULES) and sensors, and its resources."""
    entries = load_schedules(settings.schedules) if settings.schedules else []
    return dg.Definitions(
        jobs=[export_collection],
        schedules=build_schedules(entries, settings),
        sensors=build_sensors(entries, settings),
        resources=resources_from(settings, step_outputs_of(settings)),
    )


defs = build_definitions(Settings())

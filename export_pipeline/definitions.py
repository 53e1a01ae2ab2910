"""The one Dagster `Definitions` of export_pipeline (workspace.yaml and pyproject point here)."""

from __future__ import annotations

import dagster as dg

from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.resources import resources_from
from export_pipeline.settings import Settings

defs = dg.Definitions(jobs=[export_collection], resources=resources_from(Settings()))

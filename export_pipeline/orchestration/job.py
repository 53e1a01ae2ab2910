"""The `export_collection` job: plan -> export_shard (one per shard) -> publish -> report."""

from __future__ import annotations

import dagster as dg

from export_pipeline.orchestration import tags
from export_pipeline.orchestration.config import validate_request
from export_pipeline.orchestration.executor import export_executor
from export_pipeline.orchestration.ops import (
    export_shard,
    plan_export_op,
    publish_files,
    report_export,
)

JOB_NAME = "export_collection"


@dg.job(
    name=JOB_NAME,
    description=(
        "Export one collection's documents (and vectors) to json, csv or parquet, filtered,"
        " trimmed and sampled, and publish them behind download links."
    ),
    config=validate_request,
    tags={tags.JOB: JOB_NAME},
    # The run config picks the executor per run (`config.executor_config`): a one-shard
    # export runs every step in the launching process, with no process start per step;
    # several shards run in parallel processes, or on Celery workers.
    executor_def=export_executor,
)
def export_collection() -> None:
    """The one export job every entry point launches."""
    progress, shards = plan_export_op()
    parts = shards.map(export_shard)
    report_export(publish_files(progress, parts.collect()))


def export_job_with_resources(step_outputs: str | None = None) -> dg.JobDefinition:
    """The job with its resources from the environment's Settings, as a process running one
    of its steps rebuilds it (`reconstructable_job`). `step_outputs`: the S3 storage the
    steps' outputs go through (the celery executor), else Dagster's default."""
    from export_pipeline.orchestration.resources import resources_from
    from export_pipeline.settings import Settings

    resources = resources_from(Settings(), step_outputs)
    definitions = dg.Definitions(jobs=[export_collection], resources=resources)
    return definitions.get_job_def(JOB_NAME)


def reconstructable_job(step_outputs: str | None) -> dg.ReconstructableJob:
    """The job as other processes rebuild it. The launcher builds and keeps one per distinct
    argument, so a launch with another storage for step outputs gets its own."""
    return dg.build_reconstructable_job(
        __name__,
        export_job_with_resources.__name__,
        reconstructable_kwargs={"step_outputs": step_outputs},
    )

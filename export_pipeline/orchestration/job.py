"""The `export_collection` job: plan -> load -> write -> publish -> report, in one process."""

from __future__ import annotations

import dagster as dg

from export_pipeline.orchestration import tags
from export_pipeline.orchestration.config import validate_request
from export_pipeline.orchestration.ops import (
    load_documents,
    plan_export_op,
    publish_files,
    report_export,
    write_files,
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
    # Steps hand each other scratch files on local disk, and a run should not pay a
    # process start per step: every step runs in the run's own process.
    executor_def=dg.in_process_executor,
)
def export_collection() -> None:
    """The one export job every entry point launches."""
    report_export(publish_files(write_files(load_documents(plan_export_op()))))

"""Runs whose process is gone, marked failed: a killed CLI export or API worker otherwise
leaves its run STARTED for good, and the per-collection limit keeps the queue waiting on it.

Only runs tagged with their owner (tags.owner_tags: host, pid, process start; every run this
project executes in a process of its own, `launch.run_launch`) on this host are judged;
runs a run launcher started are Dagster's run monitoring's business.
"""

from __future__ import annotations

import socket

import dagster as dg

from export_pipeline.orchestration import tags
from export_pipeline.recovery import SweepReport, sweep
from export_pipeline.settings import Settings

IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the in-progress runs of this host whose process is gone; their run ids."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={tags.HOST: socket.gethostname()})
    )
    failed = []
    for run in runs:
        owner = tags.owner_of(run.tags)
        if owner is None or owner.alive() is not False:
            continue
        instance.report_run_failed(
            run, message=f"its process ({owner.pid} on {owner.host}) is gone: marked failed"
        )
        failed.append(run.run_id)
    return failed


def collect(settings: Settings, grace_seconds: float | None = None) -> SweepReport:
    """`export-pipeline gc` and the API's start: the recovery sweep, then dead runs failed
    (in the instance the settings point at, if it was ever made)."""
    from export_pipeline.orchestration.instance import dagster_home, local_instance

    report = sweep(settings, grace_seconds=grace_seconds)
    if (dagster_home(settings) / "dagster.yaml").exists():
        report.runs_failed = len(fail_dead_runs(local_instance(settings)))
    return report

"""The export job's ops: thin wrappers over the core steps, passing a small Progress along."""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import BaseModel

from export_pipeline.contract import ExportResponse
from export_pipeline.engine.manifest import Outputs
from export_pipeline.engine.parts import ShardParts
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.selection import Selection
from export_pipeline.engine.shards import Shard, shard_threads
from export_pipeline.errors import PUBLISHED_NOTHING, ExportPipelineError, guard
from export_pipeline.export import ExportLifecycle
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.config import ExportConfig
from export_pipeline.orchestration.resources import ExportResource
from export_pipeline.storage import TransientStorageError
from export_pipeline.store.operations import Owner

PUBLISH_RETRIES = 3
PUBLISH_RETRY_POLICY = dg.RetryPolicy(
    max_retries=PUBLISH_RETRIES, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL
)


class Progress(BaseModel):
    """What the export has done so far: the plan, then counts, files, the response."""

    plan: ExportPlan
    seconds: dict[str, float] = {}
    selection: Selection = Selection()
    outputs: Outputs | None = None
    preview: str | None = None
    response: ExportResponse | None = None
    manifest: dict[str, Any] | None = None


class ShardTask(BaseModel):
    """One shard to write, with what every shard shares: the plan and the selection."""

    plan: ExportPlan
    selection: Selection
    shard: Shard


def failure(exc: ExportPipelineError) -> dg.Failure:
    """A user-facing failure (never retried) carrying the error the CLI and API would show."""
    return dg.Failure(
        description=exc.message,
        metadata={"error": dg.MetadataValue.json(exc.to_dict())},
        allow_retries=False,
    )


@contextmanager
def _step(
    context: dg.OpExecutionContext, lifecycle: ExportLifecycle, plan: ExportPlan, name: str
) -> Iterator[float]:
    """Time a step; on failure reclaim what the export wrote unless the op is about to be
    retried.

    Only transient storage errors are retried. A full or read-only folder becomes the core's
    EnvironmentProblem (naming the path) and, like any other error, fails the run at once:
    Dagster's RetryPolicy would otherwise retry whatever an op raises.
    """
    started = time.perf_counter()

    def cleanup(plan: ExportPlan) -> None:  # also what an earlier, killed attempt left
        lifecycle.abandon(plan.export_id)

    try:
        # Errors that name no path (DuckDB, pyarrow) happen in the export's scratch space.
        with guard(plan.scratch_dir, "scratch space", PUBLISHED_NOTHING):
            yield started
    except TransientStorageError as exc:
        if _attempt(context) < PUBLISH_RETRIES:
            context.log.warning(f"{name}: transient storage error, retrying: {exc}")
            raise  # the RetryPolicy runs the op again; its files must still be there
        cleanup(plan)
        attempts = PUBLISH_RETRIES + 1
        raise failure(
            ExportPipelineError(f"storage kept failing after {attempts} attempts: {exc}")
        ) from None
    except ExportPipelineError as exc:
        cleanup(plan)
        raise failure(exc) from None
    except Exception as exc:  # unforeseen: said with its type, and never retried either
        cleanup(plan)
        said = f"{context.op_def.name}: {type(exc).__name__}: {exc} (run {context.run_id})"
        unforeseen = ExportPipelineError(said)
        raise failure(unforeseen) from exc
    except BaseException:  # a run being cancelled: a failed export leaves nothing
        cleanup(plan)
        raise


@dg.op(
    name="plan_export",
    description="Validate the request, fix the snapshot to read, decide what the shards cannot"
    " decide alone (a sample's cutoff, the columns of a filtered csv or parquet export), then"
    " hand out the shards.",
    out={"progress": dg.Out(Progress), "shards": dg.DynamicOut(ShardTask)},
)
def plan_export_op(
    context: dg.OpExecutionContext,
    config: ExportConfig,
    export: ExportResource,
) -> Iterator[dg.Output[Progress] | dg.DynamicOutput[ShardTask]]:
    """Step 1: the ExportPlan, a pass over the matches where the export needs one, and one
    task per shard."""
    started = time.perf_counter()
    lifecycle = export.lifecycle()
    try:
        with guard(lifecycle.settings.home_dir, "home", PUBLISHED_NOTHING):
            lifecycle.sweep()
            shards = config.shards or 1
            plan = lifecycle.start(
                config.namespace,
                config.collection,
                config.request(),
                shards,
                # steps on Celery workers share no disk: the parts go through the storage
                stage_parts=config.executor == "celery" and shards > 1,
                # The run's launcher, where it says: the steps' own processes end before the
                # export does when the shards run in processes of their own, and the record
                # (and its pins, D5) must last as long as the export.
                owner=_launcher(context, config),
            )
    except ExportPipelineError as exc:
        raise failure(exc) from None
    _tag_run(context, plan)
    context.log.info(
        f"export {plan.export_id} of {plan.namespace.name}/{plan.collection.name}"
        f" in {len(plan.shards)} shard(s)"
    )
    progress = Progress(plan=plan, seconds={"plan": round(time.perf_counter() - started, 3)})
    with _step(context, lifecycle, plan, "select") as selecting:
        progress.selection = lifecycle.select(plan)
    progress.seconds["select"] = round(time.perf_counter() - selecting, 3)
    matched = progress.selection.matched
    yield dg.Output(progress, "progress", metadata={} if matched is None else {"matched": matched})
    for shard in plan.shards:
        task = ShardTask(plan=plan, selection=progress.selection, shard=shard)
        yield dg.DynamicOutput(task, output_name="shards", mapping_key=f"shard_{shard.index:05d}")


def _launcher(context: dg.OpExecutionContext, config: ExportConfig) -> Owner | None:
    """The process the export lives and dies with: the run's launcher where its tags say;
    else, for steps in processes of their own, their parent (which runs the executor, or
    the forkserver that lives as long as it does); else this process (None)."""
    try:
        found = tags.owner_of(dict(context.run.tags))
    except dg.DagsterError:  # the op was invoked directly (build_op_context): no run
        return None
    if found is None and (config.shards or 1) > 1:
        return Owner.of(os.getppid())
    return found


def _tag_run(context: dg.OpExecutionContext, plan: ExportPlan) -> None:
    """Add what the export is about to the run's tags (launchers set the trigger already)."""
    try:
        run = context.run  # as launched: no need to read it back from the instance
    except dg.DagsterError:  # the op was invoked directly (build_op_context): no run to tag
        return
    # A run without a trigger tag was launched from the UI (or straight through GraphQL).
    trigger = tags.trigger_of(run.tags)
    found = tags.export_tags(plan.namespace, plan.collection, plan.request.format, trigger)
    context.instance.add_run_tags(context.run_id, {**found, tags.EXPORT_ID: plan.export_id})


@dg.op(description="Write one shard's part of the documents (and vectors) file in scratch space.")
def export_shard(
    context: dg.OpExecutionContext,
    task: ShardTask,
    export: ExportResource,
) -> ShardParts:
    """Step 2, once per shard (in parallel where the executor allows): the shard's parts."""
    threads = None
    if len(task.plan.shards) > 1:  # shards running at once share the cores
        threads = shard_threads(export.settings.duckdb_threads, len(task.plan.shards))
    lifecycle = export.lifecycle(threads)
    with _step(context, lifecycle, task.plan, f"shard {task.shard.index}"):
        parts = lifecycle.write_shard(task.plan, task.selection, task.shard)
    written = parts.bytes
    context.log.info(
        f"shard {task.shard.index}: {parts.documents.rows:,} rows, {written:,} bytes,"
        f" {parts.seconds:.2f} s ({parts.worker})"
    )
    context.add_output_metadata(
        {"rows": parts.documents.rows, "bytes": written, "seconds": parts.seconds}
    )
    return parts


@dg.op(
    description="Assemble the shards' parts into the export's files and publish them,"
    " manifest last, with download links.",
    retry_policy=PUBLISH_RETRY_POLICY,
)
def publish_files(
    context: dg.OpExecutionContext,
    progress: Progress,
    parts: list[ShardParts],
    export: ExportResource,
) -> Progress:
    """Step 3: the files at their final keys; scratch space is removed afterwards."""
    lifecycle = export.lifecycle()
    plan = progress.plan
    with _step(context, lifecycle, plan, "publish") as started:
        if _attempt(context) > 0:
            _check_parts_left(parts)
        outputs = lifecycle.assemble(plan, progress.selection, parts)
        result = lifecycle.publish(plan, outputs)
    lifecycle.cleanup(plan)
    progress.seconds["write"] = max((p.seconds for p in parts), default=0.0)
    progress.seconds["publish"] = round(time.perf_counter() - started, 3)
    progress.outputs, progress.preview = outputs, outputs.preview
    progress.response, progress.manifest = result.response, result.manifest
    context.add_output_metadata({f.name: f.bytes for f in outputs.files})
    return progress


def _attempt(context: dg.OpExecutionContext) -> int:
    """How many times the op was tried before (0 for an op invoked directly)."""
    try:
        return context.retry_number
    except AttributeError:  # build_op_context: no run, no retries
        return 0


def _check_parts_left(parts: list[ShardParts]) -> None:
    """A retry after an attempt that ended part way (its process killed) may find the parts it
    had already moved into place gone: say so, rather than name a missing file."""
    for shard in parts:
        for part in shard.files():
            if part.key is None and not part.path.exists():
                raise ExportPipelineError(
                    f"publish_files: an earlier attempt ended part way (was its process"
                    f" killed?) and shard {shard.shard.index}'s {part.path.name} is gone;"
                    " nothing was published"
                )


@dg.op(description="Record the export: run metadata and a materialization of its asset.")
def report_export(
    context: dg.OpExecutionContext, progress: Progress, export: ExportResource
) -> dict[str, Any]:
    """Step 4: the A1 response, with links, counts, checksums and a preview as metadata."""
    plan, response = progress.plan, progress.response
    assert response is not None and progress.outputs is not None
    metadata = export_metadata(progress, export.storage.url_ttl_seconds)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=export_asset_key(plan),
            description=f"export {plan.export_id} ({plan.request.format})",
            metadata=metadata,
        )
    )
    context.add_output_metadata(metadata)
    return response.model_dump(mode="json")


def export_asset_key(plan: ExportPlan) -> dg.AssetKey:
    """`["exports", <namespace>, <collection>]`: one asset per collection, one event per export."""
    return dg.AssetKey(["exports", plan.namespace.name, plan.collection.name])


def export_metadata(progress: Progress, ttl_seconds: int) -> dict[str, Any]:
    """Links, sizes, checksums, warnings, seed, timings and a preview, as Dagster metadata."""
    plan, response, outputs = progress.plan, progress.response, progress.outputs
    assert response is not None and outputs is not None
    files = {f.role: f for f in reversed(outputs.files)}  # the first of each role (its links')
    metadata: dict[str, Any] = {
        "download_url": dg.MetadataValue.url(response.download_url),
        "s3_path": dg.MetadataValue.text(response.s3_path),
        "export_id": plan.export_id,
        "format": plan.request.format,
        "document_count": response.document_count,
        "file_size_bytes": response.file_size_bytes,
        "sha256": files["documents"].sha256,
        "exported_at": response.exported_at.isoformat(),
        "urls_expire_at": (response.exported_at + timedelta(seconds=ttl_seconds)).isoformat(),
        "warnings": dg.MetadataValue.json(outputs.warnings),
        "seconds": dg.MetadataValue.json(progress.seconds),
        "preview": dg.MetadataValue.md(progress.preview or ""),
    }
    if response.vectors_download_url and response.vectors_s3_path:
        metadata["vectors_download_url"] = dg.MetadataValue.url(response.vectors_download_url)
        metadata["vectors_s3_path"] = dg.MetadataValue.text(response.vectors_s3_path)
        metadata["vectors_sha256"] = files["vectors"].sha256
    if plan.sample_seed is not None:
        metadata["sample_seed"] = plan.sample_seed
    if response.parts is not None:
        metadata["parts"] = dg.MetadataValue.json(
            [part.model_dump(include={"role", "name", "document_count", "file_size_bytes"})
             for part in response.parts]
        )  # fmt: skip
    return metadata

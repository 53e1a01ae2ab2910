"""The export job's ops: thin wrappers over the core steps, passing a small Progress along."""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import BaseModel

from export_pipeline import export as steps
from export_pipeline.contract import ExportResponse
from export_pipeline.engine.manifest import Outputs
from export_pipeline.engine.plan import ExportPlan, plan_export
from export_pipeline.engine.selection import Selection
from export_pipeline.errors import PUBLISHED_NOTHING, ExportPipelineError, guard
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.config import ExportConfig
from export_pipeline.orchestration.resources import (
    DuckDBResource,
    StorageResource,
    StoreResource,
    settings_of,
)
from export_pipeline.recovery import sweep_quietly
from export_pipeline.settings import Settings
from export_pipeline.storage import TransientStorageError, export_prefix, open_storage
from export_pipeline.store import Store

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


def failure(exc: ExportPipelineError) -> dg.Failure:
    """A user-facing failure (never retried) carrying the error the CLI and API would show."""
    return dg.Failure(
        description=exc.message,
        metadata={"error": dg.MetadataValue.json(exc.to_dict())},
        allow_retries=False,
    )


@contextmanager
def _step(context: dg.OpExecutionContext, progress: Progress, name: str) -> Iterator[None]:
    """Time a step; on failure remove the scratch space unless the op is about to be retried.

    Only transient storage errors are retried. A full or read-only folder becomes the core's
    EnvironmentProblem (naming the path) and, like any other error, fails the run at once:
    Dagster's RetryPolicy would otherwise retry whatever an op raises.
    """
    started = time.perf_counter()
    try:
        # Errors that name no path (DuckDB, pyarrow) happen in the export's scratch space.
        with guard(progress.plan.scratch_dir, "scratch space", PUBLISHED_NOTHING):
            yield
    except TransientStorageError as exc:
        if context.retry_number < PUBLISH_RETRIES:
            context.log.warning(f"{name}: transient storage error, retrying: {exc}")
            raise  # the RetryPolicy runs the op again; its files must still be there
        steps.cleanup(progress.plan)
        _recovery_end(context, progress.plan)  # recovery:
        attempts = PUBLISH_RETRIES + 1
        raise failure(
            ExportPipelineError(f"storage kept failing after {attempts} attempts: {exc}")
        ) from None
    except ExportPipelineError as exc:
        steps.cleanup(progress.plan)
        _recovery_end(context, progress.plan)  # recovery:
        raise failure(exc) from None
    except Exception as exc:  # unforeseen: said with its type, and never retried either
        steps.cleanup(progress.plan)
        _recovery_end(context, progress.plan)  # recovery:
        said = f"{context.op_def.name}: {type(exc).__name__}: {exc} (run {context.run_id})"
        unforeseen = ExportPipelineError(said)
        raise failure(unforeseen) from exc
    except BaseException:  # a run being cancelled: a failed export leaves nothing
        steps.cleanup(progress.plan)
        _recovery_end(context, progress.plan)  # recovery:
        raise
    progress.seconds[name] = round(time.perf_counter() - started, 3)


@dg.op(
    name="plan_export",
    description="Validate the request, resolve the collection and fix the snapshot to read.",
)
def plan_export_op(
    context: dg.OpExecutionContext,
    config: ExportConfig,
    store: StoreResource,
    storage: StorageResource,
    duckdb: DuckDBResource,
) -> Progress:
    """Step 0: the ExportPlan; no document is read."""
    started = time.perf_counter()
    settings = settings_of(store, storage, duckdb)
    try:
        with guard(settings.home_dir, "home", PUBLISHED_NOTHING):
            store = Store(settings)
            sweep_quietly(settings, store)  # recovery: what killed exports and ingests left
            plan = plan_export(store, config.namespace, config.collection, config.request())
    except ExportPipelineError as exc:
        raise failure(exc) from None
    _recovery_begin(settings, plan)  # recovery:
    _tag_run(context, plan)
    context.log.info(f"export {plan.export_id} of {plan.namespace.name}/{plan.collection.name}")
    return Progress(plan=plan, seconds={"plan": round(time.perf_counter() - started, 3)})


# recovery: the export's record (store/operations.py) before anything is created, ended once
# published or cleaned up; a killed export leaves it for the sweep. The lifecycle moves these.
def _recovery_begin(settings: Settings, plan: ExportPlan) -> None:
    """Record the export's scratch folder and final prefix before either exists."""
    prefix = export_prefix(plan.namespace.id, plan.collection.id, plan.export_id)
    Store(settings).operations.begin(
        "export",
        plan.export_id,
        paths=[plan.scratch_dir],
        storage=settings.storage_uri,
        storage_prefixes=[prefix],
    )


def _recovery_end(context: dg.OpExecutionContext, plan: ExportPlan) -> None:
    """Forget the export's record once it removed what it wrote (never fails the step)."""
    with suppress(Exception):
        resources = context.resources
        settings = settings_of(resources.store, resources.storage, resources.duckdb)
        Store(settings).operations.end(plan.export_id)


def _tag_run(context: dg.OpExecutionContext, plan: ExportPlan) -> None:
    """Add what the export is about to the run's tags (launchers set the trigger already)."""
    try:
        run = context.run  # as launched: no need to read it back from the instance
    except dg.DagsterError:  # the op was invoked directly (build_op_context): no run to tag
        return
    # A run without a trigger tag was launched from the UI (or straight through GraphQL).
    trigger = run.tags.get(tags.TRIGGER, "ui")
    found = tags.export_tags(plan.namespace, plan.collection, plan.request.format, trigger)
    context.instance.add_run_tags(context.run_id, {**found, tags.EXPORT_ID: plan.export_id})


@dg.op(
    description="Decide the selection where it must be known before writing: a sample's"
    " cutoff, the columns of a filtered csv or parquet export."
)
def load_documents(
    context: dg.OpExecutionContext,
    progress: Progress,
    store: StoreResource,
    storage: StorageResource,
    duckdb: DuckDBResource,
) -> Progress:
    """Step 1: a pass over the matches, when the export needs one."""
    settings = settings_of(store, storage, duckdb)
    with _step(context, progress, "load"):
        progress.selection = steps.load(progress.plan, Store(settings), settings)
    if progress.selection.matched is not None:
        context.add_output_metadata({"matched": progress.selection.matched})
    return progress


@dg.op(description="Write the documents (and vectors) file into scratch space.")
def write_files(
    context: dg.OpExecutionContext,
    progress: Progress,
    store: StoreResource,
    storage: StorageResource,
    duckdb: DuckDBResource,
) -> Progress:
    """Step 2: the files, with checksums and a preview of the first rows."""
    settings = settings_of(store, storage, duckdb)
    with _step(context, progress, "write"):
        outputs = steps.write(progress.plan, Store(settings), settings, progress.selection)
        progress.preview = outputs.preview
        progress.outputs = outputs
    context.add_output_metadata({f.name: f.bytes for f in outputs.files})
    return progress


@dg.op(
    description="Publish the files, manifest last, and sign download links.",
    retry_policy=PUBLISH_RETRY_POLICY,
)
def publish_files(
    context: dg.OpExecutionContext,
    progress: Progress,
    store: StoreResource,
    storage: StorageResource,
    duckdb: DuckDBResource,
) -> Progress:
    """Step 3: the files at their final keys; scratch space is removed afterwards."""
    settings = settings_of(store, storage, duckdb)
    assert progress.outputs is not None
    with _step(context, progress, "publish"):
        storage_target = open_storage(settings)
        result = steps.publish(
            progress.plan, progress.outputs, storage_target, settings, Store(settings)
        )
    steps.cleanup(progress.plan)
    Store(settings).operations.end(progress.plan.export_id)  # recovery:
    progress.response, progress.manifest = result.response, result.manifest
    return progress


@dg.op(description="Record the export: run metadata and a materialization of its asset.")
def report_export(
    context: dg.OpExecutionContext, progress: Progress, storage: StorageResource
) -> dict[str, Any]:
    """Step 4: the A1 response, with links, counts, checksums and a preview as metadata."""
    plan, response = progress.plan, progress.response
    assert response is not None and progress.outputs is not None
    metadata = export_metadata(progress, storage.url_ttl_seconds)
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
    files = {f.role: f for f in outputs.files}
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
    return metadata

"""Request -> ExportPlan: everything decided before any document is read."""

from __future__ import annotations

import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

from export_pipeline.contract import ExportRequest
from export_pipeline.engine.kinds import field_kinds
from export_pipeline.engine.shards import Shard, plan_shards, shard_count
from export_pipeline.errors import from_pydantic
from export_pipeline.filters import compile_filter, filter_fields
from export_pipeline.paths import drop_covered
from export_pipeline.store import Collection, Namespace, Store
from export_pipeline.store.catalog import new_id
from export_pipeline.store.history import changed_paths


class ExportPlan(BaseModel):
    """A resolved, validated export; small and serialisable, so it can pass between steps."""

    export_id: str
    namespace: Namespace
    collection: Collection
    request: ExportRequest
    select_paths: list[str] | None
    filter_sql: str
    filter_params: list[Any]
    sample_seed: int | None
    scratch_dir: Path
    planned_at: datetime
    shards: list[Shard] = [Shard(index=0)]  # in id order; written in parallel
    # M5: the version changed_since names, and the history files (paths, S3 URIs) after it
    changed_since: int | None = None
    changed_files: list[str] = []
    # Where the shards' parts wait on the export storage for the step that assembles them,
    # when the steps share no disk (Celery workers); None: in the scratch folder.
    parts_prefix: str | None = None

    @property
    def segment_copies(self) -> Path:
        """Where the export's steps keep local copies of segments stored in S3."""
        return self.scratch_dir / "segments"

    @property
    def documents_name(self) -> str:
        """W1: the documents file name."""
        return f"documents.{self.request.format}"

    @property
    def deletes_name(self) -> str:
        """M6: the deletes file of an incremental export."""
        return f"deletes.{self.request.format}"

    @property
    def vectors_name(self) -> str:
        """W1: the vectors file name."""
        return f"{self.collection.name}_vectors.{self.request.format}"

    def documents_part_name(self, number: int) -> str:
        """The name of part `number` of the documents (`max_file_size_bytes`)."""
        return f"documents-{number:05d}.{self.request.format}"

    def vectors_part_name(self, number: int) -> str:
        """The name of part `number` of the vectors (`max_file_size_bytes`)."""
        return f"{self.collection.name}_vectors-{number:05d}.{self.request.format}"


PARTS_ROOT = ".parts"  # under the storage's root: outside every export's final prefix


def plan_export(
    store: Store,
    namespace: str,
    collection: str,
    request: ExportRequest | dict[str, Any],
    shards: int | None = None,
    stage_parts: bool = False,
    *,
    snapshot: tuple[Namespace, Collection] | None = None,
    export_id: str | None = None,
) -> ExportPlan:
    """Validate the request, resolve namespace and collection, fix the snapshot to read and
    cut it into `shards` (default: EXPORT_PIPELINE_SHARDS for the snapshot's size);
    `stage_parts`: the shards' parts go through the export storage. `snapshot`, `export_id`:
    already resolved and recorded (an export that pinned its snapshot first, D5)."""
    if not isinstance(request, ExportRequest):
        request = parse_request(request)
    found_ns, found = snapshot or store.resolve(namespace, collection)
    export_id = export_id or new_id("exp_", 16)
    scratch = store.settings.scratch_dir / export_id
    try:
        plan = _planned(store, request, found_ns, found, export_id, scratch, shards)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)  # copies of S3 segments, if any
        raise
    if stage_parts:
        return plan.model_copy(update={"parts_prefix": parts_prefix(export_id)})
    return plan


def parts_prefix(export_id: str) -> str:
    """Where an export's shards stage their parts on the export storage (`stage_parts`)."""
    return f"{PARTS_ROOT}/{export_id}"


def _planned(
    store: Store,
    request: ExportRequest,
    found_ns: Namespace,
    found: Collection,
    export_id: str,
    scratch: Path,
    shards: int | None,
) -> ExportPlan:
    copies = scratch / "segments"  # ExportPlan.segment_copies
    # the snapshot's structures say which fields are only ever scalars: their conditions
    # compile to direct comparisons (the plan reads exactly this snapshot)
    since, history = None, list[str]()
    if request.changed_since is not None:  # M5: checked before any document is read
        # here, not at the top: engine.changes reads manifests, which import this module
        from export_pipeline.engine.changes import resolve_since

        since = resolve_since(store, found_ns, found, request.changed_since)
        history = changed_paths(store.catalog, found, since)
    kinds = field_kinds(store, found, filter_fields(request.filters), copies)
    compiled = compile_filter(request.filters, kinds=kinds)
    seed = request.sample_seed
    if request.sample_size is not None and seed is None:
        seed = secrets.randbelow(2**63)  # O2: drawn, then reported in the manifest
    select = None
    if request.select_fields is not None:
        select = drop_covered(["document_id", *request.select_fields])
    if shards is None:
        shards = shard_count(
            store.settings.shards, found.document_count, threads=store.settings.duckdb_threads
        )
    return ExportPlan(
        export_id=export_id,
        namespace=found_ns,
        collection=found,
        request=request,
        select_paths=select,
        filter_sql=compiled.sql,
        filter_params=compiled.params,
        sample_seed=seed,
        scratch_dir=scratch,
        planned_at=datetime.now(UTC),
        shards=plan_shards(store.documents.segment_files(found, copies), shards),
        changed_since=since,
        changed_files=history,
    )


def parse_request(body: dict[str, Any] | None) -> ExportRequest:
    """R1-R8: an ExportRequest, or a InvalidInput naming each problem's location."""
    try:
        return ExportRequest.model_validate(body or {})
    except PydanticError as exc:
        raise from_pydantic(exc) from None

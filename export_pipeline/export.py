"""The export lifecycle: plan -> select -> shards write parts -> assemble -> publish -> cleanup.

`ExportLifecycle` owns one export from its plan to the removal of its scratch space. Each step
is a method taking and returning small values, so an orchestrator can run them where it likes
(the `export_collection` job runs the shards in parallel processes); `run` takes them in order
in this process. What is decided over the whole selection (a sample's cutoff, the columns) is
decided once, before the shards (`select`); the shards then write with the same shape and
predicate, so the assembled files do not depend on their number.
"""

from __future__ import annotations

import json
import shutil
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from export_pipeline.contract import ExportRequest, ExportResponse
from export_pipeline.engine.manifest import (
    MANIFEST_NAME,
    Outputs,
    build_manifest,
    sha256_of,
)
from export_pipeline.engine.outputs import assembled_outputs
from export_pipeline.engine.parts import ShardParts, write_parts
from export_pipeline.engine.plan import ExportPlan, plan_export
from export_pipeline.engine.selection import (
    Selection,
    chosen_shapes,
    needs_survey,
    open_scratch,
    scratch_files,
    survey,
)
from export_pipeline.engine.shards import Shard
from export_pipeline.engine.start import record_export, start_export
from export_pipeline.links import export_response
from export_pipeline.recovery import reclaim, sweep_quietly
from export_pipeline.settings import Settings
from export_pipeline.storage import LocalFile, Storage, export_prefix, open_storage
from export_pipeline.store import PublishedExport, Store
from export_pipeline.store.operations import Owner


@dataclass(frozen=True)
class ExportResult:
    """The A1 response plus the manifest that was published with the files."""

    response: ExportResponse
    manifest: dict[str, Any]


class ExportLifecycle:
    """The steps of an export over one store and storage target, and its cleanup."""

    def __init__(
        self,
        settings: Settings | None = None,
        store: Store | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings or (store.settings if store is not None else Settings())
        self.store = store or Store(self.settings)
        self._storage = storage

    @property
    def storage(self) -> Storage:
        """The storage target exports are published to (opened on first use)."""
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    def plan(
        self,
        namespace: str,
        collection: str,
        request: ExportRequest | dict[str, Any] | None,
        shards: int | None = None,
        stage_parts: bool = False,
    ) -> ExportPlan:
        """Validate the request, fix the snapshot, cut it into shards; no document is read.
        `stage_parts`: the steps share no disk, so the parts go through the export storage."""
        return plan_export(
            self.store, namespace, collection, request or {}, shards=shards, stage_parts=stage_parts
        )

    def select(self, plan: ExportPlan) -> Selection:
        """Decide, once, what the shards cannot decide alone: a sample's cutoff, the chosen
        documents' structures (a pass over the matches, where the export needs one)."""
        selection = Selection()
        if needs_survey(plan):  # else nothing to decide, so no DuckDB connection either
            with open_scratch(plan, self.settings) as con:
                selection = survey(con, plan, self.store)
        if plan.parts_prefix is not None:  # the steps that follow run on machines of their
            if selection.surveyed:  # own: what they need goes to the storage, and nothing
                self.storage.put(self._shapes_key(plan), chosen_shapes(plan))  # stays here
            shutil.rmtree(plan.scratch_dir, ignore_errors=True)
        return selection

    @staticmethod
    def _shapes_key(plan: ExportPlan) -> str:
        return f"{plan.parts_prefix}/{chosen_shapes(plan).name}"

    def write_shard(self, plan: ExportPlan, selection: Selection, shard: Shard) -> ShardParts:
        """One shard's parts of the documents (and vectors) file, in scratch space, or, where
        the plan says so, on the export storage (nothing then stays on this machine)."""
        if plan.parts_prefix is None:
            return write_parts(self.here(plan), self.store, self.settings, selection, shard)
        # A folder of the shard's own, removed once its parts are on the storage: another
        # shard of the export may run beside it on this machine.
        here = self.here(plan)
        here = here.model_copy(update={"scratch_dir": here.scratch_dir / f"shard-{shard.index}"})
        try:
            if selection.surveyed:
                here.scratch_dir.mkdir(parents=True, exist_ok=True)
                self.storage.fetch(self._shapes_key(plan), chosen_shapes(here))
            parts = write_parts(here, self.store, self.settings, selection, shard)
            for part in parts.files():  # measured here, so the assembly need not read it
                part.key = f"{plan.parts_prefix}/{shard.index:05d}/{part.path.name}"
                part.size, part.sha256 = part.path.stat().st_size, sha256_of(part.path)
                self.storage.put(part.key, part.path)
        finally:
            shutil.rmtree(here.scratch_dir, ignore_errors=True)
            with suppress(OSError):  # the export's folder, unless another shard still works
                here.scratch_dir.parent.rmdir()
        return parts

    def here(self, plan: ExportPlan) -> ExportPlan:
        """The plan with this process's scratch folder: a step on another machine than the
        plan's works in its own."""
        scratch = self.settings.scratch_dir / plan.export_id
        return (
            plan
            if plan.scratch_dir == scratch
            else plan.model_copy(update={"scratch_dir": scratch})
        )

    def assemble(self, plan: ExportPlan, selection: Selection, parts: list[ShardParts]) -> Outputs:
        """The export's files from the shards' parts (engine/outputs.py)."""
        return assembled_outputs(self.here(plan), selection, parts, self.store, self.storage)

    def publish(self, plan: ExportPlan, outputs: Outputs) -> ExportResult:
        """Put the files and, last, the manifest at their final keys; presign links."""
        plan = self.here(plan)
        prefix = export_prefix(plan.namespace.id, plan.collection.id, plan.export_id)
        keys = {f.name: f"{prefix}/{f.name}" for f in outputs.files}
        exported_at = datetime.now(UTC).replace(microsecond=0)
        manifest = build_manifest(plan, outputs, keys, exported_at)
        manifest_path = scratch_files(plan) / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        local = [
            LocalFile(
                f.name,
                f.path,
                f.content_type,
                f.sha256,
                pieces=None if f.pieces is None else tuple(f.pieces),
            )
            for f in outputs.files
        ]
        local.append(LocalFile(MANIFEST_NAME, manifest_path, "application/json"))
        storage = self.storage
        storage.publish(prefix, local)
        self.store.exports.record(
            PublishedExport(
                id=plan.export_id,
                namespace_id=plan.namespace.id,
                collection_id=plan.collection.id,
                storage=storage.target,
                prefix=prefix,
                exported_at=exported_at.isoformat(),
            )
        )
        response = export_response(manifest, storage, self.settings.url_ttl_seconds)
        return ExportResult(response=response, manifest=manifest)

    def sweep(self) -> None:
        """Reclaim what killed exports and ingests left (cheap when there is nothing)."""
        sweep_quietly(self.settings, self.store, self._storage)

    def begin(self, plan: ExportPlan, owner: Owner | None = None) -> None:
        """Record what the export is about to create (its scratch folder, its final prefix)
        before anything is: a killed export leaves a record for the sweep, not only debris.
        The record pins the snapshot's segments until it ends (D5); StaleSnapshot if one is
        gone already. `owner`: the process the export lives and dies with (default: this
        one; the pins count as long as it runs)."""
        record_export(self.store, plan.export_id, plan.collection, plan.parts_prefix, owner)

    def start(
        self,
        namespace: str,
        collection: str,
        request: ExportRequest | dict[str, Any] | None,
        shards: int | None = None,
        stage_parts: bool = False,
        owner: Owner | None = None,
    ) -> ExportPlan:
        """`plan` and `begin`, the snapshot pinned before the plan reads any of its segments
        (D5): what an export that runs to its end starts with."""
        return start_export(
            self.store, namespace, collection, request, shards, stage_parts, owner=owner
        )

    def cleanup(self, plan: ExportPlan) -> None:
        """Remove the export's scratch space, whether it succeeded or failed, and forget its
        record (published, or what it wrote is removed)."""
        shutil.rmtree(self.here(plan).scratch_dir, ignore_errors=True)
        with suppress(Exception):  # a record left behind is only work for the sweep
            if plan.parts_prefix is not None:
                self.storage.discard(plan.parts_prefix)
            self.store.operations.end(plan.export_id)

    def abandon(self, export_id: str) -> None:
        """Reclaim a failed export whose steps could not clean up after it (a step process
        killed while its launcher lives): its scratch, what it put in storage, its record."""
        reclaim(self.settings, self.store, export_id, self._storage)
        # a shard still writing when another failed may have made its folder again
        shutil.rmtree(self.settings.scratch_dir / export_id, ignore_errors=True)

    def run(
        self, namespace: str, collection: str, request: ExportRequest | dict[str, Any] | None
    ) -> ExportResult:
        """Every step in this process, the shards one after the other; nothing is left
        behind on failure."""
        self.sweep()
        plan = self.start(namespace, collection, request)
        try:
            selection = self.select(plan)
            parts = [self.write_shard(plan, selection, shard) for shard in plan.shards]
            outputs = self.assemble(plan, selection, parts)
            result = self.publish(plan, outputs)
        except BaseException:
            self.abandon(plan.export_id)
            raise
        self.cleanup(plan)
        return result


def run_export(
    namespace: str,
    collection: str,
    request: ExportRequest | dict[str, Any] | None,
    *,
    settings: Settings | None = None,
    store: Store | None = None,
    storage: Storage | None = None,
) -> ExportResult:
    """Validate, select, write and publish one export in this process."""
    return ExportLifecycle(settings, store, storage).run(namespace, collection, request)

"""manifest.json (W6): what an export holds, with checksums, written last."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from export_pipeline.engine.plan import ExportPlan
from export_pipeline.storage.base import Piece

MANIFEST_NAME = "manifest.json"


class OutputFile(BaseModel):
    """One finished file in scratch space."""

    role: str  # "documents" or "vectors"
    name: str
    path: Path
    content_type: str
    rows: int
    bytes: int
    sha256: str
    columns: list[dict[str, str]]
    # an assembly of the shards' parts (ranges of them, in scratch space or on the export
    # storage, and bytes such as a csv header): the file is never written whole in scratch
    # space; `path` is where it may be assembled
    pieces: list[Piece] | None = None


class Outputs(BaseModel):
    """Everything the write step produced, small enough to pass between steps."""

    document_count: int
    files: list[OutputFile]
    warnings: list[str]
    preview: str = ""  # the first rows as a markdown table, for the run's metadata
    shards: list[dict[str, Any]] = []  # index, document_count, worker, seconds of each shard
    deleted_count: int | None = None  # M6: rows of the deletes file (changed_since only)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def build_manifest(
    plan: ExportPlan, outputs: Outputs, keys: dict[str, str], exported_at: datetime
) -> dict[str, Any]:
    """The manifest document: request, counts, files with sizes and checksums, warnings."""
    return {
        "export_id": plan.export_id,
        "namespace": {"id": plan.namespace.id, "name": plan.namespace.name},
        "collection": {
            "id": plan.collection.id,
            "name": plan.collection.name,
            "version": plan.collection.version,
        },
        "version": plan.collection.version,  # the snapshot's: an incremental export's watermark
        "request": plan.request.model_dump(mode="json", exclude_unset=True),
        "format": plan.request.format,
        "document_count": outputs.document_count,
        "sample_seed": plan.sample_seed,
        "files": [
            {
                "role": f.role,
                "name": f.name,
                "key": keys[f.name],
                "content_type": f.content_type,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": f.sha256,
                "columns": f.columns,
            }
            for f in outputs.files
        ],
        **(
            {}
            if plan.changed_since is None
            else {"changed_since": plan.changed_since, "deleted_count": outputs.deleted_count}
        ),
        "warnings": outputs.warnings,
        "shards": [
            {key: shard[key] for key in ("index", "document_count", "worker")}
            for shard in outputs.shards
        ],
        "planned_at": plan.planned_at.isoformat(),
        "exported_at": exported_at.isoformat(),
    }

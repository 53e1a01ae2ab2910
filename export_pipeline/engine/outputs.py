"""The export's files from the shards' parts (in shard order): each file the single part
itself or their assembly, with sizes, checksums and columns, the deletes file of an
incremental export, the preview and the per-shard counts."""

from __future__ import annotations

import numpy as np

from export_pipeline.engine.assembly import assembled
from export_pipeline.engine.changes import deletes_file
from export_pipeline.engine.export_shape import counted_shape, same_shape
from export_pipeline.engine.manifest import OutputFile, Outputs
from export_pipeline.engine.part_files import part_file, part_files
from export_pipeline.engine.parts import Part, ShardParts, write_parts
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.preview import markdown_table
from export_pipeline.engine.schema import shape_of
from export_pipeline.engine.selection import Selection, scratch_files
from export_pipeline.engine.sinks import PREVIEW_ROWS
from export_pipeline.engine.tally import summed_counts
from export_pipeline.engine.writers import CONTENT_TYPES, json_columns
from export_pipeline.storage import Storage
from export_pipeline.storage.pieces import sha256_of_pieces, size_of_pieces
from export_pipeline.store import Store


def assembled_outputs(
    plan: ExportPlan, selection: Selection, parts: list[ShardParts], store: Store, storage: Storage
) -> Outputs:
    """The export's files from the shards' parts (in shard order), with their sizes,
    checksums and columns; nothing is re-serialised but where the shards wrote with
    the snapshot's shape and their documents' structures call for another (then every
    shard is written again with it)."""
    settings = store.settings
    parts = sorted(parts, key=lambda found: found.shard.index)
    if selection.streamed:
        parts = _reshaped(plan, selection, parts, store)
    fmt = plan.request.format
    warnings = list(dict.fromkeys(w for p in parts for w in p.warnings))
    columns = None
    if fmt == "json":
        keys = [column["name"] for p in parts for column in p.documents.columns]
        columns, more = json_columns(keys, plan.select_paths, settings.max_columns)
        warnings += more
    if plan.request.max_file_size_bytes is not None:
        files = part_files(plan, parts, columns)
    else:
        documents = _file(
            plan, "documents", plan.documents_name, [p.documents for p in parts], storage
        )
        if columns is not None:
            documents = documents.model_copy(update={"columns": columns})
        files = [documents]
        if plan.request.include_vectors:
            vectors = [p.vectors for p in parts if p.vectors is not None]
            files.append(_file(plan, "vectors", plan.vectors_name, vectors, storage))
    deleted_count = None
    if plan.changed_since is not None:  # M6: one file, never cut into parts
        files.append(deletes_file(plan, store, settings))
        deleted_count = files[-1].rows
    preview = [row for p in parts for row in p.preview][:PREVIEW_ROWS]
    return Outputs(
        deleted_count=deleted_count,
        document_count=sum(p.documents.rows for p in parts),
        files=files,
        warnings=warnings,
        preview=markdown_table(preview),
        shards=[
            {
                "index": p.shard.index,
                "document_count": p.documents.rows,
                "worker": p.worker,
                "seconds": p.seconds,
            }
            for p in parts
        ],
    )


def _reshaped(
    plan: ExportPlan, selection: Selection, parts: list[ShardParts], store: Store
) -> list[ShardParts]:
    """The parts as they are if the structures the shards wrote make the snapshot's shape,
    else every shard written again with theirs."""
    found = [np.asarray(part.structure_counts or [], dtype=np.int64) for part in parts]
    counts = summed_counts(found)
    max_columns = store.settings.max_columns
    theirs = counted_shape(plan, store, counts.tolist(), max_columns)
    # what the shards wrote with: the snapshot's shape (a numbered store: its sidecars)
    snapshot = store.documents.shapes(plan.collection, copies=plan.segment_copies) or []
    fmt, select = plan.request.format, plan.select_paths
    written = shape_of(snapshot, select, fmt=fmt, max_columns=max_columns)
    if same_shape(theirs, written):
        return parts
    return [
        write_parts(plan, store, store.settings, Selection(), part.shard, shape=theirs)
        for part in parts
    ]


def _file(
    plan: ExportPlan, role: str, name: str, parts: list[Part], storage: Storage
) -> OutputFile:
    """One published file from its parts: the single part itself, or their assembly."""
    fmt = plan.request.format
    columns = parts[0].columns if parts else []
    if len(parts) == 1:
        return part_file(role, name, parts[0], fmt, columns)
    # Parts on the export storage stay there: only footers are read, and the checksum
    # reads them through; the storage copies their bytes into the file.
    read = storage.read_range
    sources = [part.source() for part in parts]
    pieces = assembled(fmt, sources, read_stored=read)  # the first csv part: header
    return OutputFile(
        role=role,
        name=name,
        path=scratch_files(plan) / name,
        content_type=CONTENT_TYPES[fmt],
        rows=sum(part.rows for part in parts),
        bytes=size_of_pieces(pieces),
        sha256=sha256_of_pieces(pieces, read),
        columns=columns,
        pieces=list(pieces),
    )

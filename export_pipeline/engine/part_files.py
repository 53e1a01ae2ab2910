"""An export cut by `max_file_size_bytes`: the shards' part files, numbered as published."""

from __future__ import annotations

from itertools import zip_longest

from export_pipeline.engine.manifest import OutputFile, sha256_of
from export_pipeline.engine.parts import Part, ShardParts
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.writers import CONTENT_TYPES
from export_pipeline.storage.base import StoredRange


def part_files(
    plan: ExportPlan, parts: list[ShardParts], json_keys: list[dict[str, str]] | None
) -> list[OutputFile]:
    """Every shard's part files, numbered in shard order: the documents', then the
    vectors'. Shards that wrote no rows add none (all of them: the first one's empty part)."""
    rolled = [(p.documents_parts or [], p.vectors_parts or []) for p in parts]
    kept = [pair for shard in rolled for pair in zip_longest(*shard) if pair[0].rows]
    if not kept:
        kept = list(zip_longest(*rolled[0]))[:1]
    fmt = plan.request.format

    def output(role: str, name: str, part: Part, columns: list[dict[str, str]]) -> OutputFile:
        return part_file(role, name, part, fmt, columns)

    files = [
        output(
            "documents",
            plan.documents_part_name(n),
            docs,
            docs.columns if json_keys is None else json_keys,
        )
        for n, (docs, _) in enumerate(kept)
    ]
    if plan.request.include_vectors:
        files += [
            output("vectors", plan.vectors_part_name(n), vectors, vectors.columns)
            for n, (_, vectors) in enumerate(kept)
            if vectors is not None
        ]
    return files


def part_file(
    role: str, name: str, part: Part, fmt: str, columns: list[dict[str, str]]
) -> OutputFile:
    """One part file published as it is, with its size and checksum (a part on the export
    storage: the ones its shard took, and its object as the file's one piece)."""
    source = part.source()
    stored = source if isinstance(source, StoredRange) else None
    return OutputFile(
        role=role,
        name=name,
        path=part.path,
        content_type=CONTENT_TYPES[fmt],
        rows=part.rows,
        bytes=stored.length if stored is not None else part.path.stat().st_size,
        sha256=part.sha256
        if stored is not None and part.sha256 is not None
        else sha256_of(part.path),
        columns=columns,
        pieces=[stored] if stored is not None else None,
    )

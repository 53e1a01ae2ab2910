"""Which documents an export takes: the filter and the sample, decided batch by batch.

Only a sample needs a pass over the matches before writing (to find the N-th match by rank),
and so do csv and parquet exports of a filtered or sampled selection, whose columns must be
known before the first row is written. That pass (`survey`) keeps only the N lowest-ranked
matches of a sample, and of every match only its structure's count; the counts go to a
small file in the export's scratch folder for the write step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from export_pipeline import duck
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.filters import install_macros
from export_pipeline.paths import json_path
from export_pipeline.settings import Settings
from export_pipeline.store import Store

# O2: documents are ranked by a hash of seed and id, and the first N kept. Hashing the
# joined text (combining two hashes only mixes them weakly) gives each seed its own
# pseudo-random order. Only ids are ranked: documents never pass through a reservoir.
_RANK = "hash(CAST(? AS VARCHAR) || ':' || document_id)"


class Selection(BaseModel):
    """What the survey decided: small, so it can pass between steps."""

    surveyed: bool = False  # the scratch database holds the chosen documents' structures
    matched: int | None = None  # documents the export writes, when known before writing
    cutoff: tuple[int, str] | None = None  # the N-th match's (rank, id) when sampling


def open_scratch(plan: ExportPlan, settings: Settings) -> duckdb.DuckDBPyConnection:
    """The export's own DuckDB connection, spilling into its scratch folder."""
    plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    con = duck.connect(
        temp_dir=plan.scratch_dir / "duckdb_tmp",
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
    )
    # Per-batch queries return rows in the batch's (document_id) order.
    con.execute("SET preserve_insertion_order = true")
    install_macros(con)
    return con


def selects_all(plan: ExportPlan) -> bool:
    """Whether the export takes every document of its snapshot (no filter, no sample)."""
    return plan.filter_sql == "TRUE" and plan.request.sample_size is None


def needs_survey(plan: ExportPlan) -> bool:
    """A sample needs its cutoff; csv, parquet and listed fields need the selection's shapes."""
    if plan.request.sample_size is not None:
        return True
    return not selects_all(plan) and (
        plan.request.format != "json" or plan.select_paths is not None
    )


def survey(con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store) -> Selection:
    """A pass over the matches before writing: the sample's cutoff, and the structures of
    the chosen documents (kept in the scratch database for the write step)."""
    if not needs_survey(plan):
        return Selection()
    shapes = plan.request.format != "json" or plan.select_paths is not None
    reads_docs = shapes or plan.filter_sql != "TRUE"
    columns = ["document_id", "doc"] if reads_docs else ["document_id"]
    rows = store.documents.rows(plan.collection, columns, duck.batch_bytes(con))
    if plan.request.sample_size is None:
        counts = _count_shapes(con, plan, rows)
        matched, cutoff = sum(counts.values()), None
    else:
        counts, matched, cutoff = _sample(con, plan, rows, shapes)
    table = pa.table(
        {"shape": list(counts), "n": list(counts.values())},
        schema=pa.schema([("shape", pa.string()), ("n", pa.int64())]),
    )
    pq.write_table(table, _chosen_shapes(plan))
    return Selection(surveyed=True, matched=matched, cutoff=cutoff)


def _count_shapes(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, rows: Iterator[pa.Table]
) -> Counter[str]:
    """The matches' structures, counted batch by batch (nothing kept per document)."""
    counts: Counter[str] = Counter()
    sql = (
        f"SELECT json_structure(doc)::VARCHAR, count(*) FROM {duck.BATCH}"
        f" WHERE {plan.filter_sql} GROUP BY 1"
    )
    for batch in rows:
        found = duck.on_batch(con, sql, batch, plan.filter_params)
        counts.update(dict(zip(*(c.to_pylist() for c in found.columns), strict=True)))
    return counts


def _sample(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, rows: Iterator[pa.Table], shapes: bool
) -> tuple[Counter[str], int, tuple[int, str] | None]:
    """The N lowest-ranked matches (O2), kept N at a time: their structures, their number,
    and the N-th's (rank, id), or no cutoff when fewer match."""
    size = plan.request.sample_size
    assert size is not None
    shape = "json_structure(doc)::VARCHAR" if shapes else "NULL::VARCHAR"
    sql = (
        f"SELECT {_RANK} AS rank, document_id, {shape} AS shape FROM {duck.BATCH}"
        f" WHERE {plan.filter_sql}"
    )
    params = [str(plan.sample_seed), *plan.filter_params]
    known: dict[str, int] = {}  # structure text -> a small number; documents keep the number
    kept: list[pa.Table] = []
    held = 0
    for batch in rows:
        found = duck.on_batch(con, sql, batch, params)
        kept.append(_numbered(found, known))
        held += found.num_rows
        if held > 2 * size:  # only ever the N lowest can be chosen: drop the rest
            kept = [_lowest(pa.concat_tables(kept), size)]
            held = kept[0].num_rows
    chosen = _lowest(pa.concat_tables(kept), size) if kept else None
    if chosen is None or chosen.num_rows == 0:
        return Counter(), 0, None
    texts = {number: text for text, number in known.items()}
    numbers = Counter(chosen.column("shape").to_pylist())
    counts = Counter({texts[n]: count for n, count in numbers.items() if n in texts})
    cutoff = None
    if chosen.num_rows == size:
        last = chosen.slice(size - 1, 1).to_pylist()[0]
        cutoff = (int(last["rank"]), last["document_id"])
    return counts, chosen.num_rows, cutoff


def _numbered(found: pa.Table, known: dict[str, int]) -> pa.Table:
    """The batch's structures replaced by numbers (one text per distinct structure)."""
    encoded = pc.dictionary_encode(found.column("shape").combine_chunks())
    numbers = [
        known.setdefault(text, len(known)) if text is not None else -1
        for text in encoded.dictionary.to_pylist()
    ]
    mapped = pc.take(pa.array(numbers, pa.int32()), encoded.indices)
    return pa.table(
        {"rank": found.column("rank"), "document_id": found.column("document_id"), "shape": mapped}
    )


def _lowest(table: pa.Table, size: int) -> pa.Table:
    order = [("rank", "ascending"), ("document_id", "ascending")]
    if table.num_rows > size:
        table = table.take(pc.select_k_unstable(table, size, order))
    return table.take(pc.sort_indices(table, order))


def surveyed_shapes(plan: ExportPlan) -> list[tuple[str, int]]:
    """The distinct structures of the chosen documents, with counts."""
    table = pq.read_table(_chosen_shapes(plan))
    return list(zip(table.column("shape").to_pylist(), table.column("n").to_pylist(), strict=True))


def _chosen_shapes(plan: ExportPlan) -> Path:
    """Where the survey leaves its counts for the write step (small: one row per structure)."""
    return plan.scratch_dir / "chosen_shapes.parquet"


def chosen(plan: ExportPlan, selection: Selection) -> tuple[str, list[Any]]:
    """The row predicate over a batch (document_id, doc) that picks the exported documents."""
    where, params = plan.filter_sql, list(plan.filter_params)
    if selection.cutoff is not None:  # with fewer matches than sample_size, every match
        rank, document_id = selection.cutoff
        seed = str(plan.sample_seed)
        where = (
            f"({where}) AND ({_RANK} < ?::UBIGINT OR ({_RANK} = ?::UBIGINT AND document_id <= ?))"
        )
        params += [seed, rank, seed, rank, document_id]
    return where, params


def keep(
    con: duckdb.DuckDBPyConnection, batch: pa.Table, where: str, params: list[Any]
) -> pa.Table:
    """The rows of `batch` the predicate holds for, in their order."""
    if where == "TRUE":
        return batch
    mask = duck.on_batch(con, f"SELECT ({where}) AS keep FROM {duck.BATCH}", batch, params)
    return batch.filter(mask.column(0))


def projection_sql(paths: list[str]) -> str:
    """W2/S2: a JSON object text of the listed paths, parents rebuilt, missing paths omitted."""
    tree: dict[str, dict] = {}
    for path in paths:
        node = tree
        for segment in path.split("."):
            node = node.setdefault(segment, {})
    return _object_sql(tree, [])


def _object_sql(tree: dict[str, dict], prefix: list[str]) -> str:
    members = []
    for key, children in tree.items():
        path = [*prefix, key]
        if children:
            value = _object_sql(children, path)
        else:
            value = f"CAST(json_extract(doc, {duck.literal(json_path('.'.join(path)))}) AS VARCHAR)"
        # P1 keys hold no quotes or backslashes, so the key is valid JSON as written.
        members.append(f"""'"{key}":' || {value}""")
    # concat_ws skips NULLs: a missing member disappears, and an empty object with it.
    return f"'{{' || nullif(concat_ws(',', {', '.join(members)}), '') || '}}'"


def scratch_files(plan: ExportPlan) -> Path:
    """Where the export's output files are written before publishing."""
    folder = plan.scratch_dir / "out"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

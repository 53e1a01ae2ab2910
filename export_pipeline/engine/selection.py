"""Which documents an export takes: the filter and the sample, decided batch by batch.

Only a sample needs a pass over the matches before writing (to find the N-th match by rank),
and so do csv and parquet exports of a filtered or sampled selection, whose columns must be
known before the first row is written. That pass (`survey`) keeps, per match, its rank, id
and JSON structure in the export's own DuckDB file; the write pass reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
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
CANDIDATES = "candidates"


class Selection(BaseModel):
    """What the survey decided: small, so it can pass between steps."""

    surveyed: bool = False  # the candidates table holds every match (rank, id, structure)
    matched: int | None = None  # documents the export writes, when known before writing
    cutoff: tuple[int, str] | None = None  # the N-th match's (rank, id) when sampling


def open_scratch(plan: ExportPlan, settings: Settings) -> duckdb.DuckDBPyConnection:
    """The export's own DuckDB database file in its scratch folder (never a shared one)."""
    plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    con = duck.connect(
        plan.scratch_dir / "work.duckdb",
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
    """Pass over the matches before writing: their ranks, ids and structures; the cutoff."""
    if not needs_survey(plan):
        return Selection()
    shapes = plan.request.format != "json" or plan.select_paths is not None
    reads_docs = shapes or plan.filter_sql != "TRUE"
    rank = _RANK if plan.request.sample_size is not None else "NULL::UBIGINT"
    shape = "json_structure(doc)::VARCHAR" if shapes else "NULL::VARCHAR"
    con.execute(f"CREATE TABLE {CANDIDATES} (rank UBIGINT, document_id VARCHAR, shape VARCHAR)")
    sql = (
        f"INSERT INTO {CANDIDATES} SELECT {rank}, document_id, {shape} FROM {duck.BATCH}"
        f" WHERE {plan.filter_sql}"
    )
    seed = [str(plan.sample_seed)] if plan.request.sample_size is not None else []
    columns = ["document_id", "doc"] if reads_docs else ["document_id"]
    for batch in store.documents.rows(plan.collection, columns, duck.batch_bytes(con)):
        _execute(con, sql, batch, [*seed, *plan.filter_params])
    cutoff = None
    if plan.request.sample_size is not None:
        found = con.execute(
            f"SELECT rank, document_id FROM {CANDIDATES} ORDER BY rank, document_id"
            " LIMIT 1 OFFSET ?",
            [plan.request.sample_size - 1],
        ).fetchall()
        cutoff = (int(found[0][0]), found[0][1]) if found else None
    selection = Selection(surveyed=True, cutoff=cutoff)
    where, params = _chosen_candidates(selection)
    (count,) = con.execute(f"SELECT count(*) FROM {CANDIDATES} WHERE {where}", params).fetchall()[0]
    return selection.model_copy(update={"matched": count})


def surveyed_shapes(con: duckdb.DuckDBPyConnection, selection: Selection) -> list[tuple[str, int]]:
    """The distinct structures of the chosen documents, with counts."""
    where, params = _chosen_candidates(selection)
    return con.execute(
        f"SELECT shape, count(*) FROM {CANDIDATES} WHERE {where} GROUP BY shape", params
    ).fetchall()


def _chosen_candidates(selection: Selection) -> tuple[str, list[Any]]:
    if selection.cutoff is None:
        return "TRUE", []
    rank, document_id = selection.cutoff
    return "(rank < ? OR (rank = ? AND document_id <= ?))", [rank, rank, document_id]


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


def _execute(con: duckdb.DuckDBPyConnection, sql: str, batch: pa.Table, params: list[Any]) -> None:
    con.register(duck.BATCH, batch)
    try:
        con.execute(sql, params or None)
    finally:
        con.unregister(duck.BATCH)


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

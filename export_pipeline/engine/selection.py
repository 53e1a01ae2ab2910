"""Plan -> the `selected` table in the export's own DuckDB file: filter, sample, project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from export_pipeline import duck
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.schema import shapes_of
from export_pipeline.filters import install_macros
from export_pipeline.paths import json_path
from export_pipeline.settings import Settings
from export_pipeline.store import Store
from export_pipeline.store.jsonl import vector_column

SELECTED = "selected"
BATCH_ROWS = 16_384


def open_scratch(plan: ExportPlan, settings: Settings) -> duckdb.DuckDBPyConnection:
    """The export's own DuckDB database file in its scratch folder (never a shared one)."""
    plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    con = duck.connect(
        plan.scratch_dir / "work.duckdb",
        temp_dir=plan.scratch_dir / "duckdb_tmp",
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
    )
    if ordered(plan):
        # The snapshot's rows come in document_id order by themselves: keep that order
        # instead of sorting documents and vectors again (O3).
        con.execute("SET preserve_insertion_order = true")
    install_macros(con)
    return con


def ordered(plan: ExportPlan) -> bool:
    """Whether a scan of the snapshot is already in document_id order: every segment is
    sorted, so a snapshot of at most one segment is."""
    return len(plan.collection.segments) <= 1


# O2: documents are ranked by a hash of seed and id, and the first N kept. Hashing the
# joined text (combining two hashes only mixes them weakly) gives each seed its own
# pseudo-random order. Only ids are ranked: documents and vectors never pass through a
# reservoir.
_RANK = "hash(CAST(? AS VARCHAR) || ':' || document_id)"


def select_documents(con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store) -> int:
    """Materialise the matching (and sampled) documents, projected per S1/S2; return the count."""
    source = store.documents.scan_sql(plan.collection)
    if plan.request.sample_size is not None:
        # The N-th (rank, id) of the matches: "at or before it" is then a row predicate,
        # which keeps any scan of the segments in its own (sorted) order.
        con.execute(
            f"CREATE TABLE sample_cutoff AS SELECT {_RANK} AS rank, document_id FROM {source}"
            f" WHERE {plan.filter_sql} ORDER BY rank, document_id LIMIT 1 OFFSET ?",
            [plan.sample_seed, *plan.filter_params, plan.request.sample_size - 1],
        )
    where, params = chosen(con, plan)
    line = projection_sql(plan.select_paths) if plan.select_paths else "doc"
    # Every document of the snapshot: a view over the segments, so the documents are not
    # copied once more before they are written.
    kind = "VIEW" if selects_all(plan) else "TABLE"
    con.execute(
        f"CREATE {kind} {SELECTED} AS SELECT document_id, {line} AS doc FROM {source}"
        f" WHERE {where}",
        params,
    )
    return con.execute(f"SELECT count(*) FROM {SELECTED}").fetchall()[0][0]


def chosen(con: duckdb.DuckDBPyConnection, plan: ExportPlan) -> tuple[str, list[Any]]:
    """The row predicate (and its parameters) that picks the exported documents."""
    where, params = plan.filter_sql, list(plan.filter_params)
    cutoff = []
    if plan.request.sample_size is not None:
        cutoff = con.execute("SELECT rank, document_id FROM sample_cutoff").fetchall()
    if cutoff:  # with fewer matches than sample_size, every match is taken
        rank, document_id = cutoff[0]
        seed = plan.sample_seed
        where = (
            f"({where}) AND ({_RANK} < ?::UBIGINT OR ({_RANK} = ?::UBIGINT AND document_id <= ?))"
        )
        params += [seed, rank, seed, rank, document_id]
    return where, params


def selected_shapes(plan: ExportPlan, store: Store) -> str:
    """The (doc, n) shapes of the exported documents: from the segments' sidecars when the
    export takes every document, else from the selected documents themselves."""
    sidecars = store.documents.shapes_sql(plan.collection)
    if not selects_all(plan) or sidecars is None:
        return shapes_of(SELECTED)
    doc = projection_sql(plan.select_paths) if plan.select_paths else "doc"
    return f"(SELECT {doc} AS doc, n FROM {sidecars})"


def selects_all(plan: ExportPlan) -> bool:
    """Whether the export takes every document of its snapshot (no filter, no sample)."""
    return plan.filter_sql == "TRUE" and plan.request.sample_size is None


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


def selected_vectors(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store
) -> tuple[str, list[Any], bool]:
    """W1: a query for document_id plus one column per vector index of the selected
    documents, its parameters, and whether its rows already come in document_id order.

    Segments are sorted by document_id and the selection is a row predicate, so a
    one-segment snapshot is read in order (with insertion order kept) and its vectors are
    never sorted; several segments are sorted together.
    """
    columns = "".join(
        f", {duck.identifier(vector_column(index.name))} AS {duck.identifier(index.name)}"
        for index in plan.collection.vector_indexes
    )
    where, params = chosen(con, plan)
    source = store.documents.scan_sql(plan.collection)
    order = "" if ordered(plan) else " ORDER BY document_id"
    return f"SELECT document_id{columns} FROM {source} WHERE {where}{order}", params, ordered(plan)


def scratch_files(plan: ExportPlan) -> Path:
    """Where the export's output files are written before publishing."""
    folder = plan.scratch_dir / "out"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

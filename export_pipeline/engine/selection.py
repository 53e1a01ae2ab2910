"""Plan -> the `selected` table in the export's own DuckDB file: filter, sample, project."""

from __future__ import annotations

from pathlib import Path

import duckdb

from export_pipeline import duck
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.filters import install_macros
from export_pipeline.paths import json_path
from export_pipeline.settings import Settings
from export_pipeline.store import Store
from export_pipeline.store.jsonl import vector_column

SELECTED = "selected"


def open_scratch(plan: ExportPlan, settings: Settings) -> duckdb.DuckDBPyConnection:
    """The export's own DuckDB database file in its scratch folder (never a shared one)."""
    plan.scratch_dir.mkdir(parents=True, exist_ok=True)
    con = duck.connect(
        plan.scratch_dir / "work.duckdb",
        temp_dir=plan.scratch_dir / "duckdb_tmp",
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
    )
    install_macros(con)
    return con


def select_documents(con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store) -> int:
    """Materialise the matching (and sampled) documents, projected per S1/S2; return the count."""
    source = store.documents.scan_sql(plan.collection)
    matches = f"SELECT document_id, doc FROM {source} WHERE {plan.filter_sql}"
    params = list(plan.filter_params)
    if plan.request.sample_size is not None:
        # O2: rank ids by a hash of seed and id and keep the first N. Hashing the joined
        # text (combining two hashes only mixes them weakly) gives each seed its own
        # pseudo-random order. Only ids are sorted: documents and vectors never pass
        # through a reservoir.
        con.execute(
            "CREATE TABLE sample_ids AS SELECT document_id FROM "
            f"({matches}) ORDER BY hash(CAST(? AS VARCHAR) || ':' || document_id), document_id"
            " LIMIT ?",
            [*params, plan.sample_seed, plan.request.sample_size],
        )
        matches = f"SELECT document_id, doc FROM {source} SEMI JOIN sample_ids USING (document_id)"
        params = []
    line = projection_sql(plan.select_paths) if plan.select_paths else "doc"
    # Every document of the snapshot: a view over the segments, so the documents are not
    # copied once more before they are written.
    kind = "VIEW" if selects_all(plan) else "TABLE"
    con.execute(
        f"CREATE {kind} {SELECTED} AS SELECT document_id, {line} AS doc FROM ({matches})", params
    )
    return con.execute(f"SELECT count(*) FROM {SELECTED}").fetchall()[0][0]


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


def selected_vectors_sql(plan: ExportPlan, store: Store) -> str:
    """W1: document_id plus one column per vector index, for the selected documents."""
    columns = ", ".join(
        f"{duck.identifier(vector_column(index.name))} AS {duck.identifier(index.name)}"
        for index in plan.collection.vector_indexes
    )
    source = store.documents.scan_sql(plan.collection)
    chosen = "" if selects_all(plan) else f" SEMI JOIN {SELECTED} USING (document_id)"
    return f"SELECT document_id{', ' if columns else ''}{columns} FROM {source}{chosen}"


def scratch_files(plan: ExportPlan) -> Path:
    """Where the export's output files are written before publishing."""
    folder = plan.scratch_dir / "out"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

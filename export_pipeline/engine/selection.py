"""Which documents an export takes: the filter and the sample, decided before the shards write.

The shards write in parallel, so what is decided over the whole selection is decided once,
before them (the survey), and each shard then evaluates the same predicate over its rows
(`chosen_where`): the filter, and for a sample "rank at or before the N-th match's (rank, id)".
A sample needs its cutoff: a pass over the matches ranks them (ids only; the N lowest kept
with numpy). csv and parquet exports (and listed fields) of some documents need the chosen
documents' structures before the first row is written: the store numbers each document's
structure at ingest (SHAPE_ID), so the survey only counts the numbers of the chosen rows.
A filter without a sample needs no survey where DuckDB may read the snapshot itself
(`Selection.streamed`): each shard reads, filters and converts its matches in one streaming
query with the snapshot's shape and counts the structures it wrote; where those make another
shape, the files are written again with it (`ExportLifecycle.assemble`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from export_pipeline import duck
from export_pipeline.engine.changed_ids import only_changed
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.tally import Tally
from export_pipeline.filters import install_macros, uses_macros
from export_pipeline.paths import json_path
from export_pipeline.settings import Settings
from export_pipeline.store import Store
from export_pipeline.store.batches import QUERY_ROWS, gathered
from export_pipeline.store.segments import SHAPE_ID

# O2: documents are ranked by a hash of seed and id, and the first N kept. Hashing the
# joined text (combining two hashes only mixes them weakly) gives each seed its own
# pseudo-random order. Only ids are ranked: documents never pass through a reservoir.
_RANK = "hash(CAST(? AS VARCHAR) || ':' || document_id)"


class Selection(BaseModel):
    """What the survey decided: small, so it can pass between steps."""

    surveyed: bool = False  # the scratch folder holds the chosen documents' structures
    matched: int | None = None  # documents the export writes, when known before writing
    cutoff: tuple[int, str] | None = None  # the N-th match's (rank, id) when sampling
    # no pass was needed: the shards read the matches in one streaming query each, with the
    # snapshot's shape, and count the structures of the rows they write
    streamed: bool = False


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
    if uses_macros(plan.filter_sql):
        install_macros(con)
    return con


def selects_all(plan: ExportPlan) -> bool:
    """Whether the export takes every document of its snapshot (no filter, no sample, not
    only what changed)."""
    return (
        plan.filter_sql == "TRUE"
        and plan.request.sample_size is None
        and plan.changed_since is None
    )


def needs_survey(plan: ExportPlan) -> bool:
    """A sample needs its cutoff; csv, parquet and listed fields need the selection's shapes."""
    if plan.request.sample_size is not None:
        return True
    return not selects_all(plan) and (
        plan.request.format != "json" or plan.select_paths is not None
    )


def streams_matches(plan: ExportPlan) -> bool:
    """Whether the export could skip the survey: a filter without a sample or vectors whose
    writers need the shape (csv, parquet, listed fields), if DuckDB may read the snapshot."""
    return (
        plan.request.sample_size is None
        and plan.changed_since is None  # its rows are restricted in Arrow (only_changed)
        and not plan.request.include_vectors
        and (plan.request.format != "json" or plan.select_paths is not None)
    )


def survey(con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store) -> Selection:
    """A pass over the matches before writing: the sample's cutoff and the structures of the
    chosen documents (their counts). Where the store numbers each document's structure
    (SHAPE_ID), counting the numbers is all; segments of older versions have their
    structures derived here."""
    if not needs_survey(plan):
        return Selection()
    shapes = plan.request.format != "json" or plan.select_paths is not None
    copies = plan.segment_copies
    numbered = shapes and store.documents.numbered(plan.collection, copies=copies)
    limit = duck.batch_bytes(con)
    streamable = numbered and streams_matches(plan)
    if streamable and store.documents.scan_source(plan.collection, limit, copies=copies):
        return Selection(streamed=True)
    derive = shapes and not numbered  # json_structure of each match, as older stores need
    columns = ["document_id"]
    if plan.filter_sql != "TRUE" or derive:
        columns.append("doc")
    if numbered:
        columns.append(SHAPE_ID)
    rows = store.documents.rows(plan.collection, columns, limit, copies=copies)
    rows = gathered(rows, limit, QUERY_ROWS)
    known: dict[str, int] = {}  # derived structures -> their numbers
    tally = Tally(plan.request.sample_size)
    for batch in rows:
        batch = only_changed(plan, store, batch)
        keep, rank, derived = _judge(con, plan, batch, derive)
        if numbered:
            number = batch.column(SHAPE_ID).to_numpy()
        elif derived is not None:
            number = _numbered(derived, known)
        else:
            number = np.full(batch.num_rows, -1, dtype=np.int32)
        tally.add(keep, rank, number, batch.column("document_id"))
    matched, counts, cutoff = tally.result()
    texts = pa.chunked_array([pa.array(list(known), pa.string())])
    if numbered:
        texts = store.documents.structures(plan.collection, copies=copies)
    _count_shapes(plan, texts, counts if shapes else np.zeros(0, np.int64))
    return Selection(surveyed=True, matched=matched, cutoff=cutoff)


def _count_shapes(plan: ExportPlan, texts: pa.ChunkedArray, counts: np.ndarray) -> None:
    """Leave the chosen documents' structures (numbers into `texts`, with their counts) for
    the write step."""
    counts = np.pad(counts, (0, max(0, len(texts) - len(counts))))
    present = np.flatnonzero(counts)
    table = pa.table(
        {"shape": texts.take(present), "n": counts[present].astype(np.int64)},
        schema=pa.schema([("shape", pa.string()), ("n", pa.int64())]),
    )
    pq.write_table(table, chosen_shapes(plan))


def matching_rows(
    con: duckdb.DuckDBPyConnection,
    plan: ExportPlan,
    store: Store,
    columns: list[str],
    where: tuple[str, list[Any]],
    max_bytes: int,
    max_rows: int,
) -> Iterator[pa.Table] | None:
    """The snapshot's rows the predicate holds for, in id order, read and filtered by one
    streaming DuckDB query on every thread; None where the segments do not let DuckDB read
    them itself within the bounds of a batch (`Documents.scan_source`)."""
    files = store.documents.scan_files(plan.collection, max_bytes, copies=plan.segment_copies)
    if files is None:
        return None
    source = duck.parquet_source(files)
    selected = list(columns)
    params: list[Any] = []
    if SHAPE_ID in columns:  # numbered per segment on disk: made snapshot-wide
        selected[columns.index(SHAPE_ID)], params = store.documents.shape_id_sql(
            plan.collection, files, copies=plan.segment_copies
        )
    sql = f"SELECT {', '.join(selected)} FROM {source} WHERE {where[0]}"
    batches = duck.streamed(con, sql, params + where[1], max_rows)
    return gathered((pa.Table.from_batches([batch]) for batch in batches), max_bytes, max_rows)


def _judge(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, batch: pa.Table, derive: bool
) -> tuple[np.ndarray, np.ndarray | None, pa.Array | None]:
    """A batch's matches (bool), ranks when sampling, and structure texts of the matches
    when they must be derived: one DuckDB query, none when nothing is to be computed."""
    sample = plan.request.sample_size is not None
    if plan.filter_sql == "TRUE" and not sample and not derive:
        return np.ones(batch.num_rows, dtype=bool), None, None
    outputs = ["keep"]
    if sample:
        outputs.append(f"{_RANK} AS rank")
    if derive:
        outputs.append("CASE WHEN keep THEN json_structure(doc)::VARCHAR END AS shape")
    doc = ", doc" if "doc" in batch.column_names else ""
    sql = (
        f"SELECT {', '.join(outputs)} FROM"
        f" (SELECT document_id{doc}, ({plan.filter_sql}) AS keep FROM {duck.BATCH})"
    )
    # placeholders in the order they appear: the rank's seed, then the filter's
    params = [*([str(plan.sample_seed)] if sample else []), *plan.filter_params]
    found = duck.on_batch(con, sql, batch, params)
    keep = found.column("keep").to_numpy(zero_copy_only=False).astype(bool)
    rank = found.column("rank").to_numpy() if sample else None
    derived = found.column("shape").combine_chunks() if derive else None
    return keep, rank, derived


def _numbered(texts: pa.Array, known: dict[str, int]) -> np.ndarray:
    """Structure texts replaced by numbers (Python sees each distinct text once); -1 where
    there is none (rows not chosen)."""
    encoded = pc.dictionary_encode(texts)
    numbers = np.array(
        [
            known.setdefault(text, len(known)) if text is not None else -1
            for text in encoded.dictionary.to_pylist()
        ]
        + [-1],
        dtype=np.int32,
    )
    indices = encoded.indices.fill_null(len(numbers) - 1)
    return numbers[indices.to_numpy(zero_copy_only=False)]


def surveyed_shapes(plan: ExportPlan) -> list[tuple[str, int]]:
    """The distinct structures of the chosen documents, with counts."""
    table = pq.read_table(chosen_shapes(plan))
    return list(zip(table.column("shape").to_pylist(), table.column("n").to_pylist(), strict=True))


def chosen_shapes(plan: ExportPlan) -> Path:
    """Where the survey leaves its counts for the write step (small: one row per structure)."""
    return plan.scratch_dir / "chosen_shapes.parquet"


def chosen_where(plan: ExportPlan, selection: Selection) -> tuple[str, list[Any]]:
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

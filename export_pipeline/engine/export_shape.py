"""Which shape an export's csv and parquet files take (columns, types, warnings): from the
survey's counts, the snapshot's recorded structures, or a pass over the documents; and,
after streamed shards, from the structures they counted."""

from __future__ import annotations

from collections import Counter

import duckdb
import numpy as np

from export_pipeline import duck
from export_pipeline.engine.plan import ExportPlan
from export_pipeline.engine.schema import Shape, shape_of
from export_pipeline.engine.selection import Selection, selects_all, surveyed_shapes
from export_pipeline.engine.writers import top_level_keys
from export_pipeline.store import Store


def export_shape(
    con: duckdb.DuckDBPyConnection,
    plan: ExportPlan,
    store: Store,
    selection: Selection,
    max_columns: int,
) -> Shape | None:
    """What the writers need to know of the exported documents' structure; None for a json
    export without listed fields of a selection (it lists the keys it writes)."""
    fmt, select = plan.request.format, plan.select_paths
    if fmt == "json" and select is None and not selects_all(plan):
        return None
    if selection.surveyed:
        shapes = surveyed_shapes(plan)
    else:
        snapshot = store.documents.shapes(plan.collection, copies=plan.segment_copies)
        shapes = snapshot or _shapes_by_pass(con, plan, store)
    if fmt == "json" and select is None:  # json lines need only the top-level keys
        return Shape(structure=dict.fromkeys(top_level_keys(con, [text for text, _ in shapes])))
    return shape_of(shapes, select, fmt=fmt, max_columns=max_columns)


def counted_shape(plan: ExportPlan, store: Store, counts: list[int], max_columns: int) -> Shape:
    """The shape of the documents written, from their rows per SHAPE_ID."""
    found = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(found)
    structures = store.documents.structures(plan.collection, copies=plan.segment_copies)
    texts = structures.take(present).to_pylist()
    shapes = list(zip(texts, found[present].tolist(), strict=True))
    fmt, select = plan.request.format, plan.select_paths
    return shape_of(shapes, select, fmt=fmt, max_columns=max_columns)


def same_shape(one: Shape | None, other: Shape | None) -> bool:
    """Whether two shapes give the same file: columns in the same order, same warnings."""
    if one is None or other is None:
        return one is other
    # dicts compare without their order; their text shows it, at every level
    return one == other and str(one.structure) == str(other.structure)


def _shapes_by_pass(
    con: duckdb.DuckDBPyConnection, plan: ExportPlan, store: Store
) -> list[tuple[str, int]]:
    """Every document's structure, counted (for segments written without a sidecar)."""
    counts: Counter[str] = Counter()
    sql = f"SELECT json_structure(doc)::VARCHAR, count(*) FROM {duck.BATCH} GROUP BY 1"
    rows = store.documents.rows(
        plan.collection, ["doc"], duck.batch_bytes(con), copies=plan.segment_copies
    )
    for batch in rows:
        found = duck.on_batch(con, sql, batch)
        for shape, count in zip(*(column.to_pylist() for column in found.columns), strict=True):
            counts[shape] += count
    return list(counts.items())

"""An incremental export's rows (M6): only those whose ids changed after `changed_since`."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline.engine.plan import ExportPlan
from export_pipeline.store import Store


@functools.lru_cache(maxsize=4)
def _changed_ids(files: tuple[str, ...]) -> pa.Array:
    if not files:
        return pa.array([], pa.string())
    tables = [pq.read_table(path, columns=["document_id"]) for path in files]
    return pc.unique(pa.concat_tables(tables).column(0).combine_chunks())


def history_copies(plan: ExportPlan, store: Store) -> list[str]:
    """The plan's history files as local files (S3 ones copied into this step's scratch
    folder, as segments are: steps on other machines fetch their own)."""
    found = store.documents.files.local_copies(plan.changed_files, plan.segment_copies)
    return [str(path) for path in found]


def only_changed(plan: ExportPlan, store: Store, batch: pa.Table) -> pa.Table:
    """The rows of `batch` whose ids changed after `changed_since` (all without it).

    Tested in Arrow, not in the SQL predicate: an `IN (subquery)` there is a join, and a
    join does not keep the rows of a per-batch query in the batch's order, which the
    positional masks of the selection rely on."""
    if plan.changed_since is None:
        return batch
    ids = _changed_ids(tuple(history_copies(plan, store)))
    return batch.filter(pc.is_in(batch.column("document_id"), value_set=ids))

"""Deletes (docs/contract.md M2, M3): documents removed by id or by filter, as the
collection's next version, all or nothing.

A delete is an upsert of nothing: the segments holding a deleted id are rewritten without it
by the upsert's own step (`ingest.replace_stored`), the others are kept as they are, and the
swap lists the result with the version's history (M1). Exports of earlier versions keep
reading the retired segments until retention removes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from export_pipeline import duck
from export_pipeline.contract import ExportRequest
from export_pipeline.errors import InvalidInput, from_pydantic
from export_pipeline.filters import CompiledFilter, compile_filter, install_macros, uses_macros
from export_pipeline.store import ingest as steps
from export_pipeline.store.catalog import Collection
from export_pipeline.store.documents import DocumentStore
from export_pipeline.store.history import DELETE


@dataclass(frozen=True)
class DeleteResult:
    """What a delete changed (M3)."""

    deleted: int
    not_found: int
    document_count: int
    version: int


def delete_filter(filters: dict[str, Any] | None) -> CompiledFilter:
    """M2: a LogicalOperator validated as an export request's `filters` (F4), compiled by
    the export's compiler; a InvalidInput before anything is read."""
    from pydantic import ValidationError

    try:
        request = ExportRequest.model_validate({"filters": filters})
    except ValidationError as exc:
        raise from_pydantic(exc) from None
    if request.filters is None:
        raise InvalidInput("--filter must be a LogicalOperator object (AND, OR, NOT)")
    compiled = compile_filter(request.filters)
    if compiled.sql == "TRUE":  # M2: deleting everything is never said by saying nothing
        raise InvalidInput(
            "--filter has no condition, so it would delete every document; give a condition",
            [{"loc": "filter", "msg": "no condition"}],
        )
    return compiled


def target_ids(ids: pa.Array | list[str]) -> pa.Array:
    """The ids to delete as one Arrow string array (ids are never empty: blank lines skip)."""
    array = pa.array(ids, pa.string()) if isinstance(ids, list) else ids.cast(pa.string())
    return array.filter(pc.not_equal(array, ""))


def delete(
    documents: DocumentStore,
    collection: Collection,
    *,
    ids: pa.Array | None = None,
    where: CompiledFilter | None = None,
) -> DeleteResult:
    """Remove the documents with these ids, or those `where` holds for, as one new version;
    nothing deleted: no new version (M3)."""
    with documents.changing(collection) as (fresh, work, change, con):
        stored = documents.segment_files(fresh, work / "stored")
        found = work / "deleted_ids.parquet"
        deleted, not_found = _chosen(con, stored, found, ids, where)
        if deleted == 0:
            return DeleteResult(0, not_found, fresh.document_count, fresh.version)
        remote = documents.files.remote
        folder = work / "new" if remote else documents.collection_dir(fresh) / "segments"
        folder.mkdir(parents=True, exist_ok=True)
        files = dict(zip(fresh.segments, stored, strict=True))
        staged = steps.Staged(found, deleted, ascending=True)  # replaced by nothing
        steps.replace_stored(con, fresh, files, folder, staged, change)
        gone = f"read_parquet({duck.literal(str(found))})"
        history = documents.write_history(con, fresh, work, gone, DELETE, change)
        if remote:
            steps.upload(documents.files, fresh, folder, change)
        count = fresh.document_count - change.replaced
        documents.commit(fresh, change, count, history)
        return DeleteResult(change.replaced, not_found, count, fresh.version + 1)


def _chosen(
    con: duckdb.DuckDBPyConnection,
    stored: list[Path],
    target: Path,
    ids: pa.Array | None,
    where: CompiledFilter | None,
) -> tuple[int, int]:
    """Write the stored ids to delete to `target` (sorted, distinct); how many, and how many
    of the requested ids are not stored."""
    if not stored:
        return 0, 0 if ids is None else len(pc.unique(ids))
    listing = ", ".join(duck.literal(str(path)) for path in stored)
    copy = f"COPY ({{}} ORDER BY document_id) TO {duck.literal(str(target))} (FORMAT parquet)"
    if ids is not None:
        con.register("requested", pa.table({"document_id": ids}))
        con.execute(
            copy.format(
                "SELECT DISTINCT document_id FROM requested SEMI JOIN"
                f" (SELECT document_id FROM read_parquet([{listing}])) USING (document_id)"
            )
        )
        asked = con.execute("SELECT count(DISTINCT document_id) FROM requested").fetchall()[0][0]
        con.unregister("requested")
    else:
        assert where is not None
        if uses_macros(where.sql):
            install_macros(con)
        query = f"SELECT document_id FROM read_parquet([{listing}]) WHERE ({where.sql})"
        con.execute(copy.format(query), where.params)
        asked = None
    deleted = con.execute(f"SELECT count(*) FROM read_parquet({duck.literal(str(target))})")
    count = int(deleted.fetchall()[0][0])
    return count, 0 if asked is None else int(asked) - count

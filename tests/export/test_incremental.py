"""Incremental exports (M5, M6): with changed_since, the documents (and vectors) changed since
an earlier export or version, and a deletes file; applying them to the earlier export gives a
full export of the new version, document by document."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    DENSE,
    export_job,
    local_path,
    make_collection,
    read_csv,
    read_json_lines,
    read_parquet,
    write_jsonl,
)

from export_pipeline.errors import ExportPipelineError
from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.store import Collection, Namespace, Store


def doc(n: int, group: str = "a", title: str = "t") -> dict[str, Any]:
    return {
        "document_id": f"d{n:02d}",
        "n": n,
        "group": group,
        "meta": {"title": f"{title}{n}"},
        "_vectors": {"emb": [n / 2, 1.0, -0.5]},
    }


FIRST = [doc(n, "a" if n % 3 else "b") for n in range(12)]
IN_A = {"AND": [{"field": "group", "operator": "eq", "value": "a"}]}


def rows(uri: str | None, fmt: str) -> dict[str, Any]:
    """A file's rows by document_id, as parsed documents: csv's empty cells and parquet's
    nulls (columns the other export's documents have) are left out."""
    assert uri is not None
    if fmt == "json":
        found = read_json_lines(uri)
    elif fmt == "csv":
        header, *lines = read_csv(uri)
        found = [{k: v for k, v in zip(header, line, strict=True) if v != ""} for line in lines]
    else:
        found = [_no_nulls(row) for row in read_parquet(uri).to_pylist()]
    return {row["document_id"]: row for row in found}


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


def applied(before: dict[str, Any], delta: ExportRun, fmt: str, role: str) -> dict[str, Any]:
    """The earlier export's rows with the delta's upserts, then its deletes, applied."""
    uri = delta.response.s3_path if role == "documents" else delta.response.vectors_s3_path
    state = {**before, **rows(uri, fmt)}
    for document_id in rows(delta.response.deletes_s3_path, fmt):
        state.pop(document_id, None)
    return state


def change(store: Store, ns: Namespace, col: Collection, upserts: list[Any], deletes: list[str]):
    source = write_jsonl(store.settings.home_dir.parent / "in", upserts)
    store.ingest(ns.id, col.id, source, upsert=True)
    store.delete(ns.id, col.id, ids=deletes)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
@pytest.mark.parametrize(
    "request_",
    [
        {"include_vectors": True},
        {"include_vectors": True, "filters": IN_A, "select_fields": ["n", "meta.title"]},
    ],
    ids=["all", "filtered"],
)
def test_M6_deltas_applied_to_the_earlier_export_give_the_full_export(
    store: Store, fmt: str, request_: dict[str, Any]
) -> None:
    ns, col = make_collection(store, FIRST, [DENSE], name="chain")
    body = {"format": fmt, **request_}

    def export(**more: Any) -> ExportRun:
        return export_job(ns.id, col.id, {**body, **more}, settings=store.settings)

    full = export()
    documents = rows(full.response.s3_path, fmt)
    vectors = rows(full.response.vectors_s3_path, fmt)
    watermark: int | str = full.manifest["export_id"]
    rounds = [
        # updated (still in a, moved to b), inserted (a, b), deleted (a, b)
        ([doc(1, "a", "new"), doc(2, "b"), doc(20, "a"), doc(21, "b")], ["d04", "d03"]),
        # an inserted one deleted, one moved back, one deleted and inserted again, none found
        ([doc(2, "a", "back"), doc(5, "a", "x"), doc(4, "a")], ["d20", "d07", "gone"]),
        ([], ["d08"]),  # only a delete
    ]
    for upserts, deletes in rounds:
        change(store, ns, col, upserts, deletes)
        delta = export(changed_since=watermark)
        now = export()
        assert delta.response.version == now.response.version
        assert delta.manifest["changed_since"] == (
            watermark if isinstance(watermark, int) else full.response.version
        )
        assert local_path(delta.response.deletes_s3_path).name == f"deletes.{fmt}"
        assert delta.response.deleted_count == len(rows(delta.response.deletes_s3_path, fmt))
        documents = applied(documents, delta, fmt, "documents")
        vectors = applied(vectors, delta, fmt, "vectors")
        assert documents == rows(now.response.s3_path, fmt)
        assert vectors == rows(now.response.vectors_s3_path, fmt)
        full, watermark = now, delta.response.version  # the next delta starts from a version
        assert isinstance(watermark, int)


def test_M6_deletes_hold_deleted_and_no_longer_matching_ids_in_order(store: Store) -> None:
    ns, col = make_collection(store, FIRST, [DENSE], name="chain")
    first = export_job(ns.id, col.id, {"format": "json", "filters": IN_A}, settings=store.settings)
    change(store, ns, col, [doc(1, "b"), doc(30, "a"), doc(31, "b")], ["d10", "d00", "d09"])
    delta = export_job(ns.id, col.id, {"format": "json", "filters": IN_A, "changed_since": 1},
                       settings=store.settings)  # fmt: skip
    assert [d["document_id"] for d in read_json_lines(delta.response.s3_path)] == ["d30"]
    # d01 left the filter, d31 never matched; d00, d09, d10 deleted (d00 and d09 were in b)
    assert read_json_lines(delta.response.deletes_s3_path) == [
        {"document_id": i} for i in ["d00", "d01", "d09", "d10", "d31"]
    ]
    assert delta.response.deleted_count == 5 and delta.response.document_count == 1
    assert (
        first.response.deletes_s3_path is None
        and "deleted_count" not in first.response.model_dump()
    )


def test_M6_nothing_changed_gives_empty_files(store: Store) -> None:
    ns, col = make_collection(store, FIRST, [DENSE], name="chain")
    delta = export_job(
        ns.id, col.id, {"format": "csv", "changed_since": 1}, settings=store.settings
    )
    assert delta.response.document_count == 0 and delta.response.deleted_count == 0
    assert read_csv(delta.response.deletes_s3_path) == [["document_id"]]


def test_M5_refused_watermarks_say_to_run_a_full_export(store: Store, cli: Any) -> None:
    ns, col = make_collection(store, FIRST, [DENSE], name="chain")
    _, other = make_collection(store, FIRST[:2], [DENSE], name="other")
    elsewhere = export_job(ns.id, other.id, {"format": "json"}, settings=store.settings)
    short = store.settings.model_copy(update={"history_retention_seconds": 0})
    for n in range(2):  # with no retention, the change after these drops their history
        store.ingest(
            ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", [doc(40 + n)])
        )
    store.delete(ns.id, col.id, ids=["d40"])
    from export_pipeline.store import Store as Fresh

    Fresh(short).delete(ns.id, col.id, ids=["d41"])
    assert store.catalog.collection(ns, col.id).history_from == 4
    cases = {
        0: "older than the history",  # history now from version 4 only
        3: "older than the history",
        99: "after the collection's current version",
        elsewhere.manifest["export_id"]: "another collection",
        "exp_0000000000000000": "not an export",
    }
    for watermark, why in cases.items():
        with pytest.raises(ExportPipelineError, match=why) as refused:
            export_job(ns.id, col.id, {"changed_since": watermark}, settings=store.settings)
        assert "run a full export" in str(refused.value)
        assert refused.value.exit_code == 2
    code, out = cli("export", "chain", "-n", ns.name, "--changed-since", "0")
    assert code == 2 and "run a full export" in out["error"]["message"]
    code, out = cli("export", "chain", "-n", ns.name, "--changed-since", "4")
    assert code == 0 and out["document_count"] == 0 and out["deleted_count"] == 1  # d41


def test_M6_a_sample_is_drawn_from_the_changed_matches(store: Store) -> None:
    ns, col = make_collection(store, FIRST, [DENSE], name="chain")
    change(store, ns, col, [doc(n, "a", "s") for n in (1, 2, 4, 5)], ["d07"])
    body = {"format": "parquet", "filters": IN_A, "sample_size": 2, "changed_since": 1}
    delta = export_job(ns.id, col.id, body, settings=store.settings)
    sampled = list(rows(delta.response.s3_path, "parquet"))
    assert len(sampled) == 2 and set(sampled) <= {"d01", "d02", "d04", "d05"}
    assert list(rows(delta.response.deletes_s3_path, "parquet")) == ["d07"]  # before sampling


def test_M6_with_parts_the_deletes_file_is_one_part_of_its_own(store: Store) -> None:
    ns, col = make_collection(store, FIRST, [DENSE], name="chain")
    change(store, ns, col, [doc(30)], ["d02"])
    body = {"format": "csv", "changed_since": 1, "max_file_size_bytes": 5 * 1024 * 1024}
    delta = export_job(ns.id, col.id, body, settings=store.settings)
    parts = delta.response.parts
    assert parts is not None
    assert [(p.role, p.name, p.document_count) for p in parts] == [
        ("documents", "documents-00000.csv", 1),
        ("deletes", "deletes.csv", 1),
    ]
    assert read_csv(delta.response.deletes_s3_path) == [["document_id"], ["d02"]]

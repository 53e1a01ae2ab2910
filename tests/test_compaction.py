"""Compaction (docs/contract.md M8): a changed collection's segments merged into one, in id
order, under the same version, and nothing any export returns changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import DENSE, SPARSE, local_path, make_collection, read_parquet, write_jsonl

from export_pipeline.export import run_export
from export_pipeline.store import Collection, Namespace, Store
from export_pipeline.store.compaction import COMPACT_AT_SEGMENTS


def doc(n: int, round_: int = 0) -> dict[str, Any]:
    """Messy on purpose: a field whose type changes with the document, nesting, vectors on
    some documents only, and fields only some rounds have."""
    found: dict[str, Any] = {"document_id": f"d{n:04d}", "n": n, "round": round_}
    found["value"] = [n, str(n), {"deep": n}, None, n / 3][n % 5]
    if round_:
        found[f"added_in_{round_}"] = {"tags": [f"t{n % 3}"]}
    if n % 2:
        found["_vectors"] = {"emb": [n, -n, 0.5]}
    if n % 7 == 0:
        found.setdefault("_vectors", {})["bag"] = {"indices": [n % 1000], "values": [1.0]}
    return found


def changed_collection(store: Store) -> tuple[Namespace, Collection]:
    """Ingests, upserts and deletes: several segments whose id ranges interleave."""
    ns, col = make_collection(store, [doc(n) for n in range(0, 300, 2)], [DENSE, SPARSE])
    folder = store.settings.home_dir.parent / "changes"
    store.ingest(ns.id, col.id, write_jsonl(folder, [doc(n) for n in range(1, 300, 2)]))
    upserts = write_jsonl(folder, [doc(n, 1) for n in range(0, 300, 9)])
    store.ingest(ns.id, col.id, upserts, upsert=True)
    store.delete(ns.id, col.id, ids=[f"d{n:04d}" for n in range(0, 300, 11)])
    store.ingest(ns.id, col.id, write_jsonl(folder, [doc(n, 2) for n in range(300, 340)]))
    _, col = store.resolve(ns.id, col.id)
    assert len(col.segments) > 1
    return ns, col


REQUESTS = [
    {"format": "json", "include_vectors": True},
    {"format": "csv"},
    {"format": "parquet", "include_vectors": True},
    {"format": "csv", "filters": {"AND": [{"field": "round", "operator": "gte", "value": 1}]}},
    {"format": "json", "select_fields": ["n", "value"], "sample_size": 25, "sample_seed": 3},
]


def contents(store: Store, ns: Namespace, col: Collection, request: dict[str, Any]) -> Any:
    """What an export holds: its files' bytes (json, csv), or their tables (parquet, whose
    row groups may be cut elsewhere)."""
    result = run_export(ns.id, col.id, request, settings=store.settings, store=store)
    urls = [result.response.s3_path, result.response.vectors_s3_path]
    paths = [local_path(url) for url in urls if url]
    if request["format"] == "parquet":
        return [read_parquet(url) for url in urls if url], result.response.document_count
    return [path.read_bytes() for path in paths], result.response.document_count


@pytest.mark.slow
def test_M8_compaction_merges_the_segments_and_changes_no_export(store: Store) -> None:
    ns, col = changed_collection(store)
    before = [contents(store, ns, col, request) for request in REQUESTS]
    result = store.compact(ns.id, col.id)
    _, compacted = store.resolve(ns.id, col.id)
    assert (result.segments_before, result.segments_after) == (len(col.segments), 1)
    assert compacted.segments != col.segments and len(compacted.segments) == 1
    assert (compacted.version, compacted.document_count) == (col.version, col.document_count)
    after = [contents(store, ns, compacted, request) for request in REQUESTS]
    for request, was, now in zip(REQUESTS, before, after, strict=True):
        assert now == was, request
    # one segment: DuckDB reads it straight through again
    assert store.documents.scan_files(compacted, 1 << 30) is not None
    # history is untouched: an incremental export from before still answers
    delta = run_export(
        ns.id, col.id, {"format": "json", "changed_since": 1}, settings=store.settings, store=store
    )
    assert delta.response.document_count > 0


def test_M8_one_segment_is_left_alone(store: Store, tmp_path: Path) -> None:
    ns, col = make_collection(store, [doc(n) for n in range(20)], [DENSE, SPARSE])
    result = store.compact(ns.id, col.id)
    assert (result.segments_before, result.segments_after, result.version) == (1, 1, col.version)
    assert store.resolve(ns.id, col.id)[1].segments == col.segments


def test_M8_the_cli_compacts_and_says_what_it_did(store: Store, cli: Any) -> None:
    ns, col = changed_collection(store)
    code, out = cli("compact", col.name, "-n", ns.name)
    assert code == 0
    assert out == {
        "segments_before": len(col.segments),
        "segments_after": 1,
        "document_count": col.document_count,
        "version": col.version,
    }


@pytest.mark.slow
def test_M8_changes_compact_once_past_the_threshold(store: Store) -> None:
    ns, col = make_collection(store, [doc(n) for n in range(0, 200, 2)], [DENSE, SPARSE])
    folder = store.settings.home_dir.parent / "more"
    counts = []
    for round_ in range(1, COMPACT_AT_SEGMENTS + 2):  # each upsert adds a segment
        upserts = [doc(n, round_) for n in range(round_, 200, 23)]
        store.ingest(ns.id, col.id, write_jsonl(folder, upserts), upsert=True)
        counts.append(len(store.resolve(ns.id, col.id)[1].segments))
    assert max(counts) <= COMPACT_AT_SEGMENTS
    assert 1 in counts[1:]  # compacted along the way

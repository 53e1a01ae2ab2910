"""Sharded exports (docs/architecture.md): the same files whatever the number of shards.

A snapshot is cut into `document_id` ranges at row-group starts; each shard writes its part
with the shape and predicate decided once before them, and the parts are joined (parquet by
its row groups). With the same request and seed, 1, 2, 3 and 7 shards give byte-identical
json and csv files and the same parquet data, and the manifests agree on counts, columns and
warnings.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import export_job, make_collection, quick_first, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from export_pipeline.engine.shards import (
    AUTO_MIN_DOCUMENTS,
    Shard,
    plan_shards,
    shard_count,
    shard_threads,
)
from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Store, VectorIndex
from export_pipeline.store import segments as segments_module

COUNTS = [1, 2, 3, 7]
INDEXES = [VectorIndex(name="v", dimensions=3)]


def _doc(number: int) -> dict[str, Any]:
    """Documents of clashing shapes, so columns and types depend on which are chosen."""
    doc: dict[str, Any] = {"document_id": f"d{number:04d}", "n": number, "_vectors": {}}
    doc["_vectors"]["v"] = [number / 7, -1.5, 2.0**-20]
    if number % 3 == 0:
        doc["kind"] = "obj"
        doc["x"] = {"a": number, "b": f"b{number}"}
        doc["mixed"] = number
    else:
        doc["kind"] = "str"
        doc["x"] = f"text {number}"
        doc["mixed"] = [number, "two"] if number % 2 else f"s{number}"
    if number % 5 == 0:
        doc["text"] = 'quotes " and , commas\r\nlines ünï 😀'
    return doc


def _fill(store: Store) -> Collection:
    """120 documents in four segments of small row groups (so there is something to cut),
    one of them overlapping the others' id ranges (an upsert-free interleaving)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(segments_module, "ROW_GROUP_ROWS", 8)
    try:
        numbers = list(range(0, 120))
        batches = [numbers[0:40], numbers[40:80], numbers[80:120:2], numbers[81:120:2]]
        ns, col = make_collection(store, [_doc(n) for n in batches[0]], INDEXES, name="sharded")
        for batch in batches[1:]:
            folder = store.settings.home_dir.parent / "in"
            store.ingest(ns.id, col.id, write_jsonl(folder, [_doc(n) for n in batch]))
    finally:
        patch.undo()
    return store.catalog.collection(ns, col.id)


@pytest.fixture
def sharded(store: Store) -> Collection:
    """The collection in the test's own store (for tests that corrupt it or run processes
    over its home)."""
    return _fill(store)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Collection]:
    """The same collection built once for the module's tests that only export or read it
    (every export gets a folder of its own)."""
    store = Store(Settings(home=tmp_path_factory.mktemp("shards") / "home"))
    return store, _fill(store)


def _export(store: Store, col: Collection, body: dict[str, Any], shards: int) -> ExportRun:
    settings = store.settings.model_copy(update={"shards": str(shards)})
    return export_job(col.namespace_id, col.id, body, settings=settings)


def _files(result: ExportRun) -> list[Path]:
    paths = [Path(result.response.s3_path.removeprefix("file://"))]
    if result.response.vectors_s3_path:
        paths.append(Path(result.response.vectors_s3_path.removeprefix("file://")))
    return paths


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the shard count."""
    files = [{k: f[k] for k in ("role", "name", "rows", "columns")} for f in manifest["files"]]
    return {
        "document_count": manifest["document_count"],
        "warnings": manifest["warnings"],
        "files": files,
        "sample_seed": manifest["sample_seed"],
    }


BODIES = [
    {},
    {"include_vectors": True},
    {"filters": {"kind": "obj"}},
    {"filters": {"kind": "str"}, "include_vectors": True},
    {"select_fields": ["x.a", "mixed", "text"]},
    {"sample_size": 17, "sample_seed": 5},
    {"filters": {"AND": [{"field": "n", "operator": "gte", "value": 30}]}, "sample_size": 9},
    {"filters": {"kind": "nothing"}},
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
@pytest.mark.parametrize("body", quick_first(BODIES))
def test_files_are_the_same_whatever_the_shard_count(
    shared: tuple[Store, Collection], fmt: str, body: dict[str, Any]
) -> None:
    store, sharded = shared
    request = {"format": fmt, **body}
    if "sample_size" in request:
        request.setdefault("sample_seed", 11)
    results = {count: _export(store, sharded, request, count) for count in COUNTS}
    one = results[1]
    assert len(one.manifest["shards"]) == 1
    for count, result in results.items():
        assert len(result.manifest["shards"]) == count
        assert sum(s["document_count"] for s in result.manifest["shards"]) == (
            result.response.document_count
        )
        assert _comparable(result.manifest) == _comparable(one.manifest)
        for mine, theirs in zip(_files(result), _files(one), strict=True):
            if fmt == "parquet":  # the same data: schema, rows, order, values
                table = pq.read_table(mine)
                assert table.schema.equals(pq.read_table(theirs).schema, check_metadata=True)
                assert table.equals(pq.read_table(theirs)), (count, mine.name)
            else:
                assert mine.read_bytes() == theirs.read_bytes(), (count, mine.name)
        written = [s for s in result.manifest["shards"] if s["document_count"]]
        if count > 1 and one.response.document_count >= 40:  # the work was really split
            assert len(written) > 1
        files = {f["name"]: f for f in result.manifest["files"]}
        for path in _files(result):
            assert files[path.name]["bytes"] == path.stat().st_size


def test_shards_cut_at_row_groups_and_cover_every_id(shared: tuple[Store, Collection]) -> None:
    store, sharded = shared
    files = store.documents.segment_files(sharded)
    for count in (1, 2, 3, 7, 40):
        shards = plan_shards(files, count)
        assert [s.index for s in shards] == list(range(count))
        assert shards[0].lower is None and shards[-1].upper is None
        for before, after in itertools.pairwise(shards):
            assert before.upper == after.lower  # consecutive: nothing lost, nothing twice
    starts = {
        pq.read_metadata(f).row_group(g).column(0).statistics.min
        for f in files
        for g in range(pq.read_metadata(f).num_row_groups)
    }
    assert all(s.lower in starts for s in plan_shards(files, 7)[1:])
    # more shards than row groups: some are empty, and the count is honoured
    many = plan_shards(files, 40)
    assert len(many) == 40 and any(s.lower == s.upper for s in many[1:-1])


@given(st.lists(st.integers(min_value=1, max_value=5_000), min_size=1, max_size=30))
@settings(max_examples=50, deadline=None)
def test_auto_is_one_shard_for_small_snapshots_and_enough_for_every_core_for_large(
    sizes: list[int],
) -> None:
    for size in sizes:
        assert shard_count("auto", size, cores=4) == 1
        large = size * 1000
        expected = 1 if large < AUTO_MIN_DOCUMENTS else 2
        assert shard_count("auto", large, cores=4, threads=2) == expected
        assert shard_count("auto", large, cores=2, threads=2) == 1  # one keeps both busy
        assert shard_count(str(size), 0, cores=4) == size
        # shards running at once share the cores between their DuckDB threads
        assert shard_threads(2, size, cores=4) == (2 if size <= 2 else 1)


def test_shard_sql_is_a_half_open_range() -> None:
    assert Shard(index=0).sql() == ("TRUE", [])
    assert Shard(index=1, lower="a", upper="b").sql() == (
        "document_id >= ? AND document_id < ?",
        ["a", "b"],
    )


def test_the_shards_setting_is_a_number_or_auto() -> None:
    assert Settings(shards="auto").shards == "auto"
    assert Settings(shards="3").shards == "3"
    for bad in ("0", "-1", "many", "2.5"):
        with pytest.raises(ValueError, match="shards"):
            Settings(shards=bad)


@pytest.mark.slow
def test_the_job_runs_several_shards_in_parallel_processes(
    store: Store, sharded: Collection
) -> None:
    """The path users run: the export_collection job, its shards in processes of their own."""
    from export_pipeline.orchestration.instance import local_instance

    body = {"format": "csv", "include_vectors": True}
    settings = store.settings.model_copy(update={"shards": "3"})
    run = export_job(sharded.namespace_id, sharded.id, body, settings=settings, processes=True)
    instance = local_instance(settings)
    workers = {s["worker"] for s in run.manifest["shards"]}
    assert len(run.manifest["shards"]) == 3 and len(workers) == 3  # a process each
    alone = _export(store, sharded, body, 1)
    for mine, theirs in zip(_files_of(run.response), _files(alone), strict=True):
        assert mine.read_bytes() == theirs.read_bytes()
    dagster_run = instance.get_run_by_id(run.run_id)
    assert dagster_run.status.value == "SUCCESS"
    steps = {e.step_key for e in instance.all_logs(run.run_id) if e.step_key}
    assert {f"export_shard[shard_{i:05d}]" for i in range(3)} <= steps


def _files_of(response: Any) -> list[Path]:
    paths = [Path(response.s3_path.removeprefix("file://"))]
    if response.vectors_s3_path:
        paths.append(Path(response.vectors_s3_path.removeprefix("file://")))
    return paths


def _corrupt_data(path: Path) -> None:
    """Garbage over a segment's first column chunks; its footer (read to plan) intact."""
    metadata = pq.read_metadata(path)
    end = min(metadata.row_group(0).column(0).data_page_offset + 4096, path.stat().st_size // 2)
    with open(path, "r+b") as handle:
        handle.seek(4)
        handle.write(b"\xff" * (end - 4))


def _left_behind(settings: Settings) -> list[Path]:
    exports = settings.home_dir / "exports"
    found = [p for p in settings.scratch_dir.rglob("*") if p.is_file()]
    return found + [p for p in exports.rglob("*") if p.is_file()] if exports.exists() else found


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_failed_shard_fails_the_export_and_leaves_nothing(
    store: Store, sharded: Collection, processes: bool
) -> None:
    from export_pipeline.errors import ExportPipelineError

    _corrupt_data(store.documents.segment_files(sharded)[-1])
    settings = store.settings.model_copy(update={"shards": "3"})
    body = {"format": "parquet", "include_vectors": True}
    with pytest.raises(ExportPipelineError, match="export_shard"):
        export_job(sharded.namespace_id, sharded.id, body, settings=settings, processes=processes)
    assert _left_behind(settings) == []


@pytest.mark.slow
def test_runs_in_processes_for_two_homes_in_one_process_each_read_their_own(
    store: Store, sharded: Collection, tmp_path: Path
) -> None:
    """The step processes come from a forkserver, which keeps the environment it started in:
    a later launch with other settings must not run its steps with the first one's home."""
    first = store.settings.model_copy(update={"shards": "2"})
    export_job(sharded.namespace_id, sharded.id, {"format": "json"}, settings=first, processes=True)
    other = Store(Settings(home=tmp_path / "other-home", shards="2"))
    ns, col = make_collection(other, [_doc(n) for n in range(30)], INDEXES, name="elsewhere")
    run = export_job(ns.id, col.id, {"format": "json"}, settings=other.settings, processes=True)
    assert run.response.document_count == 30
    assert len(run.manifest["shards"]) == 2

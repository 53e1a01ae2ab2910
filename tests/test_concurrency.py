"""Readers never see half an ingest; exports never collide (store snapshots, W6, W7)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from helpers import export_job, ids_of

from export_pipeline.settings import Settings
from export_pipeline.store import Store


def _write(path: Path, start: int, count: int) -> Path:
    with open(path, "w") as out:
        for number in range(start, start + count):
            out.write(json.dumps({"document_id": f"d{number:06d}", "n": number}) + "\n")
    return path


def test_exports_during_ingest_see_whole_versions_only(
    tmp_path: Path, catalog_settings: Settings
) -> None:
    settings = catalog_settings  # the catalog in SQLite, and in PostgreSQL
    store = Store(settings)
    namespace = store.catalog.create_namespace("team")
    store.catalog.create_collection(namespace, "docs", [])
    batch = 20_000
    files = [_write(tmp_path / f"part{i}.jsonl", i * batch, batch) for i in range(3)]
    store.ingest("team", "docs", files[0])

    counts: list[int] = []
    done = threading.Event()

    def ingest_rest() -> None:
        try:
            for path in files[1:]:
                Store(settings).ingest("team", "docs", path)
        finally:
            done.set()

    writer = threading.Thread(target=ingest_rest)
    writer.start()
    while not done.is_set() or len(counts) < 2:
        result = export_job("team", "docs", {"format": "csv"}, settings=settings)
        counts.append(result.response.document_count)
    writer.join()
    final = export_job("team", "docs", {"format": "csv"}, settings=settings)

    # Every export saw a whole number of ingested files, never a partial one.
    assert set(counts) <= {batch, 2 * batch, 3 * batch}
    assert final.response.document_count == 3 * batch
    assert not any((settings.scratch_dir).iterdir())


@pytest.mark.slow
def test_M2_deletes_and_ingests_running_together_each_make_whole_versions(
    tmp_path: Path, catalog_settings: Settings
) -> None:
    settings = catalog_settings  # the collection lock in SQLite (flock), and in PostgreSQL
    store = Store(settings)
    namespace = store.catalog.create_namespace("team")
    store.catalog.create_collection(namespace, "docs", [])
    start = store.ingest("team", "docs", _write(tmp_path / "base.jsonl", 0, 3_000))
    rounds, added, removed = 4, 200, 100
    errors: list[BaseException] = []

    def ingest_new() -> None:
        try:
            for i in range(rounds):
                path = _write(tmp_path / f"new{i}.jsonl", 10_000 + i * added, added)
                Store(settings).ingest("team", "docs", path)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    def delete_old() -> None:
        try:
            for i in range(rounds):
                ids = [f"d{n:06d}" for n in range(i * removed, (i + 1) * removed)]
                Store(settings).delete("team", "docs", ids=ids)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=ingest_new), threading.Thread(target=delete_old)]
    for worker in workers:
        worker.start()
    seen: list[int] = []
    while any(worker.is_alive() for worker in workers):
        seen.append(Store(settings).resolve("team", "docs")[1].document_count)
    for worker in workers:
        worker.join()
    assert errors == []

    # Every reading was a whole number of ingests and deletes, never part of one.
    whole = {3_000 + i * added - j * removed for i in range(5) for j in range(5)}
    assert set(seen) <= whole
    _, final = Store(settings).resolve("team", "docs")
    assert final.version == start.version + 2 * rounds
    result = export_job("team", "docs", {"format": "csv"}, settings=settings)
    expected = {f"d{n:06d}" for n in range(rounds * removed, 3_000)}
    expected |= {f"d{n:06d}" for n in range(10_000, 10_000 + rounds * added)}
    assert result.response.document_count == len(expected) == final.document_count
    assert set(ids_of(result.response.s3_path, "csv")) == expected

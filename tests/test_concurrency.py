"""Readers never see half an ingest; exports never collide (store snapshots, W6, W7)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from helpers import export_job

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

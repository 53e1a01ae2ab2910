"""The job's resource carries every setting its steps read, and only what they were given, and
hands out one store and one storage to every step a process runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_pipeline.orchestration.resources import LAUNCH_ONLY, ExportResource, resources_from
from export_pipeline.settings import Settings

# A value other than the default for every setting a step reads.
CHANGED = {
    "home": "/tmp/elsewhere-home",
    "catalog": "postgresql://u@127.0.0.1:5/db",
    "segments": "s3://b/segs",
    "storage": "s3://a-bucket/some/prefix",
    "scratch": "/tmp/elsewhere-scratch",
    "s3_addressing_style": "path",
    "s3_part_size_mb": 5,
    "s3_max_concurrency": 1,
    "s3_retry_mode": "adaptive",
    "s3_max_attempts": 2,
    "s3_sse": "aws:kms",
    "s3_sse_kms_key_id": "key-1",
    "url_ttl_seconds": 120,
    "duckdb_memory_limit": "300MB",
    "ingest_memory_limit": "400MB",
    "duckdb_threads": 1,
    "max_columns": 7,
    "segment_retention_seconds": 5,
    "history_retention_seconds": 8,
    "recovery_grace_seconds": 6,
    "recovery_foreign_max_age_seconds": 9,
}


def test_every_setting_is_carried_by_a_resource_or_read_by_launchers_only() -> None:
    assert set(Settings.model_fields) == set(CHANGED) | LAUNCH_ONLY


def test_the_steps_get_exactly_the_launchers_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = Settings(**CHANGED)
    for name in CHANGED:  # the environment says otherwise about everything
        monkeypatch.setenv(f"EXPORT_PIPELINE_{name.upper()}", "99")
    export = resources_from(given)["export"]
    assert isinstance(export, ExportResource)
    rebuilt = export.settings
    for name in CHANGED:
        assert getattr(rebuilt, name) == getattr(given, name), name
    assert rebuilt.home_dir == Path("/tmp/elsewhere-home")


def test_the_steps_of_a_process_share_one_store_and_one_storage(tmp_path: Path) -> None:
    export = resources_from(Settings(home=tmp_path / "home", storage=str(tmp_path / "out")))
    resource = export["export"]
    assert isinstance(resource, ExportResource)
    first, second = resource.lifecycle(), resource.lifecycle(duckdb_threads=1)
    assert first.store is second.store and first.storage is second.storage
    # a shard's share of the cores changes its own settings only
    assert second.settings.duckdb_threads == 1
    assert resource.settings.duckdb_threads == resource.duckdb.threads

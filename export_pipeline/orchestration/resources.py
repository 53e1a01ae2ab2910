"""Dagster resources: the store, the storage target and DuckDB's limits, from the environment."""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import dagster as dg
from pydantic import Field

from export_pipeline.settings import Settings

_FIELDS = Settings.model_fields


class StoreResource(dg.ConfigurableResource):
    """The embedded collection store (EXPORT_PIPELINE_HOME)."""

    home: str = Field(description=_FIELDS["home"].description)
    segment_retention_seconds: int = Field(
        _FIELDS["segment_retention_seconds"].default,
        description=_FIELDS["segment_retention_seconds"].description,
    )


class StorageResource(dg.ConfigurableResource):
    """Where exports are published and how long their links live (EXPORT_PIPELINE_STORAGE)."""

    uri: str | None = Field(None, description=_FIELDS["storage"].description)
    url_ttl_seconds: int = Field(
        _FIELDS["url_ttl_seconds"].default, description=_FIELDS["url_ttl_seconds"].description
    )


class DuckDBResource(dg.ConfigurableResource):
    """How hard DuckDB may work per export, and where it spills (EXPORT_PIPELINE_DUCKDB_*)."""

    memory_limit: str = Field(
        _FIELDS["duckdb_memory_limit"].default,
        description=_FIELDS["duckdb_memory_limit"].description,
    )
    threads: int = Field(
        _FIELDS["duckdb_threads"].default, description=_FIELDS["duckdb_threads"].description
    )
    temp_dir: str | None = Field(None, description=_FIELDS["scratch"].description)


def settings_of(store: StoreResource, storage: StorageResource, duckdb: DuckDBResource) -> Settings:
    """The core's Settings, as the resources configure them."""
    return Settings(
        home=store.home,
        segment_retention_seconds=store.segment_retention_seconds,
        storage=storage.uri,
        url_ttl_seconds=storage.url_ttl_seconds,
        duckdb_memory_limit=duckdb.memory_limit,
        duckdb_threads=duckdb.threads,
        scratch=duckdb.temp_dir,
    )


def resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The job's resources configured from Settings (itself read from the environment)."""
    return {
        "store": StoreResource(
            home=str(settings.home_dir),
            segment_retention_seconds=settings.segment_retention_seconds,
        ),
        "storage": StorageResource(
            uri=settings.storage_uri, url_ttl_seconds=settings.url_ttl_seconds
        ),
        "duckdb": DuckDBResource(
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            temp_dir=str(settings.scratch_dir),
        ),
    }

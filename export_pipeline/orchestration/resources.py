"""The export job's resource: what every step reads (the store, the storage target, DuckDB's
limits), and the store and storage it hands out.

Its three sections' fields each mirror one `Settings` field (its default and description, as
the launchpad shows them); the resource rebuilds the core's Settings from them alone, never
from the environment behind them, so a launch with settings made in code (the API, the tests)
runs its steps with exactly those. It opens the store (a catalog connection) and the storage
(an S3 client) once per process, for every step of the run that process executes.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from export_pipeline.export import ExportLifecycle
from export_pipeline.settings import Settings
from export_pipeline.storage import Storage, open_storage
from export_pipeline.store import Store

_FIELDS = Settings.model_fields


def _like(setting: str) -> Any:
    """A resource field with the setting's default and description."""
    field = _FIELDS[setting]
    default = str(field.default) if isinstance(field.default, Path) else field.default
    return Field(default, description=field.description)


class StoreConfig(dg.Config):
    """The embedded collection store (EXPORT_PIPELINE_HOME, its segments maybe in S3:
    EXPORT_PIPELINE_SEGMENTS) and how it keeps and reclaims files."""

    home: str = _like("home")
    catalog: str | None = _like("catalog")
    segments: str | None = _like("segments")
    max_columns: int = _like("max_columns")
    ingest_memory_limit: str = _like("ingest_memory_limit")
    segment_retention_seconds: int = _like("segment_retention_seconds")
    history_retention_seconds: int = _like("history_retention_seconds")
    recovery_grace_seconds: int = _like("recovery_grace_seconds")
    recovery_foreign_max_age_seconds: int = _like("recovery_foreign_max_age_seconds")


class StorageConfig(dg.Config):
    """Where exports are published, how (S3's options) and how long their links live
    (EXPORT_PIPELINE_STORAGE, EXPORT_PIPELINE_S3_*)."""

    uri: str | None = _like("storage")
    url_ttl_seconds: int = _like("url_ttl_seconds")
    s3_addressing_style: Literal["auto", "path", "virtual"] = _like("s3_addressing_style")
    s3_part_size_mb: int = _like("s3_part_size_mb")
    s3_max_concurrency: int = _like("s3_max_concurrency")
    s3_retry_mode: Literal["standard", "adaptive", "legacy"] = _like("s3_retry_mode")
    s3_max_attempts: int = _like("s3_max_attempts")
    s3_sse: str | None = _like("s3_sse")  # AES256 or aws:kms, checked by Settings
    s3_sse_kms_key_id: str | None = _like("s3_sse_kms_key_id")


class DuckDBConfig(dg.Config):
    """How hard DuckDB may work per export, and where it spills (EXPORT_PIPELINE_DUCKDB_*)."""

    memory_limit: str = _like("duckdb_memory_limit")
    threads: int = _like("duckdb_threads")
    temp_dir: str | None = _like("scratch")


# section -> {section field: Settings field}
_CARRIED: dict[str, dict[str, str]] = {
    "store": {name: name for name in StoreConfig.model_fields},
    "storage": {
        "uri": "storage",
        **{name: name for name in StorageConfig.model_fields if name != "uri"},
    },
    "duckdb": {
        "memory_limit": "duckdb_memory_limit",
        "threads": "duckdb_threads",
        "temp_dir": "scratch",
    },
}
# Settings of the launchers (how a run is launched, the API's limits, the daemon's inputs),
# which no step reads: the steps' Settings hold their defaults.
LAUNCH_ONLY = frozenset(
    {
        "shards",
        "executor",
        "celery_broker",
        "schedules",
        "drop_dir",
        "api_timeout_seconds",
        "dagster_url",
        "api_rate_limit_per_minute",
        "api_header_timeout_seconds",
        "api_body_timeout_seconds",
    }
)


class ExportResource(dg.ConfigurableResource):
    """Every setting an export's steps read, and the store and storage they work on."""

    store: StoreConfig = Field(
        default_factory=StoreConfig, description="The collection store and how it keeps files."
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Where exports are published, and how."
    )
    duckdb: DuckDBConfig = Field(
        default_factory=DuckDBConfig, description="DuckDB's limits per export."
    )
    _opened: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def settings(self) -> Settings:
        """The core's Settings, as this resource configures them (and nothing else)."""
        if "settings" not in self._opened:
            values: dict[str, Any] = {name: _FIELDS[name].default for name in LAUNCH_ONLY}
            for section, carried in _CARRIED.items():
                given = getattr(self, section)
                values.update(
                    {setting: getattr(given, field) for field, setting in carried.items()}
                )
            self._opened["settings"] = Settings(**values)
        settings: Settings = self._opened["settings"]
        return settings

    def open_store(self) -> Store:
        """The collection store, opened on first use in this process."""
        if "store" not in self._opened:
            self._opened["store"] = Store(self.settings)
        store: Store = self._opened["store"]
        return store

    def open_storage(self) -> Storage:
        """The export storage, opened on first use in this process."""
        if "storage" not in self._opened:
            self._opened["storage"] = open_storage(self.settings)
        storage: Storage = self._opened["storage"]
        return storage

    def lifecycle(self, duckdb_threads: int | None = None) -> ExportLifecycle:
        """The export lifecycle over the store and storage; `duckdb_threads`: this step's share
        of the cores, where it runs beside others."""
        settings = self.settings
        if duckdb_threads is not None:
            settings = settings.model_copy(update={"duckdb_threads": duckdb_threads})
        return ExportLifecycle(settings, self.open_store(), self.open_storage())


def resources_from(
    settings: Settings, step_outputs: str | None = None
) -> dict[str, dg.ConfigurableResource]:
    """The job's resources configured from Settings (itself read from the environment);
    `step_outputs`: the S3 storage step outputs go through (`step_outputs_of`), if any."""
    # the folders as this process resolves them: a step's process may not share its cwd
    resolved = {
        "home": str(settings.home_dir),
        "storage": settings.storage_uri,
        "scratch": str(settings.scratch_dir),
    }

    def values(section: str) -> dict[str, Any]:
        return {
            field: resolved.get(setting, getattr(settings, setting))
            for field, setting in _CARRIED[section].items()
        }

    resources: dict[str, Any] = {
        "export": ExportResource(
            store=StoreConfig(**values("store")),
            storage=StorageConfig(**values("storage")),
            duckdb=DuckDBConfig(**values("duckdb")),
        )
    }
    if step_outputs is not None:
        resources["io_manager"] = step_outputs_on_storage(step_outputs)
    return resources


def step_outputs_of(settings: Settings) -> str | None:
    """Where step outputs go between processes: the export storage with the celery executor,
    whose workers share no disk; None: Dagster's default (the instance's folder)."""
    return settings.storage_uri if settings.executor == "celery" else None


STEP_OUTPUTS = ".dagster-io"  # under the storage's root; `storage/<run_id>/...` below it


def step_outputs_of_run(run_id: str) -> str:
    """Where a run's step outputs are, under the storage's root (dagster-aws's layout)."""
    return f"{STEP_OUTPUTS}/storage/{run_id}"


def step_outputs_on_storage(target: str) -> Any:
    """Where step outputs (plans, part lists: small) go between Celery workers, which share no
    disk: pickled objects on the export storage `target`, which every worker reaches."""
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    from export_pipeline.errors import InvalidInput

    if not target.startswith("s3://"):
        raise InvalidInput(
            "EXPORT_PIPELINE_EXECUTOR=celery needs EXPORT_PIPELINE_STORAGE on S3 (s3://...):"
            " the workers share no disk"
        )
    bucket, _, root = target.removeprefix("s3://").partition("/")
    prefix = f"{root.strip('/')}/{STEP_OUTPUTS}".lstrip("/")
    return S3PickleIOManager(s3_resource=S3Resource(), s3_bucket=bucket, s3_prefix=prefix)

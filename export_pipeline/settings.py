"""One settings object read from the environment; nothing else reads os.environ."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where collections live, where exports go, and how hard DuckDB may work."""

    model_config = SettingsConfigDict(env_prefix="EXPORT_PIPELINE_", extra="ignore")

    home: Path = Field(
        Path(".export_pipeline"),
        description="Root of the embedded store (catalog, documents, scratch, local exports).",
    )
    catalog: str | None = Field(
        None,
        description="Where the catalog lives: unset, a SQLite file in home; or a"
        " postgresql://user:password@host:port/db URL (the schema is migrated on first use).",
    )
    storage: str | None = Field(
        None,
        description="Where exports are published: file:///path (default: file://<home>/exports).",
    )
    scratch: Path | None = Field(
        None,
        description="Per-export scratch space and DuckDB temp files (default: <home>/scratch).",
    )
    segments: str | None = Field(
        None,
        description="Where collections' segment files go: s3://bucket/prefix (default: the"
        " collection's folder under home).",
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 addressing: path style for most S3-compatible servers."
    )
    s3_part_size_mb: int = Field(
        64, ge=5, le=5120, description="Files above this size upload in parts of this size."
    )
    s3_max_concurrency: int = Field(4, ge=1, description="Parallel part uploads per file.")
    s3_retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        "standard", description="boto3's retry mode for transient S3 errors."
    )
    s3_max_attempts: int = Field(5, ge=1, description="boto3's attempts per S3 call.")
    s3_sse: Literal["AES256", "aws:kms"] | None = Field(
        None, description="Server-side encryption: AES256 (SSE-S3) or aws:kms (SSE-KMS)."
    )
    s3_sse_kms_key_id: str | None = Field(None, description="KMS key id for aws:kms.")
    url_ttl_seconds: int = Field(3600, ge=1, le=604_800, description="Lifetime of download URLs.")
    duckdb_memory_limit: str = Field(
        "512MB",
        description="DuckDB memory_limit per export (512MB: peaks ~130 MiB lower than 1GB"
        " at 1M documents, at no measured cost in speed).",
    )
    ingest_memory_limit: str = Field(
        "1GB", description="DuckDB memory_limit of an ingest (sorting an unsorted file needs more)."
    )
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads per connection.")
    shards: str = Field(
        "auto",
        pattern=r"^(auto|[1-9][0-9]*)$",
        description="Shards an export is written in, in parallel: a number, or auto (one for"
        " a small collection, one per core for a large one).",
    )
    executor: Literal["local", "in_process", "celery"] = Field(
        "local",
        description="Where the export job's steps run: local = one shard in the launching"
        " process, several in parallel local processes (at most one per core); in_process ="
        " every step in the launching process, the shards one after the other; celery = the"
        " shards of a sharded export on Celery workers (`export-pipeline worker`).",
    )
    celery_broker: str | None = Field(
        None,
        description="The Celery broker (and result backend) of the celery executor, for example"
        " redis://127.0.0.1:6379/0; launchers and workers must name the same one.",
    )
    max_columns: int = Field(
        1000,
        ge=2,
        description="Leaf columns a csv or parquet export may have; past it the widest objects"
        " are written as JSON text (see docs: wide documents).",
    )
    segment_retention_seconds: int = Field(
        3600,
        ge=0,
        description="Seconds replaced segments stay on disk at least; past it they are removed"
        " once no running export pins them (an export reads its snapshot to the end, D5).",
    )
    history_retention_seconds: int = Field(
        604800,
        ge=0,
        description="Seconds a collection's change history is kept: an incremental export"
        " (changed_since) may start from any version at most this old (M4).",
    )
    recovery_grace_seconds: int = Field(
        3600,
        ge=0,
        description="Debris no record accounts for (scratch, staging, unlisted segments) is"
        " reclaimed by the sweep once untouched this long.",
    )
    recovery_foreign_max_age_seconds: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="Records of operations on another host (whose process cannot be checked)"
        " are taken as dead once this old.",
    )
    schedules: Path | None = Field(
        None,
        description="YAML file of scheduled and on-change exports (unset: none).",
    )
    drop_dir: str | None = Field(
        None,
        description="Folder the request drop sensor watches for *.json requests"
        " (default: <home>/requests), or an S3 prefix: s3://bucket/prefix.",
    )
    dagster_url: str | None = Field(
        None,
        description="The Dagster webserver of a distributed deployment, e.g."
        " http://dagster-webserver:3000: the API submits each export to its run queue (the"
        " daemon launches it) instead of running it on warm workers of its own (unset).",
    )
    api_timeout_seconds: float = Field(
        900, gt=0, description="API exports running longer answer 504 and are cancelled."
    )
    api_rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests per minute per API key (0: no limit)."
    )
    api_header_timeout_seconds: float = Field(
        10,
        gt=0,
        description="Seconds a client has to send a request's headers, from connecting (or from"
        " the first byte of the next request on a kept-alive connection); then the server"
        " answers 408 and closes the connection.",
    )
    api_body_timeout_seconds: float = Field(
        30,
        gt=0,
        description="Seconds a client has to send a whole request body (at most 1 MiB) once its"
        " headers are in; then the server answers 408 and closes the connection.",
    )

    @field_validator("drop_dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        """Kept as text, so `s3://` survives; a Path is taken as its text."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("segments")
    @classmethod
    def _segments_in_s3(cls, value: str | None) -> str | None:
        """Unset, or s3://bucket[/prefix]."""
        if value is not None and not re.fullmatch(r"s3://[^/]+(/.*)?", value):
            raise ValueError(f"segments target {value!r} is not s3://bucket[/prefix]")
        return value

    @property
    def home_dir(self) -> Path:
        """The absolute home directory."""
        return self.home.expanduser().resolve()

    @property
    def scratch_dir(self) -> Path:
        """Per-export scratch space lives here and is removed when an export ends."""
        return self.scratch.expanduser().resolve() if self.scratch else self.home_dir / "scratch"

    @property
    def drop_is_s3(self) -> bool:
        """Whether the request drop sensor watches an S3 prefix (drop_dir is s3://...)."""
        return bool(self.drop_dir and self.drop_dir.startswith("s3://"))

    @property
    def drop_folder(self) -> Path:
        """The local folder export requests are dropped into, with accepted/ and rejected/
        inside; not for an s3:// drop_dir (see orchestration.drops)."""
        if self.drop_is_s3:
            raise ValueError(f"the drop folder {self.drop_dir} is an S3 prefix, not a folder")
        if not self.drop_dir:
            return self.home_dir / "requests"
        return Path(self.drop_dir).expanduser().resolve()

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance every entry point records runs in, unless DAGSTER_HOME is set."""
        return self.home_dir / "dagster"

    @property
    def storage_uri(self) -> str:
        """The storage target, defaulting to a local folder under home."""
        return self.storage or (self.home_dir / "exports").as_uri()


@contextmanager
def settings_environment(settings: Settings) -> Iterator[None]:
    """While inside, the environment says what `settings` say (for processes started then,
    which read their Settings from it); as it was afterwards."""
    prefix = Settings.model_config.get("env_prefix", "")
    wanted = {
        f"{prefix}{name}".upper(): value for name, value in settings.model_dump(mode="json").items()
    }
    # the folders as this process resolves them: a step's process may not share its cwd
    wanted[f"{prefix}HOME".upper()] = str(settings.home_dir)
    wanted[f"{prefix}SCRATCH".upper()] = str(settings.scratch_dir)
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        for name, value in wanted.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = str(value)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

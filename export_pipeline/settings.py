"""One settings object read from the environment; nothing else reads os.environ."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where collections live, where exports go, and how hard DuckDB may work."""

    model_config = SettingsConfigDict(env_prefix="EXPORT_PIPELINE_", extra="ignore")

    home: Path = Field(
        Path(".export_pipeline"),
        description="Root of the embedded store (catalog, documents, scratch, local exports).",
    )
    storage: str | None = Field(
        None,
        description="Where exports are published: file:///path (default: file://<home>/exports).",
    )
    scratch: Path | None = Field(
        None,
        description="Per-export scratch space and DuckDB temp files (default: <home>/scratch).",
    )
    url_ttl_seconds: int = Field(3600, ge=1, le=604_800, description="Lifetime of download URLs.")
    duckdb_memory_limit: str = Field("1GB", description="DuckDB memory_limit per connection.")
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads per connection.")
    segment_retention_seconds: int = Field(
        3600,
        ge=0,
        description="Seconds replaced segments stay on disk for exports still reading them.",
    )
    schedules: Path | None = Field(
        None,
        description="YAML file of scheduled and on-change exports (unset: none).",
    )
    drop_dir: Path | None = Field(
        None,
        description="Folder the request drop sensor watches for *.json requests"
        " (default: <home>/requests).",
    )

    @property
    def home_dir(self) -> Path:
        """The absolute home directory."""
        return self.home.expanduser().resolve()

    @property
    def scratch_dir(self) -> Path:
        """Per-export scratch space lives here and is removed when an export ends."""
        return self.scratch.expanduser().resolve() if self.scratch else self.home_dir / "scratch"

    @property
    def drop_folder(self) -> Path:
        """The folder export requests are dropped into, with accepted/ and rejected/ inside."""
        return self.drop_dir.expanduser().resolve() if self.drop_dir else self.home_dir / "requests"

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance every entry point records runs in, unless DAGSTER_HOME is set."""
        return self.home_dir / "dagster"

    @property
    def storage_uri(self) -> str:
        """The storage target, defaulting to a local folder under home."""
        return self.storage or (self.home_dir / "exports").as_uri()

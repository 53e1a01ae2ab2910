"""Run config of the export job: the HTTP request body plus where to find the collection."""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import os
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from export_pipeline.contract import ExportRequest
from export_pipeline.engine.plan import parse_request
from export_pipeline.errors import InvalidInput
from export_pipeline.orchestration.executor import CELERY_OPTIONS

_REQUEST = ExportRequest.model_fields


def _described(name: str) -> str:
    return _REQUEST[name].description or name


# Fields that say where and how the run executes, not what it exports.
LAUNCH_FIELDS = {"namespace", "collection", "shards", "executor", "celery_broker"}


class ExportConfig(dg.Config):
    """One export request (R1-R8), as the launchpad shows and checks it."""

    namespace: str = Field(description="Namespace id (ns_...) or name holding the collection.")
    collection: str = Field(description="Collection id (col_...) or name inside the namespace.")
    format: Literal["json", "csv", "parquet"] = Field(
        _REQUEST["format"].default, description=_described("format")
    )
    include_vectors: bool = Field(False, description=_described("include_vectors"))
    select_fields: list[str] | None = Field(None, description=_described("select_fields"))
    filters: dict[str, Any] | None = Field(
        None,
        description=_described("filters")
        + ' Written as the request\'s JSON, e.g. {"AND": [{"field": "metadata.category",'
        ' "operator": "eq", "value": "science"}]}.',
    )
    sample_size: int | None = Field(None, description=_described("sample_size"))
    sample_seed: int | None = Field(None, description=_described("sample_seed"))
    max_file_size_bytes: int | None = Field(None, description=_described("max_file_size_bytes"))
    # Dagster's config has no int-or-string type: a version is written as its digits.
    changed_since: str | None = Field(
        None, description=_described("changed_since") + " A version is written as its digits."
    )
    shards: int | None = Field(
        None,
        ge=1,
        description="Shards the export is written in: 1 runs every step in one process, more"
        " run the shards in parallel processes (at most one per core). Unset: one, in one"
        " process; the CLI, the API, schedules and sensors set it from EXPORT_PIPELINE_SHARDS.",
    )

    executor: Literal["local", "in_process", "celery"] = Field(
        "local",
        description="Where the steps run: local = several shards in parallel processes, one"
        " shard in the launching process; in_process = every step in the launching process;"
        " celery = several shards on Celery workers. The launchers set it from"
        " EXPORT_PIPELINE_EXECUTOR.",
    )
    celery_broker: str | None = Field(
        None,
        description="The Celery broker of the celery executor (EXPORT_PIPELINE_CELERY_BROKER).",
    )

    def config_fields(self) -> dict[str, Any]:
        """The request's fields as run config (fields left unset are omitted)."""
        body = self.model_dump(exclude=LAUNCH_FIELDS)
        return {key: value for key, value in body.items() if value is not None}

    def request_body(self) -> dict[str, Any]:
        """The HTTP request body this config stands for (fields left unset are omitted)."""
        body = self.config_fields()
        since = body.get("changed_since")
        if since is not None and since.isdigit():
            body["changed_since"] = int(since)
        return body

    def request(self) -> ExportRequest:
        """The validated request; a InvalidInput with the CLI's message otherwise."""
        return parse_request(self.request_body())

    @classmethod
    def of(cls, namespace: str, collection: str, body: dict[str, Any] | None) -> "ExportConfig":
        """The run config for a request body (validated first, so a bad body names its field)."""
        parse_request(body)  # the contract's messages, not the config schema's
        body = dict(body or {})
        if isinstance(body.get("changed_since"), int):
            body["changed_since"] = str(body["changed_since"])
        return cls(namespace=namespace, collection=collection, **body)


@dg.config_mapping
def validate_request(config: ExportConfig) -> dg.RunConfig:
    """Check the request against the contract when the run is created, before any op runs."""
    try:
        config.request()
        execution = executor_config(config.shards or 1, config.executor, config.celery_broker)
    except InvalidInput as exc:
        raise dg.DagsterInvalidConfigError(exc.message, [], config.model_dump()) from None
    # The console shows INFO and up; the UI still records every event of the run.
    return dg.RunConfig(
        ops={"plan_export": config},
        loggers={"console": {"config": {"log_level": "INFO"}}},
        execution={"config": execution},
    )


def executor_config(
    shards: int, executor: str = "local", celery_broker: str | None = None
) -> dict[str, Any]:
    """One shard, or the in_process executor: every step in the launching process; more
    shards: in parallel local processes (at most one per core), or on Celery workers."""
    if shards <= 1 or executor == "in_process":
        return {"in_process": {}}
    if executor == "celery":
        if not celery_broker:
            raise InvalidInput(
                "EXPORT_PIPELINE_EXECUTOR=celery needs EXPORT_PIPELINE_CELERY_BROKER"
            )
        return {
            "celery": {
                "broker": celery_broker,
                "backend": celery_broker,
                "config_source": CELERY_OPTIONS,
            }
        }
    # Each step's process is forked from a server that imported Dagster and the export code
    # once, instead of a new interpreter importing them for every step.
    return {
        "multiprocess": {
            "max_concurrent": max(1, min(shards, os.cpu_count() or 1)),
            "start_method": {"forkserver": {"preload_modules": list(PRELOADED)}},
        }
    }


PRELOADED = ("dagster", "export_pipeline.orchestration.job", "export_pipeline.export")

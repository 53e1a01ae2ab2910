"""The export job's executor, chosen per run: every step in the launching process, the shards
in local processes, or the shards on Celery workers (`dagster-celery`).

Dagster gives a job one executor definition; this one is a selector over Dagster's own three,
so that the config mapping can pick per run (`config.executor_config`): a one-shard export
never pays for processes or a broker, whatever the deployment.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster_celery import celery_executor

# Celery options for the export's steps: a task is acknowledged once it ended, so that a worker
# lost mid-shard gives its task back to the broker for another worker; one task at a time per
# worker process (a shard is long, prefetching would hold others back).
CELERY_OPTIONS: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}

_CHOICES: dict[str, dg.ExecutorDefinition] = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
    "celery": celery_executor,
}


def _requirements(config: Mapping[str, object]) -> Sequence[dg.ExecutorRequirement]:
    """Steps in other processes rebuild the job and read their inputs from storage."""
    if "in_process" in config:
        return []
    return list(dg.multiple_process_executor_requirements())


@dg.executor(
    name="export_executor",
    config_schema=dg.Field(
        dg.Selector({name: choice.config_schema.as_field() for name, choice in _CHOICES.items()}),
        default_value={"in_process": {}},
        description="Where the steps run: in_process, multiprocess (local processes) or celery"
        " (Celery workers; see `export-pipeline worker`).",
    ),
    requirements=_requirements,
)
def export_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """The executor the run's config selects, created as Dagster creates it."""
    ((name, config),) = init_context.executor_config.items()
    chosen = _CHOICES[name]
    create = chosen.executor_creation_fn
    # The selector's schema gives each choice a config mapping; Dagster's three executors all
    # have a creation function.
    if create is None or not isinstance(config, Mapping):
        raise dg.DagsterInvariantViolationError(
            f"executor {name!r} cannot be created from {config!r}"
        )
    return create(
        dg.InitExecutorContext(
            job=init_context.job,
            executor_def=chosen,
            executor_config=config,
            instance=init_context.instance,
        )
    )

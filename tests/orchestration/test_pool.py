"""The API's warm workers prepare each next run's event log while idle, run the export under
that run id, and remove an unused one when they stop."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
from helpers import DEMO_COUNT

from export_pipeline.orchestration.instance import (
    discard_prepared_run,
    local_instance,
    prepared_run_id,
)
from export_pipeline.orchestration.launch import prepare
from export_pipeline.orchestration.pool import RunPool
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store

pytestmark = pytest.mark.slow  # worker processes import Dagster


def event_log_of(instance: dg.DagsterInstance, run_id: str) -> Path:
    return Path(instance.event_log_storage.path_for_shard(run_id))  # type: ignore[attr-defined]


def eventually(check: object, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_prepared_run_id_has_its_event_log_and_is_discarded_unless_it_ran(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = local_instance(settings)
    run_id = prepared_run_id(instance)
    assert event_log_of(instance, run_id).is_file()  # made now, before any run
    assert not instance.has_run(run_id)
    discard_prepared_run(instance, run_id)
    assert not event_log_of(instance, run_id).exists()


def test_workers_run_exports_under_their_prepared_ids_and_clean_up_when_stopped(
    settings: Settings,
    store: Store,
    demo: tuple[Namespace, Collection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    ns, col = demo
    instance = local_instance(settings)
    launch = prepare(store, ns.name, col.name, {"format": "json"}, "api")
    pool = RunPool(settings, workers=1, per_collection=1)
    try:
        (worker,) = pool._workers
        first = worker.next_run_id
        assert event_log_of(instance, first).is_file()
        done = pool.run(launch, timeout=120)
        assert done.run_id == first and done.response.document_count == DEMO_COUNT
        run = instance.get_run_by_id(first)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        following = worker.next_run_id
        assert following != first
        assert eventually(event_log_of(instance, following).is_file)  # made after answering
    finally:
        pool.close()
    assert not event_log_of(instance, following).exists()  # never ran: removed
    assert event_log_of(instance, first).is_file()  # the run's own events stay
    assert instance.get_runs_count() == 1

"""The instance's sqlite storages reuse one engine per file while a run executes here (and are
Dagster's own elsewhere); these tests also fail if a Dagster upgrade moves what they override."""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.instance.ref import InstanceRef  # here only: Dagster's default layout
from sqlalchemy.pool import Pool

from export_pipeline.orchestration import sqlite_quiet, sqlite_storage
from export_pipeline.orchestration.dagster_internals import SqliteEventLogStorage, SqliteRunStorage
from export_pipeline.orchestration.instance import instance_yaml, local_instance
from export_pipeline.orchestration.launch import execute, prepare
from export_pipeline.orchestration.pool import RunPool
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store


@pytest.fixture
def instance(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return local_instance(settings)


@pytest.fixture
def engines() -> Iterator[Counter[str]]:
    """Engines (pools) that made their first connection, by sqlite file, while the test runs."""
    made: Counter[str] = Counter()

    def first_connect(dbapi_connection: Any, _record: Any) -> None:
        rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
        made[next(row[2] for row in rows if row[1] == "main")] += 1

    sa.event.listen(Pool, "first_connect", first_connect)
    yield made
    sa.event.remove(Pool, "first_connect", first_connect)


def open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def test_the_overridden_dagster_methods_are_still_there_as_expected() -> None:
    # A Dagster upgrade that renames or reshapes these leaves our overrides uncalled: say so.
    assert list(inspect.signature(SqliteEventLogStorage._connect).parameters) == ["self", "shard"]
    assert list(inspect.signature(SqliteRunStorage.connect).parameters) == ["self"]
    assert list(inspect.signature(SqliteRunStorage.from_local).parameters) == [
        "base_dir",
        "inst_data",
    ]
    for cls in (SqliteEventLogStorage, SqliteRunStorage):
        params = inspect.signature(cls.from_config_value).parameters
        assert list(params) == ["inst_data", "config_value"]
    # Dagster's methods still make an engine per connection (else this module is moot).
    assert "NullPool" in inspect.getsource(SqliteEventLogStorage._connect)
    assert "NullPool" in inspect.getsource(SqliteRunStorage.connect)


def test_the_template_names_these_storages_in_dagsters_default_layout(
    instance: dg.DagsterInstance,
) -> None:
    root = Path(instance.root_directory)
    assert type(instance.run_storage) is sqlite_storage.RunStorage
    assert type(instance.event_log_storage) is sqlite_storage.EventLogStorage
    assert instance.event_log_storage.path_for_shard("x") == str(root / "history/runs/x.db")  # type: ignore[attr-defined]
    assert (root / "history" / "runs.db").is_file()
    # The same files as Dagster's default storage, so either reads the other's runs.
    defaults = InstanceRef.config_defaults(str(root))
    for key, folder in (("run_storage", "history"), ("event_log_storage", "history/runs")):
        base_dir = yaml.safe_load(defaults[key].config_yaml)["base_dir"]  # type: ignore[union-attr]
        assert os.path.normpath(base_dir) == str(root / folder)


def test_the_template_takes_any_instance_path(tmp_path: Path) -> None:
    home = tmp_path / 'a?b %41 "q" #c: ü'
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(home))
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.event_log_storage.path_for_shard("x") == str(home / "history/runs/x.db")  # type: ignore[attr-defined]
    assert instance.get_runs_count() == 0 and (home / "history" / "runs.db").is_file()


def test_a_run_uses_one_engine_per_sqlite_file_and_leaves_nothing_open(
    settings: Settings,
    demo: tuple[Namespace, Collection],
    instance: dg.DagsterInstance,
    engines: Counter[str],
) -> None:
    ns, col = demo
    engines.clear()
    run = execute(settings, ns.name, col.name, {"format": "json"}, "cli", instance)
    root = Path(instance.root_directory)
    shard = str(root / "history" / "runs" / f"{run.run_id}.db")
    assert engines[shard] == 1 and engines[str(root / "history" / "runs.db")] == 1
    assert max(count for path, count in engines.items() if path.startswith(str(root))) == 1
    # Settled: nothing kept, no file of the instance open, every WAL checkpointed.
    assert sqlite_quiet._engines == {} and sqlite_quiet._holders == {}
    assert not [path for path in open_files() if path.startswith(str(root))]
    assert sorted(root.rglob("*-wal")) == []
    assert len(instance.all_logs(run.run_id)) > 30


def test_outside_a_run_the_storages_are_dagsters(
    instance: dg.DagsterInstance, engines: Counter[str]
) -> None:
    for _ in range(3):
        instance.get_runs(limit=1)
        instance.get_records_for_run("some-run", limit=1)
    assert sqlite_quiet._engines == {}
    runs_db = str(Path(instance.root_directory) / "history" / "runs.db")
    assert engines[runs_db] >= 3  # a new engine per connection, as Dagster makes them


def test_a_forked_child_makes_its_own_connections_and_leaves_the_parents_alone(
    instance: dg.DagsterInstance,
) -> None:
    with sqlite_quiet.quiet(instance.root_directory):
        instance.get_runs(limit=1)
        (parent_engine,) = sqlite_quiet._engines.values()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without any cleanup of the parent's
            ok = not sqlite_quiet._engines
            instance.get_runs(limit=1)  # inside quiet still: a new engine of its own
            ok = (
                ok and sqlite_quiet._engines and parent_engine not in sqlite_quiet._engines.values()
            )
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)
        os.close(read)
        # The parent's pooled connection still works after the child left.
        assert parent_engine.pool.checkedin() == 1
        instance.get_runs(limit=1)
        assert list(sqlite_quiet._engines.values()) == [parent_engine]


@pytest.mark.slow
def test_a_pooled_runs_events_are_all_readable_elsewhere_as_soon_as_it_answers(
    settings: Settings,
    store: Store,
    demo: tuple[Namespace, Collection],
    instance: dg.DagsterInstance,
) -> None:
    ns, col = demo
    launch = prepare(store, ns.name, col.name, {"format": "json"}, "api")
    pool = RunPool(settings, workers=1, per_collection=1)
    try:
        run = pool.run(launch, timeout=120)
        # Another process, a fresh instance, while the worker may still hold its connections.
        code = (
            "import sys, dagster as dg; i = dg.DagsterInstance.from_config(sys.argv[1]); "
            "print(','.join(e.dagster_event.event_type_value for e in i.all_logs(sys.argv[2])"
            " if e.dagster_event))"
        )
        out = (
            subprocess.run(
                [sys.executable, "-c", code, instance.root_directory, run.run_id],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            .stdout.strip()
            .split(",")
        )
    finally:
        pool.close()
    assert out[0] == "PIPELINE_START" and out[-1] == "PIPELINE_SUCCESS"
    assert len(out) == len([e for e in instance.all_logs(run.run_id) if e.dagster_event])

"""Runs executed here write the instance's sqlite files without a sync per event (sqlite_quiet),
and leave them checkpointed, recorded and held by nobody."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from export_pipeline.orchestration import sqlite_quiet, tags
from export_pipeline.orchestration.instance import local_instance
from export_pipeline.orchestration.launch import execute
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace

FULL, NORMAL = 2, 1


def pragma(engine: sa.Engine, name: str) -> object:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def engine_for(path: Path) -> sa.Engine:
    """Like Dagster's: one SQLAlchemy engine without a pool over a sqlite file."""
    return sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)


def wal_database(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    return path


def test_inside_quiet_the_instance_wal_files_commit_without_sync_and_are_held(
    tmp_path: Path,
) -> None:
    instance_dir, elsewhere = tmp_path / "instance", tmp_path / "elsewhere"
    instance_dir.mkdir()
    elsewhere.mkdir()
    ours = engine_for(wal_database(instance_dir / "runs.db"))
    theirs = engine_for(wal_database(elsewhere / "other.db"))
    with sqlite_quiet.quiet(str(instance_dir)):
        assert pragma(ours, "synchronous") == NORMAL
        assert pragma(theirs, "synchronous") == FULL  # not the instance's: SQLite's defaults
        assert list(sqlite_quiet._holders) == [str(instance_dir / "runs.db")]
        with ours.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        # Dagster's connection closed, but not as the last one: the WAL is still there.
        assert (instance_dir / "runs.db-wal").exists()
    assert sqlite_quiet._holders == {}
    assert not (instance_dir / "runs.db-wal").exists()  # checkpointed when the holder closed
    assert pragma(ours, "synchronous") == FULL  # outside a run: SQLite's defaults again
    with ours.connect() as conn:
        assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]


def test_a_new_database_under_the_instance_starts_in_wal_and_others_keep_their_mode(
    tmp_path: Path,
) -> None:
    rollback = tmp_path / "rollback.db"
    db = sqlite3.connect(rollback)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with sqlite_quiet.quiet(str(tmp_path)):
        # What Dagster creates for each run's event log: an empty file, made WAL at once.
        assert pragma(engine_for(tmp_path / "new-run.db"), "journal_mode") == "wal"
        assert pragma(engine_for(tmp_path / "new-run.db"), "synchronous") == NORMAL
        # An existing database in another mode is left as it is.
        assert pragma(engine_for(rollback), "journal_mode") == "delete"
        assert pragma(engine_for(rollback), "synchronous") == FULL
        assert str(rollback) not in sqlite_quiet._holders


def test_quiet_scopes_nest_and_settle_closes_the_holders_at_once(tmp_path: Path) -> None:
    engine = engine_for(wal_database(tmp_path / "runs.db"))
    with sqlite_quiet.quiet(str(tmp_path)):
        with sqlite_quiet.quiet(str(tmp_path)):
            pragma(engine, "synchronous")
        assert len(sqlite_quiet._holders) == 1  # the outer scope still holds it
        sqlite_quiet.settle()
        assert sqlite_quiet._holders == {}
        assert pragma(engine, "synchronous") == NORMAL  # held again on the next connection
        assert len(sqlite_quiet._holders) == 1
    assert sqlite_quiet._holders == {}


def test_hold_keeps_another_wal_database_open_until_settle_and_skips_the_rest(
    tmp_path: Path,
) -> None:
    catalog = wal_database(tmp_path / "catalog.sqlite")
    rollback = tmp_path / "rollback.db"
    sqlite3.connect(rollback).execute("CREATE TABLE t (x)").connection.commit()
    sqlite_quiet.hold(catalog)  # outside quiet: nothing
    assert sqlite_quiet._held == {}
    with sqlite_quiet.quiet(str(tmp_path / "instance")):
        for path in (catalog, rollback, tmp_path / "missing.sqlite"):
            sqlite_quiet.hold(path)
        assert list(sqlite_quiet._held) == [str(catalog)]
        assert not (tmp_path / "missing.sqlite").exists()  # never created by holding
        db = sqlite3.connect(catalog, isolation_level=None)
        db.execute("INSERT INTO t VALUES (1)")
        db.close()
        assert (tmp_path / "catalog.sqlite-wal").exists()  # not checkpointed on that close
    assert sqlite_quiet._held == {}
    assert not (tmp_path / "catalog.sqlite-wal").exists()


@pytest.mark.slow
def test_an_export_run_is_recorded_and_leaves_the_instance_checkpointed(
    settings: Settings, demo: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    ns, col = demo
    instance = local_instance(settings)
    run = execute(settings, ns.name, col.name, {"format": "json"}, "cli", instance)
    assert sqlite_quiet._holders == {} and sqlite_quiet._held == {}
    root = Path(instance.root_directory)
    assert sorted(root.rglob("*-wal")) == [] and sorted(root.rglob("*-shm")) == []
    assert sorted(settings.home_dir.glob("catalog.sqlite-*")) == []
    recorded = instance.get_run_by_id(run.run_id)
    assert recorded is not None and recorded.status == dg.DagsterRunStatus.SUCCESS
    assert recorded.tags[tags.EXPORT_ID] == run.manifest["export_id"]
    assert recorded.tags[tags.TRIGGER] == "cli"
    events = instance.get_records_for_run(run.run_id, limit=1000).records
    assert len(events) > 30  # every event of the run, as Dagster writes them
    shard = sqlite3.connect(root / "history" / "runs" / f"{run.run_id}.db")
    assert shard.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    shard.close()


def test_engine_is_kept_per_file_inside_quiet_only_and_bounded(tmp_path: Path) -> None:
    instance_dir = tmp_path / "instance"
    instance_dir.mkdir()
    url = f"sqlite:///{wal_database(instance_dir / 'runs.db')}"
    assert sqlite_quiet.engine(url) is None  # outside quiet: callers make their own
    with sqlite_quiet.quiet(str(instance_dir)):
        assert sqlite_quiet.engine(f"sqlite:///{tmp_path / 'other.db'}") is None  # not its file
        kept = sqlite_quiet.engine(url)
        assert kept is not None and sqlite_quiet.engine(url) is kept
        pragma(kept, "synchronous")
        assert kept.pool.checkedin() == 1  # the connection stays for the next use
        for n in range(sqlite_quiet.MAX_ENGINES):
            sqlite_quiet.engine(f"sqlite:///{instance_dir / f'shard{n}.db'}")
        assert len(sqlite_quiet._engines) == sqlite_quiet.MAX_ENGINES
        assert url not in sqlite_quiet._engines  # the least recently used one went first
        assert kept.pool.checkedin() == 0  # ...disposed
    assert sqlite_quiet._engines == {}
    assert not (instance_dir / "runs.db-wal").exists()

"""Dagster's sqlite run and event log storages, with one engine per file while a run executes here.

Why: Dagster's `SqliteEventLogStorage._connect` and `SqliteRunStorage.connect` build a new
SQLAlchemy engine (`NullPool`) for every connection: 55 per run of the export job (36 on the
run's event log, 19 on runs.db), each with SQLAlchemy's first-connect dialect set-up, an empty
compiled-statement cache, a new sqlite connection and sqlite_quiet's PRAGMAs; about 45 ms of
the ~0.11 s Dagster adds to an in-process run. Dagster has no setting for its engines; rather
than patch its classes for every process, the instance names these subclasses (dagster.yaml),
which override those two methods and only this: inside `sqlite_quiet.quiet()` for the instance
(a run in the CLI or an API worker) they take the file's engine from `sqlite_quiet.engine`,
which keeps one pooled connection per file (a run's three files, at most eight) until
`sqlite_quiet.settle()`, and which a forked child never inherits. Anywhere else (the
webserver, the daemon, a run worker of `dagster dev`) they run Dagster's own code, unchanged.

The instance template names these classes with Dagster's default layout (`<home>/history/runs.db`
and `<home>/history/runs/<run id>.db`), so an instance sees the same runs whichever classes it
names, and one whose dagster.yaml names none simply keeps Dagster's default storage.

A private seam of Dagster (classes and methods of `dagster._core`, imported through
orchestration/dagster_internals.py): tests/orchestration/test_dagster_internals.py and
tests/orchestration/test_sqlite_storage.py fail if an upgrade moves it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

from export_pipeline.orchestration import sqlite_quiet
from export_pipeline.orchestration.dagster_internals import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConfigurableClassData,
    SqliteEventLogStorage,
    SqliteRunStorage,
)


def _base_dir(config_value: dict[str, Any]) -> str:
    """The configured folder, which must be absolute: a relative one would follow the cwd."""
    base_dir = str(config_value["base_dir"])
    if not os.path.isabs(base_dir):
        raise ValueError(
            f"{__name__}: base_dir must be an absolute path, not {base_dir!r}"
            " (the template's INSTANCE_DIR is replaced when instance.local_instance copies it)"
        )
    return base_dir


class EventLogStorage(SqliteEventLogStorage):
    """Dagster's per-run sqlite event log; inside `quiet`, one pooled engine per shard."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> EventLogStorage:
        """This class, not Dagster's (whose classmethod names its own class)."""
        return cls(_base_dir(config_value), inst_data=inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        engine = sqlite_quiet.engine(
            self.conn_string_for_shard(shard),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        if engine is None:
            with super()._connect(shard) as conn:
                yield conn
            return
        # As Dagster's, but with the kept engine (and without disposing it after each use).
        with self._db_lock:
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn


class RunStorage(SqliteRunStorage):
    """Dagster's sqlite run storage (runs.db); inside `quiet`, one pooled engine."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> RunStorage:
        """This class, not Dagster's (whose classmethod names its own class)."""
        return cls.from_local(_base_dir(config_value), inst_data=inst_data)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        engine = sqlite_quiet.engine(self._conn_string)
        if engine is None:
            with super().connect() as conn:
                yield conn
            return
        with engine.connect() as conn, conn.begin():
            yield conn

"""Every private name of Dagster (`dagster._...`) this project uses, and the only module that
imports one.

Dagster 1.13 has no public API for any of these. If an upgrade moves or reshapes one,
tests/orchestration/test_dagster_internals.py fails, naming it, instead of a schedule, a run or
an instance failing somewhere downstream. What each is for:

- `is_valid_name`, `is_valid_cron_string`: orchestration/schedules.py checks the schedules
  file with Dagster's own rules, so a bad entry is refused with its place in the file rather
  than as an error loading the definitions.
- `SqliteEventLogStorage`, `SqliteRunStorage`, `SQLITE_BUSY_TIMEOUT_SECONDS`,
  `ConfigurableClassData`: the storages orchestration/sqlite_storage.py subclasses (one engine
  per sqlite file while a run executes here).
- `SQLITE_URL_MODULES`, `SQLITE_URL_FUNCTION`: the modules of Dagster's sqlite storages and the
  function in each that builds a file's URL, which orchestration/sqlite_urls.py replaces (paths
  percent-encoded).
"""

from __future__ import annotations

from dagster._core.definitions.utils import is_valid_name
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._serdes import ConfigurableClassData
from dagster._utils.schedules import is_valid_cron_string

__all__ = [
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "SQLITE_URL_FUNCTION",
    "SQLITE_URL_MODULES",
    "ConfigurableClassData",
    "SqliteEventLogStorage",
    "SqliteRunStorage",
    "is_valid_cron_string",
    "is_valid_name",
]

# The modules of Dagster's sqlite storages that build their URLs with SQLITE_URL_FUNCTION.
SQLITE_URL_MODULES = (
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)
SQLITE_URL_FUNCTION = "create_db_conn_string"

"""The private Dagster names export_pipeline uses (orchestration/dagster_internals.py) are still
there with the shapes it relies on. A failure here after a Dagster upgrade names what moved:
fix dagster_internals.py and its users before anything else."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import export_pipeline
from export_pipeline.orchestration import dagster_internals as internals
from export_pipeline.orchestration import sqlite_urls

PACKAGE = Path(export_pipeline.__file__).parent


def _params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_only_dagster_internals_imports_private_dagster_modules() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "dagster_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            found += [f"{path}: {name}" for name in names if name.startswith("dagster._")]
    assert not found


def test_name_and_cron_validators_keep_their_signature_and_rules() -> None:
    assert _params(internals.is_valid_name) == ["name"]
    assert internals.is_valid_name("nightly_export_2")
    assert not internals.is_valid_name("nightly export")
    assert not internals.is_valid_name("with-dash")
    assert _params(internals.is_valid_cron_string) == ["cron_string"]
    assert internals.is_valid_cron_string("0 3 * * *")
    assert internals.is_valid_cron_string("*/15 * * * 1-5")
    assert not internals.is_valid_cron_string("every day")
    assert not internals.is_valid_cron_string("0 3 * *")


def test_the_sqlite_storages_keep_what_sqlite_storage_overrides_and_uses() -> None:
    event_log, runs = internals.SqliteEventLogStorage, internals.SqliteRunStorage
    assert _params(event_log._connect) == ["self", "shard"]
    assert _params(event_log.conn_string_for_shard) == ["self", "shard_name"]
    assert _params(event_log._initdb)[:2] == ["self", "engine"]  # then for_index_shard=False
    assert _params(runs.connect) == ["self"]
    assert _params(runs.from_local) == ["base_dir", "inst_data"]
    for cls in (event_log, runs):
        assert _params(cls.from_config_value) == ["inst_data", "config_value"]
    # Attributes set in __init__, read by sqlite_storage.EventLogStorage._connect.
    init = inspect.getsource(event_log.__init__)
    assert "self._db_lock" in init and "self._initialized_dbs" in init
    assert "self._conn_string" in inspect.getsource(runs.__init__)
    assert isinstance(internals.SQLITE_BUSY_TIMEOUT_SECONDS, int | float)
    assert internals.ConfigurableClassData._fields == ("module_name", "class_name", "config_yaml")


@pytest.mark.parametrize("module_name", internals.SQLITE_URL_MODULES)
def test_each_sqlite_storage_module_builds_its_urls_with_the_replaced_function(
    module_name: str,
) -> None:
    module = importlib.import_module(module_name)
    function = getattr(module, internals.SQLITE_URL_FUNCTION)
    # Installed when export_pipeline.orchestration was imported: ours, with Dagster's signature.
    assert function is sqlite_urls.sqlite_url
    assert _params(function) == ["base_dir", "db_name"]
    assert f"{internals.SQLITE_URL_FUNCTION}(" in inspect.getsource(module)

"""Dagster's sqlite storage under any DAGSTER_HOME: paths percent-encoded in their URLs.

Dagster 1.13 builds the SQLAlchemy URL of each sqlite file as `"sqlite:///" + path`, unquoted.
SQLAlchemy then reads a `?` in the path as the start of a query string and decodes `%XX`, so
under a home such as `/data/a?b` the run storage opens `/data/a` and the first query fails
with "no such table: event_logs"; a `%41` in a path silently names another folder. Dagster
offers no setting for the URL (the instance's `storage.sqlite.base_dir` goes through the same
function), so the one function that builds it is replaced, in the modules that call it, by one
that encodes the path (`quote`: SQLAlchemy decodes exactly that back). This is a private seam
of Dagster (named in orchestration/dagster_internals.py): `install` fails loudly if a Dagster
upgrade moves it, and tests cover it.
"""

from __future__ import annotations

import importlib
import os
from urllib.parse import quote

from export_pipeline.orchestration.dagster_internals import SQLITE_URL_FUNCTION, SQLITE_URL_MODULES


def sqlite_url(base_dir: str, db_name: str) -> str:
    """The SQLAlchemy URL of `<base_dir>/<db_name>.db`, whatever characters the path holds."""
    path = os.path.join(os.path.abspath(base_dir), f"{db_name}.db")
    return "sqlite:///" + quote(path)


def install() -> None:
    """Make Dagster's sqlite storages open the files at their real paths (idempotent)."""
    for name in SQLITE_URL_MODULES:
        module = importlib.import_module(name)
        if not callable(getattr(module, SQLITE_URL_FUNCTION, None)):
            raise RuntimeError(
                f"{name}.{SQLITE_URL_FUNCTION} is gone: check sqlite_urls against this Dagster"
            )
        setattr(module, SQLITE_URL_FUNCTION, sqlite_url)

"""The catalog's schema is made once per file per process, not on every Catalog(...)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from export_pipeline.store import database as database_module
from export_pipeline.store.catalog import Catalog


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every sqlite connection the catalog opens, by path."""
    opened: list[Path] = []
    connect = sqlite3.connect

    def counting(path: Path, *args: object, **kwargs: object) -> sqlite3.Connection:
        opened.append(Path(path))
        return connect(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(database_module.sqlite3, "connect", counting)
    return opened


def test_a_catalog_made_again_does_not_touch_the_database(
    tmp_path: Path, connections: list[Path]
) -> None:
    Catalog(tmp_path / "home").create_namespace("first")
    made = len(connections)
    again = Catalog(tmp_path / "home")
    assert len(connections) == made  # no schema check, no connection
    assert again.namespace("first").name == "first"


def test_a_catalog_deleted_and_made_anew_gets_its_schema(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Catalog(home).create_namespace("first")
    for path in home.glob("catalog.sqlite*"):
        path.unlink()
    # An empty file in its place (a new inode), as a copy or a restore might leave.
    sqlite3.connect(home / "catalog.sqlite").close()
    fresh = Catalog(home)
    assert fresh.create_namespace("second").name == "second"
    assert [ns for ns in ("first", "second") if _exists(fresh, ns)] == ["second"]


def test_catalogs_of_two_homes_each_get_their_schema(tmp_path: Path) -> None:
    Catalog(tmp_path / "a").create_namespace("in-a")
    assert Catalog(tmp_path / "b").create_namespace("in-b").name == "in-b"


def _exists(catalog: Catalog, name: str) -> bool:
    try:
        catalog.namespace(name)
    except Exception:
        return False
    return True

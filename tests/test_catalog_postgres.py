"""The catalog in PostgreSQL (EXPORT_PIPELINE_CATALOG): migrations on first use, serialised
ingests, exports, and errors that never show the password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import psycopg
import pytest
from helpers import export_job, free_port, make_collection, read_json_lines, write_jsonl
from services import PostgresServer

from export_pipeline.cli import main
from export_pipeline.errors import EnvironmentProblem, InvalidInput
from export_pipeline.settings import Settings
from export_pipeline.store import Store
from export_pipeline.store import postgres as postgres_module
from export_pipeline.store.catalog import Catalog
from export_pipeline.store.database import masked
from export_pipeline.store.postgres import MIGRATIONS, PostgresDatabase, migrate

WORKTREE = Path(__file__).resolve().parents[1]


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    """A fresh, empty database."""
    return postgres.create_database()


@pytest.fixture
def settings(tmp_path: Path, url: str) -> Settings:
    """Settings whose catalog is the fresh database."""
    return Settings(home=tmp_path / "home", catalog=url)


def versions(url: str) -> list[tuple[int, object]]:
    with psycopg.connect(url) as db:
        return db.execute("SELECT version, applied_at FROM schema_version ORDER BY 1").fetchall()


def forget_migrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: no database is known to be up to date."""
    monkeypatch.setattr(postgres_module, "_MIGRATED", set())


# --- Schema and migrations ----------------------------------------------------------------


def test_the_schema_is_made_on_first_use_and_migrations_run_once(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(tmp_path / "home", url)
    assert catalog.create_namespace("first").name == "first"
    applied = versions(url)
    assert [version for version, _ in applied] == list(range(1, len(MIGRATIONS) + 1))
    forget_migrated(monkeypatch)
    again = Catalog(tmp_path / "home", url)  # a second Catalog, as another process makes it
    assert again.namespace("first").name == "first"
    assert migrate(PostgresDatabase(url)) == []
    assert versions(url) == applied  # nothing re-run, nothing re-recorded
    assert not (tmp_path / "home").exists()  # no SQLite file, no folder made for it


def test_threads_migrating_together_a_new_database_apply_each_migration_once(url: str) -> None:
    database = PostgresDatabase(url, migrated=False)
    start = threading.Barrier(4)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def first_use() -> None:
        start.wait()
        try:
            applied.append(migrate(database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(applied) == [[], [], [], list(range(1, len(MIGRATIONS) + 1))]
    assert [version for version, _ in versions(url)] == list(range(1, len(MIGRATIONS) + 1))


def test_processes_starting_together_on_a_new_database_all_succeed(url: str) -> None:
    script = (
        "import sys; from pathlib import Path; from export_pipeline.store.catalog import Catalog;"
        " Catalog(Path(sys.argv[1]), sys.argv[2]).create_namespace(sys.argv[3])"
    )
    env = {"PYTHONPATH": str(WORKTREE), "PATH": "/usr/bin:/bin"}
    children = [
        subprocess.Popen([sys.executable, "-c", script, "/nonexistent", url, f"team-{n}"], env=env)
        for n in range(3)
    ]
    assert [child.wait() for child in children] == [0, 0, 0]
    assert [version for version, _ in versions(url)] == list(range(1, len(MIGRATIONS) + 1))
    catalog = Catalog(Path("/nonexistent"), url)
    assert {catalog.namespace(f"team-{n}").name for n in range(3)} == {"team-0", "team-1", "team-2"}


# --- Ingests and exports ------------------------------------------------------------------


def test_two_concurrent_ingests_into_one_collection_both_apply(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(settings)
    ns, col = make_collection(store, [])
    sources = [write_jsonl(tmp_path / "in", [{"document_id": f"doc-{n}", "n": n}]) for n in (1, 2)]
    start = threading.Barrier(2)
    results: list[int] = []

    def ingest(source: Path) -> None:
        start.wait()
        results.append(Store(settings).ingest(ns.name, col.name, source).version)

    threads = [threading.Thread(target=ingest, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [1, 2]  # one after the other, neither lost
    found = store.catalog.collection(ns, col.id)
    assert (found.version, found.document_count, len(found.segments)) == (2, 2, 2)
    exported = export_job(ns.name, col.name, {"format": "json"}, settings=settings)
    documents = read_json_lines(exported.response.s3_path)
    assert sorted(doc["document_id"] for doc in documents) == ["doc-1", "doc-2"]


def test_an_ingest_waits_for_the_collections_lock_in_postgresql(
    settings: Settings, tmp_path: Path
) -> None:
    """The lock another host's ingest would hold (no flock is shared between hosts)."""
    store = Store(settings)
    ns, col = make_collection(store, [])
    source = write_jsonl(tmp_path / "in", [{"document_id": "a"}])
    finished: list[int] = []
    with store.catalog.database.collection_lock(col.id):
        thread = threading.Thread(
            target=lambda: finished.append(store.ingest(ns.name, col.name, source).version)
        )
        thread.start()
        _wait_for_a_lock_wait(settings.catalog or "")
        assert finished == [] and store.catalog.collection(ns, col.id).version == 0
    thread.join()
    assert finished == [1] and store.catalog.collection(ns, col.id).document_count == 1


def _wait_for_a_lock_wait(url: str) -> None:
    """Until a session of the database waits for an advisory lock (a condition, not a time)."""
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with psycopg.connect(url, autocommit=True) as db:
        while db.execute(query).fetchone()[0] == 0:  # type: ignore[index]
            db.execute("SELECT pg_sleep(0.02)")


@pytest.mark.slow
def test_an_export_in_step_processes_reads_the_postgresql_catalog(
    settings: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # The test server trusts loopback, so a password is accepted and ignored: here it is only
    # something that must not show up in any log or file the export leaves.
    assert settings.catalog and "postgresql://postgres@" in settings.catalog
    secret = "s3cr3t-pw"
    settings = settings.model_copy(
        update={
            "catalog": settings.catalog.replace("postgres@", f"postgres:{secret}@"),
            "shards": "2",  # two shards: the steps run in processes of their own
        }
    )
    store = Store(settings)
    docs = [{"document_id": f"d{n:03d}", "n": n} for n in range(20)]
    ns, col = make_collection(store, docs)
    result = export_job(ns.name, col.name, {"format": "json"}, settings=settings, processes=True)
    assert [doc["n"] for doc in read_json_lines(result.response.s3_path)] == list(range(20))
    workers = {shard["worker"] for shard in result.manifest["shards"]}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    with store.catalog.reading() as db:  # the export was published in PostgreSQL
        assert [row["collection_id"] for row in db.execute("SELECT * FROM exports")] == [col.id]
    assert not (settings.home_dir / "catalog.sqlite").exists()
    out, err = capfd.readouterr()
    assert secret not in out + err + caplog.text
    assert not [path for path in settings.home_dir.rglob("*") if _holds(path, secret)]


def _holds(path: Path, text: str) -> bool:
    return path.is_file() and text.encode() in path.read_bytes()


# --- Errors -------------------------------------------------------------------------------


def _unreachable() -> str:
    return f"postgresql://someone:s3cr3t-pw@127.0.0.1:{free_port()}/catalog"


def test_an_unreachable_server_is_named_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem) as caught:
        Store(Settings(home=tmp_path / "home", catalog=_unreachable()))
    shown = "".join(traceback.format_exception(caught.value))
    assert "s3cr3t-pw" not in shown and "s3cr3t-pw" not in repr(caught.value.details)
    assert "postgresql://someone:***@127.0.0.1:" in caught.value.message
    assert "(catalog)" in caught.value.message


@pytest.mark.parametrize(
    "bad",
    ["mysql://someone:s3cr3t-pw@127.0.0.1/db", "postgresql://someone:s3cr3t-pw@127.0.0.1:x/db"],
)
def test_a_bad_url_is_refused_without_the_password(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Store(Settings(home=tmp_path / "home", catalog=bad))
    shown = "".join(traceback.format_exception(caught.value))
    assert "s3cr3t-pw" not in shown and "someone:***@127.0.0.1" in caught.value.message


def test_the_cli_names_an_unreachable_catalog_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EXPORT_PIPELINE_CATALOG", _unreachable())
    assert main(["namespace", "create", "team"]) != 0
    out, err = capsys.readouterr()
    assert "s3cr3t-pw" not in out + err
    assert json.loads(out)["error"]["type"] == "EnvironmentError"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p%40w:rd@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (
            "postgresql://h/db?user=u&password=pw&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
    ],
)
def test_masked_hides_only_the_password(url: str, shown: str) -> None:
    assert masked(url) == shown

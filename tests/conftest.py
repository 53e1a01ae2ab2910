"""Shared fixtures: a store under a temporary home and a way to fill a collection."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DEMO_COUNT, make_collection
from services import LocalS3, PostgresServer, RedisServer, postgres_server, redis_server

from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store

_counter = itertools.count()

# Runs go to the instance under each test's own home, never to a DAGSTER_HOME of the shell
# (worker processes the tests start inherit this too).
os.environ.pop("DAGSTER_HOME", None)
# Each CLI call in the tests runs in its own process, as with a fresh install: no warm agent
# outlives the suite. tests/test_agent.py switches it on where the agent is what is tested.
os.environ["EXPORT_PIPELINE_AGENT"] = "off"


# The longest files first (measured with --durations=0, whole suite on 2 cores). Under
# `-n 2 --dist loadfile` each file goes whole to one worker as the workers free up; xdist's
# default queue puts the files with the most tests first, which left the long files of a few
# tests (benchmarks, Celery, the browser) to start last and run alone at the end.
LONGEST_FIRST = [
    "tests/test_recovery.py",
    "tests/test_benchmarks.py",
    "tests/test_celery.py",
    "tests/test_run_queue.py",
    "tests/test_shards.py",
    "tests/test_filters_large.py",
    "tests/test_parts.py",
    "tests/ui/test_launchpad.py",
    "tests/api/test_app.py",
    "tests/orchestration/test_sensors.py",
    "tests/test_agent.py",
    "tests/test_s3_segments.py",
    "tests/test_s3.py",
    "tests/test_messy.py",
    "tests/test_filter_kinds.py",
    "tests/api/test_server.py",
    "tests/test_store.py",
    "tests/test_environment.py",
    "tests/export/test_file_formats.py",
    "tests/export/test_values_and_order.py",
    "tests/export/test_publishing.py",
    "tests/test_filters.py",
    "tests/test_cli.py",
    "tests/api/test_server_clients.py",
    "tests/test_catalog_postgres.py",
    "tests/orchestration/test_sqlite_storage.py",
]


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


# Tests that start or talk to a server (moto's S3, PostgreSQL, Redis) are left out of the
# quick subset: the whole suite runs them.
SERVERS = {"s3_server", "strict_s3", "postgres", "redis"}


def _uses_a_server(item: pytest.Item) -> bool:
    if SERVERS.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)  # PostgreSQL asked for by a parameter
    return callspec is not None and callspec.params.get("catalog_settings") == "postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using a server are `slow`; files in LONGEST_FIRST order, then the rest as
    collected; tests keep their order within a file."""
    for item in items:
        if _uses_a_server(item):
            item.add_marker(pytest.mark.slow)
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose home is a fresh temporary folder."""
    return Settings(home=tmp_path / "home")


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose home is a fresh temporary folder, the catalog a SQLite file there or a
    fresh PostgreSQL database (modules override `settings` with this to run on both)."""
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home")
    server: PostgresServer = request.getfixturevalue("postgres")
    return Settings(home=tmp_path / "home", catalog=server.create_database())


@pytest.fixture
def store(settings: Settings) -> Store:
    """A store under the temporary home."""
    return Store(settings)


@pytest.fixture
def demo(store: Store) -> tuple[Namespace, Collection]:
    """Collection `articles`: 60 demo documents with a dense and a sparse vector index."""
    from export_pipeline.demo import DEMO_INDEXES, demo_documents

    return make_collection(store, list(demo_documents(DEMO_COUNT)), DEMO_INDEXES, name="articles")


@pytest.fixture
def people(store: Store) -> tuple[Namespace, Collection]:
    """40 documents with a dense index: p00..p39, their `n` and whether it is even."""
    from helpers import DENSE, NUMBERED

    return make_collection(store, NUMBERED, [DENSE], name="people")


@pytest.fixture
def vectored(store: Store) -> tuple[Namespace, Collection]:
    """VECTOR_DOCS: dense and sparse vectors, either, none, an empty sparse one."""
    from helpers import DENSE, SPARSE, VECTOR_DOCS

    return make_collection(store, VECTOR_DOCS, [DENSE, SPARSE], name="my_vec-col")


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`cli(*argv, stdin=None)`: the CLI in this process over the test's home (and catalog),
    publishing to the home's own exports folder; (exit code, its JSON output)."""
    from helpers import run_cli

    # for the whole test: what else it runs (a server, Settings()) sees the same home
    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(settings.home_dir))
    if settings.catalog:
        monkeypatch.setenv("EXPORT_PIPELINE_CATALOG", settings.catalog)
    monkeypatch.delenv("EXPORT_PIPELINE_STORAGE", raising=False)

    def run(*argv: str, stdin: str | bytes | None = None) -> tuple[int, dict[str, Any]]:
        return run_cli(argv, stdin=stdin)

    return run


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on a loopback port (tests/services.py)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """A real redis-server on a loopback port (tests/services.py)."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """A real S3-compatible HTTP server (moto's server mode) on a loopback port."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = LocalS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's standard chain pointed at the local server with throwaway credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key-do-not-leak")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    return s3_server.endpoint


@pytest.fixture
def bucket(s3_env: str) -> str:
    """A new empty bucket on the local server."""
    import boto3

    name = f"exports-{next(_counter)}-{os.getpid()}"
    boto3.session.Session().client("s3").create_bucket(Bucket=name)
    return name

"""Shared fixtures: a store under a temporary home and a way to fill a collection."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from services import PostgresServer, RedisServer, postgres_server, redis_server

from export_pipeline.errors import NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store, VectorIndex

if TYPE_CHECKING:
    from export_pipeline.orchestration.launch import ExportRun

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in LONGEST_FIRST order, then the rest as collected; tests keep their order
    within a file."""
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


DEMO_COUNT = 60  # documents in the `demo` fixture's collection


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


def write_jsonl(folder: Path, docs: list[Any]) -> Path:
    """Write documents (dicts, or raw str lines) to a new JSONL file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ingest_{next(_counter)}.jsonl"
    lines = [doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False) for doc in docs]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_collection(
    store: Store,
    docs: list[Any],
    indexes: list[VectorIndex] | None = None,
    *,
    namespace: str = "test-ns",
    name: str = "things",
) -> tuple[Namespace, Collection]:
    """Create (or reuse) a namespace, create a collection, ingest `docs` into it."""
    try:
        ns = store.catalog.namespace(namespace)
    except NotFoundError:
        ns = store.catalog.create_namespace(namespace)
    col = store.catalog.create_collection(ns, name, indexes or [])
    if docs:
        store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", docs))
    return ns, store.catalog.collection(ns, col.id)


def export_job(
    namespace: str,
    collection: str,
    body: dict[str, Any] | None,
    *,
    settings: Settings,
    processes: bool = False,
) -> ExportRun:
    """One export the way users run it: a run of the export_collection job, launched as the
    CLI and the API launch it. Its shards run one after the other in this process (an
    ephemeral instance), or with `processes` in processes of their own (the home's instance)."""
    import dagster as dg

    from export_pipeline.orchestration.launch import execute, local_instance

    global _ephemeral
    if processes:
        return execute(settings, namespace, collection, body, "cli", local_instance(settings))
    serial = settings.model_copy(update={"executor": "in_process"})
    if _ephemeral is None:  # one per test process: its runs are not what these tests inspect
        _ephemeral = dg.DagsterInstance.ephemeral()
    return execute(serial, namespace, collection, body, "cli", _ephemeral)


_ephemeral: Any = None


class LocalS3:
    """moto's S3 server on a loopback port; it can be stopped and started again on that port
    (its buckets live in this process, so they survive a restart)."""

    def __init__(self) -> None:
        self.port = 0
        self.server: Any = None

    @property
    def endpoint(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve (again) on the same port."""
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]

    def stop(self) -> None:
        """Stop answering; connections are refused until start()."""
        self.server.stop()


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

"""Small helpers shared by the test files: the seed's example, reading exported files."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_pipeline.cli import main
from export_pipeline.contract import SEED_REQUEST_EXAMPLE
from export_pipeline.errors import NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store, VectorIndex

if TYPE_CHECKING:
    from export_pipeline.orchestration.launch import ExportRun

# The seed's example request body (verbatim) and example response, kept in the repository.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED_REQUEST_FILE = FIXTURES / "seed_request.json"
SEED_RESPONSE_FILE = FIXTURES / "seed_response.json"

SEED_REQUEST: dict[str, Any] = SEED_REQUEST_EXAMPLE  # test_contract_models checks it
# Documents the seed's filter can tell apart (it keeps exactly SEED_MATCHES).
PEOPLE = [
    {"document_id": "p1", "name": "John", "age": 31, "status": "active", "role": "dev",
     "department": "R&D", "location": "office", "metadata": {"title": "A", "category": "x"}},
    {"document_id": "p2", "name": "John", "age": 40, "status": "idle", "role": "admin",
     "department": "Ops", "location": "office", "metadata": {"title": "B", "category": "y"}},
    {"document_id": "p3", "name": "John", "age": 45, "status": "active", "role": "dev",
     "department": "HR", "location": "office", "metadata": {"title": "C", "category": "x"}},
    {"document_id": "p4", "name": "Jane", "age": 50, "status": "active", "role": "dev",
     "department": "R&D", "location": "office", "metadata": {"title": "D", "category": "z"}},
    {"document_id": "p5", "name": "John", "age": 29, "status": "active", "role": "dev",
     "department": "R&D", "location": "office", "metadata": {"title": "E", "category": "x"}},
]  # fmt: skip
SEED_MATCHES = ["p1", "p2"]  # John, 30+, active or admin, not HR, not remote


SEED_RESPONSE_FIELDS = {
    "download_url",
    "s3_path",
    "format",
    "document_count",
    "file_size_bytes",
    "exported_at",
    "vectors_download_url",
    "vectors_s3_path",
}
# What every export answers: the seed's fields plus the collection version it reflects.
RESPONSE_FIELDS = SEED_RESPONSE_FIELDS | {"version"}


def seed_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The seed's example request body and example response object (tests/fixtures)."""
    request = json.loads(SEED_REQUEST_FILE.read_text(encoding="utf-8"))
    response = json.loads(SEED_RESPONSE_FILE.read_text(encoding="utf-8"))
    return request, response


def free_port() -> int:
    """A loopback port nobody listens on (for a server to start on, or to find closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(env: dict[str, str], log: Path, startup: float = 180) -> Iterator[str]:
    """`export-pipeline serve` in its own process group on a free loopback port, its output in
    `log`; yields the base URL once /healthz answers, and stops the server afterwards."""
    port = free_port()
    script = Path(sys.executable).parent / "export-pipeline"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(script), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup
        while True:  # nothing to wait on but the port: poll it
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop a process started in its own session and everything it started: TERM to the
    group, then KILL if it has not ended within `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def files_under(folder: Path) -> list[Path]:
    """Every file below a folder, sorted (none when it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def local_path(uri: str) -> Path:
    """The local file behind a file:// URI."""
    parsed = urlparse(uri)
    assert parsed.scheme == "file", uri
    return Path(unquote(parsed.path))


def read_json_lines(uri: str) -> list[dict[str, Any]]:
    """Every line of a json export, parsed; the file must end each line with a bare \\n."""
    data = local_path(uri).read_bytes()
    assert b"\r" not in data
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]


def read_csv(uri: str) -> list[list[str]]:
    """All rows of a csv export (header first), parsed by Python's csv module."""
    csv.field_size_limit(2**31 - 1)  # cells may be documents of megabytes
    text = local_path(uri).read_bytes().decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def read_parquet(uri: str) -> pa.Table:
    """A parquet export as an Arrow table."""
    return pq.read_table(local_path(uri))


def ids_of(uri: str, fmt: str) -> list[str]:
    """The document_id column of an exported file, in file order."""
    if fmt == "json":
        return [row["document_id"] for row in read_json_lines(uri)]
    if fmt == "csv":
        header, *rows = read_csv(uri)
        return [row[header.index("document_id")] for row in rows]
    return read_parquet(uri).column("document_id").to_pylist()


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values with kinds kept apart: 1 is not 1.0, True is not 1, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def run_cli(
    argv: list[str] | tuple[str, ...],
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """`export-pipeline ARGV` in this process (`cli.main`) under `env` (added to the
    environment), fed `stdin`: its exit code and the one JSON object it printed. The console
    script's own start is tested in tests/test_cli.py."""
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, env or {}))
        stack.enter_context(contextlib.redirect_stdout(out))
        if stdin is not None:  # a text stream over bytes, as a real stdin is
            data = stdin.encode() if isinstance(stdin, str) else stdin
            stack.enter_context(mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(data))))
        code = main(list(argv))
    return code, json.loads(out.getvalue())


def cli_output(argv: list[str], env: dict[str, str]) -> str:
    """`export-pipeline ARGV` run in a process of its own; what it printed (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "export_pipeline.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def quick_first(values: list[Any], keep: int = 1) -> list[Any]:
    """Parametrize values whose first `keep` run in the quick subset and the rest only in the
    whole suite (marked slow): a matrix of long cases keeps one quick representative."""
    return [
        value if n < keep else pytest.param(*(value if isinstance(value, tuple) else (value,)),
                                            marks=pytest.mark.slow)
        for n, value in enumerate(values)
    ]  # fmt: skip


# The end-to-end export tests' collections (tests/conftest.py: `people`, `vectored`).
DENSE = VectorIndex(name="emb", dimensions=3)
SPARSE = VectorIndex(name="bag", dimensions=1000, type="sparse")
NUMBERED = [{"document_id": f"p{i:02d}", "n": i, "even": i % 2 == 0} for i in range(40)]
VECTOR_DOCS = [
    {
        "document_id": "both",
        "_vectors": {"emb": [0.5, -1, 2], "bag": {"indices": [7, 3], "values": [0.25, 1]}},
    },
    {"document_id": "dense-only", "_vectors": {"emb": [1, 2, 3]}},
    {"document_id": "none"},
    {"document_id": "sparse-empty", "_vectors": {"bag": {"indices": [], "values": []}}},
]


_counter = itertools.count()
DEMO_COUNT = 60  # documents in the `demo` fixture's collection


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

    from export_pipeline.orchestration.instance import local_instance
    from export_pipeline.orchestration.launch import execute

    global _ephemeral
    if processes:
        return execute(settings, namespace, collection, body, "cli", local_instance(settings))
    serial = settings.model_copy(update={"executor": "in_process"})
    if _ephemeral is None:  # one per test process: its runs are not what these tests inspect
        _ephemeral = dg.DagsterInstance.ephemeral()
    return execute(serial, namespace, collection, body, "cli", _ephemeral)


_ephemeral: Any = None

"""Full and read-only disks, as a user meets them through the CLI (README: Using it).

Each case mounts a small tmpfs (CI runs as root) where the scratch space, the exports folder
or the whole home lives, and runs the real `export-pipeline` script. Each asserts the exit
code, the one-line message naming the cause and the path, and that nothing was published or
changed: no export files, no scratch left, the catalog and the collection's files as before.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fastapi.testclient import TestClient
from helpers import files_under, make_collection

from export_pipeline.api.app import create_app
from export_pipeline.errors import (
    NotFoundError,
)
from export_pipeline.orchestration.pool import RunPool
from export_pipeline.settings import Settings
from export_pipeline.store import Store, VectorIndex

SCRIPT = Path(sys.executable).parent / "export-pipeline"
DIMENSIONS = 64
# About 1.6 MB as json with vectors: more than the small tmpfs below can take.
DOCUMENTS = [
    {"document_id": f"d{n:05}", "text": f"document {n} " * 8,
     "_vectors": {"emb": [round(random.Random(n).random(), 6) for _ in range(DIMENSIONS)]}}
    for n in range(1500)
]  # fmt: skip
SMALL = "256k"


def cli(env: dict[str, str], *argv: str) -> tuple[int, dict[str, Any]]:
    """Run the installed console script; its output must be one JSON object."""
    done = subprocess.run(
        [str(SCRIPT), *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, json.loads(done.stdout)


def error_of(result: tuple[int, dict[str, Any]], type_name: str) -> str:
    """The error's message, after checking the exit code (1), the type and its one line."""
    code, out = result
    assert code == 1, out
    assert out["error"]["type"] == type_name, out
    message = out["error"]["message"]
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs folders (unmounted afterwards); skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = SMALL) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, mode: str) -> None:
    """Make a mounted folder read-only ("ro") or writable again ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its file system is full; returns it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def contents(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file below `folder` with its bytes, but those under the `skip` folders and
    SQLite's own -wal and -shm files (the catalog's content is compared on its own)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in files_under(folder)
        if path.relative_to(folder).parts[0] not in skip
        and not path.name.endswith(("-wal", "-shm"))
    }


def catalog_state(home: Path) -> list[Any]:
    """What the catalog says of every collection and export (read after the failure)."""
    with Store(Settings(home=home)).catalog.transaction() as db:
        collections = db.execute(
            "SELECT id, version, segments, document_count FROM collections ORDER BY id"
        ).fetchall()
        exports = db.execute("SELECT id FROM exports ORDER BY id").fetchall()
    return [tuple(row) for row in collections] + [tuple(row) for row in exports]


def collection_at(home: Path) -> dict[str, str]:
    """A namespace `env-ns` with collection `docs` (64-dim vectors) under `home`."""
    store = Store(Settings(home=home))
    index = VectorIndex(name="emb", dimensions=DIMENSIONS)
    make_collection(store, DOCUMENTS, [index], namespace="env-ns", name="docs")
    return {"EXPORT_PIPELINE_HOME": str(home)}


EXPORT = ("export", "docs", "-n", "env-ns", "--format", "json", "--include-vectors")


def assert_nothing_published(home: Path, exports: Path, scratch: Path) -> None:
    assert not files_under(exports), "a failed export published files"
    assert not [p for p in files_under(scratch) if p.name != "filler"], "scratch was left"
    assert not any(scratch.glob("exp_*")), "an export's scratch folder was left"


@pytest.mark.slow
def test_full_scratch_fails_the_export_naming_the_scratch_and_publishes_nothing(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    home = tmp_path / "home"
    env = collection_at(home)
    scratch = tmpfs(tmp_path / "scratch")
    before = catalog_state(home)
    message = error_of(
        cli({**env, "EXPORT_PIPELINE_SCRATCH": str(scratch)}, *EXPORT), "InsufficientStorageError"
    )
    assert message.startswith(f"No space left on device at {scratch}/")
    assert message.endswith(" (scratch space): nothing was published")
    assert_nothing_published(home, home / "exports", scratch)
    assert catalog_state(home) == before


@pytest.mark.slow
def test_full_exports_folder_fails_at_once_naming_it_and_publishes_nothing(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    home = tmp_path / "home"
    env = collection_at(home)
    exports = tmpfs(tmp_path / "exports")
    before = catalog_state(home)
    storage = {"EXPORT_PIPELINE_STORAGE": exports.as_uri()}
    message = error_of(cli({**env, **storage}, *EXPORT), "InsufficientStorageError")
    assert message.startswith(f"No space left on device at {exports}/")
    assert message.endswith(" (exports folder): nothing was published")
    assert_nothing_published(home, exports, home / "scratch")
    assert catalog_state(home) == before
    # A full disk is permanent: the publish step ran once, with no retry.
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert not instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)


@pytest.mark.slow
def test_full_home_fails_ingest_export_and_catalog_writes_changing_nothing(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    home = tmpfs(tmp_path / "home", "4m")
    env = collection_at(home)
    assert cli(env, "export", "docs", "-n", "env-ns")[0] == 0  # the Dagster instance exists
    source = tmp_path / "more.jsonl"
    source.write_text("".join(json.dumps({**d, "document_id": f"n{d['document_id']}"}) + "\n"
                              for d in DOCUMENTS))  # fmt: skip
    files, before = contents(home, skip=("dagster",)), catalog_state(home)
    filler = fill(home)

    ingest = cli(env, "ingest", "docs", str(source), "-n", "env-ns")
    message = error_of(ingest, "InsufficientStorageError")
    assert message.startswith(f"No space left on device at {home}/")
    assert message.endswith(": nothing was ingested")

    message = error_of(cli(env, *EXPORT), "InsufficientStorageError")
    assert message.startswith(f"No space left on device at {home}/")
    assert message.endswith(": nothing was published")

    filler.unlink()
    assert contents(home, skip=("dagster",)) == files  # segments, catalog, no scratch, no export
    assert catalog_state(home) == before


@pytest.mark.slow
def test_full_catalog_refuses_a_namespace_naming_the_catalog(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    home = tmpfs(tmp_path / "home", "1m")
    env = {"EXPORT_PIPELINE_HOME": str(home)}
    assert cli(env, "namespace", "create", "first")[0] == 0
    filler = fill(home)
    message = error_of(cli(env, "namespace", "create", "second"), "InsufficientStorageError")
    assert (
        message
        == f"No space left on device at {home}/catalog.sqlite (catalog): nothing was changed"
    )
    filler.unlink()
    names = Store(Settings(home=home)).catalog
    assert names.namespace("first").name == "first"
    with pytest.raises(NotFoundError):
        names.namespace("second")


@pytest.mark.slow
def test_read_only_home_fails_every_write_naming_the_path_and_changes_nothing(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    home = tmpfs(tmp_path / "home", "4m")
    env = collection_at(home)
    source = tmp_path / "more.jsonl"
    source.write_text(json.dumps({**DOCUMENTS[0], "document_id": "new"}) + "\n")
    files, before = contents(home), catalog_state(home)
    remount(home, "ro")
    try:
        for argv, outcome in [
            (("ingest", "docs", str(source), "-n", "env-ns"), "nothing was ingested"),
            (EXPORT, "nothing was published"),
            (("namespace", "create", "another"), "nothing was changed"),
        ]:
            message = error_of(cli(env, *argv), "EnvironmentError")
            assert message == f"Read-only file system at {home}/catalog.sqlite (catalog): {outcome}"
    finally:
        remount(home, "rw")
    assert contents(home) == files
    assert catalog_state(home) == before


@pytest.mark.slow
def test_api_answers_507_for_a_full_scratch_without_the_servers_paths(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    home = tmp_path / "home"
    collection_at(home)
    scratch = tmpfs(tmp_path / "scratch")
    settings = Settings(home=home, scratch=scratch)
    key, _ = Store(settings).keys.create([Store(settings).catalog.namespace("env-ns")], "k")
    pool = RunPool(settings, workers=1, per_collection=1)
    try:
        with TestClient(create_app(settings, pool)) as client:
            response = client.post(
                "/v1/collections/docs/export",
                json={"format": "json", "include_vectors": True},
                headers={"Authorization": f"Bearer {key}", "X-Namespace": "env-ns"},
            )
    finally:
        pool.close()
    assert response.status_code == 507
    error = response.json()["error"]
    assert error["type"] == "InsufficientStorageError"
    assert error["message"].startswith(
        "No space left on device in the server's scratch space: nothing was published (run "
    )
    assert str(tmp_path) not in response.text  # no server path reaches a client
    assert error["details"]["errno"] == "ENOSPC"
    assert_nothing_published(home, home / "exports", scratch)

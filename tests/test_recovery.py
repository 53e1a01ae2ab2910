"""Crash recovery (docs/architecture.md): operations are recorded before they create anything, and
the sweep (`export-pipeline gc`, every ingest, every export, the API's start) reclaims what a killed
one left. The crash tests SIGKILL a real child process (tests/kill_child.py) at a pause point it
announces, then check: nothing changed, the next command reclaims everything, a rerun works."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from helpers import files_under, make_collection, run_cli, write_jsonl
from kill_child import armed_environment

from export_pipeline.orchestration.instance import local_instance
from export_pipeline.recovery import sweep, sweep_quietly
from export_pipeline.settings import Settings
from export_pipeline.storage import LocalStorage
from export_pipeline.store import Store
from export_pipeline.store.operations import Owner, process_start

WORKTREE = Path(__file__).resolve().parents[1]
DOCS = [{"document_id": f"d{i:05d}", "n": i} for i in range(50)]


@pytest.fixture
def settings(catalog_settings: Settings) -> Settings:
    """Every test here runs with the catalog in SQLite and in PostgreSQL."""
    return catalog_settings


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process working on the test's home (and catalog)."""
    return {
        **os.environ,
        "EXPORT_PIPELINE_HOME": str(settings.home),
        **({"EXPORT_PIPELINE_CATALOG": settings.catalog} if settings.catalog else {}),
        "EXPORT_PIPELINE_AGENT": "off",
        "PYTHONPATH": str(WORKTREE),
        **extra,
    }


def paused_at(point: str, argv: list[str], env: dict[str, str], folder: Path) -> subprocess.Popen:
    """Run the CLI in a child until one of its processes reaches `point` and waits there."""
    marker = folder / f"{point}.reached"
    process = subprocess.Popen(
        [sys.executable, "-m", "export_pipeline.cli", *argv],
        env={**env, **armed_environment(folder, point, marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while not marker.exists():  # the child's own word that it is there
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"the child ended before {point}: {output[-3000:]}")
        assert time.monotonic() < deadline, f"{point} not reached"
        time.sleep(0.05)
    return process


def paused_pid(point: str, folder: Path) -> int:
    """The process waiting at `point` (the CLI itself, or one of its step processes)."""
    return int((folder / f"{point}.reached").read_text())


def kill_at(point: str, argv: list[str], env: dict[str, str], folder: Path) -> None:
    """Run the CLI in a child until it reaches `point`, then SIGKILL it."""
    process = paused_at(point, argv, env, folder)
    assert paused_pid(point, folder) == process.pid
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def cli(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`export-pipeline ARGV` after a crash: the CLI's main in this process, under `env` (the
    next command a user runs; the crashed ones are real child processes); its JSON output."""
    code, out = run_cli(argv, env)
    assert code == 0, out
    return out


def debris(store: Store) -> list[str]:
    """Scratch, staging, segment and history files no collection lists: what a crash may
    leave."""
    home = store.settings.home_dir
    found = files_under(store.settings.scratch_dir) + files_under(home / "exports" / ".staging")
    found += [p for p in files_under(home / "collections") if "staging" in p.parts]
    listed, retired = store.documents.listed_segments()
    for path in files_under(home / "collections"):
        if path.parent.name == "segments" and path.name.startswith("seg_"):
            segment = str(path).replace(".shapes.parquet", ".parquet")
            if segment not in listed and segment not in retired:
                found.append(path)
        if path.parent.name == "history" and str(path) not in listed:  # M1
            found.append(path)
    return [str(p.relative_to(home)) for p in found if not p.name.startswith("s3-cleanup")]


def shape(store: Store) -> tuple[int, list[str], int]:
    """What a user sees of test-ns/things: version, segments, document count."""
    found = store.catalog.collection(store.catalog.namespace("test-ns"), "things")
    return found.version, found.segments, found.document_count


# --- Records ------------------------------------------------------------------------------


def test_a_record_names_its_owner_process_and_ends(store: Store, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch-of-op"
    record = store.operations.begin("export", "exp_a", paths=[scratch], storage_prefixes=["p"])
    (found,) = store.operations.records()
    assert (found.kind, found.id, found.paths, found.storage_prefixes) == (
        "export",
        "exp_a",
        [str(scratch)],
        ["p"],
    )
    assert found.owner == Owner.current()
    assert found.owner.pid == os.getpid() and found.owner.started == process_start(os.getpid())
    record.add(segments=[tmp_path / "seg_1.parquet"])
    assert store.operations.records()[0].segments == [str(tmp_path / "seg_1.parquet")]
    record.end()
    assert store.operations.records() == []
    with store.operations.begin("ingest", "stg_ok"):
        pass
    assert store.operations.records() == []
    with pytest.raises(RuntimeError), store.operations.begin("ingest", "stg_failed"):
        raise RuntimeError("a crash-like failure")
    assert [r.id for r in store.operations.records()] == ["stg_failed"]  # left for the sweep


def test_an_owner_is_dead_once_its_process_is_gone_or_its_pid_reused() -> None:
    me = Owner.current()
    assert me.alive() is True
    assert Owner(me.host, me.pid, me.started + "0").alive() is False  # same pid, another start
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert Owner(me.host, child.pid, "whatever").alive() is False
    assert Owner("another-host", me.pid, me.started).alive() is None


def test_the_sweep_reclaims_dead_records_and_leaves_live_and_foreign_ones(
    store: Store, tmp_path: Path
) -> None:
    settings = store.settings
    exports = LocalStorage(settings.home_dir / "exports")
    dead = Owner(Owner.current().host, os.getpid(), "not-this-start")
    for op_id, owner in [("exp_dead", dead), ("exp_live", Owner.current())]:
        (settings.scratch_dir / op_id).mkdir(parents=True)
        (settings.scratch_dir / op_id / "documents.json").write_text("{}\n")
        (exports.root / "ns" / op_id).mkdir(parents=True)
        (exports.root / "ns" / op_id / "documents.json").write_text("{}\n")
        record = store.operations.begin(
            "export",
            op_id,
            paths=[settings.scratch_dir / op_id],
            storage=exports.target,
            storage_prefixes=[f"ns/{op_id}"],
        )
        _own(store, record.id, owner)
    foreign = store.operations.begin("export", "exp_foreign", paths=[tmp_path / "elsewhere"])
    _own(store, foreign.id, Owner("another-host", 1, "1"))
    (tmp_path / "elsewhere").mkdir()
    report = sweep(settings, store)
    assert (report.records, report.paths, report.objects, report.kept) == (1, 1, 1, 2)
    assert sorted(r.id for r in store.operations.records()) == ["exp_foreign", "exp_live"]
    assert [p.name for p in settings.scratch_dir.iterdir()] == ["exp_live"]
    assert [p.name for p in (exports.root / "ns").iterdir()] == ["exp_live"]
    assert (tmp_path / "elsewhere").exists()
    # Another host's record is taken as dead once older than the configured age.
    old = settings.model_copy(update={"recovery_foreign_max_age_seconds": 0})
    assert sweep(old, Store(old)).records == 1
    assert not (tmp_path / "elsewhere").exists()


def test_a_published_export_is_never_removed_by_the_sweep(store: Store) -> None:
    settings = store.settings
    exports = LocalStorage(settings.home_dir / "exports")
    folder = exports.root / "ns" / "exp_done"
    folder.mkdir(parents=True)
    (folder / "documents.json").write_text("{}\n")
    (folder / "manifest.json").write_text("{}\n")
    store.operations.begin("export", "exp_done", storage_prefixes=["ns/exp_done"])
    _own(store, "exp_done", Owner(Owner.current().host, os.getpid(), "gone"))
    assert sweep(settings, store).records == 1
    assert sorted(p.name for p in folder.iterdir()) == ["documents.json", "manifest.json"]


def test_unrecorded_debris_goes_once_older_than_the_grace_period(store: Store) -> None:
    settings = store.settings
    _, col = make_collection(store, DOCS)
    folder = store.documents.collection_dir(col)
    made = [
        settings.scratch_dir / "exp_old" / "documents.json",
        settings.home_dir / "exports" / ".staging" / "x.1" / "documents.json",
        folder / "staging" / "stg_old" / "staged.parquet",
        folder / "segments" / "seg_orphan.parquet",
        folder / "segments" / "seg_orphan.shapes.parquet",
    ]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    listed = store.documents.segment_files(col)
    assert sweep(settings, store).paths == 0  # all younger than an hour
    assert all(path.exists() for path in made)
    report = sweep(settings, store, grace_seconds=0)
    assert (report.paths, report.segments) == (3, 1)
    assert not any(path.exists() for path in made)
    assert all(path.exists() for path in listed)  # the collection's own segments stay
    assert shape(store)[2] == len(DOCS)


@pytest.mark.parametrize("retired, recorded, old", list(itertools.product([False, True], repeat=3)))
def test_an_unlisted_segment_goes_only_when_nothing_keeps_it_and_it_is_old(
    store: Store, retired: bool, recorded: bool, old: bool
) -> None:
    _, col = make_collection(store, DOCS)
    segment = store.documents.collection_dir(col) / "segments" / "seg_unlisted.parquet"
    segment.write_text("x")
    if retired:  # replaced by an ingest, kept for the retention period
        with store.catalog.transaction() as db:
            db.execute("INSERT INTO retired_segments VALUES (?, ?)", (str(segment), time.time()))
    if recorded:  # a live ingest is about to swap it in
        store.operations.begin("ingest", "stg_live", segments=[segment])
    sweep(store.settings, store, grace_seconds=0 if old else 3600)
    assert segment.exists() == (retired or recorded or not old)
    assert all(path.exists() for path in store.documents.segment_files(col))


def test_segments_retention_keeps_are_not_orphans(store: Store) -> None:
    settings = store.settings.model_copy(update={"segment_retention_seconds": 3600})
    store = Store(settings)
    _, col = make_collection(store, DOCS)
    replaced = store.documents.segment_files(col)
    source = write_jsonl(settings.home_dir.parent / "in", DOCS[:3])
    store.ingest("test-ns", "things", source, upsert=True)
    sweep(settings, store, grace_seconds=0)
    assert all(path.exists() for path in replaced)  # an older snapshot may still be read


def test_one_sweep_at_a_time(store: Store) -> None:
    import fcntl

    with open(store.settings.home_dir / ".sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert sweep(store.settings, store).skipped == "another sweep is running"
    assert sweep(store.settings, store).skipped is None


def test_sweep_quietly_on_a_home_never_used_creates_nothing(settings: Settings) -> None:
    report = sweep_quietly(settings)
    assert report is not None and report.records == 0
    assert not settings.home_dir.exists()


def _own(store: Store, op_id: str, owner: Owner) -> None:
    """Give a record another owner (a process that is gone, another host)."""
    with store.catalog.transaction() as db:
        db.execute(
            "UPDATE operations SET host = ?, pid = ?, pid_started = ? WHERE id = ?",
            (owner.host, owner.pid, owner.started, op_id),
        )


# --- Killed ingests -----------------------------------------------------------------------


# Killed while staging or writing segments, an ingest has not reached the catalog: those two
# run on SQLite; killed at the swap (the catalog's transaction), on both.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("catalog_settings", "point"),
    [
        *[("sqlite", p) for p in ("ingest-staging", "ingest-segments", "ingest-swap")],
        ("postgres", "ingest-swap"),
    ],
    indirect=["catalog_settings"],
)
def test_a_killed_ingest_changes_nothing_and_gc_reclaims_it(
    store: Store, tmp_path: Path, point: str
) -> None:
    make_collection(store, DOCS)
    before = shape(store)
    # Descending ids: the staged file is sorted into a new segment (written, not renamed).
    more = [{"document_id": f"e{i:05d}", "n": i} for i in reversed(range(3000))]
    source = write_jsonl(tmp_path / "more", more)
    env = env_of(store.settings)
    kill_at(point, ["ingest", "things", str(source), "-n", "test-ns"], env, tmp_path)
    assert shape(store) == before
    assert debris(store)  # the staging folder, and the new segment where one was written
    assert [r.kind for r in store.operations.records()] == ["ingest"]
    report = cli(["gc"], env)
    assert report["records"] == 1
    assert debris(store) == []
    assert store.operations.records() == []
    assert shape(store) == before
    done = cli(["ingest", "things", str(source), "-n", "test-ns"], env)
    assert done["document_count"] == len(DOCS) + len(more)


@pytest.mark.slow
def test_M2_a_killed_delete_changes_nothing_and_gc_reclaims_it(
    store: Store, tmp_path: Path
) -> None:
    make_collection(store, DOCS)
    before = shape(store)
    env = env_of(store.settings)
    ids = tmp_path / "ids.txt"
    ids.write_text("d00003\nd00040\n")
    # at the swap: the rewritten segment and the history file written, not yet listed
    kill_at("ingest-swap", ["delete", "things", "-n", "test-ns", "--ids", str(ids)], env, tmp_path)
    assert shape(store) == before
    assert any("/history/" in f"/{path}" for path in debris(store))
    assert cli(["gc"], env)["records"] == 1
    assert debris(store) == []
    assert shape(store) == before
    done = cli(["delete", "things", "-n", "test-ns", "--ids", str(ids)], env)
    assert (done["deleted"], done["document_count"]) == (2, len(DOCS) - 2)


@pytest.mark.slow
def test_gc_leaves_a_live_ingest_alone_however_young_its_files(
    store: Store, tmp_path: Path
) -> None:
    make_collection(store, DOCS)
    more = [{"document_id": f"e{i:05d}"} for i in reversed(range(3000))]
    source = write_jsonl(tmp_path / "more", more)
    env = env_of(store.settings)
    argv = ["ingest", "things", str(source), "-n", "test-ns"]
    process = paused_at("ingest-segments", argv, env, tmp_path)
    try:
        during = debris(store)
        assert during
        report = cli(["gc", "--grace-seconds", "0"], env)
        assert (report["records"], report["kept"]) == (0, 1)
        assert debris(store) == during
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert cli(["gc"], env)["records"] == 1
    assert debris(store) == []


@pytest.mark.slow
def test_the_next_ingest_reclaims_what_a_killed_one_left(store: Store, tmp_path: Path) -> None:
    make_collection(store, DOCS)
    source = write_jsonl(tmp_path / "more", [{"document_id": "z1"}, {"document_id": "a1"}])
    env = env_of(store.settings)
    kill_at("ingest-swap", ["ingest", "things", str(source), "-n", "test-ns"], env, tmp_path)
    assert debris(store)
    done = cli(["ingest", "things", str(source), "-n", "test-ns"], env)
    assert done["document_count"] == len(DOCS) + 2
    assert debris(store) == []
    assert store.operations.records() == []


# --- Killed exports -----------------------------------------------------------------------


def big_collection(store: Store) -> None:
    """About 6.5 MB of json documents (over the smallest S3 part size, 5 MB), in two
    segments: two shards both have documents to write."""
    text = "lorem ipsum " * 36
    docs = [{"document_id": f"d{i:06d}", "text": text} for i in range(15_000)]
    ns, col = make_collection(store, docs[:7_500])
    store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", docs[7_500:]))


def run_statuses(settings: Settings) -> list[dg.DagsterRunStatus]:
    return [run.status for run in local_instance(settings).get_runs()]


EXPORT = ["export", "things", "-n", "test-ns", "--format", "json"]


# Where a whole export is killed: the shards written one after the other in the CLI's own
# process (the in_process executor), so the one process killed is the export.
IN_ONE_PROCESS = {"EXPORT_PIPELINE_SHARDS": "2", "EXPORT_PIPELINE_EXECUTOR": "in_process"}


# The crash tests below are about processes and storage, which the catalog's backend does not
# change: they run on SQLite, and one of them on PostgreSQL too (the catalog's own recovery
# is tested on both above).
ON_SQLITE = pytest.mark.parametrize("catalog_settings", ["sqlite"], indirect=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("catalog_settings", "point"),
    [
        *[("sqlite", p) for p in ("export-planning", "export-writing", "export-assembly")],
        ("sqlite", "export-publish"),
        ("postgres", "export-writing"),
    ],
    indirect=["catalog_settings"],
)
def test_a_killed_cli_export_is_reclaimed_and_its_run_marked_failed(
    store: Store, tmp_path: Path, point: str
) -> None:
    big_collection(store)
    env = env_of(store.settings, **IN_ONE_PROCESS)
    kill_at(point, EXPORT, env, tmp_path)
    exports = store.settings.home_dir / "exports"
    assert [p for p in files_under(exports) if ".staging" not in p.parts] == []
    assert run_statuses(store.settings) == [dg.DagsterRunStatus.STARTED]
    if point != "export-planning":
        assert debris(store)
    report = cli(["gc"], env)
    assert (report["records"], report["runs_failed"]) == (1, 1)
    assert debris(store) == []
    assert files_under(exports) == []
    assert store.operations.records() == []
    assert run_statuses(store.settings) == [dg.DagsterRunStatus.FAILURE]
    done = cli(EXPORT, env)
    assert done["document_count"] == 15_000


@pytest.mark.slow
@pytest.mark.parametrize("point", ["export-multipart", "export-manifest"])
@ON_SQLITE
def test_a_cli_export_killed_while_publishing_to_s3_leaves_nothing_after_gc(
    store: Store, tmp_path: Path, bucket: str, point: str
) -> None:
    big_collection(store)
    env = env_of(
        store.settings,
        EXPORT_PIPELINE_STORAGE=f"s3://{bucket}/exports",
        EXPORT_PIPELINE_S3_PART_SIZE_MB="5",
    )
    s3 = boto3.session.Session().client("s3")
    kill_at(point, EXPORT, env, tmp_path)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if point == "export-manifest":  # today's publish: documents at the final key first
        assert [key.rsplit("/", 1)[-1] for key in keys] == ["documents.json"]
    else:
        assert len(uploads) == 1
    report = cli(["gc"], env)
    assert (report["records"], report["runs_failed"]) == (1, 1)
    assert report["objects"] == len(keys) and report["multipart_uploads"] == len(uploads)
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert debris(store) == []
    assert run_statuses(store.settings) == [dg.DagsterRunStatus.FAILURE]
    done = cli(EXPORT, env)
    assert done["document_count"] == 15_000
    assert done["s3_path"].startswith(f"s3://{bucket}/exports/")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["export-writing", "export-assembly"])
@ON_SQLITE
def test_a_step_process_killed_fails_the_export_and_its_launcher_leaves_nothing(
    store: Store, tmp_path: Path, point: str
) -> None:
    """Two shards in processes of their own: one shard's process killed mid-write, or the
    process assembling the files. The launcher lives on: the run fails, and what the export
    wrote goes at once, without waiting for a sweep."""
    big_collection(store)
    env = env_of(store.settings, EXPORT_PIPELINE_SHARDS="2")
    process = paused_at(point, EXPORT, env, tmp_path)
    step = paused_pid(point, tmp_path)
    assert step != process.pid
    os.kill(step, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    failed = json.loads(output.decode().strip().splitlines()[-1])
    step_name = "export_shard" if point == "export-writing" else "publish_files"
    assert step_name in failed["error"]["message"]
    assert files_under(store.settings.home_dir / "exports") == []
    assert debris(store) == []
    assert store.operations.records() == []
    assert run_statuses(store.settings) == [dg.DagsterRunStatus.FAILURE]
    done = cli(EXPORT, env)
    assert done["document_count"] == 15_000


# --- The API: a worker cancelled at its time limit, and the server's start ---------------


@pytest.mark.slow
@ON_SQLITE
def test_an_api_export_cancelled_at_its_time_limit_leaves_nothing_on_s3(
    store: Store, tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker pauses mid-upload (a test-only sitecustomize arms kill_child in the
    spawned worker); the time limit ends it, and what it wrote goes at once."""
    from export_pipeline.orchestration.launch import prepare
    from export_pipeline.orchestration.pool import RunPool, RunTimedOut

    big_collection(store)
    marker = tmp_path / "paused"
    for name, value in armed_environment(tmp_path, "export-multipart", marker).items():
        monkeypatch.setenv(name, value)
    settings = store.settings.model_copy(
        update={"storage": f"s3://{bucket}/exports", "s3_part_size_mb": 5}
    )
    pool = RunPool(settings, workers=1, per_collection=1)
    try:
        launch = prepare(store, "test-ns", "things", {"format": "json"}, "api")
        with pytest.raises(RunTimedOut):
            pool.run(launch, timeout=10)
    finally:
        pool.close()
    assert marker.exists()  # it was cancelled mid-upload
    s3 = boto3.session.Session().client("s3")
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert debris(store) == []
    assert store.operations.records() == []
    assert run_statuses(settings) == [dg.DagsterRunStatus.CANCELED]


@pytest.mark.slow
def test_the_api_server_start_reclaims_and_fails_dead_runs(store: Store, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from export_pipeline.api.app import create_app
    from export_pipeline.orchestration.pool import RunPool

    big_collection(store)
    kill_at("export-writing", EXPORT, env_of(store.settings), tmp_path)
    assert debris(store)
    pool = RunPool(store.settings, workers=1, per_collection=1)
    try:
        with TestClient(create_app(store.settings, pool)) as client:
            assert client.get("/healthz").status_code == 200
            assert debris(store) == []
            assert store.operations.records() == []
            assert run_statuses(store.settings) == [dg.DagsterRunStatus.FAILURE]
    finally:
        pool.close()


def test_gc_on_a_home_never_used_reports_nothing_and_creates_nothing(
    settings: Settings,
) -> None:
    report = cli(["gc"], env_of(settings))
    assert report == {
        "records": 0,
        "paths": 0,
        "objects": 0,
        "multipart_uploads": 0,
        "segments": 0,
        "kept": 0,
        "runs_failed": 0,
        "skipped": None,
        "errors": [],
    }
    assert not settings.home_dir.exists()

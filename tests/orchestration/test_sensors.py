"""Sensors (README: Schedules and sensors): the request drop folder (exactly once, bad files filed
away) and exports on collection change (baseline, once per version); the drop folder as an S3 prefix
against a real S3-compatible server on loopback (moto, server mode)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from helpers import free_port, make_collection, quick_first, write_jsonl

from export_pipeline.orchestration import tags
from export_pipeline.orchestration.drops import (
    LocalDropFolder,
    S3DropPrefix,
    decide,
    drop_source,
)
from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.resources import resources_from
from export_pipeline.orchestration.schedules import ScheduleEntry
from export_pipeline.orchestration.sensors import (
    CHANGE_SENSOR,
    DROP_SENSOR,
    MAX_FILES_PER_TICK,
    RUN_KEY_TAG,
    STEP_OUTPUTS_SENSOR,
    build_change_sensor,
    build_drop_sensor,
    build_sensors,
    build_step_outputs_sensor,
    runs_exist,
)
from export_pipeline.settings import Settings
from export_pipeline.storage.s3_client import S3Options
from export_pipeline.store import Collection, Namespace, Store

DOCS = [{"document_id": f"d{i}", "metadata": {"n": i}} for i in range(4)]
_new = itertools.count()
VALID = {"namespace": "test-ns", "collection": "things", "request": {"format": "csv"}}


@pytest.fixture
def things(store: Store) -> tuple[Namespace, Collection]:
    return make_collection(store, DOCS)


def evaluate(
    sensor: dg.SensorDefinition,
    cursor: str | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.SensorExecutionData:
    """One tick of the real sensor against `instance` (default: a new, empty one)."""
    instance = instance or dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(cursor=cursor, instance=instance)
    return sensor.evaluate_tick(context)


def submit(instance: dg.DagsterInstance, data: dg.SensorExecutionData) -> None:
    """What the sensor daemon does after a tick: a run per run_key that has none yet."""
    for request in data.run_requests or []:
        if runs_exist(instance, {request.run_key}):
            continue
        instance.create_run_for_job(
            job_def=export_collection,
            run_config=request.run_config,
            tags={**request.tags, RUN_KEY_TAG: request.run_key, "dagster/sensor_name": DROP_SENSOR},
        )


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> dg.SensorExecutionData:
    """A tick whose run requests the daemon submits."""
    data = evaluate(sensor, instance=instance)
    submit(instance, data)
    return data


def drop(settings: Settings, name: str, content: Any) -> bytes:
    """Write a request file as a writer would; returns its bytes."""
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    settings.drop_folder.mkdir(parents=True, exist_ok=True)
    (settings.drop_folder / name).write_bytes(data)
    return data


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- Request drop folder ----------------------------------------------------------------


def test_drop_sensor_is_running_by_default_every_30_seconds(settings: Settings) -> None:
    sensor = build_drop_sensor(settings)
    assert sensor.name == DROP_SENSOR
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30


def test_drop_sensor_creates_a_missing_folder_and_skips_quietly(settings: Settings) -> None:
    assert not settings.drop_folder.exists()
    data = evaluate(build_drop_sensor(settings))
    assert data.run_requests == []
    assert data.skip_message == f"no request files in {settings.drop_folder}"
    assert settings.drop_folder.is_dir()


def test_drop_folder_comes_from_EXPORT_PIPELINE_DROP_DIR(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(tmp_path / "home"))
    assert Settings().drop_folder == (tmp_path / "home" / "requests").resolve()
    monkeypatch.setenv("EXPORT_PIPELINE_DROP_DIR", str(tmp_path / "inbox"))
    assert Settings().drop_folder == (tmp_path / "inbox").resolve()


def test_a_valid_file_launches_one_run_keyed_by_its_sha256_and_is_accepted(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    data = drop(settings, "export-1.json", VALID)
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_drop_sensor(settings)
    result = tick(sensor, instance)
    (request,) = result.run_requests
    assert request.run_key == hashlib.sha256(data).hexdigest()
    assert request.run_config == {
        "namespace": "test-ns",
        "collection": "things",
        "format": "csv",
        "include_vectors": False,
        "shards": 1,
        "executor": "local",
        "celery_broker": None,
    }
    assert request.tags[tags.TRIGGER] == "sensor"
    assert request.tags[tags.COLLECTION_ID] == things[1].id
    # It leaves the folder once its run exists: on the next tick.
    assert listing(settings.drop_folder) == ["export-1.json"]
    after = evaluate(sensor, instance=instance)
    assert after.run_requests == []
    assert after.skip_message == "filed 1 request file(s) whose run exists"
    assert listing(settings.drop_folder) == ["accepted/export-1.json"]
    assert (settings.drop_folder / "accepted" / "export-1.json").read_bytes() == data


def test_a_handled_file_is_not_launched_again_on_the_next_evaluation(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    sensor = build_drop_sensor(settings)
    instance = dg.DagsterInstance.ephemeral()
    drop(settings, "a.json", VALID)
    assert len(tick(sensor, instance).run_requests) == 1
    for _ in range(2):
        again = tick(sensor, instance)
        assert again.run_requests == []
        assert again.skip_message
    assert len(instance.get_runs()) == 1


def test_the_same_content_dropped_twice_has_the_same_run_key(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    """Exactly once per content: Dagster launches one run per run_key of a sensor."""
    sensor = build_drop_sensor(settings)
    instance = dg.DagsterInstance.ephemeral()
    drop(settings, "a.json", VALID)
    drop(settings, "b.json", VALID)
    (in_one_tick,) = tick(sensor, instance).run_requests  # one request for two equal files
    assert evaluate(sensor, instance=instance).run_requests == []  # both filed away
    drop(settings, "a.json", VALID)
    # The same content again: its run exists, so it is filed at once and launches nothing.
    assert evaluate(sensor, instance=instance).run_requests == []
    other = drop(settings, "c.json", {**VALID, "request": {"format": "json"}})
    (different,) = tick(sensor, instance).run_requests
    assert different.run_key == hashlib.sha256(other).hexdigest() != in_one_tick.run_key
    evaluate(sensor, instance=instance)
    assert len(instance.get_runs()) == 2
    # An earlier file of the same name is kept; the later one gets its hash in its name.
    assert listing(settings.drop_folder / "accepted") == sorted(
        ["a.json", f"a.{in_one_tick.run_key[:12]}.json", "b.json", "c.json"]
    )


BAD_REQUESTS: dict[str, tuple[bytes | dict[str, Any], list[str]]] = {
    "invalid JSON": (
        b'{"namespace": "test-ns",',
        ["ValidationError: the request file is not valid JSON"],
    ),
    "not UTF-8": (b"\xff\xfe{}", ["ValidationError: the request file is not valid JSON"]),
    # Parsed as it is, this reached Python's recursion limit: the tick failed, every tick.
    "nested 10,000 levels": (
        b"[" * 10_000 + b"]" * 10_000,
        ["ValidationError: the request file is nested deeper than 64 levels", "line 1, column 65"],
    ),
    "a request nested 10,000 levels": (
        b'{"namespace": "test-ns", "collection": "things",\n "request": '
        + b'{"filters": ' * 10_000
        + b"{}"
        + b"}" * 10_001,
        ["nested deeper than 64 levels (at line 2, column 769)"],
    ),
    "not an object": ([VALID], ["invalid request file: (file):"]),
    "missing keys": (
        {"namespace": "test-ns"},
        ["collection: Field required", "request: Field required"],
    ),
    "unknown key": ({**VALID, "format": "csv"}, ["format: Extra inputs are not permitted"]),
    "invalid request": (
        {**VALID, "request": {"filters": {"AND": [{"field": "x", "operator": "like"}]}}},
        ["ValidationError: invalid request: filters.AND.0.operator:"],
    ),
    "unknown namespace": (
        {**VALID, "namespace": "nowhere"},
        ["NotFoundError: namespace 'nowhere' not found"],
    ),
    "unknown collection": (
        {**VALID, "collection": "gone"},
        ["NotFoundError: collection 'gone' not found in namespace 'test-ns'"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("content, fragments", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_file_is_rejected_with_its_error_note_and_never_retried(
    settings: Settings,
    things: tuple[Namespace, Collection],
    content: bytes | dict[str, Any],
    fragments: list[str],
) -> None:
    sensor = build_drop_sensor(settings)
    data = drop(settings, "bad.json", content)
    result = evaluate(sensor)
    assert result.run_requests == []
    assert result.skip_message == "rejected 1 request file(s)"
    assert listing(settings.drop_folder) == ["rejected/bad.error.txt", "rejected/bad.json"]
    assert (settings.drop_folder / "rejected" / "bad.json").read_bytes() == data
    note = (settings.drop_folder / "rejected" / "bad.error.txt").read_text()
    for fragment in fragments:
        assert fragment in note
    assert evaluate(sensor).skip_message == f"no request files in {settings.drop_folder}"


def test_good_and_bad_files_in_one_tick_are_decided_separately(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    drop(settings, "good.json", VALID)
    drop(settings, "bad.json", {**VALID, "collection": "gone"})
    sensor, instance = build_drop_sensor(settings), dg.DagsterInstance.ephemeral()
    (request,) = tick(sensor, instance).run_requests
    assert request.run_config["collection"] == "things"
    assert listing(settings.drop_folder) == [
        "good.json",
        "rejected/bad.error.txt",
        "rejected/bad.json",
    ]
    evaluate(sensor, instance=instance)
    assert listing(settings.drop_folder) == [
        "accepted/good.json",
        "rejected/bad.error.txt",
        "rejected/bad.json",
    ]


def test_partial_hidden_and_other_files_are_left_alone(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    """Writers write to a temporary name and rename to *.json when done."""
    drop(settings, "half.json.tmp", b'{"namespace": ')
    drop(settings, ".half.json", b'{"namespace": ')
    drop(settings, "notes.txt", b"hello")
    (settings.drop_folder / "folder.json").mkdir()
    data = evaluate(build_drop_sensor(settings))
    assert data.run_requests == []
    assert listing(settings.drop_folder) == [".half.json", "half.json.tmp", "notes.txt"]


def test_at_most_50_files_per_tick_the_rest_next_tick(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    for number in range(MAX_FILES_PER_TICK + 1):
        drop(settings, f"r{number:03d}.json", {**VALID, "request": {"sample_size": number + 1}})
    sensor, instance = build_drop_sensor(settings), dg.DagsterInstance.ephemeral()
    assert len(tick(sensor, instance).run_requests) == MAX_FILES_PER_TICK
    assert tick(sensor, instance).run_requests == []  # the 50 oldest are filed away
    assert len(tick(sensor, instance).run_requests) == 1
    tick(sensor, instance)
    assert len(listing(settings.drop_folder / "accepted")) == MAX_FILES_PER_TICK + 1


def test_a_crash_between_the_tick_and_the_run_loses_nothing(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    """The daemon dies after the tick, before submitting its run: the file is still there,
    and the next tick asks for the same run again (Dagster launches a run_key once)."""
    data = drop(settings, "a.json", VALID)
    sensor, instance = build_drop_sensor(settings), dg.DagsterInstance.ephemeral()
    (lost,) = evaluate(sensor, instance=instance).run_requests  # never submitted
    assert listing(settings.drop_folder) == ["a.json"]
    (again,) = tick(sensor, instance).run_requests
    assert again.run_key == lost.run_key == hashlib.sha256(data).hexdigest()
    assert listing(settings.drop_folder) == ["a.json"]
    tick(sensor, instance)
    assert listing(settings.drop_folder) == ["accepted/a.json"]
    assert [run.tags[RUN_KEY_TAG] for run in instance.get_runs()] == [lost.run_key]


def test_a_file_rewritten_after_it_was_read_is_not_moved(
    settings: Settings, things: tuple[Namespace, Collection]
) -> None:
    source = LocalDropFolder(settings.drop_folder)
    data = drop(settings, "a.json", VALID)
    decision = decide(Store(settings), "a.json", source.read("a.json"))
    assert decision.run_key == hashlib.sha256(data).hexdigest()
    drop(settings, "a.json", {**VALID, "request": {"format": "json"}})
    with pytest.raises(OSError, match="changed since it was read"):
        source.file_away(decision)
    assert listing(settings.drop_folder) == ["a.json"]


# --- Collection change ------------------------------------------------------------------


def on_change(name: str = "things_changed", **fields: Any) -> ScheduleEntry:
    base = {"name": name, "namespace": "test-ns", "collection": "things", "on_change": True}
    return ScheduleEntry.model_validate({**base, "request": {"format": "json"}, **fields})


def ingest(store: Store, *, upsert: bool = False) -> None:
    """A change to test-ns/things: new documents, or the stored ones replaced."""
    docs = DOCS[:2] if upsert else [{"document_id": f"new{next(_new)}", "metadata": {}}]
    store.ingest("test-ns", "things", write_jsonl(store.settings.home / "in", docs), upsert=upsert)


def test_change_sensor_is_stopped_by_default_every_60_seconds(settings: Settings) -> None:
    sensor = build_change_sensor([on_change()], settings)
    assert sensor.name == CHANGE_SENSOR
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.minimum_interval_seconds == 60


def test_change_sensor_exists_only_with_on_change_entries(settings: Settings) -> None:
    scheduled = on_change(cron="@daily", on_change=False)
    assert [s.name for s in build_sensors([scheduled], settings)] == [DROP_SENSOR]
    names = [s.name for s in build_sensors([scheduled, on_change()], settings)]
    assert names == [DROP_SENSOR, CHANGE_SENSOR]


def test_change_sensor_baseline_then_once_per_ingest_and_upsert(
    store: Store, things: tuple[Namespace, Collection]
) -> None:
    """First evaluation records the version; each change after it launches one export."""
    _, col = things
    sensor = build_change_sensor([on_change()], store.settings)

    baseline = evaluate(sensor)
    assert baseline.run_requests == []
    assert json.loads(baseline.cursor) == {"things_changed": col.version}

    ingest(store)
    (request,) = (changed := evaluate(sensor, baseline.cursor)).run_requests
    version = col.version + 1
    assert request.run_key == f"things_changed:{col.id}:v{version}"
    assert request.run_config == {
        "namespace": "test-ns",
        "collection": "things",
        "format": "json",
        "include_vectors": False,
        "shards": 1,
        "executor": "local",
        "celery_broker": None,
    }
    assert request.tags[tags.TRIGGER] == "sensor"
    assert json.loads(changed.cursor) == {"things_changed": version}

    unchanged = evaluate(sensor, changed.cursor)
    assert unchanged.run_requests == []
    assert unchanged.cursor == changed.cursor

    ingest(store, upsert=True)
    (upserted,) = evaluate(sensor, changed.cursor).run_requests
    assert upserted.run_key == f"things_changed:{col.id}:v{version + 1}"


def test_change_sensor_entries_are_independent_and_entries_not_on_change_ignored(
    store: Store, things: tuple[Namespace, Collection]
) -> None:
    make_collection(store, DOCS, name="others")
    entries = [
        on_change("a"),
        on_change("b", collection="others"),
        on_change("nightly", cron="@daily", on_change=False),
    ]
    sensor = build_change_sensor(entries, store.settings)
    cursor = evaluate(sensor).cursor
    assert set(json.loads(cursor)) == {"a", "b"}
    ingest(store)
    (request,) = evaluate(sensor, cursor).run_requests
    assert request.run_key.startswith("a:")


def test_change_sensor_skips_a_missing_collection_and_keeps_its_baseline(
    store: Store, things: tuple[Namespace, Collection]
) -> None:
    sensor = build_change_sensor(
        [on_change(), on_change("gone", collection="gone")], store.settings
    )
    first = evaluate(sensor)
    assert json.loads(first.cursor) == {"things_changed": things[1].version}
    kept = evaluate(sensor, json.dumps({"things_changed": things[1].version, "gone": 7}))
    assert kept.run_requests == []
    assert json.loads(kept.cursor) == {"things_changed": things[1].version, "gone": 7}


def test_change_sensor_forgets_entries_removed_from_the_file(
    store: Store, things: tuple[Namespace, Collection]
) -> None:
    sensor = build_change_sensor([on_change()], store.settings)
    data = evaluate(sensor, json.dumps({"things_changed": things[1].version, "removed": 3}))
    assert json.loads(data.cursor) == {"things_changed": things[1].version}


# --- Request drop prefix on S3 ---------------------------------------------------------


def s3() -> Any:
    """A client from the current environment (boto3's default session would keep stale keys)."""
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return _client(tuple(os.environ.get(key) for key in keys))


@functools.cache
def _client(environment: tuple[str | None, ...]) -> Any:
    """One client per environment: making one takes a while."""
    return boto3.session.Session().client("s3")


def s3_drop(settings: Settings, bucket: str, prefix: str = "inbox") -> Settings:
    return settings.model_copy(update={"drop_dir": f"s3://{bucket}/{prefix}".rstrip("/")})


def put(bucket: str, key: str, content: Any) -> bytes:
    """Drop a request object as a writer would; returns its bytes."""
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    s3().put_object(Bucket=bucket, Key=key, Body=data)
    return data


def objects(bucket: str) -> list[str]:
    listed = s3().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def body(bucket: str, key: str) -> bytes:
    return s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_an_s3_drop_dir_is_kept_as_text_and_watched_as_a_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EXPORT_PIPELINE_DROP_DIR", "s3://requests-bucket/team-a/inbox/")
    settings = Settings()
    assert settings.drop_dir == "s3://requests-bucket/team-a/inbox/"
    source = drop_source(settings)
    assert isinstance(source, S3DropPrefix)
    assert (source.bucket, source.prefix) == ("requests-bucket", "team-a/inbox")
    assert source.where == "s3://requests-bucket/team-a/inbox"
    with pytest.raises(ValueError, match="S3 prefix"):
        _ = settings.drop_folder
    # Anything else stays a local folder; a Path given in code is taken as its text.
    local = Settings(home=tmp_path / "home", drop_dir=tmp_path / "inbox")  # type: ignore[arg-type]
    assert drop_source(local) == LocalDropFolder((tmp_path / "inbox").resolve())


@pytest.mark.slow
@pytest.mark.parametrize("prefix", quick_first(["inbox", "team-a/inbox", ""]))
def test_a_valid_object_launches_one_run_keyed_by_its_sha256_and_is_accepted(
    settings: Settings, things: tuple[Namespace, Collection], bucket: str, prefix: str
) -> None:
    settings = s3_drop(settings, bucket, prefix)
    under = f"{prefix}/" if prefix else ""
    data = put(bucket, f"{under}export-1.json", VALID)
    sensor, instance = build_drop_sensor(settings), dg.DagsterInstance.ephemeral()
    (request,) = tick(sensor, instance).run_requests
    assert request.run_key == hashlib.sha256(data).hexdigest()
    assert request.run_config == {
        "namespace": "test-ns",
        "collection": "things",
        "format": "csv",
        "include_vectors": False,
        "shards": 1,
        "executor": "local",
        "celery_broker": None,
    }
    assert request.tags[tags.TRIGGER] == "sensor"
    assert request.tags[tags.COLLECTION_ID] == things[1].id
    assert objects(bucket) == [f"{under}export-1.json"]  # until its run exists
    assert evaluate(sensor, instance=instance).run_requests == []
    assert objects(bucket) == [f"{under}accepted/export-1.json"]
    assert body(bucket, f"{under}accepted/export-1.json") == data
    again = evaluate(sensor, instance=instance)
    assert again.run_requests == []
    assert again.skip_message == f"no request files in s3://{bucket}/{prefix}".rstrip("/")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["invalid JSON", "not UTF-8", "missing keys", "invalid request", "unknown collection"]
)
def test_a_bad_object_is_rejected_with_its_error_note_object_and_never_retried(
    settings: Settings, things: tuple[Namespace, Collection], bucket: str, case: str
) -> None:
    content, fragments = BAD_REQUESTS[case]
    sensor = build_drop_sensor(s3_drop(settings, bucket))
    data = put(bucket, "inbox/bad.json", content)
    result = evaluate(sensor)
    assert result.run_requests == []
    assert result.skip_message == "rejected 1 request file(s)"
    assert objects(bucket) == ["inbox/rejected/bad.error.txt", "inbox/rejected/bad.json"]
    assert body(bucket, "inbox/rejected/bad.json") == data
    note = body(bucket, "inbox/rejected/bad.error.txt").decode()
    for fragment in fragments:
        assert fragment in note
    assert evaluate(sensor).skip_message == f"no request files in s3://{bucket}/inbox"


def test_s3_good_and_bad_objects_and_names_taken_before_are_filed_like_files(
    settings: Settings, things: tuple[Namespace, Collection], bucket: str
) -> None:
    sensor = build_drop_sensor(s3_drop(settings, bucket))
    instance = dg.DagsterInstance.ephemeral()
    put(bucket, "inbox/a.json", VALID)
    put(bucket, "inbox/bad.json", {**VALID, "collection": "gone"})
    (first,) = tick(sensor, instance).run_requests
    evaluate(sensor, instance=instance)
    put(bucket, "inbox/a.json", {**VALID, "request": {"format": "json"}})
    put(bucket, "inbox/bad.json", b"{")
    (second,) = tick(sensor, instance).run_requests
    evaluate(sensor, instance=instance)
    bad_key = hashlib.sha256(b"{").hexdigest()[:12]
    # An earlier object of the same name is kept; the later one gets its hash in its name.
    assert objects(bucket) == sorted(
        [
            "inbox/accepted/a.json",
            f"inbox/accepted/a.{second.run_key[:12]}.json",
            "inbox/rejected/bad.error.txt",
            "inbox/rejected/bad.json",
            f"inbox/rejected/bad.{bad_key}.error.txt",
            f"inbox/rejected/bad.{bad_key}.json",
        ]
    )
    assert body(bucket, "inbox/accepted/a.json") != body(
        bucket, f"inbox/accepted/a.{second.run_key[:12]}.json"
    )
    assert first.run_key != second.run_key


def test_an_s3_object_rewritten_after_it_was_read_is_not_moved(
    settings: Settings, things: tuple[Namespace, Collection], bucket: str
) -> None:
    """The move requires the ETag read (CopySourceIfMatch, then DeleteObject IfMatch; moto
    honours the delete's condition only): the new content stays, for the next tick."""
    source = S3DropPrefix.from_uri(f"s3://{bucket}/inbox", S3Options())
    put(bucket, "inbox/a.json", VALID)
    decision = decide(Store(settings), "a.json", source.read("a.json"))
    rewritten = put(bucket, "inbox/a.json", {**VALID, "request": {"format": "json"}})
    with pytest.raises(OSError, match="changed since it was read"):
        source.file_away(decision)
    assert objects(bucket) == ["inbox/a.json"]
    assert body(bucket, "inbox/a.json") == rewritten
    # Unchanged, it moves.
    decision = decide(Store(settings), "a.json", source.read("a.json"))
    source.file_away(decision)
    assert objects(bucket) == ["inbox/accepted/a.json"]


def test_s3_temporary_hidden_nested_and_other_keys_are_left_alone(
    settings: Settings, things: tuple[Namespace, Collection], bucket: str
) -> None:
    keys = [
        "inbox/half.json.tmp",
        "inbox/.half.json",
        "inbox/notes.txt",
        "inbox/nested/deep.json",
        "inbox/accepted/old.json",
        "inbox/rejected/older.json",
        "inboxes/next-door.json",
        "at-the-root.json",
    ]
    for key in keys:
        put(bucket, key, VALID)
    data = evaluate(build_drop_sensor(s3_drop(settings, bucket)))
    assert data.run_requests == []
    assert data.skip_message == f"no request files in s3://{bucket}/inbox"
    assert objects(bucket) == sorted(keys)


def test_s3_objects_are_taken_oldest_first_at_most_the_limit(bucket: str) -> None:
    source = S3DropPrefix.from_uri(f"s3://{bucket}/inbox", S3Options())
    put(bucket, "inbox/b.json", VALID)
    time.sleep(1.1)  # LastModified may count whole seconds
    put(bucket, "inbox/a.json", VALID)
    assert source.pending(limit=1) == ["b.json"]
    assert source.pending() == ["b.json", "a.json"]


def test_a_missing_bucket_is_a_skip_saying_so(
    settings: Settings, things: tuple[Namespace, Collection], s3_env: str
) -> None:
    data = evaluate(build_drop_sensor(s3_drop(settings, "no-such-bucket")))
    assert data.run_requests == []
    assert data.skip_message == (
        "cannot list s3://no-such-bucket/inbox: bucket 'no-such-bucket' does not exist"
    )


def test_an_unreachable_endpoint_is_a_skip_and_nothing_moves(
    settings: Settings,
    things: tuple[Namespace, Collection],
    bucket: str,
    s3_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put(bucket, "inbox/a.json", VALID)
    closed = f"http://127.0.0.1:{free_port()}"  # a loopback port nobody listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    sensor = build_drop_sensor(s3_drop(settings.model_copy(update={"s3_max_attempts": 1}), bucket))
    data = evaluate(sensor)
    assert data.run_requests == []
    assert data.skip_message == (
        f"cannot list s3://{bucket}/inbox: S3 endpoint {closed} unreachable"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)  # back: the object is still there
    assert objects(bucket) == ["inbox/a.json"]
    assert len(evaluate(sensor).run_requests) == 1


def test_a_run_request_from_an_s3_object_executes_the_export(
    settings: Settings, things: tuple[Namespace, Collection], bucket: str
) -> None:
    settings = s3_drop(settings, bucket)
    put(bucket, "inbox/export.json", {**VALID, "request": {"format": "json"}})
    sensor, instance = build_drop_sensor(settings), dg.DagsterInstance.ephemeral()
    (request,) = evaluate(sensor, instance=instance).run_requests
    result = export_collection.execute_in_process(
        run_config=request.run_config,
        tags={**request.tags, RUN_KEY_TAG: request.run_key},
        instance=instance,
        resources=resources_from(settings),
    )
    assert result.success
    assert result.output_for_node("report_export")["document_count"] == len(DOCS)
    assert result.dagster_run.tags[tags.TRIGGER] == "sensor"
    assert objects(bucket) == ["inbox/export.json"]
    assert evaluate(sensor, instance=instance).run_requests == []  # its run exists
    assert objects(bucket) == ["inbox/accepted/export.json"]


# --- Step outputs of ended runs (celery executor) ---------------------------------------


def test_the_step_outputs_cleanup_exists_only_with_the_celery_executor(settings: Settings) -> None:
    celery = settings.model_copy(update={"executor": "celery"})
    assert STEP_OUTPUTS_SENSOR not in {s.name for s in build_sensors([], settings)}
    sensor = next(s for s in build_sensors([], celery) if s.name == STEP_OUTPUTS_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_ended_runs_step_outputs_are_removed_and_running_runs_kept(
    settings: Settings, bucket: str
) -> None:
    target = settings.model_copy(update={"executor": "celery", "storage": f"s3://{bucket}/exp"})
    sensor = build_step_outputs_sensor(target)
    instance = dg.DagsterInstance.ephemeral()
    config = {"namespace": "test-ns", "collection": "things"}
    ended, running = (
        instance.create_run_for_job(job_def=export_collection, run_config=config) for _ in range(2)
    )
    for run in (ended, running):
        put(bucket, f"exp/.dagster-io/storage/{run.run_id}/plan_export/result", b"pickled")
    put(bucket, "exp/ns/exports/col/exp/documents.csv", b"published")
    instance.report_run_failed(ended)

    first = evaluate(sensor, instance=instance)
    assert objects(bucket) == [
        f"exp/.dagster-io/storage/{running.run_id}/plan_export/result",
        "exp/ns/exports/col/exp/documents.csv",
    ]
    instance.report_run_canceled(running)
    evaluate(sensor, cursor=first.cursor, instance=instance)
    assert objects(bucket) == ["exp/ns/exports/col/exp/documents.csv"]

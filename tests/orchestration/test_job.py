"""The export_collection job (docs/architecture.md): run in process on a real collection, op by op
too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from helpers import (
    cli_output,
    files_under,
    make_collection,
    read_csv,
    read_json_lines,
    read_parquet,
)

from export_pipeline.contract import ExportRequest, ExportResponse
from export_pipeline.demo import DEMO_INDEXES, demo_documents
from export_pipeline.engine.manifest import sha256_of
from export_pipeline.engine.plan import parse_request
from export_pipeline.errors import EnvironmentProblem, InvalidInput, NotFoundError
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.config import LAUNCH_FIELDS, ExportConfig
from export_pipeline.orchestration.job import export_collection
from export_pipeline.orchestration.launch import ExportRun, execute, run_error
from export_pipeline.orchestration.ops import (
    export_shard,
    plan_export_op,
    publish_files,
    report_export,
)
from export_pipeline.orchestration.resources import resources_from
from export_pipeline.settings import Settings
from export_pipeline.storage.base import TransientStorageError
from export_pipeline.storage.local import LocalStorage
from export_pipeline.store import Collection, Namespace, Store
from export_pipeline.store import segments as segments_module

SCIENCE = {"field": "metadata.category", "operator": "eq", "value": "science"}


@pytest.fixture
def instance() -> dg.DagsterInstance:
    """A throwaway instance, so runs and their events can be read back."""
    return dg.DagsterInstance.ephemeral()


def science_ids() -> list[str]:
    return sorted(
        d["document_id"] for d in demo_documents(60) if d["metadata"]["category"] == "science"
    )


def materialization(instance: dg.DagsterInstance, run_id: str) -> dg.AssetMaterialization:
    (record,) = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return record.event_log_entry.dagster_event.event_specific_data.materialization


# --- The job end to end ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_job_exports_and_records_links_counts_checksums_and_preview(
    settings: Settings, demo: tuple[Namespace, Collection], instance: dg.DagsterInstance, fmt: str
) -> None:
    ns, col = demo
    body = {"format": fmt, "include_vectors": True, "filters": {"AND": [SCIENCE]}}
    run = execute(settings, ns.name, col.name, body, trigger="cli", instance=instance)
    response = run.response
    expected = science_ids()
    assert response.document_count == len(expected) > 0
    read = {"json": read_json_lines, "csv": read_csv, "parquet": read_parquet}[fmt]
    assert read(response.s3_path)  # the file is where the response says

    event = materialization(instance, run.run_id)
    assert event.asset_key == dg.AssetKey(["exports", ns.name, col.name])
    meta = event.metadata
    assert meta["download_url"] == dg.MetadataValue.url(response.download_url)
    assert meta["vectors_download_url"] == dg.MetadataValue.url(response.vectors_download_url)
    assert meta["s3_path"].value == response.s3_path
    assert meta["document_count"].value == len(expected)
    assert meta["file_size_bytes"].value == response.file_size_bytes
    documents = Path(response.s3_path.removeprefix("file://"))
    assert meta["sha256"].value == sha256_of(documents)
    assert meta["export_id"].value == run.manifest["export_id"]
    assert set(meta["seconds"].value) == {"plan", "select", "write", "publish"}
    assert meta["warnings"].value == run.manifest["warnings"]
    preview = meta["preview"].value
    assert preview.count("\n") == 1 + min(10, len(expected))  # header, rule, 10 rows
    assert expected[0] in preview and "metadata" in preview

    tags_of_run = instance.get_run_by_id(run.run_id).tags
    assert {k: tags_of_run[k] for k in (tags.NAMESPACE, tags.COLLECTION, tags.FORMAT)} == {
        tags.NAMESPACE: ns.name,
        tags.COLLECTION: col.name,
        tags.FORMAT: fmt,
    }
    assert tags_of_run[tags.TRIGGER] == "cli"
    assert tags_of_run[tags.COLLECTION_ID] == col.id
    assert tags_of_run[tags.EXPORT_ID] == run.manifest["export_id"]
    assert tags_of_run[tags.JOB] == "export_collection"


def test_job_reports_the_drawn_sample_seed_and_it_reproduces_the_sample(
    settings: Settings, demo: tuple[Namespace, Collection], instance: dg.DagsterInstance
) -> None:
    ns, col = demo
    first = execute(settings, ns.id, col.id, {"format": "json", "sample_size": 7}, "cli", instance)
    seed = materialization(instance, first.run_id).metadata["sample_seed"].value
    assert seed == first.manifest["sample_seed"]
    again = execute(
        settings,
        ns.id,
        col.id,
        {"format": "json", "sample_size": 7, "sample_seed": seed},
        "cli",
        instance,
    )
    ids = [[d["document_id"] for d in read_json_lines(r.response.s3_path)] for r in (first, again)]
    assert ids[0] == ids[1] and len(ids[0]) == 7


@pytest.mark.parametrize(
    "run_tags",
    [{}, {tags.TRIGGER: "cron-job-somewhere"}],
    ids=["no trigger tag", "unknown trigger tag"],
)
def test_a_run_from_the_launchpad_is_tagged_ui(
    settings: Settings,
    demo: tuple[Namespace, Collection],
    instance: dg.DagsterInstance,
    run_tags: dict[str, str],
) -> None:
    """What the launchpad sends: the config alone, maybe with tags of the user's own (free
    text, so an unknown trigger is not taken at its word)."""
    ns, col = demo
    result = export_collection.execute_in_process(
        run_config={"namespace": ns.name, "collection": col.name, "format": "csv"},
        instance=instance,
        resources=resources_from(settings),
        tags=run_tags,
    )
    assert result.success
    found = instance.get_run_by_id(result.run_id).tags
    assert found[tags.TRIGGER] == "ui" and found[tags.COLLECTION_ID] == col.id


# --- Invalid config and failures ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"filters": {"AND": [{"field": "metadata.category", "operator": "bogus", "value": 1}]}},
        {"select_fields": ["metadata..title"]},
        {"sample_size": 0},
        {"filters": {"AND": [{"field": "x", "operator": "in", "value": 3}]}},
    ],
)
def test_invalid_config_fails_before_any_op_runs_with_the_cli_message(
    settings: Settings, demo: tuple[Namespace, Collection], instance: dg.DagsterInstance, body: dict
) -> None:
    ns, col = demo
    with pytest.raises(InvalidInput) as cli_error:
        parse_request(body)
    with pytest.raises(dg.DagsterInvalidConfigError) as info:
        export_collection.execute_in_process(
            run_config={"namespace": ns.name, "collection": col.name, **body},
            instance=instance,
            resources=resources_from(settings),
        )
    assert str(info.value) == cli_error.value.message
    assert not instance.get_runs()  # refused before a run existed
    with pytest.raises(InvalidInput, match="invalid request"):  # launchers refuse it too
        execute(settings, ns.name, col.name, body, "cli", instance)


def test_config_outside_the_schema_is_refused_by_dagster(
    settings: Settings, demo: tuple[Namespace, Collection], instance: dg.DagsterInstance
) -> None:
    ns, col = demo
    for wrong in ({"format": "xml"}, {"sample_size": "ten"}, {"colour": "red"}):
        with pytest.raises(dg.DagsterInvalidConfigError):
            export_collection.execute_in_process(
                run_config={"namespace": ns.name, "collection": col.name, **wrong},
                instance=instance,
                resources=resources_from(settings),
            )


def test_unknown_collection_fails_in_the_plan_step_with_not_found(
    settings: Settings, demo: tuple[Namespace, Collection], instance: dg.DagsterInstance
) -> None:
    ns, _ = demo
    with pytest.raises(NotFoundError):  # a launcher refuses it before creating a run
        execute(settings, ns.name, "missing", {}, "cli", instance)
    result = export_collection.execute_in_process(  # a UI launch fails in its first step
        run_config={"namespace": ns.name, "collection": "missing"},
        instance=instance,
        resources=resources_from(settings),
        raise_on_error=False,
    )
    assert not result.success
    error = run_error(result)
    assert isinstance(error, NotFoundError) and "missing" in error.message
    assert [e.step_key for e in result.all_events if e.is_step_failure] == ["plan_export"]
    assert not files_under(settings.home_dir / "exports")


def test_failed_publish_publishes_nothing_and_removes_scratch(
    settings: Settings,
    demo: tuple[Namespace, Collection],
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    ns, col = demo
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage root should be")
    broken = settings.model_copy(update={"storage": (blocker / "exports").as_uri()})
    # A permanent storage error: said with its path, and not retried.
    with pytest.raises(
        EnvironmentProblem, match=r"^Not a directory at .*not-a-folder.*: nothing was published$"
    ):
        execute(
            broken,
            ns.name,
            col.name,
            {"format": "parquet", "include_vectors": True},
            "cli",
            instance,
        )
    assert not files_under(settings.scratch_dir)
    assert blocker.read_text().startswith("a file")
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    retries = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries == []


def test_transient_storage_error_is_retried_and_the_export_completes(
    settings: Settings,
    demo: tuple[Namespace, Collection],
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Local disk cannot time out; the first publish is made to fail as a network would."""
    ns, col = demo
    real_publish, calls = LocalStorage.publish, []

    def flaky(self: LocalStorage, prefix: str, files: list[Any]) -> Any:
        calls.append(prefix)
        if len(calls) == 1:
            raise TransientStorageError("503 Slow Down")
        return real_publish(self, prefix, files)

    monkeypatch.setattr(LocalStorage, "publish", flaky)
    run = execute(settings, ns.name, col.name, {"format": "json"}, "cli", instance)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same export, published once
    retries = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
    ).records
    assert len(retries) == 1
    assert run.response.document_count == 60
    assert not files_under(settings.scratch_dir)


@pytest.mark.slow
def test_job_writes_parts_in_parallel_shard_processes(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI in a process of its own, as a user runs it: its step processes come
    from a forkserver that must see this test's home, not an earlier test's."""
    monkeypatch.setattr(segments_module, "ROW_GROUP_ROWS", 8)  # something for 2 shards to cut
    ns, col = make_collection(store, list(demo_documents(60)), DEMO_INDEXES, name="articles")
    env = {
        **os.environ,
        "EXPORT_PIPELINE_HOME": str(settings.home_dir),
        "EXPORT_PIPELINE_SHARDS": "2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    env.pop("EXPORT_PIPELINE_STORAGE", None)
    argv = ["export", col.name, "-n", ns.name, "--format", "csv", "--include-vectors"]
    argv += ["--max-file-size", str(5 * 1024 * 1024)]
    response = ExportResponse.model_validate_json(cli_output(argv, env))
    parts = response.parts
    assert parts is not None
    # Each shard ends a part: both wrote some of the 60 documents.
    assert [(p.role, p.name) for p in parts] == [
        ("documents", "documents-00000.csv"),
        ("documents", "documents-00001.csv"),
        ("vectors", "articles_vectors-00000.csv"),
        ("vectors", "articles_vectors-00001.csv"),
    ]
    ids = [[row[0] for row in read_csv(p.s3_path)[1:]] for p in parts]
    assert ids[0] + ids[1] == sorted(d["document_id"] for d in demo_documents(60))
    assert ids[:2] == ids[2:]
    assert [sha256_of(Path(p.s3_path.removeprefix("file://"))) for p in parts] == [
        p.sha256 for p in parts
    ]
    assert not files_under(settings.scratch_dir)


# --- Each op on its own ----------------------------------------------------------------


def test_each_op_with_build_op_context(
    settings: Settings, demo: tuple[Namespace, Collection]
) -> None:
    ns, col = demo
    resources = resources_from(settings)
    context = dg.build_op_context(resources=resources, instance=dg.DagsterInstance.ephemeral())
    config = ExportConfig.of(ns.name, col.name, {"format": "csv", "filters": {"AND": [SCIENCE]}})

    outputs = list(plan_export_op(context, config))
    progress = outputs[0].value
    assert progress.plan.collection.id == col.id
    # a csv filter needs no pass before writing: the shards read the matches themselves
    assert progress.selection.streamed and progress.selection.matched is None
    tasks = [output.value for output in outputs[1:]]
    assert [task.shard.index for task in tasks] == [0]  # one shard: unset in the config

    parts = [export_shard(context, task) for task in tasks]
    assert parts[0].documents.path.exists() and parts[0].documents.rows == len(science_ids())

    progress = publish_files(context, progress, parts)
    assert not progress.plan.scratch_dir.exists()  # published, then scratch removed
    assert read_csv(progress.response.s3_path)[0][0] == "document_id"
    assert science_ids()[0] in progress.preview

    output = report_export(context, progress)
    assert ExportResponse.model_validate(output) == progress.response


def test_plan_op_turns_a_bad_collection_into_a_failure_that_is_not_retried(
    settings: Settings, demo: tuple[Namespace, Collection]
) -> None:
    ns, _ = demo
    context = dg.build_op_context(resources=resources_from(settings))
    with pytest.raises(dg.Failure) as info:
        list(plan_export_op(context, ExportConfig(namespace=ns.name, collection="nope")))
    assert info.value.allow_retries is False
    assert info.value.metadata["error"].value["type"] == "NotFoundError"


# --- Definitions and the launchpad's schema -------------------------------------------


def test_launchpad_shows_every_request_field_with_its_description() -> None:
    fields = export_collection.run_config_schema.config_type.fields
    request_fields = set(ExportRequest.model_fields)
    assert set(fields) == request_fields | LAUNCH_FIELDS
    assert all(field.description for field in fields.values())
    assert fields["format"].default_value == "parquet"
    assert "LogicalOperator" in fields["filters"].description
    assert "5 MiB" in fields["max_file_size_bytes"].description


def test_definitions_load_and_hold_the_export_job() -> None:
    from export_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("export_collection")
    assert [node.name for node in job.nodes_in_topological_order] == [
        "plan_export",
        "export_shard",
        "publish_files",
        "report_export",
    ]


def test_export_run_result_carries_the_run_id(
    settings: Settings, demo: tuple[Namespace, Collection], instance: dg.DagsterInstance
) -> None:
    ns, col = demo
    run = execute(settings, ns.name, col.name, None, "cli", instance)
    assert isinstance(run, ExportRun)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS


def test_cli_export_is_a_run_in_the_instance_under_the_home(
    settings: Settings,
    demo: tuple[Namespace, Collection],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without DAGSTER_HOME the CLI records its runs where `make dev` looks: <home>/dagster."""
    import json

    from export_pipeline.cli import main

    ns, col = demo
    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(settings.home_dir))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["export", col.name, "-n", ns.name, "--format", "csv"]) == 0
    response = json.loads(capsys.readouterr().out)
    instance = dg.DagsterInstance.from_config(str(settings.home_dir / "dagster"))
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags[tags.TRIGGER] == "cli"
    assert run.tags[tags.EXPORT_ID] in response["s3_path"]

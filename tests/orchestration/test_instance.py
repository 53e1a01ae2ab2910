"""The local Dagster instance template (dagster.yaml) and where the CLI finds the instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import QueuedRunCoordinator
from helpers import DEMO_COUNT

from export_pipeline.orchestration import tags
from export_pipeline.orchestration.instance import INSTANCE_TEMPLATE, dagster_home, local_instance
from export_pipeline.orchestration.launch import execute
from export_pipeline.orchestration.pool import instance_limits
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace

REPO = Path(__file__).resolve().parents[2]


def test_the_package_template_is_the_repository_dagster_yaml() -> None:
    assert INSTANCE_TEMPLATE.read_text() == (REPO / "dagster.yaml").read_text()


def test_instance_queues_runs_four_exports_at_once_and_one_per_collection(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = local_instance(settings)
    coordinator = instance.run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)
    limits = {
        limit["key"]: limit for limit in coordinator.get_run_queue_config().tag_concurrency_limits
    }
    assert limits[tags.JOB]["limit"] == 4
    assert limits[tags.COLLECTION_ID]["limit"] == 1
    assert limits[tags.COLLECTION_ID]["value"] == {"applyLimitPerUniqueValue": True}
    assert instance.run_monitoring_enabled
    assert not instance.telemetry_enabled
    # Runs log through the event log; no tail subprocesses capturing stdout/stderr per run.
    assert type(instance.compute_log_manager).__name__ == "NoOpComputeLogManager"
    assert Path(instance.root_directory) == settings.home_dir / "dagster"  # sqlite lives here


def test_dagster_home_wins_when_set(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    assert dagster_home(settings) == tmp_path / "elsewhere"
    local_instance(settings)
    assert (tmp_path / "elsewhere" / "dagster.yaml").exists()


def test_an_instance_keeps_its_own_dagster_yaml(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = settings.home_dir / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = local_instance(settings)
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert not instance.run_coordinator.get_run_queue_config().tag_concurrency_limits


def test_instance_limits_are_the_queue_limits_of_the_template(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert instance_limits(settings) == (4, 1)


QUEUE_OF_7_AND_2 = (
    "run_coordinator:\n"
    "  module: dagster.core.run_coordinator\n"
    "  class: QueuedRunCoordinator\n"
    "  config:\n"
    "    tag_concurrency_limits:\n"
    f"      - key: {tags.JOB}\n"
    "        limit: 7\n"
    f"      - key: {tags.COLLECTION_ID}\n"
    "        limit: 2\n"
)
NO_QUEUE = (
    "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
)


@pytest.mark.parametrize(
    "dagster_yaml, limits",
    [(QUEUE_OF_7_AND_2, (7, 2)), (NO_QUEUE, (4, 1))],
    ids=["its queue's limits", "no queue: the defaults"],
)
def test_instance_limits_follow_the_instance_dagster_yaml(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    dagster_yaml: str,
    limits: tuple[int, int],
) -> None:
    """A dagster.yaml may name a coordinator without a queue (and so without limits)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = settings.home_dir / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(dagster_yaml)
    queued = isinstance(local_instance(settings).run_coordinator, QueuedRunCoordinator)
    assert queued == (dagster_yaml is QUEUE_OF_7_AND_2)
    assert instance_limits(settings) == limits


# An instance folder made from an earlier template (stdout/stderr captured by `tail`
# subprocesses, as Dagster does by default) keeps working as it is.
EARLIER_TEMPLATE = """
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
run_monitoring:
  enabled: true
telemetry:
  enabled: false
"""


@pytest.mark.slow
def test_an_instance_made_from_an_earlier_template_still_runs_exports(
    settings: Settings, demo: tuple[Namespace, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    ns, col = demo
    home = settings.home_dir / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(EARLIER_TEMPLATE)
    instance = local_instance(settings)
    assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"
    # No storage named: Dagster's default sqlite storage, in the same files as the template's.
    assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    run = execute(settings, ns.name, col.name, {"format": "csv"}, "cli", instance)
    assert run.response.document_count == DEMO_COUNT
    recorded = instance.get_run_by_id(run.run_id)
    assert recorded is not None and recorded.tags[tags.EXPORT_ID] == run.manifest["export_id"]

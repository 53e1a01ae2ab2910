"""deploy/: the docker-compose deployment's files agree with the code they configure."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from services import PostgresServer

from export_pipeline.orchestration.instance import write_instance_yaml
from export_pipeline.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_every_export_pipeline_service_shares_one_environment_of_known_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    ours = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(ours) == {"code-server", "webserver", "daemon", "api", "worker"}
    env = ours["worker"]["environment"]
    assert all(ours[n]["environment"] == env for n in ("code-server", "webserver", "daemon"))
    # the API alone submits its exports to the webserver's run queue
    assert ours["api"]["environment"] == {
        **env,
        "EXPORT_PIPELINE_DAGSTER_URL": "http://webserver:3000",
    }
    for name in env:
        if name.startswith("EXPORT_PIPELINE_"):
            assert name.removeprefix("EXPORT_PIPELINE_").lower() in Settings.model_fields, name
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()  # the environment is valid as the containers would read it
    assert settings.executor == "celery" and settings.storage_uri.startswith("s3://")
    assert env["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")
    assert ours["worker"]["command"][:2] == ["export-pipeline", "worker"]


def test_the_webserver_and_the_daemon_load_the_job_from_the_one_code_server() -> None:
    compose = _compose()
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    server = location["grpc_server"]
    command = compose["services"]["code-server"]["command"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(server["port"])
    assert command[command.index("--location-name") + 1] == server["location_name"]
    assert server["host"] == "code-server"
    assert "COPY deploy/workspace.yaml ./workspace.yaml" in (DEPLOY / "Dockerfile").read_text()
    # the API submits to the location the workspace names
    from export_pipeline.orchestration.run_queue import LOCATION

    assert server["location_name"] == LOCATION


def test_the_deployments_instance_keeps_runs_in_postgres(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_postgres import PostgresRunStorage

    home = tmp_path / "dagster_home"
    url = postgres.create_database().replace("postgresql://", "postgresql+psycopg2://")
    # as the image is built: the template, with the variable set to any value
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://set-at-run-time")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    written = write_instance_yaml()
    assert "set-at-run-time" not in written.read_text()  # the URL is read at run time
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert (
        "write_instance_yaml()" in dockerfile
        and "COPY pyproject.toml README.md dagster.yaml" in dockerfile
    )
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    instance = dg.DagsterInstance.from_config(str(home))
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert instance.get_runs() == []

"""The Dagster instance exports are recorded in: DAGSTER_HOME, or one under the export_pipeline
home made from the template (dagster.yaml beside this module), and run ids prepared ahead."""

import os
import re
import uuid
from contextlib import suppress
from pathlib import Path

import dagster as dg
import yaml

from export_pipeline.errors import InvalidInput, guard
from export_pipeline.settings import Settings

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
# The template's storage folders, relative to the instance folder (see its comment).
_INSTANCE_DIR = re.compile(r"^(\s*base_dir: )INSTANCE_DIR(/\S*)$", re.MULTILINE)
_SQLITE_STORAGE = re.compile(
    r"^# -- sqlite storage --$.*^# -- end of sqlite storage --$", re.MULTILINE | re.DOTALL
)
# The URL stays in the environment (never written into the file): it holds a password.
_POSTGRES_STORAGE = "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL"


def dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME if set, else the instance under the export_pipeline home."""
    configured = os.environ.get("DAGSTER_HOME")
    return Path(configured).expanduser().resolve() if configured else settings.dagster_home


def local_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance the UI shows, created from the template on first use."""
    home = dagster_home(settings)
    _check_pg_url(os.environ.get("DAGSTER_PG_URL"))
    with guard(home, "Dagster instance"):
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text(instance_yaml(home))
        return dg.DagsterInstance.from_config(str(home))


def _check_pg_url(url: str | None) -> None:
    """Dagster's PostgreSQL storage sends NOTIFY with client-side parameters, which only the
    psycopg2 driver makes; SQLAlchemy takes psycopg 3 for a URL that names no driver."""
    if url and url.split("://", 1)[0] in ("postgres", "postgresql"):
        raise InvalidInput(
            "DAGSTER_PG_URL must name the psycopg2 driver: postgresql+psycopg2://user:password@"
            "host:port/db (Dagster's PostgreSQL storage needs it)"
        )


def write_instance_yaml(home: Path | None = None) -> Path:
    """Write the instance's dagster.yaml in `home` (default: DAGSTER_HOME) from the template,
    as an image build does; returns its path."""
    home = home or Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    target.write_text(instance_yaml(home))
    return target


def instance_yaml(home: Path) -> str:
    """The template for an instance in `home`: its INSTANCE_DIR written as the absolute path
    (YAML-quoted, whatever characters it holds); Dagster's PostgreSQL storage instead of the
    sqlite files when DAGSTER_PG_URL is set."""

    def folder(match: re.Match[str]) -> str:
        path = str(home.resolve()) + match[2]
        quoted = yaml.safe_dump(path, default_style='"', width=float("inf"), allow_unicode=True)
        return match[1] + quoted.strip()

    template = INSTANCE_TEMPLATE.read_text()
    if os.environ.get("DAGSTER_PG_URL"):
        template = _SQLITE_STORAGE.sub(_POSTGRES_STORAGE, template)
    return _INSTANCE_DIR.sub(folder, template)


def prepared_run_id(instance: dg.DagsterInstance, run_id: str | None = None) -> str:
    """A run id (new, or `run_id`) whose event log already exists, for a process that serves
    runs to make while idle. Dagster's sqlite storage gives each run its own database, created
    (tables, alembic checks: tens of milliseconds) when the run's first event is stored;
    reading the run's events creates it the same way, before any client waits. A run launched
    with this id then starts at once; unused, the file is removed by `discard_prepared_run`."""
    run_id = run_id or str(uuid.uuid4())
    instance.get_records_for_run(run_id, limit=1)
    return run_id


def discard_prepared_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Remove the event log `prepared_run_id` made for a run that never came (a worker that
    stops), when no run of that id exists. Its file is the storage's own business: this only
    acts where the storage says where the file is (Dagster's sqlite storage does)."""
    if instance.has_run(run_id):
        return
    path_for_shard = getattr(instance.event_log_storage, "path_for_shard", None)
    if not callable(path_for_shard):
        return
    path = str(path_for_shard(run_id))
    for suffix in ("", "-wal", "-shm"):
        with suppress(OSError):
            os.unlink(path + suffix)

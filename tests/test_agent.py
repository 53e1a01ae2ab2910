"""The CLI's warm agent (export_pipeline/agent): an export it runs is the export the CLI
would have run in its own process, with the CLI's environment, streams, exit code and
signals; and it is never used from a folder other users could reach into."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from helpers import write_jsonl

from export_pipeline.orchestration import tags

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "export-pipeline"
DOCS = [
    {"document_id": f"d{n:03}", "kind": ["a", "b", "c"][n % 3], "n": n, "_vectors": {"e": [n, 1]}}
    for n in range(60)
]
REQUEST = {
    "format": "json",
    "include_vectors": True,
    "filters": {"AND": [{"field": "kind", "operator": "in", "value": ["a", "b"]}]},
    "sample_size": 25,
    "sample_seed": 3,
}


def _cli(env: dict[str, str], *argv: str, stdin: str | None = None) -> tuple[int, Any, int]:
    """Run the console script: exit code, its JSON output, and the client's pid."""
    process = subprocess.Popen(
        [str(SCRIPT), *argv],
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(stdin, timeout=300)
    assert out.strip(), err[-3000:]
    return process.returncode, json.loads(out), process.pid


def _make_home(root: Path, name: str) -> dict[str, str]:
    """A home with namespace `agent-ns` and collection `docs` holding DOCS (set up without
    the agent); returns the environment that uses it, with the agent on."""
    env = {**os.environ, "EXPORT_PIPELINE_HOME": str(root / name), "EXPORT_PIPELINE_AGENT": "off"}
    source = write_jsonl(root / f"{name}-input", DOCS)
    for argv in (
        ["namespace", "create", "agent-ns"],
        ["collection", "create", "docs", "-n", "agent-ns", "--vector-index", "e:2"],
        ["ingest", "docs", str(source), "-n", "agent-ns"],
    ):
        code, out, _ = _cli(env, *argv)
        assert code == 0, out
    return {**env, "EXPORT_PIPELINE_AGENT": "on"}


def _agent_pids(folder: Path) -> list[int]:
    """Processes started with a socket under `folder`: the agent (its children are forks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _wait_until(check: Any, what: str, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An agent started by a first export, as a user's first export starts it."""
    root = tmp_path_factory.mktemp("agent")
    runtime = Path(tempfile.mkdtemp(prefix="agent-", dir="/tmp"))  # a socket's path is short
    env = _make_home(root, "home") | {"XDG_RUNTIME_DIR": str(runtime)}
    code, _, _ = _cli(env, "export", "docs", "-n", "agent-ns", "--format", "json")
    assert code == 0
    folder = runtime / f"export-pipeline-agent-{os.getuid()}"
    _wait_until(lambda: list(folder.glob("*.sock")), "the agent's socket")
    pids = _agent_pids(folder)
    assert len(pids) == 1
    yield {"env": env, "root": root, "folder": folder, "pid": pids[0]}
    shutil.rmtree(runtime)  # the agent sees its socket gone and exits
    try:
        _wait_until(lambda: not _agent_pids(folder), "the agent to exit", 10)
    finally:
        for pid in _agent_pids(folder):
            os.kill(pid, signal.SIGKILL)


def _run_pid(env: dict[str, str], response: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """The process that executed the export's Dagster run (from its events), and its tags."""
    export_id = Path(response["download_url"]).parent.name
    with dg.DagsterInstance.from_config(str(Path(env["EXPORT_PIPELINE_HOME"]) / "dagster")) as di:
        (run,) = [r for r in di.get_runs() if r.tags.get(tags.EXPORT_ID) == export_id]
        events = [entry.dagster_event for entry in di.all_logs(run.run_id)]
        pids = {event.pid for event in events if event is not None and event.pid is not None}
    assert len(pids) == 1
    return pids.pop(), run.tags


def _published(response: dict[str, Any], link: str = "download_url") -> bytes:
    return Path(response[link].removeprefix("file://")).read_bytes()


def test_an_export_through_the_agent_equals_one_in_a_new_process(
    agent: dict[str, Any],
) -> None:
    env = agent["env"]
    request = json.dumps(REQUEST)
    code, warm, client = _cli(
        env, "export", "docs", "-n", "agent-ns", "--request", "-", stdin=request
    )
    assert code == 0
    cold_env = {**env, "EXPORT_PIPELINE_AGENT": "off"}
    export = ("export", "docs", "-n", "agent-ns", "--request", "-")
    code, cold, cold_client = _cli(cold_env, *export, stdin=request)
    assert code == 0
    assert warm["document_count"] == cold["document_count"] == 25
    assert _published(warm) == _published(cold)
    assert _published(warm, "vectors_download_url") == _published(cold, "vectors_download_url")
    warm_pid, warm_tags = _run_pid(env, warm)
    cold_pid, _ = _run_pid(env, cold)
    assert warm_pid not in (client, agent["pid"])  # a fork of the agent ran it
    assert cold_pid == cold_client
    assert warm_tags[tags.TRIGGER] == "cli" and warm_tags[tags.NAMESPACE] == "agent-ns"


def test_errors_and_exit_codes_are_the_clis(agent: dict[str, Any]) -> None:
    cold_env = {**agent["env"], "EXPORT_PIPELINE_AGENT": "off"}
    for argv, stdin, code, error in [
        (("docs", "--request", "-"), '{"format": "xml"}', 2, "ValidationError"),
        (("nothing-here",), None, 3, "NotFoundError"),
    ]:
        export = ("export", *argv, "-n", "agent-ns")
        warm = _cli(agent["env"], *export, stdin=stdin)
        assert warm[:2] == _cli(cold_env, *export, stdin=stdin)[:2]
        assert warm[0] == code and warm[1]["error"]["type"] == error


def test_each_export_runs_with_its_own_environment(agent: dict[str, Any]) -> None:
    other = _make_home(agent["root"], "other") | {
        "XDG_RUNTIME_DIR": agent["env"]["XDG_RUNTIME_DIR"]
    }
    for env in (agent["env"], other):
        code, out, client = _cli(env, "export", "docs", "-n", "agent-ns", "--format", "csv")
        assert code == 0
        assert out["download_url"].startswith(f"file://{env['EXPORT_PIPELINE_HOME']}/exports/")
        assert _run_pid(env, out)[0] != client
    assert _agent_pids(agent["folder"]) == [agent["pid"]]  # one agent served both homes


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_cli_stops_its_export(agent: dict[str, Any], signum: int) -> None:
    # `--request -` with stdin left open: the export's child waits on the CLI's own pipe.
    process = subprocess.Popen(
        [str(SCRIPT), "export", "docs", "-n", "agent-ns", "--request", "-"],
        env=agent["env"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        child = _wait_until(lambda: _children(agent["pid"]), "the agent's child", 30)
        process.send_signal(signum)
        assert process.wait(30) == -signum
        _wait_until(lambda: not (set(child) & set(_children(agent["pid"]))), "the child", 30)
    finally:
        process.kill()
        process.communicate()


def test_a_folder_others_can_reach_is_never_used(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="agent-", dir="/tmp"))
    (runtime / f"export-pipeline-agent-{os.getuid()}").mkdir(parents=True, mode=0o777)
    (runtime / f"export-pipeline-agent-{os.getuid()}").chmod(0o777)
    env = _make_home(tmp_path, "home") | {"XDG_RUNTIME_DIR": str(runtime)}
    for _ in range(2):
        code, out, client = _cli(env, "export", "docs", "-n", "agent-ns", "--format", "json")
        assert code == 0
        assert _run_pid(env, out)[0] == client
    assert not list(runtime.rglob("*.sock"))
    shutil.rmtree(runtime)

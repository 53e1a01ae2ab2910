"""`python -m benchmarks.latency`: what a person waits for, from the client's side.

- `--help` of the CLI and of each command;
- a small CLI export (json, vectors, a filter) of `--small` documents, in a new process
  (`EXPORT_PIPELINE_AGENT=off`) and through the warm agent;
- a json export of `--medium` documents: the engine alone, the HTTP API, the CLI;
- CLI exports of `--large` documents x `--dims` without vectors (json, csv, parquet), beside
  the engine alone and the hand-written DuckDB COPY of the same rows (`benchmarks/reference.py`).

Every CLI export is a real run of the Dagster job, recorded in the instance. Medians of
`--runs`; the first request of each warm path (API worker, agent) is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import dataset as bench_dataset
from benchmarks.cases import Case
from benchmarks.runner import run_ours, run_reference, warm_cache
from export_pipeline.demo import DEMO_INDEXES, demo_documents, write_jsonl
from export_pipeline.export import run_export
from export_pipeline.settings import Settings
from export_pipeline.store import Store

BIN = Path(sys.executable).parent
CLI = str(BIN / "export-pipeline")
HELPS = [[], ["namespace"], ["collection"], ["ingest"], ["export"], ["url"], ["key"], ["serve"]]
SMALL_BODY = {
    "format": "json",
    "include_vectors": True,
    "filters": {"AND": [{"field": "metadata.category", "operator": "in", "value": ["news"]}]},
}
MEDIUM_BODY = {"format": "json"}
LARGE_FORMATS = ["json", "csv", "parquet"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; sizes default to the README's Latency table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    parser.add_argument("--small", type=int, default=1_000, help="documents of the small export")
    parser.add_argument("--medium", type=int, default=10_000, help="documents of the API case")
    parser.add_argument("--large", type=int, default=300_000, help="documents of the CLI case")
    parser.add_argument("--dims", type=int, default=384, help="dense dimensions (large case)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--home", type=Path, default=Path("build/latency-home"))
    parser.add_argument("--out", type=Path, default=Path("build/latency.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the collections, time every path, print a table and write JSON."""
    args = parse_args(argv)
    home = args.home.resolve()
    for stale in ("small", "medium"):
        shutil.rmtree(home / stale, ignore_errors=True)
    # The benchmark's own agent, stopped with the run: a socket's path must be short.
    agents = tempfile.mkdtemp(prefix="latency-", dir="/tmp")
    env = {**os.environ, "XDG_RUNTIME_DIR": agents, "EXPORT_PIPELINE_AGENT": "on"}
    env.pop("DAGSTER_HOME", None)
    try:
        result = {
            "runs": args.runs,
            "agent_folder": agents,
            "help": _help_seconds(env, args.runs),
            "small": _small(home / "small", env, args.small, args.runs),
            "medium": _medium(home / "medium", env, args.medium, args.runs),
            "large": _large(home / "large", env, args.large, args.dims, args.runs),
        }
    finally:
        shutil.rmtree(agents, ignore_errors=True)  # its agent exits within a second
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


def _timed(runs: int, work: Callable[[], object]) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return seconds


def _cli(env: dict[str, str], *args: str) -> Callable[[], object]:
    return lambda: subprocess.run([CLI, *args], env=env, check=True, capture_output=True)


def _help_seconds(env: dict[str, str], runs: int) -> dict[str, float]:
    return {
        " ".join(["export-pipeline", *command, "--help"]): statistics.median(
            _timed(runs, _cli(env, *command, "--help"))
        )
        for command in HELPS
    }


def _demo_store(home: Path, n: int) -> tuple[Settings, Store, str]:
    """A `latency/docs` collection of n demo documents; returns an API key for it too."""
    settings = Settings(home=home)
    store = Store(settings)
    ns = store.catalog.create_namespace("latency")
    col = store.catalog.create_collection(ns, "docs", DEMO_INDEXES)
    store.ingest(ns.id, col.id, write_jsonl(demo_documents(n), home / "docs.jsonl"))
    key, _ = store.keys.create([ns], "latency benchmark")
    return settings, store, key


def _small(home: Path, env: dict[str, str], n: int, runs: int) -> dict[str, Any]:
    _demo_store(home, n)
    (home / "request.json").write_text(json.dumps(SMALL_BODY))
    env = {**env, "EXPORT_PIPELINE_HOME": str(home)}
    export = ("export", "docs", "-n", "latency", "--request", str(home / "request.json"))
    direct = _timed(runs, _cli({**env, "EXPORT_PIPELINE_AGENT": "off"}, *export))
    _wait_for_agent(env, export)
    agent = _timed(runs, _cli(env, *export))
    return {"n": n, "cli_new_process": statistics.median(direct), "cli": statistics.median(agent)}


def _wait_for_agent(env: dict[str, str], export: tuple[str, ...]) -> None:
    """Export until the agent answers: the first export starts it (untimed)."""
    folder = Path(env["XDG_RUNTIME_DIR"]) / f"export-pipeline-agent-{os.getuid()}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _cli(env, *export)()
        if any(folder.glob("*.sock")):
            return
        time.sleep(1)
    raise TimeoutError(f"no agent came up in {folder}")


def _medium(home: Path, env: dict[str, str], n: int, runs: int) -> dict[str, Any]:
    settings, store, key = _demo_store(home, n)
    env = {**env, "EXPORT_PIPELINE_HOME": str(home)}
    run_export("latency", "docs", MEDIUM_BODY, settings=settings, store=store)  # warm caches
    engine = statistics.median(
        _timed(runs, lambda: run_export("latency", "docs", MEDIUM_BODY, settings=settings))
    )
    api = statistics.median(_api_seconds(env, key, runs))
    _wait_for_agent(env, ("export", "docs", "-n", "latency", "--format", "json"))
    cli = statistics.median(
        _timed(runs, _cli(env, "export", "docs", "-n", "latency", "--format", "json"))
    )
    return {"n": n, "engine": engine, "api": api, "api_overhead": api - engine, "cli": cli}


def _large(home: Path, env: dict[str, str], n: int, dims: int, runs: int) -> dict[str, Any]:
    data = bench_dataset.prepare(home, n, dims, log=lambda text: print(text, file=sys.stderr))
    warm_cache(data)
    env = {**env, "EXPORT_PIPELINE_HOME": str(data.home)}
    scratch = home / "runs"
    figures: dict[str, Any] = {"n": n, "dims": dims}
    for fmt in LARGE_FORMATS:
        case = Case(fmt, vectors=False, variant="full")
        export = ("export", data.collection, "-n", bench_dataset.NAMESPACE, "--format", fmt)
        _wait_for_agent(env, export)
        cli = statistics.median(_timed(runs, _cli(env, *export)))
        shutil.rmtree(scratch, ignore_errors=True)
        engine = run_ours(case, data, scratch / "ours").seconds
        reference = run_reference(case, data, scratch / "reference").seconds
        figures[fmt] = {"cli": cli, "engine": engine, "reference": reference}
    shutil.rmtree(scratch, ignore_errors=True)
    return figures


def _api_seconds(env: dict[str, str], key: str, runs: int) -> list[float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{base}/v1/collections/docs/export",
        data=json.dumps(MEDIUM_BODY).encode(),
        headers={
            "Authorization": f"Bearer {key}",
            "X-Namespace": "latency",
            "Content-Type": "application/json",
        },
    )

    def export() -> None:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()

    try:
        _wait(base + "/healthz")
        export()  # the first request warms the worker's caches: not counted
        return _timed(runs, export)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def _wait(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer")


def report(result: dict[str, Any]) -> str:
    """The README's table: one row per path, seconds (medians)."""
    small, medium, large = result["small"], result["medium"], result["large"]
    slowest_help = max(result["help"], key=result["help"].get)
    rows = [
        ("slowest `--help` (`" + slowest_help + "`)", result["help"][slowest_help], ""),
        (
            f"CLI export, {small['n']:,} docs, json+vectors+filter, new process (agent off)",
            small["cli_new_process"],
            "",
        ),
        (f"CLI export, {small['n']:,} docs, json+vectors+filter", small["cli"], ""),
        (f"engine alone, {medium['n']:,} docs, json", medium["engine"], ""),
        (
            f"HTTP API, {medium['n']:,} docs, json",
            medium["api"],
            f"adds {medium['api_overhead']:.2f} s",
        ),
        (f"CLI export, {medium['n']:,} docs, json", medium["cli"], ""),
    ]
    for fmt in LARGE_FORMATS:
        got = large[fmt]
        rows.append(
            (
                f"CLI export, {large['n']:,} docs x {large['dims']}, {fmt} without vectors",
                got["cli"],
                f"engine {got['engine']:.2f} s, DuckDB COPY {got['reference']:.2f} s",
            ),
        )
    lines = ["| path | seconds | beside it |", "|---|---:|---|"]
    lines += [f"| {name} | {seconds:.2f} | {note} |" for name, seconds, note in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

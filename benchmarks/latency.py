"""`python -m benchmarks.latency`: one json export of 10,000 documents through the HTTP API and
through the CLI, each timed end to end from the client's side (median of several runs).

The API answers from warm workers; the CLI starts Python, imports Dagster and runs the job in
its own process. Both record a Dagster run in the same instance.
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
import time
import urllib.request
from pathlib import Path

from export_pipeline.demo import DEMO_INDEXES, demo_documents, write_jsonl
from export_pipeline.export import run_export
from export_pipeline.settings import Settings
from export_pipeline.store import Store

BIN = Path(sys.executable).parent
BODY = {"format": "json"}


def main(argv: list[str] | None = None) -> int:
    """Build the collection, time both paths, print a small table and write JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--home", type=Path, default=Path("build/latency-home"))
    parser.add_argument("--out", type=Path, default=Path("build/latency.json"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.home, ignore_errors=True)
    settings = Settings(home=args.home)
    store = Store(settings)
    ns = store.catalog.create_namespace("latency")
    col = store.catalog.create_collection(ns, "docs", DEMO_INDEXES)
    store.ingest(ns.id, col.id, write_jsonl(demo_documents(args.n), args.home / "docs.jsonl"))
    key, _ = store.keys.create([ns], "latency benchmark")
    env = {**os.environ, "EXPORT_PIPELINE_HOME": str(args.home.resolve())}
    env.pop("DAGSTER_HOME", None)
    engine = _engine_seconds(settings, store, args.runs)
    api = _api_seconds(env, key, args.runs)
    cli = _cli_seconds(env, args.runs)
    result = {
        "n": args.n,
        "runs": args.runs,
        "engine_seconds": engine,
        "api_seconds": api,
        "cli_seconds": cli,
        "engine_median": statistics.median(engine),
        "api_median": statistics.median(api),
        "cli_median": statistics.median(cli),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"json export of {args.n:,} documents, median of {args.runs} runs:")
    print(f"  engine alone (run_export) {result['engine_median']:.2f} s")
    print(f"  HTTP API (warm server)    {result['api_median']:.2f} s")
    print(f"  CLI (a new process)       {result['cli_median']:.2f} s")
    return 0


def _engine_seconds(settings: Settings, store: Store, runs: int) -> list[float]:
    """The export's own work, in this process: what the API and the CLI add is the rest."""
    seconds = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        run_export("latency", "docs", BODY, settings=settings, store=store)
        seconds.append(time.perf_counter() - started)
    return seconds[1:]


def _api_seconds(env: dict[str, str], key: str, runs: int) -> list[float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "export-pipeline"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/healthz")
        seconds = []
        for _ in range(runs + 1):  # the first request warms the worker's caches: not counted
            request = urllib.request.Request(
                f"{base}/v1/collections/docs/export",
                data=json.dumps(BODY).encode(),
                headers={
                    "Authorization": f"Bearer {key}",
                    "X-Namespace": "latency",
                    "Content-Type": "application/json",
                },
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
            seconds.append(time.perf_counter() - started)
        return seconds[1:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def _cli_seconds(env: dict[str, str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [str(BIN / "export-pipeline"), "export", "docs", "-n", "latency", "--format", "json"],
            env=env,
            check=True,
            capture_output=True,
        )
        seconds.append(time.perf_counter() - started)
    return seconds


def _wait(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer")


if __name__ == "__main__":
    sys.exit(main())

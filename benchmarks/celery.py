"""`python -m benchmarks.celery`: the same export on the embedded default and on Celery workers,
side by side in one run.

It starts what the celery executor needs on loopback ports (Debian's redis-server as the
broker, moto's S3 server for the export storage; tests/services.py starts them) and
`--workers` `export-pipeline worker --concurrency 1` processes on this machine, each with a
scratch folder of its own. The collection is the benchmark's stored one (`benchmarks.dataset`),
read by the workers from its home. For each format (without vectors, so that moto's in-memory
S3 holds the files) it times, in this process as the CLI launches them:

- `embedded`: one shard, every step in this process, published to the same S3;
- `celery`: `--workers` shards on the workers (parts and step outputs through S3).

Then the fixed cost: a 1,000-document collection exported in 1, 2 and 4 shards, with every step
in this process and on the workers; the difference over the shards is the overhead the
Celery path adds per shard (a task's round trip through the broker, the step's process
rebuilding the job, its outputs through S3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.cases import FORMATS, Case, parse_list
from benchmarks.dataset import NAMESPACE, prepare

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))  # the test suite's service starters


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.celery", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="documents")
    parser.add_argument("--dims", type=int, default=384, help="dense vector dimensions")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--runs", type=int, default=3, help="runs of each small export")
    parser.add_argument("--home", type=Path, help="default build/bench-home-<n>-<dims>")
    parser.add_argument("--out", type=Path, default=Path("build/celery.json"))
    args = parser.parse_args(argv)
    args.formats = parse_list(args.formats, FORMATS, "--formats")
    args.home = args.home or Path(f"build/bench-home-{args.n}-{args.dims}")
    return args


@contextmanager
def services() -> Iterator[dict[str, str]]:
    """Redis and moto's S3 server on loopback ports; the environment that names them."""
    import logging

    import boto3
    from conftest import LocalS3
    from services import redis_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    s3 = LocalS3()
    s3.start()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
    }
    os.environ.update(env)
    try:
        with redis_server() as redis:
            boto3.client("s3").create_bucket(Bucket="bench")
            yield {**env, "broker": redis.url()}
    finally:
        s3.stop()


@contextmanager
def workers(count: int, home: Path, env: dict[str, str], folder: Path) -> Iterator[None]:
    """`count` workers reading `home`, each with a scratch folder of its own."""
    import signal
    import subprocess

    from celery import Celery

    processes = []
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        worker_env = {
            **os.environ,
            "EXPORT_PIPELINE_HOME": str(home),
            "EXPORT_PIPELINE_SCRATCH": str(folder / f"worker-{index}"),
            "EXPORT_PIPELINE_STORAGE": "s3://bench/exports",
            "EXPORT_PIPELINE_CELERY_BROKER": env["broker"],
            "EXPORT_PIPELINE_AGENT": "off",
        }
        log = open(folder / f"worker-{index}.log", "wb")  # noqa: SIM115 - closed below
        command = [sys.executable, "-m", "export_pipeline.cli", "worker", "--concurrency", "1"]
        processes.append(
            subprocess.Popen(
                command, env=worker_env, stdout=log, stderr=log, start_new_session=True
            )
        )
    try:
        app = Celery(broker=env["broker"])
        while len(app.control.ping(timeout=0.5)) < count:
            assert all(p.poll() is None for p in processes), "a worker did not start"
        yield
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=120)


def timed_export(settings: Any, collection: str, body: dict[str, Any]) -> tuple[float, int]:
    """Seconds and documents of one export launched as the CLI launches it."""
    from export_pipeline.orchestration.instance import local_instance
    from export_pipeline.orchestration.launch import execute

    instance = local_instance(settings)
    started = time.perf_counter()
    run = execute(settings, NAMESPACE, collection, body, "cli", instance)
    return time.perf_counter() - started, run.response.document_count


def large(args: argparse.Namespace, home: Path, collection: str, env: dict[str, str]) -> list:
    """The stored collection, one shard in this process against --workers on the workers."""
    from export_pipeline.settings import Settings

    base = Settings(home=home, storage="s3://bench/exports", celery_broker=env["broker"])
    rows = []
    for fmt in args.formats:
        body = Case(fmt, vectors=False, variant="full").request(args.n)
        embedded, count = timed_export(base.model_copy(update={"shards": "1"}), collection, body)
        spread = base.model_copy(update={"shards": str(args.workers), "executor": "celery"})
        celery, same = timed_export(spread, collection, body)
        assert same == count, (fmt, same, count)
        rows.append({"format": fmt, "documents": count, "embedded_s": embedded, "celery_s": celery})
        print(f"{fmt}: embedded {embedded:.2f} s, celery {celery:.2f} s", flush=True)
    return rows


def overhead(args: argparse.Namespace, folder: Path, env: dict[str, str]) -> list:
    """A 1,000-document collection in 1, 2 and 4 shards: in this process and on the workers."""
    from export_pipeline.settings import Settings
    from export_pipeline.store import Store

    home = folder / "small-home"
    store = Store(Settings(home=home))
    namespace = store.catalog.create_namespace(NAMESPACE)
    store.catalog.create_collection(namespace, "small", [])
    source = folder / "small.jsonl"
    source.write_text(
        "".join(json.dumps({"document_id": f"d{i:05d}", "n": i}) + "\n" for i in range(1000))
    )
    store.ingest(NAMESPACE, "small", source)
    base = Settings(home=home, storage="s3://bench/exports", celery_broker=env["broker"])
    rows = []
    with workers(args.workers, home, env, folder / "small-workers"):
        for shards in (1, 2, 4):
            local = base.model_copy(update={"shards": str(shards), "executor": "in_process"})
            spread = base.model_copy(update={"shards": str(shards), "executor": "celery"})
            times = {}
            for name, settings in (("in_process", local), ("celery", spread)):
                runs = [timed_export(settings, "small", {})[0] for _ in range(args.runs)]
                times[name] = statistics.median(runs)
            per_shard = (times["celery"] - times["in_process"]) / shards
            rows.append({"shards": shards, **times, "celery_overhead_per_shard_s": per_shard})
            print(f"{shards} shard(s): {times} -> {per_shard:.2f} s per shard", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and write them (JSON, and a markdown table on stdout)."""
    args = parse_args(argv)
    dataset = prepare(args.home, args.n, args.dims)
    folder = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    os.environ["EXPORT_PIPELINE_AGENT"] = "off"
    try:
        with services() as env:
            with workers(args.workers, dataset.home, env, folder):
                exports = large(args, dataset.home, dataset.collection, env)
            fixed = overhead(args, folder, env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "n": args.n,
        "dims": args.dims,
        "workers": args.workers,
        "exports": exports,
        "overhead": fixed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| format | documents | embedded, 1 shard (s) | celery, {args.workers} workers (s) |")
    print("|---|---:|---:|---:|")
    for row in exports:
        print(
            f"| {row['format']} | {row['documents']:,} | {row['embedded_s']:.2f}"
            f" | {row['celery_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

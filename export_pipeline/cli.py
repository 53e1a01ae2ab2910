"""The command line: one JSON object on stdout per command, errors as `{"error": ...}`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export_pipeline.cli_args import build_parser, read_input, request_body, vector_index

# Only what every command needs loads here: `--help` and a usage error answer in a few tens
# of milliseconds, and each command imports its own part of the library (README: Latency).
from export_pipeline.errors import (
    CHANGED_NOTHING,
    INGESTED_NOTHING,
    PUBLISHED_NOTHING,
    ConflictError,
    ExportPipelineError,
    InvalidInput,
    guard,
)

if TYPE_CHECKING:
    from export_pipeline.settings import Settings
    from export_pipeline.store import ApiKey, Store


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Carry out one parsed command and return its JSON result."""
    if args.command == "gc":  # before opening the store: an empty home stays empty
        from export_pipeline.orchestration.dead_runs import collect  # Dagster: ~0.9 s

        return collect(settings, args.grace_seconds).as_dict()
    from export_pipeline.store import Store

    store = Store(settings)
    if args.command == "namespace":
        created = store.catalog.create_namespace(args.name)
        return {"namespace_id": created.id, "namespace_name": created.name}
    if args.command == "collection":
        namespace = store.catalog.namespace(args.namespace)
        indexes = [vector_index(spec) for spec in args.vector_index]
        made = store.catalog.create_collection(namespace, args.name, indexes)
        return {
            "collection_id": made.id,
            "collection_name": made.name,
            "namespace_id": namespace.id,
            "vector_indexes": [index.model_dump() for index in made.vector_indexes],
        }
    if args.command == "ingest":
        if not args.file.is_file():
            raise InvalidInput(f"no such file: {args.file}")
        result = store.ingest(args.namespace, args.collection, args.file, upsert=args.upsert)
        return {
            "ingested": result.ingested,
            "replaced": result.replaced,
            "document_count": result.document_count,
            "version": result.version,
        }
    if args.command == "delete":
        return delete_documents(args, store)
    if args.command == "compact":
        return asdict(store.compact(args.namespace, args.collection))
    if args.command == "export":
        from export_pipeline.orchestration.launch import execute  # Dagster: ~0.9 s to import

        body = request_body(args)
        run = execute(settings, args.namespace, args.collection, body, trigger="cli")
        return run.response.model_dump(mode="json")
    if args.command == "url":
        from export_pipeline.links import fresh_links

        links = fresh_links(store, settings, args.namespace, args.export_id)
        return links.model_dump(mode="json")
    if args.command == "key":
        return keys(args, store)
    return demo(store, settings)


def delete_documents(args: argparse.Namespace, store: Store) -> dict[str, Any]:
    """`delete`: the ids of --ids (a file, or stdin) or the --filter's matches (M2, M3)."""
    from export_pipeline.jsontext import load_json

    if args.ids is not None:
        what = "--ids (stdin)" if args.ids == "-" else f"--ids {args.ids}"
        try:
            text = read_input(args.ids, what, "--ids").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{what} is not UTF-8 text: {exc.reason}") from None
        result = store.delete(args.namespace, args.collection, ids=text.splitlines())
    else:
        condition = load_json(args.filter, "--filter")
        if not isinstance(condition, dict):
            raise InvalidInput("--filter must hold a JSON object (a LogicalOperator)")
        result = store.delete(args.namespace, args.collection, filter=condition)
    return {
        "deleted": result.deleted,
        "not_found": result.not_found,
        "document_count": result.document_count,
        "version": result.version,
    }


def keys(args: argparse.Namespace, store: Store) -> dict[str, Any]:
    """`key create|list|revoke`; namespaces print as `[{"id", "name"}]`."""
    if args.action == "create":
        namespaces = [store.catalog.namespace(identifier) for identifier in args.namespaces]
        key, record = store.keys.create(namespaces, args.name)
        return {"key": key, **_key_record(record)}
    if args.action == "list":
        return {"keys": [_key_record(record) for record in store.keys.list()]}
    revoked = store.keys.revoke(args.key_id)
    return {"key_id": revoked.key_id, "revoked": True}


def _key_record(record: ApiKey) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude={"namespace_ids"})


def demo(store: Store, settings: Settings) -> dict[str, Any]:
    """Create (or refresh) the demo collection, export a sample, say where the files are."""
    import tempfile

    from export_pipeline.demo import DEMO_INDEXES, DEMO_REQUEST, demo_documents, write_jsonl

    try:
        namespace = store.catalog.create_namespace("demo")
    except ConflictError:
        namespace = store.catalog.namespace("demo")
    try:
        collection = store.catalog.create_collection(namespace, "articles", DEMO_INDEXES)
    except ConflictError:
        collection = store.catalog.collection(namespace, "articles")
    with tempfile.TemporaryDirectory() as folder:
        source = write_jsonl(demo_documents(1000), Path(folder) / "articles.jsonl")
        store.documents.ingest(collection, source, upsert=True)
    from export_pipeline.orchestration.instance import dagster_home
    from export_pipeline.orchestration.launch import execute

    run = execute(settings, "demo", "articles", DEMO_REQUEST, trigger="cli")
    return {
        "request": DEMO_REQUEST,
        "response": run.response.model_dump(mode="json"),
        "files": [file["key"] for file in run.manifest["files"]],
        "storage": settings.storage_uri,
        "dagster_run_id": run.run_id,
        "dagster_home": str(dagster_home(settings)),
    }


def serve(host: str, port: int, settings: Settings) -> int:
    """Run the HTTP API (uvicorn) until interrupted; logs go to stderr, never keys or links."""
    from export_pipeline.api import server  # FastAPI and uvicorn load for this command only

    server.serve(host, port, settings)
    return 0


_OUTCOMES = {"export": PUBLISHED_NOTHING, "demo": PUBLISHED_NOTHING, "ingest": INGESTED_NOTHING}


def main(argv: list[str] | None = None, *, use_agent: bool = True) -> int:
    """Entry point of the `export-pipeline` console script.

    An `export` runs in the warm agent when one is up (`export_pipeline.agent`), else here,
    after which an agent is started for the next one.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except ExportPipelineError as exc:
        print(json.dumps({"error": exc.to_dict()}))
        return exc.exit_code
    if use_agent and args.command == "export":
        from export_pipeline.agent import client

        code = client.run(argv)
        if code is not None:
            return code
        code = _main(args)
        client.start()
        return code
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        from export_pipeline.settings import Settings

        settings = Settings()
        if args.command == "serve":
            return serve(args.host, args.port, settings)
        if args.command == "worker":
            from export_pipeline.orchestration.worker import run_worker  # Celery: here only

            run_worker(settings, args.concurrency)
            return 0
        # A full or read-only disk anywhere below is said in one line naming the path.
        with guard(settings.home_dir, "home", _OUTCOMES.get(args.command, CHANGED_NOTHING)):
            output = run(args, settings)
    except ExportPipelineError as exc:
        print(json.dumps({"error": exc.to_dict()}))
        return exc.exit_code
    except Exception as exc:  # the contract: one JSON error object, never a bare traceback
        print(json.dumps({"error": ExportPipelineError(str(exc)).to_dict()}))
        return 1
    print(json.dumps(output, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

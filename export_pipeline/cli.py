"""The command line: one JSON object on stdout per command, errors as `{"error": ...}`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

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
    from export_pipeline.store import ApiKey, Store, VectorIndex


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InvalidInput(f"{self.prog}: {message}")


def _vector_index(spec: str) -> VectorIndex:
    from export_pipeline.store import VectorIndex

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise InvalidInput(f"--vector-index takes NAME:DIMS[:dense|sparse], got {spec!r}")
    try:
        return VectorIndex(name=parts[0], dimensions=int(parts[1]), type=[*parts, "dense"][2])
    except ValueError as exc:
        raise InvalidInput(f"invalid --vector-index {spec!r}: {exc}") from None


def _port(text: str) -> int:
    # Checked here: uvicorn reports a port out of range as an internal error, after startup.
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The `export-pipeline` argument parser."""
    parser = _Parser(prog="export-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    namespace = commands.add_parser("namespace", help="manage namespaces")
    ns_commands = namespace.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ns_commands.add_parser("create", help="create a namespace").add_argument("name")

    collection = commands.add_parser("collection", help="manage collections")
    col_commands = collection.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = col_commands.add_parser("create", help="create a collection")
    create.add_argument("name")
    create.add_argument("-n", "--namespace", required=True)
    create.add_argument(
        "--vector-index", action="append", default=[], metavar="NAME:DIMS[:dense|sparse]"
    )

    ingest = commands.add_parser("ingest", help="ingest a JSONL file (all or nothing)")
    ingest.add_argument("collection")
    ingest.add_argument("file", type=Path)
    ingest.add_argument("-n", "--namespace", required=True)
    ingest.add_argument("--upsert", action="store_true", help="replace documents with the same id")

    delete = commands.add_parser(
        "delete", help="delete documents by id or by filter, as one new version (all or nothing)"
    )
    delete.add_argument("collection")
    delete.add_argument("-n", "--namespace", required=True)
    chosen = delete.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--ids", metavar="FILE", help="one document_id a line, or - for stdin")
    chosen.add_argument("--filter", metavar="JSON", help="a LogicalOperator, as in `filters`")

    export = commands.add_parser("export", help="export a collection")
    export.add_argument("collection")
    export.add_argument("-n", "--namespace", required=True)
    export.add_argument("--request", help="the HTTP request body as a JSON file, or - for stdin")
    export.add_argument("--format", choices=["json", "csv", "parquet"])
    export.add_argument("--select-fields", help="comma-separated field paths")
    export.add_argument("--sample-size", type=int)
    export.add_argument("--sample-seed", type=int)
    export.add_argument(
        "--max-file-size",
        type=int,
        metavar="BYTES",
        help="write numbered parts of at most BYTES each (at least 5 MiB)",
    )
    export.add_argument("--include-vectors", action="store_true", default=None)
    export.add_argument(
        "--changed-since",
        metavar="EXPORT_ID|VERSION",
        help="an incremental export: what changed after that export or collection version",
    )

    url = commands.add_parser("url", help="sign fresh download links for an earlier export")
    url.add_argument("export_id")
    url.add_argument("-n", "--namespace", required=True)

    key = commands.add_parser("key", help="manage API keys (the key is shown once)")
    key_commands = key.add_subparsers(dest="action", required=True, parser_class=_Parser)
    key_create = key_commands.add_parser("create", help="create a key bound to namespaces")
    key_create.add_argument("-n", "--namespace", dest="namespaces", action="append", required=True)
    key_create.add_argument("--name", help="a label to tell keys apart")
    key_commands.add_parser("list", help="list keys (never the keys themselves)")
    key_commands.add_parser("revoke", help="revoke a key for good").add_argument("key_id")

    serve = commands.add_parser("serve", help="serve the HTTP API until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)

    worker = commands.add_parser(
        "worker",
        help="run the export job's steps on this machine for the celery executor, until"
        " interrupted (EXPORT_PIPELINE_CELERY_BROKER)",
    )
    worker.add_argument(
        "--concurrency", type=int, help="steps run at once (default: the number of cores)"
    )

    gc = commands.add_parser(
        "gc", help="reclaim what killed exports and ingests left; mark their runs failed"
    )
    gc.add_argument(
        "--grace-seconds",
        type=float,
        help="age past which unrecorded debris is removed (default:"
        " EXPORT_PIPELINE_RECOVERY_GRACE_SECONDS, 3600)",
    )

    commands.add_parser("demo", help="build a demo collection and export it")
    return parser


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The export request: the --request body, with explicit flags layered on top."""
    from export_pipeline.jsontext import load_json

    body: Any = {}
    if args.request:
        what = "--request (stdin)" if args.request == "-" else f"--request {args.request}"
        raw = _read_input(args.request, what, "--request")
        body = load_json(raw, what) if raw.strip() else {}
        if not isinstance(body, dict):
            raise InvalidInput(f"{what} must hold a JSON object")
    flags = {
        "format": args.format,
        "select_fields": args.select_fields.split(",") if args.select_fields else None,
        "sample_size": args.sample_size,
        "sample_seed": args.sample_seed,
        "max_file_size_bytes": args.max_file_size,
        "include_vectors": args.include_vectors,
        "changed_since": _watermark(args.changed_since),
    }
    return body | {key: value for key, value in flags.items() if value is not None}


def _watermark(text: str | None) -> int | str | None:
    """--changed-since: a collection version (digits) or an export id."""
    return int(text) if text is not None and text.isdigit() else text


def _read_input(source: str, what: str, option: str) -> bytes:
    """The bytes of --request or --ids: stdin for `-`, else the file. One that cannot be read
    is the user's to fix (exit 2), named with the reason."""
    try:
        if source != "-":
            return Path(source).read_bytes()
        if sys.stdin is None:  # started with stdin closed
            raise OSError("stdin is closed")
        return sys.stdin.buffer.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InvalidInput(
            f"{what}: cannot read it: {reason}", [{"loc": option, "msg": reason}]
        ) from None


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
        indexes = [_vector_index(spec) for spec in args.vector_index]
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
            text = _read_input(args.ids, what, "--ids").decode("utf-8")
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

"""The command line's arguments: the `export-pipeline` parser, and the export request and
inputs its flags name. Loaded by every command, so it imports nothing heavy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from export_pipeline.errors import InvalidInput

DESCRIPTION = 'The command line: one JSON object on stdout per command, errors as `{"error": ...}`.'

if TYPE_CHECKING:
    from export_pipeline.store import VectorIndex


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InvalidInput(f"{self.prog}: {message}")


def vector_index(spec: str) -> VectorIndex:
    """A --vector-index NAME:DIMS[:dense|sparse]."""
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
    parser = _Parser(prog="export-pipeline", description=DESCRIPTION)
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

    compact = commands.add_parser(
        "compact", help="merge a collection's segments into one (exports stay the same)"
    )
    compact.add_argument("collection")
    compact.add_argument("-n", "--namespace", required=True)

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
        raw = read_input(args.request, what, "--request")
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


def read_input(source: str, what: str, option: str) -> bytes:
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

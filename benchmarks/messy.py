"""`python -m benchmarks.messy`: messy collections (wide, wide-nested, deep) against tidy twins.

For each messy collection and its tidy twin (same documents, same JSONL bytes, a fixed set of
keys; see `messy_data`): ingest, then export json, csv and parquet, in full and with a
filter keeping ~15%. Every step runs in its own measured child (`measure.run_child` with the
`ingest` and `ours` kinds of `child.py`): seconds, rows, output bytes, peak RSS, warnings.
The table puts messy and tidy side by side; everything goes to `--out` as JSON. Nothing here
asserts a time: the figures are for reading.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from benchmarks import messy_data, messy_report
from benchmarks.dataset import reusable
from benchmarks.measure import ChildFailed, Measurement, run_child
from benchmarks.report import write_json
from export_pipeline.errors import NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Store

DEFAULT_N = 100_000
QUICK_N = 300
# At --quick size the wide collections have a few hundred keys (~50 in a filtered export),
# under the default limit of 1,000 columns: a lower one makes them collapse as at full size.
QUICK_MAX_COLUMNS = 30
NAMESPACE = "messy"
META_NAME = "bench-messy.json"
FORMATS = ("json", "csv", "parquet")
VARIANTS = ("full", "filter")
SEED = 42
COLUMNS_KEPT = 20  # column names recorded per output (a collapse leaves few; a failure many)


@dataclass(frozen=True)
class Case:
    """One export of one collection: a format, in full or filtered."""

    fmt: str
    variant: str

    @property
    def name(self) -> str:
        """Readable name, e.g. `csv/filter`."""
        return f"{self.fmt}/{self.variant}"

    def request(self) -> dict[str, Any]:
        """The export request body."""
        body: dict[str, Any] = {"format": self.fmt}
        if self.variant == "filter":
            body["filters"] = messy_data.FILTER
        return body


CASES = [Case(fmt, variant) for fmt in FORMATS for variant in VARIANTS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.messy",
        description="Messy collections (wide, wide-nested, deep) against tidy twins of the"
        " same bytes: ingest and export, each step in its own measured child.",
    )
    parser.add_argument(
        "--n", type=int, help=f"documents per collection (default {DEFAULT_N:,}; --quick {QUICK_N})"
    )
    parser.add_argument("--home", type=Path, help="default build/bench-messy-<n>")
    parser.add_argument("--out", type=Path, default=Path("build/bench-messy.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"n={QUICK_N} and --max-columns {QUICK_MAX_COLUMNS} unless given",
    )
    parser.add_argument(
        "--max-columns",
        type=int,
        help="EXPORT_PIPELINE_MAX_COLUMNS for the exports (default: the environment's or 1,000)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each case's output files")
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else DEFAULT_N
    if args.quick and args.max_columns is None:
        args.max_columns = QUICK_MAX_COLUMNS
    if args.n < 1 or (args.max_columns is not None and args.max_columns < 2):
        parser.error("--n must be positive and --max-columns at least 2")
    args.home = (args.home or Path(f"build/bench-messy-{args.n}")).resolve()
    return args


def prepare(home: Path, n: int, log: Any = print) -> dict[str, Any]:
    """Reuse the collections in `home` if built with the same n, else generate and ingest
    each in a measured child; per collection name its JSONL bytes, generation and ingest."""
    meta_path = home / META_NAME
    wanted = {"generator": messy_data.GENERATOR_VERSION, "n": n, "seed": SEED}
    found = reusable(meta_path, wanted, lambda: _complete(home, n), log)
    if found is not None:
        return {**found, "reused": True}
    try:
        store = Store(Settings(home=home))
        namespace = store.catalog.create_namespace(NAMESPACE)
        collections: dict[str, Any] = {}
        for kind in messy_data.MESSY:
            for tidy in (False, True):
                name = messy_data.collection_name(kind, tidy)
                store.catalog.create_collection(namespace, name, [])
                collections[name] = _build(home, kind, tidy, n, log)
        meta = {**wanted, "collections": collections}
        meta_path.write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)  # a half-built home is never reused
        raise
    return {**meta, "reused": False}


def _build(home: Path, kind: str, tidy: bool, n: int, log: Any) -> dict[str, Any]:
    name = messy_data.collection_name(kind, tidy)
    source = home / f"{name}.jsonl"
    started = time.perf_counter()
    size = messy_data.write_jsonl(source, kind, tidy, n, SEED)
    generate = {"seconds": time.perf_counter() - started, "bytes": size}
    spec = {
        "kind": "ingest",
        "home": str(home),
        "namespace": NAMESPACE,
        "collection": name,
        "source": str(source),
    }
    measured = run_child(spec, home / "runs" / f"ingest-{name}")  # raises ChildFailed
    source.unlink()
    shutil.rmtree(home / "runs" / f"ingest-{name}", ignore_errors=True)
    log(f"  {messy_report.ingest_row(name, size, measured)}")
    return {"bytes": size, "generate": generate, "ingest": measured.to_json()}


def _complete(home: Path, n: int) -> bool:
    store = Store(Settings(home=home))
    for kind in messy_data.MESSY:
        for tidy in (False, True):
            try:
                _, found = store.resolve(NAMESPACE, messy_data.collection_name(kind, tidy))
            except NotFoundError:
                return False
            # a home ingested before the store numbered structures is rebuilt
            if found.document_count != n or not store.documents.numbered(found):
                return False
    return True


def warm_cache(home: Path) -> None:
    """Read every collection's segments once (untimed), so no case pays for a cold cache."""
    store = Store(Settings(home=home))
    for kind in messy_data.MESSY:
        for tidy in (False, True):
            _, found = store.resolve(NAMESPACE, messy_data.collection_name(kind, tidy))
            for path in store.documents.segment_files(found):
                with open(path, "rb") as segment:
                    while segment.read(1 << 23):
                        pass


def columns(fmt: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The documents file's columns as a reader sees them (csv header, parquet schema);
    read after the child, untimed. json has none."""
    path = Path(next(f["path"] for f in files if f["role"] == "documents"))
    if fmt == "parquet":
        schema = pq.read_schema(path)
        names, types = schema.names, [str(t) for t in schema.types]
    elif fmt == "csv":
        with open(path, newline="", encoding="utf-8") as stream:
            names = next(csv.reader(stream), [])
        types = ["text"] * len(names)
    else:
        return {}
    kept = dict(zip(names[:COLUMNS_KEPT], types[:COLUMNS_KEPT], strict=True))
    return {"column_count": len(names), "columns": kept}


def export_side(
    home: Path, name: str, case: Case, folder: Path, env: dict[str, str], keep: bool
) -> dict[str, Any]:
    """One export of one collection in its own child: the measurement (plus the columns and
    the warnings count) as JSON, or the error."""
    spec = {
        "kind": "ours",
        "home": str(home),
        "namespace": NAMESPACE,
        "collection": name,
        "request": case.request(),
        "out_dir": str(folder / "published"),
    }
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()  # the previous case's writes are not charged to this one
    try:
        measured: Measurement = run_child(spec, folder, env=env)
    except ChildFailed as failed:
        print(f"  {name} {case.name}: {failed}", file=sys.stderr, flush=True)
        return {"error": failed.summary, "peak_rss_bytes": failed.peak_rss_bytes}
    try:
        return {
            **measured.to_json(),
            "warnings_count": len(measured.extra.get("warnings", [])),
            **columns(case.fmt, measured.files),
        }
    finally:
        if not keep:
            shutil.rmtree(folder / "published", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the collections, run every case, print and save; 1 if a step failed."""
    args = parse_args(argv)
    env = {} if args.max_columns is None else {"EXPORT_PIPELINE_MAX_COLUMNS": str(args.max_columns)}
    max_columns = args.max_columns or Settings().max_columns  # what the children will read
    print(f"{args.n:,} documents per collection in {args.home}", flush=True)
    try:
        meta = prepare(args.home, args.n)
    except ChildFailed as failed:
        print(f"building the collections failed:\n{failed.error}", file=sys.stderr)
        return 2
    warm_cache(args.home)
    results = []
    print(messy_report.HEADER, flush=True)
    for kind in messy_data.MESSY:
        for case in CASES:
            result: dict[str, Any] = {"collection": kind, "case": case.name}
            result.update(format=case.fmt, variant=case.variant, request=case.request())
            for side, tidy in (("messy", False), ("tidy", True)):
                name = messy_data.collection_name(kind, tidy)
                folder = args.home / "runs" / kind / f"{case.fmt}-{case.variant}" / side
                result[side] = export_side(args.home, name, case, folder, env, args.keep)
            result["ratios"] = messy_report.ratios(result["messy"], result["tidy"])
            results.append(result)
            print(messy_report.case_row(result), flush=True)
    header = messy_report.header_line(args.n, max_columns, meta)
    print()
    print(messy_report.table(header, meta, results))
    notes = messy_report.notes(meta, results)
    if notes:
        print("\n" + "\n".join(notes))
    failed = [
        f"{result['collection']} {result['case']} ({side})"
        for result in results
        for side in ("messy", "tidy")
        if "error" in result[side]
    ]
    write_json(
        args.out,
        {
            "command": " ".join(["python -m benchmarks.messy", *(argv or sys.argv[1:])]),
            "params": {
                "n": args.n,
                "seed": SEED,
                "max_columns": max_columns,
                "filter": messy_data.FILTER,
                "home": str(args.home),
                "quick": args.quick,
            },
            "collections": meta["collections"],
            "reused": meta["reused"],
            "cases": results,
            "notes": notes,
            "failed_cases": failed,
        },
    )
    print(f"\nwrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

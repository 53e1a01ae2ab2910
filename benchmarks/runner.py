"""Run one case: ours, then the reference, each in its own child; then check agreement."""

from __future__ import annotations

import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from benchmarks import agreement, reference
from benchmarks.cases import HAND_FILTER_SQL, Case
from benchmarks.dataset import NAMESPACE, Dataset, bench_indexes
from benchmarks.measure import ChildFailed, Measurement, run_child
from benchmarks.report import CaseResult

REFERENCE_THREADS = 2


def warm_cache(dataset: Dataset) -> None:
    """Read the segments once (untimed), so the first case does not pay for a cold cache."""
    for path in dataset.segments:
        with open(path, "rb") as segment:
            while segment.read(1 << 23):
                pass


def run_ours(case: Case, dataset: Dataset, folder: Path, through: str = "engine") -> Measurement:
    """Our engine in a child: run_export end to end, or a run of the Dagster job."""
    spec = {
        "kind": "dagster" if through == "dagster" else "ours",
        "home": str(dataset.home),
        "namespace": NAMESPACE,
        "collection": dataset.collection,
        "request": case.request(dataset.n),
        "out_dir": str(folder / "published"),
    }
    os.sync()  # the previous case's writes are not charged to this one
    return run_child(spec, folder)


def run_reference(case: Case, dataset: Dataset, folder: Path) -> Measurement:
    """The hand-written COPY statements in a child whose working directory is `folder`
    (DuckDB's default temp_directory `.tmp` lands there)."""
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    sql, documents_at, files = reference.statements(
        case, dataset.segments, dataset.structure, bench_indexes(dataset.dims), dataset.n, out
    )
    spec = {
        "kind": "reference",
        "statements": sql,
        "documents_statement": documents_at,
        "files": files,
        "threads": REFERENCE_THREADS,
    }
    os.sync()
    return run_child(spec, folder, cwd=folder)


def _matches(dataset: Dataset, case: Case) -> set[str]:
    source = (
        "read_parquet([" + ", ".join(reference.literal(str(p)) for p in dataset.segments) + "])"
    )
    where = f" WHERE {HAND_FILTER_SQL}" if case.filtered else ""
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT document_id FROM {source}{where}").fetchall()
    return {document_id for (document_id,) in rows}


def check(case: Case, dataset: Dataset, ours: Measurement, ref: Measurement) -> dict[str, Any]:
    """Compare the two sides' files (untimed); a dict for bench.json."""
    ours_files = {f["role"]: Path(f["path"]) for f in ours.files}
    ref_files = {f["role"]: Path(f["path"]) for f in ref.files}
    size = case.sample_size(dataset.n)
    if size is not None:
        rows, problem = agreement.check_sample(
            case.fmt, ours_files, ref_files, _matches(dataset, case), size
        )
    else:
        names = [index.name for index in bench_indexes(dataset.dims)]
        rows, problem = agreement.check_rows(
            case.fmt, dataset.structure, names, ours_files, ref_files
        )
        expected = dataset.filter_matches if case.filtered else dataset.n
        if problem is None and rows != expected:
            problem = f"{rows} rows, expected {expected}"
    return {"checked": True, "ok": problem is None, "rows": rows, "problem": problem}


def _side(run: Any, case: Case, dataset: Dataset, folder: Path) -> Measurement | str:
    """One side's measurement, or the reason it failed (the run goes on with other cases)."""
    try:
        return run(case, dataset, folder)
    except ChildFailed as failed:
        print(f"  {case.name}: {failed}", file=sys.stderr, flush=True)
        return f"{failed.summary} (peak RSS {failed.peak_rss_bytes >> 20} MiB)"


def run_case(
    case: Case,
    dataset: Dataset,
    runs: Path,
    *,
    verify: bool,
    keep: bool,
    reference: bool = True,
    through: str = "engine",
) -> CaseResult:
    """Both sides of one case (or ours only), measured, optionally checked; outputs removed
    unless `keep`."""
    folder = runs / case.slug
    shutil.rmtree(folder, ignore_errors=True)
    try:
        ours = _side(partial(run_ours, through=through), case, dataset, folder / "ours")
        ref = _side(run_reference, case, dataset, folder / "reference") if reference else None
        result = CaseResult(case, case.request(dataset.n), ours, ref)
        if not verify:
            result.agreement = {"checked": False}
        elif not isinstance(ours, Measurement) or not isinstance(ref, Measurement):
            result.agreement = {"checked": False, "problem": "not compared: a side failed"}
        else:
            started = time.perf_counter()
            try:
                result.agreement = check(case, dataset, ours, ref)
            except Exception as exc:  # an unreadable file is a disagreement too
                problem = f"reading the outputs failed: {type(exc).__name__}: {exc}"
                result.agreement = {"checked": True, "ok": False, "rows": 0, "problem": problem}
            result.agreement["seconds"] = time.perf_counter() - started
        return result
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)

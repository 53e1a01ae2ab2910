"""`python -m benchmarks.sharding`: the same export with one shard and with several.

Each case runs twice, side by side on the same stored collection, as the CLI launches it (a
run of the `export_collection` job recorded in the instance): with `EXPORT_PIPELINE_SHARDS=1`
(every step in the launching process) and with `--shards` (default: one per core; the shards
in parallel processes). The speed-up is one shard's seconds over several's; the peak memory
is that of the whole export, every process together (sampled from /proc). The files of both
must be the same (`--check`, always on: json and csv byte for byte, parquet by content).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from benchmarks import report
from benchmarks.cases import FORMATS, VARIANTS, Case, parse_list
from benchmarks.dataset import NAMESPACE, Dataset, prepare
from benchmarks.measure import Measurement, run_child
from benchmarks.runner import warm_cache

DEFAULT_N = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sharding", description=__doc__)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="documents")
    parser.add_argument("--dims", type=int, default=384, help="dense vector dimensions")
    parser.add_argument("--shards", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--vectors", default="both", choices=["on", "off", "both"])
    parser.add_argument("--home", type=Path, help="default build/bench-home-<n>-<dims>")
    parser.add_argument("--out", type=Path, default=Path("build/sharding.json"))
    args = parser.parse_args(argv)
    args.formats = parse_list(args.formats, FORMATS, "--formats")
    args.variants = parse_list(args.variants, VARIANTS, "--variants")
    args.home = args.home or Path(f"build/bench-home-{args.n}-{args.dims}")
    return args


def cases(args: argparse.Namespace) -> list[Case]:
    """The matrix: formats x vectors x variants."""
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.vectors]
    return [
        Case(fmt, vectors=vectors, variant=variant)
        for fmt in args.formats
        for vectors in modes
        for variant in args.variants
    ]


def run_case(case: Case, dataset: Dataset, shards: int, folder: Path) -> Measurement:
    """One run of the job for the case with `shards` shards, in a measured child."""
    shutil.rmtree(folder, ignore_errors=True)
    spec = {
        "kind": "dagster",
        "home": str(dataset.home),
        "namespace": NAMESPACE,
        "collection": dataset.collection,
        "request": case.request(dataset.n),
        "out_dir": str(folder / "published"),
        "shards": shards,
    }
    os.sync()
    return run_child(spec, folder)


def same_files(one: Measurement, other: Measurement, fmt: str) -> bool:
    """Whether two exports hold the same files (parquet: the same data)."""
    for mine, theirs in zip(one.files, other.files, strict=True):
        a, b = Path(mine["path"]), Path(theirs["path"])
        if fmt == "parquet":
            if not pq.read_table(a).equals(pq.read_table(b)):
                return False
        elif a.read_bytes() != b.read_bytes():
            return False
    return True


def row(case: Case, one: Measurement, many: Measurement, agree: bool) -> dict[str, Any]:
    """One case's figures."""
    return {
        "case": case.name,
        "rows": one.rows,
        "one_shard_s": one.seconds,
        "shards_s": many.seconds,
        "speedup": one.seconds / many.seconds if many.seconds else None,
        "one_shard_peak_mib": one.extra["tree_peak_rss_bytes"] / 2**20,
        "shards_peak_mib": many.extra["tree_peak_rss_bytes"] / 2**20,
        "same_files": agree,
    }


def table(rows: list[dict[str, Any]], shards: int) -> str:
    """The README's table."""
    lines = [
        f"| case | rows | 1 shard s | {shards} shards s | speed-up | 1 shard peak MiB"
        f" | {shards} shards peak MiB (all processes) | same files |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['rows']:,} | {r['one_shard_s']:.2f} | {r['shards_s']:.2f}"
            f" | {r['speedup']:.2f} | {r['one_shard_peak_mib']:,.0f}"
            f" | {r['shards_peak_mib']:,.0f} | {'yes' if r['same_files'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; 1 if a case's files differ between shard counts."""
    args = parse_args(argv)
    dataset = prepare(args.home, args.n, args.dims)
    warm_cache(dataset)
    rows = []
    for number, case in enumerate(cases(args), 1):
        folder = dataset.home / "runs" / "sharding" / case.slug
        one = run_case(case, dataset, 1, folder / "one")
        many = run_case(case, dataset, args.shards, folder / "many")
        rows.append(row(case, one, many, same_files(one, many, case.fmt)))
        r = rows[-1]
        print(
            f"[{number}] {case.name:<20} {r['one_shard_s']:8.2f} {r['shards_s']:8.2f}"
            f" {r['speedup']:6.2f}x  peak {r['one_shard_peak_mib']:,.0f} /"
            f" {r['shards_peak_mib']:,.0f} MiB  same={r['same_files']}",
            flush=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
    print(table(rows, args.shards))
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report.write_json(args.out, {"params": params, "cases": rows})
    return 0 if all(r["same_files"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks`: build (or reuse) a collection, run the matrix, print and save."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.cases import FORMATS, VARIANTS, VECTOR_MODES, matrix, parse_list
from benchmarks.dataset import prepare
from benchmarks.measure import ChildFailed
from benchmarks.runner import REFERENCE_THREADS, run_case, warm_cache

DEFAULT_N = 1_000_000
QUICK_N = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Our export engine against a hand-written DuckDB COPY, side by side.",
    )
    parser.add_argument(
        "--n", type=int, help=f"documents (default {DEFAULT_N:,}; --quick {QUICK_N:,})"
    )
    parser.add_argument("--dims", type=int, default=384, help="dense vector dimensions")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    parser.add_argument("--vectors", default="both", choices=VECTOR_MODES)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument(
        "--quick", action="store_true", help=f"n={QUICK_N:,} unless --n, agreement checked"
    )
    parser.add_argument("--check", action="store_true", help="check agreement (always in --quick)")
    parser.add_argument(
        "--through",
        choices=["engine", "dagster"],
        default="engine",
        help="run ours through run_export, or as a run of the export_collection Dagster job",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="run ours only (for sizes where the reference would not fit in memory)",
    )
    parser.add_argument("--home", type=Path, help="default build/bench-home-<n>-<dims>")
    parser.add_argument("--out", type=Path, default=Path("build/bench.json"))
    parser.add_argument("--keep", action="store_true", help="keep each case's output files")
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else DEFAULT_N
    if args.n < 1 or args.dims < 1:
        parser.error("--n and --dims must be positive")
    try:
        args.formats = parse_list(args.formats, FORMATS, "--formats")
        args.variants = parse_list(args.variants, VARIANTS, "--variants")
    except ValueError as exc:
        parser.error(str(exc))
    args.check = args.check or args.quick
    if args.check and not args.reference:
        parser.error("--check and --quick compare against the reference: drop --no-reference")
    args.home = args.home or Path(f"build/bench-home-{args.n}-{args.dims}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 if a case failed or ours and the reference disagree."""
    args = parse_args(argv)
    try:
        dataset = prepare(args.home, args.n, args.dims)
    except ChildFailed as failed:
        print(f"building the collection failed:\n{failed.error}", file=sys.stderr)
        return 2
    warm_cache(dataset)
    dataset_line = (
        f"collection: {dataset.n:,} docs x {dataset.dims} dims in {dataset.home};"
        f" filter metadata.rating < 0.75 keeps {dataset.filter_matches:,}"
        f" ({dataset.selectivity:.1%})"
    )
    ingest_line = report.ingest_line(dataset.meta)
    print(dataset_line, ingest_line, sep="\n", flush=True)
    results = []
    cases = matrix(args.formats, args.vectors, args.variants)
    for number, case in enumerate(cases, start=1):
        result = run_case(
            case,
            dataset,
            dataset.home / "runs",
            verify=args.check,
            keep=args.keep,
            reference=args.reference,
            through=args.through,
        )
        results.append(result)
        print(f"[{number}/{len(cases)}] {report.row(result)}", flush=True)
    print()
    print(report.table(results, dataset_line, ingest_line))
    disagree = [r for r in results if r.agreement.get("checked") and not r.agreement["ok"]]
    failed = [r for r in results if r.failed]
    meta = {k: v for k, v in dataset.meta.items() if k != "structure"}
    report.write_json(
        args.out,
        {
            "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
            "params": {
                "n": args.n,
                "dims": args.dims,
                "formats": args.formats,
                "vectors": args.vectors,
                "variants": args.variants,
                "checked": args.check,
                "reference": args.reference,
                "through": args.through,
                "reference_threads": REFERENCE_THREADS,
            },
            "dataset": {
                **meta,
                "home": str(dataset.home),
                "filter_matches": dataset.filter_matches,
                "selectivity": dataset.selectivity,
                "structure": dataset.structure,
            },
            "ingest": dataset.meta["ingest"],
            "cases": [r.to_json() for r in results],
            "agreement_ok": not disagree and not (args.check and failed),
            "failed_cases": [r.case.name for r in failed],
        },
    )
    print(f"\nwrote {args.out}")
    for result in failed:
        sides = {"ours": result.ours, "reference": result.reference}
        errors = "; ".join(f"{side}: {v}" for side, v in sides.items() if isinstance(v, str))
        print(f"\nFAILED {result.case.name}: {errors}")
    for result in disagree:
        print(f"\nDISAGREEMENT in {result.case.name}: {result.agreement['problem']}")
    if args.check and not disagree and not failed:
        print("agreement: ours and the reference agree in every checked case")
    return 1 if disagree or failed else 0


if __name__ == "__main__":
    sys.exit(main())

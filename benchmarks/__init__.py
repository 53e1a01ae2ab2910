"""Benchmark harness: our export engine against a hand-written DuckDB COPY, side by side.

`python -m benchmarks --help` (or `make bench`). Modules:

- `dataset`   the realistic collection: fast JSONL generator, ingest, reuse across runs
- `cases`     the matrix of cases (format x vectors x variant) and their requests
- `reference` the hand-written DuckDB COPY statements for a case
- `child`     what one child process runs (ingest, ours, or the reference), timed
- `measure`   running a child and reading its rusage (peak RSS is per child)
- `agreement` reading both outputs back and comparing them document by document
- `report`    the printed table and build/bench.json
- `messy`     `python -m benchmarks.messy`: wide and deep collections against tidy twins
  (`messy_data` generates them, `messy_report` prints the table)
"""

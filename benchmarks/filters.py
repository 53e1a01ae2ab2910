"""Large filters (docs/contract.md F4): 1,000 conditions per operator, a mix, nested, distinct
fields.

    python benchmarks/filters.py [--n 1000,10000] [--cases eq,mix] [--conditions 1000]
                                 [--timeout 300]

Each case runs in its own child process, on a DuckDB connection made like an export's
(`duck.connect`: memory_limit 512MB, 2 threads): compile (validation included), then the
filter as a WHERE (`count(*)`) and as a projection (`count_if(<sql>)`). Printed: seconds,
matches and the child's peak RSS (`ru_maxrss`, DuckDB's and Python's own memory together).
Run it as a file, so `PYTHONPATH` alone decides which `export_pipeline` it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any

CONDITIONS = 1_000
WORDS = ["vector", "search", "river", "mountain", "quantum", "pasta", "league", "orbit"]


def condition(op: str, i: int) -> dict[str, Any]:
    """The i-th condition of operator `op`: values vary, and some of them match."""
    word = WORDS[i % len(WORDS)]
    fields_values: dict[str, tuple[str, Any]] = {
        "eq": ("metadata.title", f"{word.title()} T{i}"),
        "ne": ("metadata.category", f"c{i}"),
        "gt": ("metadata.views", 999_000 + i),
        "gte": ("metadata.published_at", f"2024-12-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"),
        "lt": ("metadata.rating", -i / 7),
        "lte": ("metadata.title", f"A{i}"),
        "in": ("tags", [f"{word}{i + j}" for j in range(10)] + [i, 1.5 * i]),
        "nin": ("metadata.author.name", [f"Ada{i}", f"Alan{i}", None]),
        "contains": ("tags", f"{word}{i}"),
        "starts_with": ("metadata.title", f"{word}{i}"),
        "ends_with": ("metadata.category", f"{i}{word}"),
        "regex": ("metadata.title", rf"(?:{word}|river)\s+[a-z]{{2}}{i}\b"),
        "exists": (f"metadata.f{i}", False),
        "is_null": (f"metadata.f{i}", False),
        "text": ("metadata.title", f"{word} zz{i}"),
    }
    field, value = fields_values[op]
    return {"field": field, "operator": op, "value": value}


def build_filter(case: str) -> dict[str, Any]:
    """The case's filter: CONDITIONS conditions (in_limit: 100,000 in values)."""
    if case == "distinct":  # every condition on its own field
        fields = [{"field": f"metadata.f{i}", "value": i % 50} for i in range(CONDITIONS)]
        return {"OR": [{"AND": [field]} for field in fields]}
    if case == "eq_merged":  # one field's eq conditions in one OR act as one `in`
        return {"OR": [condition("eq", i) for i in range(CONDITIONS)]}
    if case == "in_limit":  # the most in/nin values a filter may hold
        fields = ["metadata.title", "metadata.category", "tags", "metadata.author.name"]
        return {
            "OR": [
                {"AND": [{"field": fields[i % 4], "operator": "in", "value": [f"v{i}-{j}"
                 for j in range(10_000)]}]}
                for i in range(10)
            ]
        }  # fmt: skip
    ops = list(OPERATORS) if case in ("mix", "nested") else [case]
    # each condition in its own group, so that none are merged
    conditions = [
        {"AND": [condition(op, i)]} for i, op in enumerate(islice(cycle(ops), CONDITIONS))
    ]
    if case != "nested":
        return {"OR": conditions}
    # a chain 16 levels deep (the last one the conditions' own groups), alternating OR, AND
    # and NOT, holding the conditions in turn
    levels = 14
    per_level = CONDITIONS // levels
    node: dict[str, Any] = {"OR": conditions[levels * per_level :]}
    for level in range(levels):
        chunk = conditions[level * per_level : (level + 1) * per_level]
        key = ("OR", "AND", "NOT")[level % 3]
        node = {key: [*chunk, node], "case_sensitive": level % 2 == 0}
    return node


OPERATORS = [
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains",
    "starts_with", "ends_with", "regex", "exists", "is_null", "text",
]  # fmt: skip


def write_documents(n: int, path: Path) -> None:
    """Demo documents (no vectors), each with 5 of the fields metadata.f0 .. f999."""
    from export_pipeline.demo import demo_documents

    with open(path, "w") as out:
        for number, doc in enumerate(demo_documents(n)):
            doc.pop("_vectors")
            for j in range(5):
                doc["metadata"][f"f{(number * 7 + j * 211) % CONDITIONS}"] = number % 50
            out.write(json.dumps(doc) + "\n")


def child(case: str, docs: Path) -> dict[str, Any]:
    """Compile and run one case here; the parent measures this process."""
    from export_pipeline import duck
    from export_pipeline.filters import compile_filter, install_macros

    con = duck.connect(temp_dir=docs.parent / "duckdb_tmp")
    install_macros(con)
    lines = docs.read_text().splitlines()
    con.execute("CREATE TABLE docs AS SELECT unnest(CAST(? AS VARCHAR[])) AS doc", [lines])
    started = time.perf_counter()
    compiled = compile_filter(build_filter(case))
    result: dict[str, Any] = {"compile_s": time.perf_counter() - started}
    started = time.perf_counter()  # parse, bind, optimize: no document is read
    con.execute(f"EXPLAIN SELECT count(*) FROM docs WHERE {compiled.sql}", compiled.params)
    result["plan_s"] = time.perf_counter() - started
    for label, query in [
        ("where", f"SELECT count(*) FROM docs WHERE {compiled.sql}"),
        ("select", f"SELECT count_if({compiled.sql}) FROM docs"),
    ]:
        started = time.perf_counter()
        (matches,) = con.execute(query, compiled.params).fetchall()[0]
        result[f"{label}_s"] = time.perf_counter() - started
        result["matches"] = matches
    return result


def measure(case: str, docs: Path, timeout: float) -> dict[str, Any]:
    """Run `case` in a child; its result, or how it failed, with its peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out, tempfile.TemporaryFile() as err:
        argv = [sys.executable, __file__, "--child", case, str(docs), out.name]
        argv += ["--conditions", str(CONDITIONS)]
        process = subprocess.Popen(argv, stderr=err)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)  # wait4: the child's own peak RSS
        process.returncode = os.waitstatus_to_exitcode(status)
        timer.cancel()
        result = json.loads(out.read() or "{}")
        err.seek(0)
        lines = err.read().decode(errors="replace").splitlines()
        errors = [line for line in lines if "Error" in line or "Exception" in line]
        last = (errors or lines or [""])[-1]
    if not result:
        result["error"] = "timeout" if process.returncode < 0 else last[:90]
    result["peak_rss_mb"] = usage.ru_maxrss // 1024
    return result


def main() -> None:
    """Print a markdown table of every case and document count (or run one child)."""
    global CONDITIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,10000")
    cases = [*OPERATORS, "mix", "nested", "distinct", "eq_merged", "in_limit"]
    parser.add_argument("--cases", default=",".join(cases))
    parser.add_argument("--conditions", type=int, default=CONDITIONS)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    CONDITIONS = args.conditions
    if args.child:
        case, docs, out = args.child
        Path(out).write_text(json.dumps(child(case, Path(docs))))
        return
    started = time.perf_counter()
    from export_pipeline.filter_models import LogicalOperator

    regexes = {"OR": [condition("regex", i) for i in range(CONDITIONS)]}
    LogicalOperator.model_validate(regexes)
    print(f"validate {CONDITIONS} regex conditions: {time.perf_counter() - started:.2f} s")
    print(
        "| case | docs | compile s | plan s | where s | select s | matches | peak RSS MiB | error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for n in map(int, args.n.split(",")):
            docs = Path(scratch) / f"docs-{n}.jsonl"
            write_documents(n, docs)
            for case in args.cases.split(","):
                r = measure(case, docs, args.timeout)
                cells = [
                    f"{r[k]:.2f}" if k in r else ""
                    for k in ("compile_s", "plan_s", "where_s", "select_s")
                ]
                print(
                    f"| {case} | {n:,} | {' | '.join(cells)} | {r.get('matches', '')}"
                    f" | {r['peak_rss_mb']} | {r.get('error', '')} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

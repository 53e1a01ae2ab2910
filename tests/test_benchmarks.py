"""The benchmark harness at a tiny size: it runs every case and ours agrees with the reference.

Not a timed assertion: the figures themselves are for `make bench` on the reference machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from export_pipeline.demo import demo_documents

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ sits beside tests/ and is not installed
    sys.path.insert(0, str(REPO))

from benchmarks import agreement  # noqa: E402
from benchmarks.cases import FORMATS, VARIANTS, matrix  # noqa: E402
from benchmarks.dataset import documents  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("vectors", ["on", "off"])
def test_quick_run_covers_every_case_and_agrees(tmp_path: Path, vectors: str) -> None:
    """The whole matrix, in two halves (with and without vectors) that can run in parallel."""
    out = tmp_path / "bench.json"
    tiny = ["--quick", "--n", "3000", "--dims", "16", "--home", str(tmp_path / "home")]
    run = _bench(*tiny, "--vectors", vectors, "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "agree in every checked case" in run.stdout
    report = json.loads(out.read_text())
    assert report["agreement_ok"] is True
    expected = [case.name for case in matrix(list(FORMATS), vectors, list(VARIANTS))]
    assert len(expected) == 9
    assert [case["case"] for case in report["cases"]] == expected
    matches = report["dataset"]["filter_matches"]
    assert 0.10 < matches / 3000 < 0.20  # ~15% selective
    rows = {"full": 3000, "filter": matches, "sample": 1500}
    for case in report["cases"]:
        want = {"checked": True, "ok": True, "rows": rows[case["variant"]], "problem": None}
        assert {k: case["agreement"][k] for k in want} == want, case["case"]
        for side in ("ours", "reference"):
            assert case[side]["rows"] == rows[case["variant"]]
            assert case[side]["bytes"] > 0 and case[side]["peak_rss_bytes"] > 0
        assert len(case["ours"]["files"]) == (2 if case["vectors"] else 1)
    assert report["ingest"]["rows"] == 3000
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["duckdb"]
    assert expected[0] in run.stdout  # the table was printed
    assert not list((tmp_path / "home" / "runs").glob("*-full"))  # outputs removed


def _union(docs: Any) -> dict[str, set[str]]:
    """Every (path, type) seen, with list item types merged and vector lengths."""
    seen: dict[str, set[str]] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            seen.setdefault(path, set()).add("object")
            for key, child in value.items():
                walk(child, f"{path}.{key}")
        elif isinstance(value, list):
            seen.setdefault(path, set()).add("list")
            seen.setdefault(path + "#len", set()).add("vector" if len(value) > 4 else "short")
            for item in value:
                walk(item, path + "[]")
        else:
            seen.setdefault(path, set()).add(type(value).__name__)

    for doc in docs:
        walk(orjson.loads(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)), "$")
    return seen


def test_generator_has_the_demo_shape() -> None:
    """One source of truth for the shape: the fast generator draws what the demo draws."""
    ours = list(documents(400, 16))
    demo = list(demo_documents(400, 16))
    assert _union(ours) == _union(demo)
    assert [d["document_id"] for d in ours] == [d["document_id"] for d in demo]
    assert [("keywords" in d["_vectors"]) for d in ours] == [
        ("keywords" in d["_vectors"]) for d in demo
    ]


def test_disagreement_names_the_first_differing_document(tmp_path: Path) -> None:
    structure = {"document_id": "VARCHAR", "score": "JSON", "n": "DOUBLE"}
    ours, ref = tmp_path / "ours.json", tmp_path / "ref.json"
    ours.write_text('{"document_id":"a","n":1,"score":"x"}\n{"document_id":"b","n":2.5}\n')
    ref.write_text(
        '{"document_id":"a","n":1.0,"score":"x"}\n{"document_id":"b","n":2.25,"score":null}\n'
    )
    rows, problem = agreement.check_rows(
        "json", structure, [], {"documents": ours}, {"documents": ref}
    )
    assert rows == 1 and problem is not None and "'b'" in problem and "2.25" in problem


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return _bench_module("benchmarks", *args)


def _bench_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_no_reference_runs_ours_alone(tmp_path: Path) -> None:
    """The 5M run measures ours only: the reference does not fit in memory there."""
    out = tmp_path / "bench.json"
    home = ["--home", str(tmp_path / "home"), "--out", str(out)]
    tiny = ["--n", "500", "--dims", "4", "--formats", "json", "--variants", "full"]
    run = _bench(*tiny, *home, "--no-reference")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (case,) = [c for c in json.loads(out.read_text())["cases"] if c["vectors"]]
    assert case["reference"] == {"skipped": True}
    assert case["ours"]["rows"] == 500 and case["ratios"]["speed"] is None
    refused = _bench(*tiny, *home, "--no-reference", "--check")
    assert refused.returncode == 2 and "--no-reference" in refused.stderr


@pytest.mark.slow
def test_through_dagster_runs_the_job_and_agrees_with_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    tiny = ["--quick", "--n", "500", "--dims", "4", "--formats", "csv", "--vectors", "on"]
    tiny += ["--variants", "filter"]
    run = _bench(*tiny, "--through", "dagster", "--home", str(tmp_path / "home"), "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["params"]["through"] == "dagster" and report["agreement_ok"] is True
    assert all(case["ours"]["extra"]["run_id"] for case in report["cases"])


@pytest.mark.slow
def test_sharding_benchmark_runs_one_and_two_shards_and_finds_the_same_files(
    tmp_path: Path,
) -> None:
    """`python -m benchmarks.sharding` at a tiny size: both runs, the same files, the
    memory of every process of the export counted."""
    out = tmp_path / "sharding.json"
    tiny = ["--n", "300", "--dims", "4", "--shards", "2", "--formats", "csv,parquet"]
    tiny += ["--variants", "filter", "--vectors", "on", "--home", str(tmp_path / "home")]
    run = _bench_module("benchmarks.sharding", *tiny, "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert [c["case"] for c in cases] == ["csv+vec/filter", "parquet+vec/filter"]
    assert all(c["same_files"] and c["shards_peak_mib"] > c["one_shard_peak_mib"] for c in cases)


# --- messy collections (`python -m benchmarks.messy`) -----------------------------------


def test_messy_collections_have_their_shape_and_their_twins_bytes(tmp_path: Path) -> None:
    """Wide: a key per document; deep: exactly the deepest ingest accepts; twins: same bytes."""
    from benchmarks import messy_data
    from export_pipeline.jsontext import MAX_DOCUMENT_DEPTH, nesting_problem

    n = 250
    for kind in messy_data.MESSY:
        messy, tidy = tmp_path / f"{kind}.jsonl", tmp_path / f"{kind}-tidy.jsonl"
        assert messy_data.write_jsonl(messy, kind, False, n) == messy_data.write_jsonl(
            tidy, kind, True, n
        )
        lines = messy.read_bytes().splitlines()
        assert len(lines) == n
        docs = [orjson.loads(line) for line in lines]
        twins = [orjson.loads(line) for line in tidy.read_bytes().splitlines()]
        assert [d["rating"] for d in docs] == [d["rating"] for d in twins]
        keys = {key for doc in docs for key in doc.get("attributes", doc)}
        tidy_keys = {key for doc in twins for key in doc.get("attributes", doc)}
        if kind == "deep":
            assert all(nesting_problem(line, MAX_DOCUMENT_DEPTH) is None for line in lines)
            assert all(nesting_problem(line, MAX_DOCUMENT_DEPTH - 1) for line in lines)
        else:
            assert len(keys - tidy_keys) == n - 1  # every document brings its own key
            assert len(tidy_keys) <= 5
    again = tmp_path / "again.jsonl"
    messy_data.write_jsonl(again, "wide", False, n)
    assert again.read_bytes() == (tmp_path / "wide.jsonl").read_bytes()  # deterministic


@pytest.mark.slow
def test_messy_quick_run_covers_every_case_and_collapses_the_wide_ones(tmp_path: Path) -> None:
    out = tmp_path / "messy.json"
    paths = ["--home", str(tmp_path / "home"), "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.messy", "--quick", *paths],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["params"]["n"] == 300 and report["failed_cases"] == []
    assert {name: c["ingest"]["rows"] for name, c in report["collections"].items()} == {
        name: 300
        for name in ["wide", "wide-tidy", "wide-nested", "wide-nested-tidy", "deep", "deep-tidy"]
    }
    cases = {(c["collection"], c["case"]): c for c in report["cases"]}
    assert list(cases) == [
        (kind, f"{fmt}/{variant}")
        for kind in ["wide", "wide-nested", "deep"]
        for fmt in ["json", "csv", "parquet"]
        for variant in ["full", "filter"]
    ]
    for (kind, name), case in cases.items():
        messy, tidy = case["messy"], case["tidy"]
        assert messy["rows"] == tidy["rows"], (kind, name)
        if name.endswith("full"):
            assert messy["rows"] == 300
        else:  # the same ~15% of every collection: the twins draw the same ratings
            assert messy["rows"] == cases[("wide", "json/filter")]["messy"]["rows"]
            assert 30 <= messy["rows"] <= 60
        assert messy["peak_rss_bytes"] > 0 and messy["bytes"] > 0 and tidy["bytes"] > 0
        assert tidy["warnings_count"] == 0, (kind, name, tidy["extra"]["warnings"])
        assert case["ratios"]["seconds"] is not None
    for fmt in ["csv", "parquet"]:
        wide = cases[("wide", f"{fmt}/full")]["messy"]
        assert list(wide["columns"]) == ["document_id", "document"]
        assert any("written as two columns" in w for w in wide["extra"]["warnings"])
        nested = cases[("wide-nested", f"{fmt}/full")]["messy"]
        assert {"title", "rating", "category", "attributes"} <= set(nested["columns"])
        warned = nested["extra"]["warnings"]
        assert any("field 'attributes' has more keys than" in w for w in warned)
    parquet = cases[("wide-nested", "parquet/full")]["messy"]["columns"]
    assert parquet["attributes"] == "string" and parquet["rating"] == "double"
    assert "wide-nested parquet/filter" in " ".join(run.stdout.split())  # the table was printed
    assert not list((tmp_path / "home" / "runs").rglob("published"))  # outputs removed


@pytest.mark.slow
def test_latency_run_times_every_path_a_person_waits_for(tmp_path: Path) -> None:
    """`python -m benchmarks.latency` at a tiny size: --help, the small CLI export with and
    without the agent, the API beside the engine, the large CLI exports beside the COPY."""
    out = tmp_path / "latency.json"
    sizes = ["--small", "40", "--medium", "60", "--large", "300", "--dims", "8", "--runs", "1"]
    home = ["--home", str(tmp_path / "home"), "--out", str(out)]
    run = _bench_module("benchmarks.latency", *sizes, *home)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["help"]) == 8 and all(s > 0 for s in report["help"].values())
    assert report["small"]["n"] == 40 and report["small"]["cli"] > 0
    assert report["small"]["cli_new_process"] > 0
    medium = report["medium"]
    assert medium["api_overhead"] == pytest.approx(medium["api"] - medium["engine"])
    for fmt in ("json", "csv", "parquet"):
        assert all(report["large"][fmt][side] > 0 for side in ("cli", "engine", "reference"))
    assert "CLI export, 300 docs x 8, parquet without vectors" in run.stdout
    assert not Path(report["agent_folder"]).exists()  # the run stopped its agent

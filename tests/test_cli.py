"""The command line as a user runs it: one JSON object out, exit codes 0/1/2/3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import RESPONSE_FIELDS, SEED_REQUEST_FILE, files_under

from export_pipeline.contract import ExportResponse
from export_pipeline.jsontext import MAX_REQUEST_DEPTH


def seed_body() -> str:
    """The seed's example request body, verbatim (tests/fixtures/seed_request.json)."""
    return SEED_REQUEST_FILE.read_text(encoding="utf-8")


@pytest.fixture
def people(cli, tmp_path: Path) -> Path:
    """A namespace `hr-team` with collection `people` shaped like the seed's example filters."""
    cli("namespace", "create", "hr-team")
    cli("collection", "create", "people", "-n", "hr-team", "--vector-index", "emb:2")
    rows = [
        {"document_id": "p1", "name": "John", "age": 31, "status": "active", "role": "dev",
         "department": "R&D", "location": "office", "metadata": {"title": "Eng", "category": "a"},
         "_vectors": {"emb": [0.5, 1.0]}},
        {"document_id": "p2", "name": "John", "age": 40, "status": "idle", "role": "admin",
         "department": "Ops", "location": "office", "metadata": {"title": "Ops", "category": "b"}},
        {"document_id": "p3", "name": "John", "age": 45, "status": "active", "role": "dev",
         "department": "HR", "location": "office", "metadata": {"title": "HR", "category": "c"}},
        {"document_id": "p4", "name": "john", "age": 50, "status": "active", "role": "dev",
         "department": "R&D", "location": "office"},
        {"document_id": "p5", "name": "John", "age": 29, "status": "active", "role": "dev",
         "department": "R&D", "location": "office"},
    ]  # fmt: skip
    source = tmp_path / "people.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out = cli("ingest", "people", str(source), "-n", "hr-team")
    assert code == 0 and out["ingested"] == 5
    return source


def test_namespace_and_collection_create_print_ids(cli) -> None:
    code, ns = cli("namespace", "create", "team-a")
    assert code == 0 and ns["namespace_name"] == "team-a" and ns["namespace_id"].startswith("ns_")
    code, col = cli(
        "collection", "create", "docs", "-n", ns["namespace_id"],
        "--vector-index", "emb:4", "--vector-index", "kw:100:sparse",
    )  # fmt: skip
    assert code == 0 and col["collection_name"] == "docs"
    assert [(i["name"], i["dimensions"], i["type"]) for i in col["vector_indexes"]] == [
        ("emb", 4, "dense"),
        ("kw", 100, "sparse"),
    ]


def test_seed_request_body_runs_verbatim(cli, people: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(seed_body())
    code, out = cli("export", "people", "-n", "hr-team", "--request", str(request))
    assert code == 0
    response = ExportResponse.model_validate(out)
    assert set(out) == RESPONSE_FIELDS  # no parts asked for
    assert out["version"] == 1  # one ingest
    table = pq.read_table(response.s3_path.removeprefix("file://"))
    # AND name == John (case-sensitive) and age >= 30; OR active/admin; NOT HR/remote.
    assert table.column("document_id").to_pylist() == ["p1", "p2"]
    assert table.column_names == ["document_id", "metadata"]
    assert table.column("metadata").to_pylist() == [
        {"title": "Eng", "category": "a"},
        {"title": "Ops", "category": "b"},
    ]


@pytest.mark.slow
def test_request_from_stdin_with_flags_on_top(cli, people: Path) -> None:
    body = json.dumps({"format": "json", "filters": {"status": "ACTIVE"}})
    code, out = cli(
        "export", "people", "-n", "hr-team", "--request", "-", "--format", "csv",
        "--select-fields", "age,name", "--include-vectors", stdin=body,
    )  # fmt: skip
    assert code == 0 and out["format"] == "csv" and out["document_count"] == 4
    lines = Path(out["s3_path"].removeprefix("file://")).read_text().splitlines()
    assert lines[0] == '"document_id","age","name"'
    assert Path(out["vectors_s3_path"].removeprefix("file://")).name == "people_vectors.csv"


def test_max_file_size_writes_numbered_parts(cli, people: Path) -> None:
    code, out = cli(
        "export", "people", "-n", "hr-team", "--format", "json", "--include-vectors",
        "--max-file-size", str(5 * 1024 * 1024),
    )  # fmt: skip
    assert code == 0, out
    assert [(p["role"], p["name"], p["document_count"]) for p in out["parts"]] == [
        ("documents", "documents-00000.json", 5),
        ("vectors", "people_vectors-00000.json", 5),
    ]
    assert out["s3_path"] == out["parts"][0]["s3_path"]
    assert out["s3_path"].endswith("/documents-00000.json")
    assert out["vectors_s3_path"] == out["parts"][1]["s3_path"]


@pytest.mark.parametrize(
    ("argv", "code", "kind"),
    [
        (["export", "people", "-n", "hr-team", "--format", "xml"], 2, "ValidationError"),
        (["export", "people", "-n", "hr-team", "--sample-size", "0"], 2, "ValidationError"),
        (["export", "people", "-n", "hr-team", "--max-file-size", "5242879"], 2, "ValidationError"),
        (["export", "people", "-n", "hr-team", "--max-file-size", "5MB"], 2, "ValidationError"),
        (["export", "nope", "-n", "hr-team"], 3, "NotFoundError"),
        (["export", "people", "-n", "nobody"], 3, "NotFoundError"),
        (["namespace", "create", "hr-team"], 1, "ConflictError"),
        (["frobnicate"], 2, "ValidationError"),
        (["serve", "--port", "70000"], 2, "ValidationError"),
    ],
)
def test_errors_are_one_json_object_with_exit_code(cli, people, argv, code, kind) -> None:
    got, out = cli(*argv)
    assert got == code
    assert set(out) == {"error"} and out["error"]["type"] == kind and out["error"]["message"]


# --- User mistakes in --request are user errors (exit 2), never internal ones ------------

DEEP = b'{"filters": ' * 10_000 + b"{}" + b"}" * 10_000  # parsed, this hit the recursion limit


def nothing_exported(home: Path) -> bool:
    """No file published and no Dagster run recorded (a run's events get their own .db)."""
    runs = home / "dagster" / "history" / "runs"
    run_files = [path for path in files_under(runs) if path.name != "index.db"]
    return files_under(home / "exports") == [] and run_files == []


def test_a_request_file_nested_10000_levels_is_refused_with_its_location(
    cli, people: Path, tmp_path: Path
) -> None:
    request = tmp_path / "deep.json"
    request.write_bytes(DEEP)
    code, out = cli("export", "people", "-n", "hr-team", "--request", str(request))
    assert code == 2 and out["error"]["type"] == "ValidationError"
    column = 12 * MAX_REQUEST_DEPTH + 1  # the 65th '{"filters": ' opens past the limit
    assert out["error"]["message"] == (
        f"--request {request} is nested deeper than 64 levels (at line 1, column {column})"
    )
    assert nothing_exported(tmp_path / "home")


def test_a_request_on_stdin_nested_10000_levels_is_refused(cli, people: Path, tmp_path) -> None:
    code, out = cli("export", "people", "-n", "hr-team", "--request", "-", stdin=DEEP)
    assert code == 2 and out["error"]["type"] == "ValidationError"
    assert out["error"]["message"].startswith("--request (stdin) is nested deeper than 64 levels")
    assert nothing_exported(tmp_path / "home")


def test_a_request_nested_as_deep_as_allowed_is_checked_by_the_contract(cli, people) -> None:
    # 64 levels pass the nesting check; the contract then says what is wrong, still exit 2.
    body = '{"filters": ' * 63 + "{}" + "}" * 63
    code, out = cli("export", "people", "-n", "hr-team", "--request", "-", stdin=body)
    assert code == 2 and out["error"]["type"] == "ValidationError"
    assert out["error"]["message"].startswith("invalid request: filters")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "--request {path}: cannot read it: No such file or directory"),
        (lambda path: path.mkdir(), "--request {path}: cannot read it: Is a directory"),
        (
            lambda path: path.write_bytes(b'{"format": "c\xe9sv"}'),
            "--request {path} is not valid JSON: 'utf-8' codec can't decode byte 0xe9",
        ),
    ],
    ids=["missing", "a directory", "not UTF-8"],
)
def test_an_unreadable_request_file_is_named_with_exit_2(
    cli, people: Path, tmp_path: Path, make: Any, message: str
) -> None:
    request = tmp_path / "request.json"
    make(request)
    code, out = cli("export", "people", "-n", "hr-team", "--request", str(request))
    assert code == 2 and out["error"]["type"] == "ValidationError", out
    assert out["error"]["message"].startswith(message.format(path=request))
    assert nothing_exported(tmp_path / "home")


@pytest.mark.slow
def test_ingest_error_names_the_line_and_changes_nothing(cli, people: Path, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document_id": "n1"}\n{"document_id": "n2", "x": }\n')
    code, out = cli("ingest", "people", str(bad), "-n", "hr-team")
    assert code == 2 and out["error"]["message"].startswith("line 2:")
    code, out = cli("export", "people", "-n", "hr-team", "--format", "json")
    assert out["document_count"] == 5


@pytest.mark.slow
def test_demo_is_idempotent_and_console_script_works(tmp_path: Path) -> None:
    env = {**os.environ, "EXPORT_PIPELINE_HOME": str(tmp_path / "home")}
    script = Path(sys.executable).parent / "export-pipeline"
    outputs = []
    for _ in range(2):
        done = subprocess.run([script, "demo"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(json.loads(done.stdout))
    first, second = (out["response"] for out in outputs)
    assert first["document_count"] == second["document_count"] == 5
    assert first["s3_path"] != second["s3_path"]  # W6: a new folder per export
    assert (
        Path(first["s3_path"].removeprefix("file://")).read_bytes()
        == Path(second["s3_path"].removeprefix("file://")).read_bytes()
    )  # same seed, same data: byte-identical (O2, O3)

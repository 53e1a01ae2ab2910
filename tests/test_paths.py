"""Any path works (docs/architecture.md: Paths on disk): homes, scratch and storage folders whose
paths hold spaces, `?`, `#`, `%`, non-ASCII letters and DuckDB's glob characters, through the
CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers import (
    files_under,
    ids_of,
    local_path,
    read_csv,
    read_json_lines,
    read_parquet,
    run_cli,
)
from sqlalchemy.engine import make_url

from export_pipeline import duck
from export_pipeline.orchestration.sqlite_urls import sqlite_url
from export_pipeline.storage.local import LocalStorage

# A space, URL syntax (`?`, `#`, `%41` which must not become `A`), a non-ASCII letter, and
# what DuckDB would expand as a glob (`*`, `?`, `[1]`).
ODD = "h o?m#e %41 é*[1]"
# A sibling that ODD matches as a glob: a path read as a pattern would read its files too.
DECOY = "h oXm#e %41 é-1"
DOCS = [
    {"document_id": f"d{n}", "n": n, "tag": "é" * (n % 3), "_vectors": {"emb": [n, 0.5]}}
    for n in range(7)
]


def cli(env: dict[str, str], *argv: str) -> dict[str, Any]:
    """Run the CLI (`export_pipeline.cli.main`, in this process, under `env`); it must succeed
    and print one JSON object. The console script's own start is tested in tests/test_cli.py."""
    code, out = run_cli(argv, env)
    assert code == 0, out
    return out


def collection(env: dict[str, str], source: Path) -> None:
    """Namespace `odd`, collection `things` (2-dim vectors) holding DOCS."""
    source.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in DOCS))
    cli(env, "namespace", "create", "odd")
    cli(env, "collection", "create", "things", "-n", "odd", "--vector-index", "emb:2")
    assert cli(env, "ingest", "things", str(source), "-n", "odd")["document_count"] == len(DOCS)


def export(env: dict[str, str], fmt: str) -> dict[str, Any]:
    """An export with vectors, checked for every document in id order."""
    out = cli(env, "export", "things", "-n", "odd", "--format", fmt, "--include-vectors")
    assert out["document_count"] == len(DOCS)
    assert ids_of(out["download_url"], fmt) == sorted(doc["document_id"] for doc in DOCS)
    return out


@pytest.mark.slow
def test_a_home_with_odd_characters_ingests_exports_and_signs_links(tmp_path: Path) -> None:
    home = tmp_path / ODD / "home"
    env = {"EXPORT_PIPELINE_HOME": str(home)}
    collection(env, tmp_path / "in.jsonl")
    shutil.copytree(home, tmp_path / DECOY / "home")  # same files, read twice by a glob

    published = {fmt: export(env, fmt) for fmt in ("json", "csv", "parquet")}
    rows = read_json_lines(published["json"]["download_url"])
    assert [row["tag"] for row in rows] == [doc["tag"] for doc in DOCS]
    assert read_csv(published["csv"]["download_url"])[1][0] == "d0"
    assert read_parquet(published["parquet"]["vectors_download_url"]).num_rows == len(DOCS)
    for out in published.values():  # the files are where the links say, under the odd home
        assert local_path(out["download_url"]).is_relative_to(home / "exports")
        assert local_path(out["vectors_download_url"]).is_file()

    export_id = local_path(published["csv"]["download_url"]).parent.name
    links = cli(env, "url", export_id, "-n", "odd")
    assert links["download_url"] == published["csv"]["download_url"]
    assert not files_under(home / "scratch")
    assert not (tmp_path / "h o").exists()  # Dagster's sqlite once opened the path cut at `?`


@pytest.mark.slow
def test_odd_scratch_and_storage_folders_as_uris_and_as_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    scratch = tmp_path / f"scratch {ODD}"
    env = {"EXPORT_PIPELINE_HOME": str(home), "EXPORT_PIPELINE_SCRATCH": str(scratch)}
    collection(env, tmp_path / "in.jsonl")
    for n, spell in enumerate((Path.as_uri, lambda p: f"file://{p}", str)):
        storage = tmp_path / f"exports {n} {ODD}"
        out = export({**env, "EXPORT_PIPELINE_STORAGE": spell(storage)}, "parquet")
        assert local_path(out["download_url"]).is_relative_to(storage)
        assert read_parquet(out["download_url"]).column("n").to_pylist() == list(range(7))
    assert not files_under(scratch)


def test_file_uris_round_trip_every_character() -> None:
    folder = Path("/data") / ODD / "exports"
    assert LocalStorage.from_uri(folder.as_uri()).root == folder
    assert LocalStorage.from_uri(f"file://{folder}").root == folder  # `?`, `#` unencoded
    assert LocalStorage.from_uri(f"file://localhost{folder.as_uri()[7:]}").root == folder
    # A plain path is literal: `%41` stays as written; an encoded URI's `%41` is an `A`.
    assert LocalStorage.from_uri(str(folder)).root == folder
    assert LocalStorage.from_uri("file:///data/a%41").root == Path("/data/aA")
    assert LocalStorage(folder).target == folder.as_uri()


def test_parquet_sources_read_only_the_named_files(tmp_path: Path) -> None:
    con = duckdb.connect()
    files = []
    for number, name in enumerate((ODD, DECOY, "a[b]c", "abc", "x*", "xyz")):
        path = tmp_path / name / "part.parquet"
        path.parent.mkdir()
        con.execute(f"COPY (SELECT {number} AS n) TO {duck.literal(str(path))} (FORMAT parquet)")
        files.append(path)
    for number, path in enumerate(files):
        read = con.execute(f"SELECT list(n) FROM {duck.parquet_source([path])}").fetchall()
        assert read == [([number],)], path


def test_dagster_sqlite_urls_name_the_file_itself() -> None:
    base = f"/data/{ODD}/dagster/history"
    assert make_url(sqlite_url(base, "runs")).database == f"{base}/runs.db"

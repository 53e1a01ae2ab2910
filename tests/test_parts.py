"""`max_file_size_bytes` (docs/contract.md W1): exports as numbered parts of bounded size.

The documents are large (hundreds of KB of random text, one of 9 MiB) and the vectors wide,
so real 5 MiB parts are cut by the documents in one place and by the vectors in another.
Each part must be a whole file of at most the limit (a document over it alone), the
documents and vectors parts must hold the same ids in the same order, and the parts joined
in order must be the one-file export.
"""

from __future__ import annotations

import base64
import hashlib
import random
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import export_job, ids_of, local_path, make_collection, quick_first, read_csv

from export_pipeline.contract import MIN_FILE_SIZE_BYTES
from export_pipeline.engine.plan import parse_request
from export_pipeline.errors import InvalidInput
from export_pipeline.links import fresh_links
from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Store, VectorIndex
from export_pipeline.store import segments as segments_module

LIMIT = MIN_FILE_SIZE_BYTES
DIMENSIONS = 12_288  # ~135 KB of json text a row: the vectors file passes 5 MiB first
GIANT = "d0020"  # 9 MiB of text: over the limit in every format


def _docs() -> list[dict[str, Any]]:
    rng = random.Random(7)
    docs = []
    for n in range(48):
        size = 7 * 1024 * 1024 if f"d{n:04d}" == GIANT else 500_000 if n % 4 == 0 else 2_000
        text = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        vector = [round(rng.uniform(-1, 1), 6) for _ in range(DIMENSIONS)]
        docs.append(
            {
                "document_id": f"d{n:04d}",
                "n": n,
                "kind": "even" if n % 2 == 0 else "odd",
                "meta": {"quoted": 'a "b", c\r\nd', "n": n},
                "text": text,
                "_vectors": {"v": vector},
            }
        )
    return docs


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Collection]:
    """48 documents of about 6 MB (and one of 9 MiB) in row groups of 4, so 3 shards each
    get some."""
    patch = pytest.MonkeyPatch()
    patch.setattr(segments_module, "ROW_GROUP_ROWS", 4)
    try:
        store = Store(Settings(home=tmp_path_factory.mktemp("parts") / "home"))
        indexes = [VectorIndex(name="v", dimensions=DIMENSIONS)]
        _, col = make_collection(store, _docs(), indexes, name="big")
    finally:
        patch.undo()
    return store, col


def _export(store: Store, col: Collection, body: dict[str, Any], shards: int) -> ExportRun:
    settings = store.settings.model_copy(update={"shards": str(shards)})
    return export_job(col.namespace_id, col.id, body, settings=settings)


def _table(path: Path) -> pa.Table:
    return pq.read_table(path)


BODIES = [
    {},
    {"include_vectors": True},
    {"filters": {"kind": "even"}, "include_vectors": True},
    {"filters": {"kind": "even"}},  # without vectors DuckDB streams the matches
    {"select_fields": ["text", "meta.quoted", "n"]},
    {"sample_size": 40, "sample_seed": 3, "include_vectors": True},
]


@pytest.mark.slow
@pytest.mark.parametrize("shards", quick_first([1, 3]))
@pytest.mark.parametrize("body", quick_first(BODIES))
@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_parts_are_bounded_whole_files_aligned_and_make_the_one_file_export(
    big: tuple[Store, Collection], fmt: str, body: dict[str, Any], shards: int
) -> None:
    store, col = big
    one = _export(store, col, {"format": fmt, **body}, 1)
    result = _export(store, col, {"format": fmt, **body, "max_file_size_bytes": LIMIT}, shards)
    response, parts = result.response, result.response.parts
    assert parts is not None
    docs = [p for p in parts if p.role == "documents"]
    vectors = [p for p in parts if p.role == "vectors"]
    assert parts == docs + vectors  # the documents' parts first, then the vectors'
    assert [p.name for p in docs] == [f"documents-{n:05d}.{fmt}" for n in range(len(docs))]
    if body.get("include_vectors"):
        assert [p.name for p in vectors] == [f"big_vectors-{n:05d}.{fmt}" for n in range(len(docs))]
    else:
        assert vectors == []
    wholes = [one.response.s3_path, one.response.vectors_s3_path]
    largest = max(local_path(uri).stat().st_size for uri in wholes if uri)
    written = [shard for shard in result.manifest["shards"] if shard["document_count"]]
    if shards == 1:
        assert (len(docs) > 1) == (largest > LIMIT)
    else:  # each shard cuts its own rows: it ends a part
        assert len(docs) >= len(written) > 1
    assert response.download_url == docs[0].download_url and response.s3_path == docs[0].s3_path
    assert response.file_size_bytes == docs[0].file_size_bytes
    assert (
        response.document_count
        == one.response.document_count
        == sum(p.document_count for p in docs)
    )
    if vectors:
        assert response.vectors_s3_path == vectors[0].s3_path

    # Every part: within the limit (or one document alone), its own file, as the manifest says.
    files = {f["name"]: f for f in result.manifest["files"]}
    assert list(files) == [p.name for p in parts]
    for part in parts:
        path = local_path(part.s3_path)
        data = path.read_bytes()
        assert len(data) <= LIMIT or part.document_count == 1, (part.name, len(data))
        assert len(data) == part.file_size_bytes == files[part.name]["bytes"]
        assert hashlib.sha256(data).hexdigest() == part.sha256 == files[part.name]["sha256"]
        assert part.document_count == files[part.name]["rows"] == len(ids_of(part.s3_path, fmt))
        assert part.document_count > 0
        if fmt == "parquet":
            found = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
            assert found == [(part.document_count,)]
    over = [ids_of(p.s3_path, fmt) for p in docs if p.file_size_bytes > LIMIT]
    assert over == ([[GIANT]] if GIANT in ids_of(one.response.s3_path, fmt) else [])

    # Documents and vectors parts hold the same rows in the same order.
    for doc_part, vector_part in zip(docs, vectors, strict=False):
        assert ids_of(doc_part.s3_path, fmt) == ids_of(vector_part.s3_path, fmt)

    # The parts, in order, are the one-file export.
    for role, found in (("documents", docs), ("vectors", vectors)):
        whole = one.response.s3_path if role == "documents" else one.response.vectors_s3_path
        if not found:
            continue
        assert whole is not None
        paths = [local_path(p.s3_path) for p in found]
        expected = local_path(whole)
        if fmt == "parquet":
            joined = pa.concat_tables([_table(p) for p in paths])
            assert joined.equals(_table(expected))
            assert joined.schema.equals(_table(expected).schema, check_metadata=True)
        elif fmt == "json":
            assert b"".join(p.read_bytes() for p in paths) == expected.read_bytes()
        else:
            header = read_csv(found[0].s3_path)[0]
            assert all(read_csv(p.s3_path)[0] == header for p in found)
            first_line = expected.read_bytes().split(b"\r\n", 1)[0] + b"\r\n"
            rows = [p.read_bytes().removeprefix(first_line) for p in paths]
            assert all(p.read_bytes().startswith(first_line) for p in paths)
            assert first_line + b"".join(rows) == expected.read_bytes()


@pytest.mark.slow
def test_the_vectors_cut_parts_too(big: tuple[Store, Collection]) -> None:
    """json vectors of 12,288 floats pass 5 MiB while the documents are a few bytes."""
    store, col = big
    body = {"format": "json", "include_vectors": True, "max_file_size_bytes": LIMIT}
    body["select_fields"] = ["n"]
    parts = _export(store, col, body, 1).response.parts
    assert parts is not None
    docs = [p for p in parts if p.role == "documents"]
    vectors = [p for p in parts if p.role == "vectors"]
    assert len(docs) == len(vectors) == 2
    assert all(p.file_size_bytes < LIMIT // 10 for p in docs)
    assert max(p.file_size_bytes for p in vectors) > LIMIT * 0.8
    assert [p.document_count for p in docs] == [p.document_count for p in vectors]


@pytest.mark.slow
def test_the_same_request_gives_the_same_parts(big: tuple[Store, Collection]) -> None:
    store, col = big
    body = {"format": "parquet", "include_vectors": True, "max_file_size_bytes": LIMIT}
    for shards in (1, 3):
        first, again = (_export(store, col, body, shards).response.parts for _ in range(2))
        assert first and again
        assert [(p.name, p.sha256) for p in first] == [(p.name, p.sha256) for p in again]


def test_a_limit_above_the_export_gives_one_part_of_the_one_file(
    big: tuple[Store, Collection],
) -> None:
    store, col = big
    body: dict[str, Any] = {"format": "csv", "filters": {"n": 1}, "include_vectors": True}
    one = _export(store, col, body, 1)
    result = _export(store, col, {**body, "max_file_size_bytes": LIMIT}, 3)
    parts = result.response.parts
    assert parts is not None
    assert [p.name for p in parts] == ["documents-00000.csv", "big_vectors-00000.csv"]
    assert (
        local_path(parts[0].s3_path).read_bytes() == local_path(one.response.s3_path).read_bytes()
    )
    assert "parts" not in one.response.model_dump(mode="json")  # the seed's response
    assert one.response.s3_path.endswith("/documents.csv")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_no_matches_give_one_empty_part(big: tuple[Store, Collection], fmt: str) -> None:
    store, col = big
    body = {"format": fmt, "filters": {"kind": "none"}, "include_vectors": True}
    one = _export(store, col, body, 1)
    parts = _export(store, col, {**body, "max_file_size_bytes": LIMIT}, 3).response.parts
    assert parts is not None
    assert [(p.role, p.document_count) for p in parts] == [("documents", 0), ("vectors", 0)]
    for part, whole in zip(
        parts, (one.response.s3_path, one.response.vectors_s3_path), strict=True
    ):
        assert whole is not None
        mine, theirs = local_path(part.s3_path), local_path(whole)
        if fmt == "parquet":
            assert _table(mine).schema.equals(_table(theirs).schema)
        else:
            assert mine.read_bytes() == theirs.read_bytes()


def test_fresh_links_name_every_part(big: tuple[Store, Collection]) -> None:
    store, col = big
    body = {"format": "json", "include_vectors": True, "max_file_size_bytes": LIMIT}
    result = _export(store, col, body, 1)
    links = fresh_links(store, store.settings, col.namespace_id, result.manifest["export_id"])
    assert links.parts == result.response.parts
    assert links.s3_path == result.response.s3_path
    assert links.file_size_bytes == result.response.file_size_bytes


@pytest.mark.parametrize("size", [0, LIMIT - 1, -1, "6000000", 6e6, float(LIMIT), True, None])
def test_max_file_size_bytes_must_be_an_integer_of_at_least_5_mib(size: Any) -> None:
    if size is None:
        assert parse_request({"max_file_size_bytes": None}).max_file_size_bytes is None
        return
    with pytest.raises(InvalidInput) as caught:
        parse_request({"max_file_size_bytes": size})
    assert [d["loc"] for d in caught.value.details] == ["max_file_size_bytes"]


def test_a_bad_limit_fails_before_any_document_is_read(
    big: tuple[Store, Collection], tmp_path: Path
) -> None:
    store, col = big
    settings = store.settings.model_copy(update={"scratch": tmp_path / "scratch"})
    with pytest.raises(InvalidInput) as caught:
        export_job(col.namespace_id, col.id, {"max_file_size_bytes": LIMIT - 1}, settings=settings)
    assert [d["loc"] for d in caught.value.details] == ["max_file_size_bytes"]
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").iterdir())


@pytest.mark.slow
def test_every_part_on_s3_has_its_own_link(big: tuple[Store, Collection], bucket: str) -> None:
    store, col = big
    target = store.settings.model_copy(update={"storage": f"s3://{bucket}/team-a/exports"})
    body = {"format": "parquet", "include_vectors": True, "max_file_size_bytes": LIMIT}
    result = export_job(col.namespace_id, col.id, body, settings=target)
    parts = result.response.parts
    assert parts is not None and len(parts) > 2
    assert result.response.s3_path == parts[0].s3_path
    for part in parts:
        with urllib.request.urlopen(part.download_url, timeout=30) as got:
            data, disposition = got.read(), got.headers["Content-Disposition"]
        assert hashlib.sha256(data).hexdigest() == part.sha256
        assert len(data) == part.file_size_bytes
        assert len(data) <= LIMIT or part.document_count == 1
        assert disposition == f'attachment; filename="{part.name}"'
        assert pq.read_table(pa.BufferReader(data)).num_rows == part.document_count
    links = fresh_links(store, target, col.namespace_id, result.manifest["export_id"])
    assert links.parts is not None
    assert [p.s3_path for p in links.parts] == [p.s3_path for p in parts]

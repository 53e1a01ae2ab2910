"""The benchmark collection: a fast generator of demo-shaped documents, ingest, and reuse.

The shape of a document is the demo's (`export_pipeline.demo.demo_documents`): nested
metadata with mixed types, a tags array, ISO dates, a `score` whose type varies between
documents, a dense `text_embedding` and, on every 4th document, a sparse `keywords` vector.
The demo draws every value with `random.Random`, which is far too slow for 1M x 384 floats,
so this module draws the same fields column-wise with numpy and serialises each document
with orjson (`OPT_SERIALIZE_NUMPY` writes float32 in shortest round-trip form).
tests/test_benchmarks.py checks that both generators produce the same shape.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson

from benchmarks.cases import HAND_FILTER_SQL
from benchmarks.measure import Measurement, run_child
from export_pipeline.demo import CATEGORIES, DEMO_INDEXES, WORDS
from export_pipeline.errors import NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Store, VectorIndex

GENERATOR_VERSION = 2  # bump when the documents or the segment layout change (rebuilds caches)
AUTHORS = ["Ada", "Grace", "Alan", "Edsger"]
NAMESPACE = "bench"
META_NAME = "bench-dataset.json"
CHUNK = 10_000
SPARSE_PICKS = 5
STRUCTURE_ROWS = 50_000
Log = Callable[[str], None]


def bench_indexes(dims: int) -> list[VectorIndex]:
    """The demo's vector indexes, with the dense one at `dims` dimensions."""
    dense, sparse = DEMO_INDEXES
    return [dense.model_copy(update={"dimensions": dims}), sparse]


@cache
def _vocab() -> tuple[list[str], list[list[list[str]]], list[str]]:
    """Every title, every tag list by length, every publication time the demo can draw."""
    titles = [" ".join(p).title() for p in itertools.permutations(WORDS, 3)]
    tags = [[list(p) for p in itertools.permutations(WORDS, k)] for k in range(4)]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    hours = [(start + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ") for h in range(8760)]
    return titles, tags, hours


def _chunk(first: int, count: int, dims: int, seed: int) -> list[dict[str, Any]]:
    """Documents `first` .. `first + count - 1`, deterministic per (seed, chunk)."""
    rng = np.random.default_rng([seed, first])
    titles, tags, hours = _vocab()
    sparse_dims = DEMO_INDEXES[1].dimensions
    # Six decimals, as the demo rounds; exact in float32's shortest form.
    emb = rng.integers(-1_000_000, 1_000_001, (count, dims)).astype(np.float32) / np.float32(1e6)
    title = rng.integers(len(titles), size=count).tolist()
    category = rng.integers(len(CATEGORIES), size=count).tolist()
    hour = rng.integers(len(hours), size=count).tolist()
    rating = np.round(rng.uniform(0, 5, count), 2).tolist()
    views = rng.integers(1_000_000, size=count).tolist()
    author = rng.integers(len(AUTHORS), size=count).tolist()
    tag_len = rng.integers(4, size=count).tolist()
    tag_pick = rng.random(count).tolist()
    score_kind = rng.integers(4, size=count).tolist()
    score_int = rng.integers(100, size=count).tolist()
    score_float = rng.random(count).tolist()
    numbers = range(first, first + count)
    sparse_rows = [i for i, number in enumerate(numbers) if number % 4 == 0]
    picks = rng.random((len(sparse_rows), sparse_dims)).argpartition(SPARSE_PICKS, axis=1)
    indices = np.sort(picks[:, :SPARSE_PICKS], axis=1).astype(np.int32)
    values = np.round(rng.random((len(sparse_rows), SPARSE_PICKS)), 4).astype(np.float32)
    sparse = dict(zip(sparse_rows, zip(indices, values, strict=True), strict=True))
    docs = []
    for i, number in enumerate(numbers):
        choices = tags[tag_len[i]]
        score = (score_int[i], score_float[i], "n/a", None)[score_kind[i]]
        vectors: dict[str, Any] = {"text_embedding": emb[i]}
        if i in sparse:
            vectors["keywords"] = {"indices": sparse[i][0], "values": sparse[i][1]}
        docs.append(
            {
                "document_id": f"doc_{number:07d}",
                "metadata": {
                    "title": titles[title[i]],
                    "category": CATEGORIES[category[i]],
                    "published_at": hours[hour[i]],
                    "rating": rating[i],
                    "views": views[i],
                    "author": {"name": AUTHORS[author[i]]},
                },
                "tags": choices[int(tag_pick[i] * len(choices))],
                "score": score,
                "_vectors": vectors,
            }
        )
    return docs


def documents(count: int, dims: int, seed: int = 42) -> Iterator[dict[str, Any]]:
    """The benchmark documents as dicts (vectors as numpy arrays)."""
    for first in range(0, count, CHUNK):
        yield from _chunk(first, min(CHUNK, count - first), dims, seed)


def write_jsonl(path: Path, count: int, dims: int, seed: int = 42) -> int:
    """Write `count` documents as JSONL; returns the bytes written."""
    dumps, option = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    with open(path, "wb") as out:
        for first in range(0, count, CHUNK):
            batch = _chunk(first, min(CHUNK, count - first), dims, seed)
            out.write(b"".join(dumps(doc, option=option) for doc in batch))
    return path.stat().st_size


@dataclass
class Dataset:
    """A built collection and what the harness knows about it."""

    home: Path
    n: int
    dims: int
    collection: str
    segments: list[Path]
    structure: dict[str, Any]  # json_group_structure of the documents (hand-written knowledge)
    filter_matches: int
    meta: dict[str, Any]  # generation and ingest measurements, reused flag

    @property
    def selectivity(self) -> float:
        """The share of documents the filter case keeps."""
        return self.filter_matches / self.n if self.n else 0.0


def prepare(home: Path, n: int, dims: int, seed: int = 42, log: Log = print) -> Dataset:
    """Reuse the collection in `home` if it was built with the same n/dims, else build it."""
    home = home.resolve()
    name = f"docs-{n}-{dims}"
    meta_path = home / META_NAME
    wanted = {"generator": GENERATOR_VERSION, "n": n, "dims": dims, "seed": seed}
    found = reusable(meta_path, wanted, lambda: _complete(home, name, n), log)
    if found is not None:
        return _dataset(home, n, dims, name, {**found, "reused": True})
    try:
        meta = {**wanted, "generate": _generate(home, n, dims, seed, log)}
        meta["ingest"] = _ingest(home, name, dims, log)
        (home / "bench-input.jsonl").unlink()
        dataset = _dataset(home, n, dims, name, meta)  # fills in the structure, filter matches
        meta_path.write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)  # a half-built home is never reused
        raise
    dataset.meta = {**meta, "reused": False}
    return dataset


def reusable(
    meta_path: Path, wanted: dict[str, Any], complete: Callable[[], bool], log: Log
) -> dict[str, Any] | None:
    """The metadata of a benchmark home built with the same parameters (None: it was not,
    and the home is now empty, ready to build)."""
    home = meta_path.parent
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted and complete():
            log(f"reusing {home} (ingest figures from the run that built it)")
            return meta
        log(f"{home} holds other benchmark collections; rebuilding them")
        shutil.rmtree(home)
    elif home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} exists and is not a benchmark home; pick another --home")
    home.mkdir(parents=True, exist_ok=True)
    return None


def _complete(home: Path, name: str, n: int) -> bool:
    store = Store(Settings(home=home))
    try:
        _, collection = store.resolve(NAMESPACE, name)
    except NotFoundError:
        return False
    # A home ingested before the store numbered structures would measure the older
    # export paths: it is rebuilt.
    return collection.document_count == n and store.documents.numbered(collection)


def _generate(home: Path, n: int, dims: int, seed: int, log: Log) -> dict[str, Any]:
    log(f"generating {n:,} documents x {dims} dims ...")
    started = time.perf_counter()
    size = write_jsonl(home / "bench-input.jsonl", n, dims, seed)
    seconds = time.perf_counter() - started
    log(f"  generated {size / 1e6:,.0f} MB of JSONL in {seconds:.1f} s ({n / seconds:,.0f} docs/s)")
    return {"seconds": seconds, "bytes": size, "docs_per_s": n / seconds}


def _ingest(home: Path, name: str, dims: int, log: Log) -> dict[str, Any]:
    store = Store(Settings(home=home))
    namespace = store.catalog.create_namespace(NAMESPACE)
    store.catalog.create_collection(namespace, name, bench_indexes(dims))
    spec = {
        "kind": "ingest",
        "home": str(home),
        "namespace": NAMESPACE,
        "collection": name,
        "source": str(home / "bench-input.jsonl"),
    }
    log("ingesting with Store.ingest (child process) ...")
    measured: Measurement = run_child(spec, home / "runs" / "ingest")
    shutil.rmtree(home / "runs" / "ingest", ignore_errors=True)
    log(
        f"  ingested {measured.rows:,} docs in {measured.seconds:.1f} s"
        f" ({measured.rows_per_s:,.0f} docs/s), peak RSS {measured.peak_rss_bytes / 2**20:,.0f} MB"
    )
    return measured.to_json()


def _dataset(home: Path, n: int, dims: int, name: str, meta: dict[str, Any]) -> Dataset:
    store = Store(Settings(home=home))
    _, collection = store.resolve(NAMESPACE, name)
    segments = store.documents.segment_files(collection)
    if "structure" not in meta:  # untimed: what a person would look up before writing SQL
        source = "read_parquet([" + ", ".join(f"'{p}'" for p in segments) + "])"
        with duckdb.connect() as con:
            # json_group_structure holds ~4.7 KB per row here (950 MB at 200k documents), so
            # it reads a prefix: every generated document has every key, and the agreement
            # check would notice a structure that misses one.
            (structure,) = con.execute(
                "SELECT json_group_structure(doc::JSON) FROM"
                f" (SELECT doc FROM {source} LIMIT {STRUCTURE_ROWS})"
            ).fetchall()[0]
            (matches,) = con.execute(
                f"SELECT count(*) FROM {source} WHERE {HAND_FILTER_SQL}"
            ).fetchall()[0]
        meta["structure"], meta["filter_matches"] = json.loads(structure), matches
    return Dataset(
        home=home,
        n=n,
        dims=dims,
        collection=name,
        segments=segments,
        structure=meta["structure"],
        filter_matches=meta["filter_matches"],
        meta=meta,
    )

"""A small, realistic demo collection: nested metadata, mixed types, tags, dates, vectors."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from export_pipeline.store import VectorIndex

CATEGORIES = ["news", "sports", "science", "travel", "food"]
WORDS = ["vector", "search", "river", "mountain", "quantum", "pasta", "league", "orbit"]
DEMO_INDEXES = [
    VectorIndex(name="text_embedding", dimensions=8, type="dense"),
    VectorIndex(name="keywords", dimensions=1000, type="sparse"),
]
DEMO_REQUEST: dict[str, Any] = {
    "format": "json",
    "include_vectors": True,
    "select_fields": ["document_id", "metadata.title", "metadata.category", "tags"],
    "filters": {
        "AND": [{"field": "metadata.category", "operator": "in", "value": ["news", "science"]}]
    },
    "sample_size": 5,
    "sample_seed": 7,
}


def demo_documents(count: int, dimensions: int = 8, seed: int = 42) -> Iterator[dict[str, Any]]:
    """Deterministic documents with the variety real collections have."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for number in range(count):
        published = start + timedelta(hours=rng.randrange(24 * 365))
        document: dict[str, Any] = {
            "document_id": f"doc_{number:07d}",
            "metadata": {
                "title": " ".join(rng.sample(WORDS, 3)).title(),
                "category": rng.choice(CATEGORIES),
                "published_at": published.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "rating": round(rng.uniform(0, 5), 2),
                "views": rng.randrange(1_000_000),
                "author": {"name": rng.choice(["Ada", "Grace", "Alan", "Edsger"])},
            },
            "tags": rng.sample(WORDS, rng.randrange(0, 4)),
            # The same key with different types in different documents (docs/contract.md D3).
            "score": rng.choice([rng.randrange(100), rng.random(), "n/a", None]),
            "_vectors": {
                "text_embedding": [round(rng.uniform(-1, 1), 6) for _ in range(dimensions)]
            },
        }
        if number % 4 == 0:
            indices = sorted(rng.sample(range(1000), 5))
            values = [round(rng.random(), 4) for _ in indices]
            document["_vectors"]["keywords"] = {"indices": indices, "values": values}
        yield document


def write_jsonl(documents: Iterator[dict[str, Any]], path: Path) -> Path:
    """Write documents as JSONL, one per line."""
    with open(path, "wb") as out:
        for document in documents:
            out.write(orjson.dumps(document) + b"\n")
    return path

"""The messy collections of `python -m benchmarks.messy` and their tidy twins, as JSONL.

Every document has the same regular fields (`title`, `rating`, `category`) plus the part
that makes its collection messy:

- `wide`: one top-level key of its own, `attr_<number>` (n distinct keys in all);
- `wide-nested`: that key inside an `attributes` object;
- `deep`: a value nested MAX_DOCUMENT_DEPTH - 1 levels below the top, objects and arrays
  alternating (the deepest document ingest accepts: the line itself is level 1).

A tidy twin draws the very same values from the same seed and only changes the messy part:
every wide document uses document 0's key (`attr_0000000`), and the deep value is written
flat beside a filler string of the wrapper's length. So a twin has the same number of
documents and exactly the same JSONL bytes, with a fixed set of keys: the baseline the
target compares against. Values are drawn column-wise with numpy and lines written with
orjson (the deep wrapper as a pre-serialised `orjson.Fragment`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from export_pipeline.demo import CATEGORIES, WORDS
from export_pipeline.jsontext import MAX_DOCUMENT_DEPTH

GENERATOR_VERSION = 1  # bump when the documents change (rebuilds cached homes)
MESSY = ("wide", "wide-nested", "deep")
CHUNK = 10_000
TITLES = [" ".join(words).title() for words in itertools.permutations(WORDS, 3)]
DEEP_LEVELS = MAX_DOCUMENT_DEPTH - 1  # containers below the top-level object

# rating is uniform in [0, 5) rounded to 2 places, so `< 0.75` keeps ~15%.
RATING_LIMIT = 0.75
FILTER: dict[str, Any] = {"AND": [{"field": "rating", "operator": "lt", "value": RATING_LIMIT}]}


def _deep_wrapper() -> tuple[bytes, bytes]:
    """The JSON text around the deep value: `{"k":[{"k":[ ... ]}]}`, DEEP_LEVELS containers,
    an object innermost and outermost."""
    prefix, suffix = b"", b""
    for level in reversed(range(DEEP_LEVELS)):  # outermost first
        opening, closing = (b'{"k":', b"}") if level % 2 == 0 else (b"[", b"]")
        prefix, suffix = prefix + opening, closing + suffix
    return prefix, suffix


DEEP_PREFIX, DEEP_SUFFIX = _deep_wrapper()
# The tidy twin's `"note":"<filler>"` plus its comma takes the wrapper's bytes exactly.
_NOTE_OVERHEAD = len(b',"note":""')
FILLER = " ".join(WORDS * 8)[: len(DEEP_PREFIX) + len(DEEP_SUFFIX) - _NOTE_OVERHEAD]


def collection_name(kind: str, tidy: bool) -> str:
    """The collection's name in the benchmark home: `wide`, `wide-tidy`, ..."""
    return f"{kind}-tidy" if tidy else kind


def chunk(kind: str, tidy: bool, first: int, count: int, seed: int) -> list[dict[str, Any]]:
    """Documents `first` .. `first + count - 1` of a collection, deterministic per (seed,
    chunk) and identical in values between a messy collection and its tidy twin."""
    if kind not in MESSY:
        raise ValueError(f"unknown collection kind {kind!r}; expected one of {MESSY}")
    rng = np.random.default_rng([seed, first])
    title = rng.integers(len(TITLES), size=count).tolist()
    rating = np.round(rng.uniform(0, 5, count), 2).tolist()
    category = rng.integers(len(CATEGORIES), size=count).tolist()
    value = rng.integers(1_000_000, size=count).tolist()
    docs = []
    for i, number in enumerate(range(first, first + count)):
        doc: dict[str, Any] = {
            "document_id": f"doc_{number:07d}",
            "title": TITLES[title[i]],
            "rating": rating[i],
            "category": CATEGORIES[category[i]],
        }
        key = f"attr_{0 if tidy else number:07d}"
        if kind == "wide":
            doc[key] = value[i]
        elif kind == "wide-nested":
            doc["attributes"] = {key: value[i]}
        elif tidy:
            doc["deep"], doc["note"] = value[i], FILLER
        else:
            doc["deep"] = orjson.Fragment(b"%s%d%s" % (DEEP_PREFIX, value[i], DEEP_SUFFIX))
        docs.append(doc)
    return docs


def write_jsonl(path: Path, kind: str, tidy: bool, n: int, seed: int = 42) -> int:
    """Write the `n` documents of one collection as JSONL; returns the bytes written."""
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with open(path, "wb") as out:
        for first in range(0, n, CHUNK):
            batch = chunk(kind, tidy, first, min(CHUNK, n - first), seed)
            out.write(b"".join(dumps(doc, option=option) for doc in batch))
    return path.stat().st_size

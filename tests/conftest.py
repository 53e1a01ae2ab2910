"""Shared fixtures: a store under a temporary home and a way to fill a collection."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from export_pipeline.errors import NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store, VectorIndex

_counter = itertools.count()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose home is a fresh temporary folder."""
    return Settings(home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Store:
    """A store under the temporary home."""
    return Store(settings)


def write_jsonl(folder: Path, docs: list[Any]) -> Path:
    """Write documents (dicts, or raw str lines) to a new JSONL file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ingest_{next(_counter)}.jsonl"
    lines = [doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False) for doc in docs]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_collection(
    store: Store,
    docs: list[Any],
    indexes: list[VectorIndex] | None = None,
    *,
    namespace: str = "test-ns",
    name: str = "things",
) -> tuple[Namespace, Collection]:
    """Create (or reuse) a namespace, create a collection, ingest `docs` into it."""
    try:
        ns = store.catalog.namespace(namespace)
    except NotFoundError:
        ns = store.catalog.create_namespace(namespace)
    col = store.catalog.create_collection(ns, name, indexes or [])
    if docs:
        store.ingest(ns.id, col.id, write_jsonl(store.settings.home_dir.parent / "in", docs))
    return ns, store.catalog.collection(ns, col.id)

"""The storage seam: publish an export's files atomically and hand out links to them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Defined with the rest of the error vocabulary; storage backends raise it.
from export_pipeline.errors import TransientStorageError

__all__ = [
    "FileRange",
    "LocalFile",
    "Piece",
    "PublishedObject",
    "Storage",
    "StoredRange",
    "TransientStorageError",
    "export_prefix",
    "published",
]


@dataclass(frozen=True)
class FileRange:
    """`length` bytes of the file at `path`, from byte `offset`."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class StoredRange:
    """`length` bytes of the object at `key` (under the storage's root), from byte `offset`:
    a shard's part already on the export storage, where the shards ran on other machines."""

    key: str
    offset: int
    length: int


# A run of an assembled file's bytes: a range of a part written in scratch space or waiting on
# the export storage (a shard's part), or bytes made by the assembler itself (a csv header, a
# parquet footer).
Piece = FileRange | StoredRange | bytes


@dataclass(frozen=True)
class LocalFile:
    """A finished file in scratch space, to be published under `name`: the file at `path`,
    or, where `pieces` is given, the concatenation of the pieces (an assembly of shards'
    parts that is never written whole in scratch space; `path` is then where a backend may
    assemble it, in the export's scratch folder)."""

    name: str
    path: Path
    content_type: str
    sha256: str | None = None  # kept as object metadata where the backend has any
    pieces: tuple[Piece, ...] | None = None


@dataclass(frozen=True)
class PublishedObject:
    """Where a published file lives (`uri`, the A1 `s3_path`) and its key under the root."""

    name: str
    key: str
    uri: str


class Storage(Protocol):
    """Publishes files at final keys, all or nothing, and presigns download URLs."""

    links_expire: bool  # whether download_url links stop working after their ttl

    @property
    def target(self) -> str:
        """The storage URI this backend publishes under (file://... or s3://bucket/prefix)."""
        ...

    def uri_of(self, key: str) -> str:
        """The A1 `s3_path` of a key: s3://bucket/key, or a file:// URI."""
        ...

    def publish(self, prefix: str, files: list[LocalFile]) -> list[PublishedObject]:
        """Put every file under `prefix`, the last one (the manifest) last; atomic for readers.

        On failure nothing is left at the final keys and the error is raised.
        """
        ...

    def download_url(self, key: str, ttl_seconds: int) -> str:
        """A URL a plain HTTP client (or a browser) can fetch the object from."""
        ...

    def read(self, key: str) -> bytes:
        """The content of a published object (a manifest, to sign fresh links from)."""
        ...

    def check(self) -> None:
        """Raise, saying why, if the storage cannot be reached or written."""
        ...

    def discard(self, prefix: str) -> tuple[int, int]:
        """Remove whatever an unfinished export wrote under `prefix` (objects, staging,
        incomplete multipart uploads); returns (objects removed, uploads aborted)."""
        ...

    def put(self, key: str, path: Path) -> None:
        """Store the file at `path` under `key` as it is (a shard's part between steps that
        share no disk), replacing what was there."""
        ...

    def fetch(self, key: str, path: Path) -> None:
        """Copy the object at `key` into the file at `path`."""
        ...

    def read_range(self, piece: StoredRange) -> bytes:
        """The bytes of a range of an object under the root (a ranged GET)."""
        ...


def published(storage: Storage, prefix: str, files: list[LocalFile]) -> list[PublishedObject]:
    """Where each of `files` now lives under `prefix`."""
    return [
        PublishedObject(
            name=f.name, key=f"{prefix}/{f.name}", uri=storage.uri_of(f"{prefix}/{f.name}")
        )
        for f in files
    ]


def export_prefix(namespace_id: str, collection_id: str, export_id: str) -> str:
    """W6: every export has its own folder under the storage root."""
    return f"{namespace_id}/exports/{collection_id}/{export_id}"

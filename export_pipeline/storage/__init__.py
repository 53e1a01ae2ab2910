"""Where exports are published: the Storage seam and its implementations."""

from __future__ import annotations

from export_pipeline.errors import InvalidInput
from export_pipeline.settings import Settings
from export_pipeline.storage.base import (
    FileRange,
    LocalFile,
    Piece,
    PublishedObject,
    Storage,
    StoredRange,
    TransientStorageError,
    export_prefix,
)
from export_pipeline.storage.local import LocalStorage
from export_pipeline.storage.s3 import S3Storage
from export_pipeline.storage.s3_client import MIB, S3Options

__all__ = [
    "FileRange",
    "LocalFile",
    "LocalStorage",
    "Piece",
    "PublishedObject",
    "S3Storage",
    "Storage",
    "StoredRange",
    "TransientStorageError",
    "export_prefix",
    "open_storage",
]


def open_storage(settings: Settings, uri: str | None = None) -> Storage:
    """The storage for a target URI (default: the configured one): file:// or s3://."""
    target = uri or settings.storage_uri
    if target.startswith("s3://"):
        journal = settings.scratch_dir / "s3-cleanup.jsonl"
        return S3Storage.from_uri(target, s3_options(settings), journal)
    if target.startswith("file://") or "://" not in target:
        return LocalStorage.from_uri(target)
    raise InvalidInput(f"unsupported storage target {target!r} (supported: file://, s3://)")


def s3_options(settings: Settings) -> S3Options:
    """S3 behaviour from the EXPORT_PIPELINE_S3_* settings."""
    return S3Options(
        addressing_style=settings.s3_addressing_style,
        part_size_bytes=settings.s3_part_size_mb * MIB,
        max_concurrency=settings.s3_max_concurrency,
        retry_mode=settings.s3_retry_mode,
        max_attempts=settings.s3_max_attempts,
        sse=settings.s3_sse,
        sse_kms_key_id=settings.s3_sse_kms_key_id,
    )

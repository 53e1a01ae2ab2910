"""Where exports are published: the Storage seam and its implementations."""

from __future__ import annotations

from export_pipeline.errors import ValidationError
from export_pipeline.storage.base import (
    LocalFile,
    PublishedObject,
    Storage,
    TransientStorageError,
    export_prefix,
)
from export_pipeline.storage.local import LocalStorage

__all__ = [
    "LocalFile",
    "LocalStorage",
    "PublishedObject",
    "Storage",
    "TransientStorageError",
    "export_prefix",
    "open_storage",
]


def open_storage(uri: str) -> Storage:
    """The storage for a target URI (`file://...`)."""
    if uri.startswith("file://") or "://" not in uri:
        return LocalStorage.from_uri(uri)
    raise ValidationError(f"unsupported storage target {uri!r} (supported: file://)")

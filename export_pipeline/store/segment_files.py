"""Where segment files live, and local copies of them for the readers.

A collection's catalog row lists each segment as a file name under the collection's
`segments/` folder (the default), or as an `s3://bucket/key` URI (EXPORT_PIPELINE_SEGMENTS):
workers that share no disk share the bucket. DuckDB and pyarrow read local files only here,
so readers take `local_copies`: local segments as they are, S3 ones (with their shapes
sidecars) downloaded once into a folder of the reader's. Segments are immutable, so a copy
never goes stale.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from export_pipeline.settings import Settings
from export_pipeline.storage import s3_options
from export_pipeline.storage.s3_client import make_client, parse_s3_uri

SHAPES_SUFFIX = ".shapes.parquet"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def is_remote(segment: str) -> bool:
    """Whether a listed segment is an S3 object (else a file name or a local path)."""
    return segment.startswith("s3://")


def sidecar_of(segment: str) -> str:
    """The shapes sidecar of a segment path or URI (`segments.shapes_file`'s naming)."""
    return segment.removesuffix(".parquet") + SHAPES_SUFFIX


def _split(uri: str) -> tuple[str, str]:
    return parse_s3_uri(uri, "segment")


class SegmentFiles:
    """Segment files in S3 (EXPORT_PIPELINE_SEGMENTS) or under home: where new ones go,
    uploads, local copies, removal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The S3 client (boto3's chain, the S3 options of the export storage), made once."""
        if self._client is None:
            self._client = make_client(s3_options(self.settings))
        return self._client

    @property
    def remote(self) -> bool:
        """Whether new segments go to S3."""
        return self.settings.segments is not None

    def uri(
        self, namespace_id: str, collection_id: str, name: str, folder: str = "segments"
    ) -> str:
        """The URI a new segment (or, in `folder` history, history file) of a collection
        gets in S3."""
        base = (self.settings.segments or "").rstrip("/")
        return f"{base}/{namespace_id}/{collection_id}/{folder}/{name}"

    def upload(self, files: list[tuple[Path, str]]) -> None:
        """Put local files at their URIs, in parallel (boto3's transfer manager per file),
        encrypted as exports are (EXPORT_PIPELINE_S3_SSE)."""
        extra = s3_options(self.settings).sse_args()

        def put(item: tuple[Path, str]) -> None:
            self.client.upload_file(str(item[0]), *_split(item[1]), ExtraArgs=extra or None)

        self._each(put, files)

    def local_copies(self, segments: list[str], folder: Path | None) -> list[Path]:
        """Local files of `segments` (paths, or URIs): local ones as they are; S3 ones and
        their sidecars downloaded into `folder` unless there already (processes of one
        export on one host share its folder: one downloads, the others wait)."""
        remote = [s for s in segments if is_remote(s)]
        if not remote:
            return [Path(s) for s in segments]
        if folder is None:
            raise ValueError("segments in S3 are read from local copies: give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            wanted = [(uri, folder / uri.rsplit("/", 1)[-1]) for uri in remote]
            # each file appears whole (renamed into place): one missing is all that is fetched
            files = wanted + [(sidecar_of(u), Path(sidecar_of(str(p)))) for u, p in wanted]
            self._each(self._download, [(u, p) for u, p in files if not p.exists()])
        copies = dict(wanted)
        return [copies[s] if is_remote(s) else Path(s) for s in segments]

    def _download(self, item: tuple[str, Path]) -> None:
        uri, path = item
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # renamed in whole
        try:
            self.client.download_file(*_split(uri), str(part))
        except ClientError as exc:
            part.unlink(missing_ok=True)
            if uri.endswith(SHAPES_SUFFIX) and _code(exc) in _NOT_FOUND:
                return  # a segment without a sidecar: readers tell that case themselves
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, path)

    def remove(self, segments: Iterable[str]) -> int:
        """Remove segments (paths or URIs) with their sidecars; how many were there (S3 does
        not say: each URI counts)."""
        removed = 0
        for segment in segments:
            if is_remote(segment):
                for uri in (segment, sidecar_of(segment)):
                    bucket, key = _split(uri)
                    self.client.delete_object(Bucket=bucket, Key=key)
                removed += 1
                continue
            path = Path(segment)
            removed += int(path.exists())
            path.unlink(missing_ok=True)
            Path(sidecar_of(segment)).unlink(missing_ok=True)
        return removed

    def _each(self, action: Any, items: list[Any]) -> None:
        """`action` on every item, at most `s3_max_concurrency` at once; the first failure
        raises once all have ended."""
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        with ThreadPoolExecutor(max_workers=self.settings.s3_max_concurrency) as pool:
            for future in [pool.submit(action, item) for item in items]:
                future.result()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))

"""s3:// storage with boto3: AWS or any S3-compatible endpoint (MinIO, R2, Ceph, moto).

How to talk to S3 (options, clients, errors) is `s3_client`. Files (plain, or made of pieces of
shards' parts) stream from scratch space, as multipart uploads above the part size. Every
file's parts are sent before any file is completed, and the manifest is completed last, so
its presence marks a complete export. A failed publish deletes what it wrote and aborts its
incomplete multipart uploads.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from export_pipeline.errors import ExportPipelineError
from export_pipeline.storage.base import (
    LocalFile,
    PublishedObject,
    StoredRange,
    TransientStorageError,
    published,
)
from export_pipeline.storage.pieces import check_pieces, pieces_of
from export_pipeline.storage.s3_client import (
    S3Options,
    make_client,
    parse_s3_uri,
    root_cause,
    s3_problem,
)
from export_pipeline.storage.s3_parts import PartUploads, Staged


class S3Storage:
    """Publishes under `s3://bucket/prefix/`, presigns SigV4 GET links."""

    links_expire = True

    def __init__(
        self,
        bucket: str,
        root: str,
        options: S3Options,
        *,
        journal: Path | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.root = root.strip("/")
        self.options = options
        self.client = client or make_client(options)
        # Failed exports whose objects could not be removed (the endpoint was down), retried
        # before every publish so they do not linger.
        self.journal = journal

    @property
    def target(self) -> str:
        """`s3://bucket/prefix`."""
        return f"s3://{self.bucket}/{self.root}".rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, options: S3Options, journal: Path | None = None) -> S3Storage:
        """`s3://bucket` or `s3://bucket/prefix`."""
        bucket, root = parse_s3_uri(uri, "storage target")
        return cls(bucket, root, options, journal=journal)

    def key(self, key: str) -> str:
        """The object key of a key under the root."""
        return f"{self.root}/{key}" if self.root else key

    def publish(self, prefix: str, files: list[LocalFile]) -> list[PublishedObject]:
        """Send every file's bytes, then make the files visible in order, the manifest (the
        last file) last; on failure abort the uploads and remove what was completed."""
        self.sweep()
        uploads = PartUploads(
            self.client,
            self.bucket,
            self.options.part_size_bytes,
            self.options.max_concurrency,
            read_stored=self.read_range,
            source_key=self.key,
        )
        staged: list[Staged] = []
        written: list[str] = []
        try:
            for file in files:  # a part shorter than planned fails before anything is sent
                check_pieces(pieces_of(file))
            for file in files:
                key = self.key(f"{prefix}/{file.name}")
                staged.append(uploads.start(file, key, self._object_args(file)))
                uploads.send(staged[-1])
            for item in staged:
                written.append(item.key)  # before: an interrupted completion may have landed
                uploads.complete(item)
        except BaseException as exc:
            self._undo(self.key(prefix), written)
            if isinstance(exc, Exception):
                raise self._explain(exc, "upload") from None
            raise
        return published(self, prefix, files)

    def put(self, key: str, path: Path) -> None:
        """Upload the file (boto3's transfer manager: parts in parallel above its threshold)."""
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                self.key(key),
                Config=self._transfer(),
                ExtraArgs=self._sse(),
            )
        except Exception as exc:
            raise self._explain(exc, "upload") from None

    def fetch(self, key: str, path: Path) -> None:
        """Download the object (ranged GETs in parallel above the transfer threshold)."""
        try:
            self.client.download_file(
                self.bucket, self.key(key), str(path), Config=self._transfer()
            )
        except Exception as exc:
            raise self._explain(exc, "download") from None

    def read_range(self, piece: StoredRange) -> bytes:
        """The bytes of a range of an object under the root (one ranged GET)."""
        if not piece.length:
            return b""
        last = piece.offset + piece.length - 1
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self.key(piece.key), Range=f"bytes={piece.offset}-{last}"
            )["Body"].read()
        except Exception as exc:
            raise self._explain(exc, "read") from None
        if len(body) != piece.length:
            raise ExportPipelineError(
                f"part {piece.key} holds fewer bytes than the assembled file needs"
                f" (bytes {piece.offset}..{piece.offset + piece.length})"
            )
        return body

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        size = self.options.part_size_bytes
        return TransferConfig(
            multipart_threshold=size,
            multipart_chunksize=size,
            max_concurrency=self.options.max_concurrency,
        )

    def uri_of(self, key: str) -> str:
        """`s3://bucket/<root>/<key>`."""
        return f"s3://{self.bucket}/{self.key(key)}"

    def download_url(self, key: str, ttl_seconds: int) -> str:
        """A presigned (SigV4) GET URL valid for `ttl_seconds`, downloading as the file name."""
        name = key.rsplit("/", 1)[-1]
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(key),
                "ResponseContentDisposition": f'attachment; filename="{name}"',
            },
            ExpiresIn=ttl_seconds,
        )

    def read(self, key: str) -> bytes:
        """The content of a published object (manifests, for re-signing links)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except Exception as exc:
            raise self._explain(exc, "read") from None

    def check(self) -> None:
        """The bucket answers (HEAD); the error says what is wrong."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._explain(exc, "check") from None

    def _object_args(self, file: LocalFile) -> dict[str, Any]:
        """What every object carries: type, download name, sha256, encryption."""
        args: dict[str, Any] = {
            "ContentType": file.content_type,
            "ContentDisposition": f'attachment; filename="{file.name}"',
        }
        if file.sha256:
            args["Metadata"] = {"sha256": file.sha256}
        return {**args, **self._sse()}

    def _sse(self) -> dict[str, Any]:
        """The server-side encryption every object asks for, if any."""
        return dict(self.options.sse_args())

    def _undo(self, prefix: str, written: list[str]) -> None:
        """Delete the objects written and abort multipart uploads under prefix, or journal it."""
        try:
            self._remove(prefix, written)
        except Exception as exc:
            if isinstance(self._explain(exc, "cleanup"), TransientStorageError):
                # The endpoint is what failed: try again before the next publish.
                entry = {"prefix": prefix, "keys": written}
                self._journal_edit(lambda entries: [*entries, entry])

    def _remove(self, prefix: str, keys: list[str]) -> None:
        if keys:
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys]}
            )
        pending = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix + "/")
        for upload in pending.get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )

    def discard(self, prefix: str) -> tuple[int, int]:
        """Remove every object under `prefix` and abort its incomplete multipart uploads;
        returns (objects removed, uploads aborted)."""
        base = self.key(prefix).rstrip("/") + "/"
        objects = uploads = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                    objects += len(keys)
            pending = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pending:
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    uploads += 1
        except Exception as exc:
            raise self._explain(exc, "cleanup") from None
        return objects, uploads

    def sweep(self) -> None:
        """Finish removing what earlier failed exports left while the endpoint was away."""
        if self.journal is None or not self.journal.exists():
            return

        def retry(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            left = []
            for entry in entries:
                if entry.get("bucket", self.bucket) != self.bucket:
                    left.append(entry)
                    continue
                try:
                    self._remove(entry["prefix"], entry["keys"])
                except Exception as exc:  # kept only while the endpoint may come back
                    if isinstance(self._explain(exc, "cleanup"), TransientStorageError):
                        left.append(entry)
            return left

        self._journal_edit(retry)

    def _journal_edit(self, change: Any) -> None:
        if self.journal is None:
            return
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # exports in other processes share the journal
            handle.seek(0)
            entries = [json.loads(line) for line in handle.read().splitlines() if line]
            left = change([{"bucket": self.bucket, **e} for e in entries])
            handle.seek(0)
            handle.truncate()
            handle.writelines(json.dumps({"bucket": self.bucket, **e}) + "\n" for e in left)

    def _explain(self, exc: Exception, action: str) -> Exception:
        """A message naming what failed, never credentials; transient errors stay retryable."""
        if not isinstance(root_cause(exc), BotoCoreError | ClientError):
            return exc
        message, transient = s3_problem(exc, self.bucket, self.target, self.client)
        kind = TransientStorageError if transient else ExportPipelineError
        return kind(f"storage {action} failed: {message}")

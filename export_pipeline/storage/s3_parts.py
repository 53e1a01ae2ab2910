"""Sending a file of pieces to S3 so that it appears only when completed: a multipart upload
whose parts are read from the pieces in the threads that send them, or, for a file of at
most one part, a PutObject made at completion.

See `storage.pieces` for how a later server-side assembly maps ranges of S3 objects to
UploadPartCopy within the same plan of parts.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from export_pipeline.storage.base import LocalFile, Piece
from export_pipeline.storage.pieces import pieces_of, read_part, size_of_pieces, split_pieces

MIN_PART = 5 * 1024 * 1024  # S3's least size of every part but the last
MAX_PARTS = 10_000  # S3's most parts in one upload


@dataclass
class Staged:
    """An object whose bytes are sent but not yet visible at its key."""

    key: str
    pieces: tuple[Piece, ...]
    args: dict[str, Any]  # ContentType, ContentDisposition, Metadata, SSE
    part_size: int
    upload_id: str | None = None  # None: one PutObject at completion
    parts: list[dict[str, Any]] = field(default_factory=list)


class PartUploads:
    """Multipart uploads to one bucket, `concurrency` parts in flight (and in memory)."""

    def __init__(self, client: Any, bucket: str, part_size: int, concurrency: int) -> None:
        self.client = client
        self.bucket = bucket
        self.part_size = max(part_size, MIN_PART)
        self.concurrency = max(concurrency, 1)
        # As boto3's transfer manager does: where the client sends checksums by default, the
        # upload declares CRC32 and its completion lists each part's.
        when = getattr(client.meta.config, "request_checksum_calculation", None)
        self.checksum = {"ChecksumAlgorithm": "CRC32"} if when == "when_supported" else {}

    def start(self, file: LocalFile, key: str, args: dict[str, Any]) -> Staged:
        """Open the upload of `file` at `key` (nothing is visible there yet)."""
        pieces = pieces_of(file)
        size = size_of_pieces(pieces)
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        staged = Staged(key, pieces, args, part_size)
        if size > part_size:
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **args, **self.checksum
            )
            staged.upload_id = created["UploadId"]
        return staged

    def send(self, staged: Staged) -> None:
        """Upload every part of a multipart upload; returns when all are sent or one failed
        (the others in flight are waited for, so none is sent after an abort)."""
        if staged.upload_id is None:
            return
        runs = split_pieces(staged.pieces, staged.part_size)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
            running: set[Future[dict[str, Any]]] = set()
            for number, run in enumerate(runs, 1):
                if len(running) >= self.concurrency:  # bounds the parts read into memory
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    staged.parts.extend(future.result() for future in done)
                running.add(pool.submit(self._send_part, staged, number, run))
            staged.parts.extend(future.result() for future in wait(running).done)
        staged.parts.sort(key=lambda part: part["PartNumber"])

    def _send_part(self, staged: Staged, number: int, run: tuple[Piece, ...]) -> dict[str, Any]:
        sent = self.client.upload_part(
            Bucket=self.bucket,
            Key=staged.key,
            UploadId=staged.upload_id,
            PartNumber=number,
            Body=read_part(run),
            **self.checksum,
        )
        part = {"PartNumber": number, "ETag": sent["ETag"]}
        if self.checksum and "ChecksumCRC32" in sent:
            part["ChecksumCRC32"] = sent["ChecksumCRC32"]
        return part

    def complete(self, staged: Staged) -> None:
        """Make the object visible at its key."""
        if staged.upload_id is None:
            body = read_part(staged.pieces)  # at most one part
            self.client.put_object(Bucket=self.bucket, Key=staged.key, Body=body, **staged.args)
            return
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=staged.key,
            UploadId=staged.upload_id,
            MultipartUpload={"Parts": staged.parts},
        )

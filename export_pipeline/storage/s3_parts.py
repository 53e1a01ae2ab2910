"""Sending a file of pieces to S3 so that it appears only when completed: a multipart upload
whose parts are read from the pieces in the threads that send them, or, for a file of at
most one part, a PutObject made at completion.

Pieces that are ranges of objects already in the bucket (shards' parts staged by steps on
other machines) are assembled there: each large one becomes parts copied by the server
(UploadPartCopy), so its bytes never pass through this process. Since every part but the
last must hold 5 MiB, the small pieces between them (a csv header, a parquet footer, small
parts) are read and sent with the first bytes of the next large range (a ranged GET).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from export_pipeline.storage.base import LocalFile, Piece, StoredRange
from export_pipeline.storage.pieces import (
    ReadStored,
    cut_piece,
    pieces_of,
    read_part,
    size_of_pieces,
)

MIN_PART = 5 * 1024 * 1024  # S3's least size of every part but the last
MAX_PARTS = 10_000  # S3's most parts in one upload
# A copied part moves no bytes through here, so copies are cut large (S3 allows 5 GiB). A
# stored range shorter than two least parts is read instead: topping a run up to 5 MiB from
# it would read most of it anyway.
COPY_PART = 1024 * 1024 * 1024
MIN_COPY = 2 * MIN_PART

# One part of an upload: pieces read and sent, or a range the server copies.
PlannedPart = tuple[Piece, ...] | StoredRange


@dataclass
class Staged:
    """An object whose bytes are sent but not yet visible at its key."""

    key: str
    pieces: tuple[Piece, ...]
    args: dict[str, Any]  # ContentType, ContentDisposition, Metadata, SSE
    part_size: int
    upload_id: str | None = None  # None: one PutObject at completion
    parts: list[dict[str, Any]] = field(default_factory=list)


def _copied(piece: Piece) -> bool:
    """Whether the piece is a stored range large enough to be copied by the server."""
    return isinstance(piece, StoredRange) and piece.length >= MIN_COPY


def planned_parts(pieces: Iterable[Piece], part_size: int) -> list[PlannedPart]:
    """The parts of an upload, in order: runs of `part_size` bytes read from the pieces, and
    copies of the stored ranges of at least MIN_COPY bytes. No I/O; every part but the last
    holds at least MIN_PART bytes, none more than COPY_PART or `part_size`."""
    parts: list[PlannedPart] = []
    run: list[Piece] = []
    filled = 0
    for piece in pieces:
        length = size_of_pieces((piece,))
        if isinstance(piece, StoredRange) and _copied(piece):
            start = 0
            if run:  # the run is topped up to a least part from the range's first bytes
                start = max(0, MIN_PART - filled)
                if start:
                    run.append(cut_piece(piece, 0, start))
                parts.append(tuple(run))
                run, filled = [], 0
            rest = length - start  # at least MIN_PART: length >= 2 * MIN_PART >= start + MIN_PART
            count = -(-rest // COPY_PART)
            bounds = [start + rest * n // count for n in range(count + 1)]
            parts.extend(cut_piece(piece, lo, hi - lo) for lo, hi in pairwise(bounds))
            continue
        start = 0
        while length:
            take = min(length, part_size - filled)
            run.append(cut_piece(piece, start, take))
            start, length, filled = start + take, length - take, filled + take
            if filled == part_size:
                parts.append(tuple(run))
                run, filled = [], 0
    if run:
        parts.append(tuple(run))
    return parts


class PartUploads:
    """Multipart uploads to one bucket, `concurrency` parts in flight (and in memory).

    `read_stored` reads a range of an object in the bucket, `source_key` names the object a
    stored range's key is (the storage's root before it)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        part_size: int,
        concurrency: int,
        *,
        read_stored: ReadStored | None = None,
        source_key: Callable[[str], str] = str,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.part_size = max(part_size, MIN_PART)
        self.concurrency = max(concurrency, 1)
        self.read_stored = read_stored
        self.source_key = source_key
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
        if size > part_size or any(_copied(piece) for piece in pieces):
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
        runs = planned_parts(staged.pieces, staged.part_size)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
            running: set[Future[dict[str, Any]]] = set()
            for number, run in enumerate(runs, 1):
                if len(running) >= self.concurrency:  # bounds the parts read into memory
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    staged.parts.extend(future.result() for future in done)
                running.add(pool.submit(self._send_part, staged, number, run))
            staged.parts.extend(future.result() for future in wait(running).done)
        staged.parts.sort(key=lambda part: part["PartNumber"])

    def _send_part(self, staged: Staged, number: int, run: PlannedPart) -> dict[str, Any]:
        target = {"Bucket": self.bucket, "Key": staged.key, "UploadId": staged.upload_id}
        if isinstance(run, StoredRange):
            copied = self.client.upload_part_copy(
                **target,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": self.source_key(run.key)},
                CopySourceRange=f"bytes={run.offset}-{run.offset + run.length - 1}",
            )
            sent = copied["CopyPartResult"]
        else:
            sent = self.client.upload_part(
                **target,
                PartNumber=number,
                Body=read_part(run, self.read_stored),
                **self.checksum,
            )
        part = {"PartNumber": number, "ETag": sent["ETag"]}
        if self.checksum and "ChecksumCRC32" in sent:
            part["ChecksumCRC32"] = sent["ChecksumCRC32"]
        return part

    def complete(self, staged: Staged) -> None:
        """Make the object visible at its key."""
        if staged.upload_id is None:
            body = read_part(staged.pieces, self.read_stored)  # at most one part
            self.client.put_object(Bucket=self.bucket, Key=staged.key, Body=body, **staged.args)
            return
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=staged.key,
            UploadId=staged.upload_id,
            MultipartUpload={"Parts": staged.parts},
        )

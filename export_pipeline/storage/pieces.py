"""Files made of pieces (ranges of part files in scratch space or on the export storage, and
bytes): their size, hash and bytes, in bounded memory, and a local copy that lets the kernel
move the bytes.

Reading goes through `split_pieces`, which regroups pieces into runs of a fixed size (S3
parts, hash chunks) without any I/O; only `read_part` touches files (and, for a `StoredRange`,
the storage, through the reader it is given). An S3 upload therefore plans its parts first and
reads each one in the thread that sends it; `storage.s3_parts` plans parts that are one large
stored range as server-side copies instead.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import overload

from export_pipeline.errors import ExportPipelineError
from export_pipeline.storage.base import FileRange, LocalFile, Piece, StoredRange

__all__ = [
    "ReadStored",
    "check_pieces",
    "cut_piece",
    "pieces_of",
    "read_part",
    "read_pieces",
    "sha256_of_pieces",
    "size_of_pieces",
    "split_pieces",
    "write_pieces",
]

_HASH_CHUNK = 4 * 1024 * 1024
# Stored ranges are hashed in larger chunks (one GET each), a few fetched ahead of the hash.
_STORED_CHUNK = 16 * 1024 * 1024
_STORED_AHEAD = 4
_COPY_CHUNK = 1 << 30  # per system call; the kernel caps a call near 2 GiB anyway
# copy_file_range refuses some pairs of files (other file systems on older kernels, special
# files); sendfile and then plain reads do the same job there.
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


def size_of_pieces(pieces: Iterable[Piece]) -> int:
    """The number of bytes of the file the pieces make."""
    return sum(_length(p) for p in pieces)


def check_pieces(pieces: Iterable[Piece]) -> None:
    """Raise if a range is negative or reaches past the end of its file (a short part)."""
    for piece in pieces:  # a stored range is checked by the storage that reads it
        if isinstance(piece, FileRange) and _length(piece):
            _short(piece, piece.path.stat().st_size)


def _short(piece: FileRange, size: int) -> None:
    if size < piece.offset + piece.length:
        raise ExportPipelineError(
            f"part {piece.path} holds {size} bytes, fewer than the assembled file needs"
            f" (bytes {piece.offset}..{piece.offset + piece.length})"
        )


def split_pieces(pieces: Iterable[Piece], size: int) -> Iterator[tuple[Piece, ...]]:
    """The pieces regrouped into runs of exactly `size` bytes (the last may be shorter).

    No I/O: ranges are cut, not read. Empty pieces are dropped; no pieces give no runs.
    """
    if size <= 0:
        raise ValueError(f"run size must be positive, not {size}")
    run: list[Piece] = []
    filled = 0
    for piece in pieces:
        start, length = 0, _length(piece)
        while length:
            take = min(length, size - filled)
            run.append(cut_piece(piece, start, take))
            start, length, filled = start + take, length - take, filled + take
            if filled == size:
                yield tuple(run)
                run, filled = [], 0
    if run:
        yield tuple(run)


# What reads a stored range's bytes: the storage the parts wait on (`Storage.read_range`).
ReadStored = Callable[[StoredRange], bytes]


def _length(piece: Piece) -> int:
    if isinstance(piece, bytes):
        return len(piece)
    if piece.offset < 0 or piece.length < 0:
        raise ExportPipelineError(f"invalid range of {_where(piece)}: {piece}")
    return piece.length


def _where(piece: FileRange | StoredRange) -> str:
    return str(piece.path) if isinstance(piece, FileRange) else piece.key


# A piece cut from a piece is of its kind (a stored range stays one, to be copied server-side).
@overload
def cut_piece(piece: StoredRange, start: int, length: int) -> StoredRange: ...
@overload
def cut_piece(piece: FileRange, start: int, length: int) -> FileRange: ...
@overload
def cut_piece(piece: Piece, start: int, length: int) -> Piece: ...
def cut_piece(piece: Piece, start: int, length: int) -> Piece:
    """`length` bytes of the piece from its byte `start` (no I/O)."""
    if isinstance(piece, bytes):
        return piece[start : start + length]
    if start == 0 and length == piece.length:
        return piece
    return replace(piece, offset=piece.offset + start, length=length)


def read_piece(piece: Piece, read_stored: ReadStored | None = None) -> bytes:
    """One piece's bytes, read into memory (a stored range through `read_stored`)."""
    if isinstance(piece, bytes):
        return piece
    if isinstance(piece, FileRange):
        return _read_range(piece)
    if read_stored is None:
        raise ValueError(f"no reader for the stored range {piece}")
    return read_stored(piece) if piece.length else b""


def read_part(part: Iterable[Piece], read_stored: ReadStored | None = None) -> bytes:
    """The bytes of a few pieces (one run of `split_pieces`), read into memory."""
    chunks = [read_piece(p, read_stored) for p in part]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_range(piece: FileRange) -> bytes:
    if not _length(piece):
        return b""
    with open(piece.path, "rb") as handle:
        _short(piece, os.fstat(handle.fileno()).st_size)
        data = os.pread(handle.fileno(), piece.length, piece.offset)
        while len(data) < piece.length:  # pread may stop short of a large count
            more = os.pread(handle.fileno(), piece.length - len(data), piece.offset + len(data))
            if not more:  # truncated since fstat
                _short(piece, piece.offset + len(data))
            data += more
        return data


def read_pieces(
    pieces: Iterable[Piece], chunk_size: int, read_stored: ReadStored | None = None
) -> Iterator[bytes]:
    """The pieces' bytes in chunks of exactly `chunk_size` (the last may be shorter)."""
    for part in split_pieces(pieces, chunk_size):
        yield read_part(part, read_stored)


def sha256_of_pieces(pieces: Iterable[Piece], read_stored: ReadStored | None = None) -> str:
    """The hex sha256 of the file the pieces make, read a few MiB at a time; stored ranges
    are fetched a few chunks ahead of the hash, in threads (in bounded memory)."""
    pieces = tuple(pieces)
    digest = hashlib.sha256()
    if not any(isinstance(piece, StoredRange) for piece in pieces):
        for chunk in read_pieces(pieces, _HASH_CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    with ThreadPoolExecutor(_STORED_AHEAD, thread_name_prefix="hash-read") as pool:
        ahead: deque[Future[bytes]] = deque()
        try:
            for run in split_pieces(pieces, _STORED_CHUNK):
                ahead.append(pool.submit(read_part, run, read_stored))
                if len(ahead) > _STORED_AHEAD:
                    digest.update(ahead.popleft().result())
            while ahead:
                digest.update(ahead.popleft().result())
        finally:
            for future in ahead:
                future.cancel()
    return digest.hexdigest()


def write_pieces(pieces: Iterable[Piece], target: Path, *, append: bool = False) -> None:
    """Write the file the pieces make at `target` (or after what it holds, with `append`),
    ranges copied by the kernel where it can.

    A failure (a short or missing part) removes `target` and raises.
    """
    # Not O_APPEND: copy_file_range refuses such a file; the position is set at its end.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | (0 if append else os.O_TRUNC), 0o644)
    if append:
        os.lseek(fd, 0, os.SEEK_END)
    try:
        for piece in pieces:
            if isinstance(piece, FileRange):
                _copy_range(piece, fd)
            elif isinstance(piece, StoredRange):  # a storage turns its own ranges into files
                raise ValueError(f"cannot copy the stored range {piece} into a local file")
            else:
                _write_all(fd, piece)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(piece: FileRange, out: int) -> None:
    if not _length(piece):
        return
    with open(piece.path, "rb") as handle:
        src = handle.fileno()
        _short(piece, os.fstat(src).st_size)
        offset, left = piece.offset, piece.length
        copies = [_kernel_copy, _sendfile_copy, _buffered_copy]
        while left:
            try:
                done = copies[0](src, out, offset, min(left, _COPY_CHUNK))
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED or len(copies) == 1:
                    raise
                done = 0
            if not done and len(copies) > 1:  # procfs, some FUSE: 0 bytes, no error
                copies.pop(0)
                continue
            if not done:  # end of file: truncated since fstat
                _short(piece, offset)
            offset, left = offset + done, left - done


def _kernel_copy(src: int, out: int, offset: int, count: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range is not available")
    return os.copy_file_range(src, out, count, offset)


def _sendfile_copy(src: int, out: int, offset: int, count: int) -> int:
    if not hasattr(os, "sendfile"):
        raise OSError(errno.ENOSYS, "sendfile is not available")
    return os.sendfile(out, src, offset, count)


def _buffered_copy(src: int, out: int, offset: int, count: int) -> int:
    data = os.pread(src, min(count, _HASH_CHUNK), offset)
    _write_all(out, data)
    return len(data)


def pieces_of(file: LocalFile) -> tuple[Piece, ...]:
    """The pieces a file is made of: its own, or the whole file at its path."""
    if file.pieces is not None:
        return file.pieces
    return (FileRange(file.path, 0, file.path.stat().st_size),)

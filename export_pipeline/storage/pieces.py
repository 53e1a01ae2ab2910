"""Files made of pieces (ranges of part files in scratch space, and bytes): their size,
hash and bytes, in bounded memory, and a local copy that lets the kernel move the bytes.

Reading goes through `split_pieces`, which regroups pieces into runs of a fixed size (S3
parts, hash chunks) without any I/O; only `read_part` touches files. An S3 upload therefore
plans its parts first and reads each one in the thread that sends it. Server-side assembly
(shards' parts already on S3) fits the same plan: a piece type for a range of an S3 object
(bucket, key, offset, length) would be split like a FileRange, and a part made of exactly
one such range is sent as UploadPartCopy with `CopySource` and `CopySourceRange="bytes=
{offset}-{offset + length - 1}"` instead of being read. Since every part but the last must
hold 5 MiB, the split would then cut parts at such ranges' edges and only read (ranged GET)
the few bytes that join small pieces (a csv header) to a range's first bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from export_pipeline.errors import ExportPipelineError
from export_pipeline.storage.base import FileRange, LocalFile, Piece

__all__ = [
    "check_pieces",
    "pieces_of",
    "read_part",
    "read_pieces",
    "sha256_of_pieces",
    "size_of_pieces",
    "split_pieces",
    "write_pieces",
]

_HASH_CHUNK = 4 * 1024 * 1024
_COPY_CHUNK = 1 << 30  # per system call; the kernel caps a call near 2 GiB anyway
# copy_file_range refuses some pairs of files (other file systems on older kernels, special
# files); sendfile and then plain reads do the same job there.
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


def size_of_pieces(pieces: Iterable[Piece]) -> int:
    """The number of bytes of the file the pieces make."""
    return sum(_length(p) for p in pieces)


def check_pieces(pieces: Iterable[Piece]) -> None:
    """Raise if a range is negative or reaches past the end of its file (a short part)."""
    for piece in pieces:
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
            run.append(_cut(piece, start, take))
            start, length, filled = start + take, length - take, filled + take
            if filled == size:
                yield tuple(run)
                run, filled = [], 0
    if run:
        yield tuple(run)


def _length(piece: Piece) -> int:
    if not isinstance(piece, FileRange):
        return len(piece)
    if piece.offset < 0 or piece.length < 0:
        raise ExportPipelineError(f"invalid range of {piece.path}: {piece}")
    return piece.length


def _cut(piece: Piece, start: int, length: int) -> Piece:
    if isinstance(piece, FileRange):
        if start == 0 and length == piece.length:
            return piece
        return FileRange(piece.path, piece.offset + start, length)
    return piece[start : start + length]


def read_part(part: Iterable[Piece]) -> bytes:
    """The bytes of a few pieces (one run of `split_pieces`), read into memory."""
    chunks = [_read_range(p) if isinstance(p, FileRange) else p for p in part]
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


def read_pieces(pieces: Iterable[Piece], chunk_size: int) -> Iterator[bytes]:
    """The pieces' bytes in chunks of exactly `chunk_size` (the last may be shorter)."""
    for part in split_pieces(pieces, chunk_size):
        yield read_part(part)


def sha256_of_pieces(pieces: Iterable[Piece]) -> str:
    """The hex sha256 of the file the pieces make, read a few MiB at a time."""
    digest = hashlib.sha256()
    for chunk in read_pieces(pieces, _HASH_CHUNK):
        digest.update(chunk)
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

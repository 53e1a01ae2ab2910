"""Placeholder until the storage-pieces branch lands."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from export_pipeline.storage.base import FileRange, Piece


def read_pieces(pieces: Iterable[Piece], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of the pieces, in chunks."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
            continue
        with open(piece.path, "rb") as handle:
            handle.seek(piece.offset)
            left = piece.length
            while left:
                data = handle.read(min(chunk_size, left))
                if not data:
                    raise ValueError(f"{piece.path} is shorter than planned")
                left -= len(data)
                yield data


def sha256_of_pieces(pieces: Iterable[Piece]) -> str:
    """Hex sha256 of the pieces' bytes."""
    digest = hashlib.sha256()
    for data in read_pieces(pieces):
        digest.update(data)
    return digest.hexdigest()


def write_pieces(pieces: Iterable[Piece], target: Path) -> None:
    """The pieces written to `target`."""
    with open(target, "wb") as out:
        for data in read_pieces(pieces):
            out.write(data)


__all__ = ["FileRange", "read_pieces", "sha256_of_pieces", "write_pieces"]
